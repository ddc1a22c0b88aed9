"""Check 3: a message that can never be processed is dead-lettered after exactly N attempts,
with its cause, and never loops."""

import pytest

import flows
from flows.models import DeadLetter
from tests.reliability.catalog import POISON_ATTEMPTS, runs
from tests.reliability.conftest import sized
from tests.reliability.held import settled
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_poison_message_is_dead_lettered_after_exactly_its_attempts_and_never_runs_again(chaos_worker, figure):
    n = sized(50, 10)
    chaos_worker("poison", ["r.poison", "r.notes"])
    for i in range(n):
        flows.send("rel.poison", {"key": f"p{i}"})
    wait_for(lambda: DeadLetter.objects.filter(consumer="r_poison").count() == n, timeout=120, what=f"{n} dead letters")

    # A loop would show as more runs after the dead letter: send a marker behind every retry the
    # worker could still hold and wait for it, so the queue has been worked through once more.
    flows.send("rel.note", {"key": "marker"})
    wait_for(lambda: "marker" in runs("r_note"), what="the marker behind the poison messages")
    wait_for(lambda: settled("r.poison"), what="nothing left in flight")

    attempts: dict[str, list[int]] = {}
    for line in runs("r_poison"):
        key, attempt = line.split("|")
        attempts.setdefault(key, []).append(int(attempt))
    dead = list(DeadLetter.objects.filter(consumer="r_poison"))
    figure(f"{n} poison messages: each run {sorted({len(a) for a in attempts.values()})} time(s) (declared {POISON_ATTEMPTS}), {len(dead)} dead letters, causes {sorted({d.error_type for d in dead})}")
    assert {k: sorted(a) for k, a in attempts.items()} == {f"p{i}": list(range(1, POISON_ATTEMPTS + 1)) for i in range(n)}
    assert all(d.attempts == POISON_ATTEMPTS and d.state == "dead" for d in dead)
    assert all(d.error_type.endswith("ValueError") and "cannot parse the order lines" in d.error_message for d in dead)
    assert all("r_poison" in d.traceback for d in dead), "the traceback names the handler"

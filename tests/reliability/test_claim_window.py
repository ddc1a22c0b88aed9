"""A worker killed between taking a message off its queue and recording it as held (issue 12).

The victim runs on a transport with a fault hook (kill_on_take.py) that SIGKILLs the whole worker
at its KILL_AT-th message, at the moment kombu records the message as held (QoS.append), and
notes which message that was. Kombu's own transport took it with BRPOP and records it only
there, so the message dies with the worker: in no list, no hash, restored by nobody. Flowscope's
transport took it with a claim that recorded it in the same step, so it waits in `unacked` and a
survivor runs it after the visibility timeout. Kombu's case is the control: it shows the hook
lands in the window, so Flowscope's zero means something.

On RabbitMQ there is no such window to compare: the broker records a delivery as unacknowledged
on the worker's channel before it sends it, and takes it back when the connection drops. The
RabbitMQ check kills the worker at the first moment it has the message, and finds it run by a
survivor all the same; test_worker_killed.py kills workers anywhere else.
"""

from __future__ import annotations

import pytest

import flows
from examples.demo.models import LedgerEntry
from flows.models import DeadLetter
from tests.reliability.conftest import VISIBILITY_SECONDS
from tests.reliability.held import settled
from tests.reliability.kill_on_take import KILL_AT_ENV, KILLED_AT, TRANSPORT_ENV
from tests.support.brokers import rabbitmq_only, redis_only_because
from tests.support.waiting import wait_for
from tracing.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)

KILL_AT = 5
SENT = 20


def accounted() -> int:
    return LedgerEntry.objects.filter(service="rel").count() + DeadLetter.objects.filter(consumer="r_credit").count()


@redis_only_because("kombu's Redis transport takes and records a message in two steps; RabbitMQ holds a delivery before it sends it (the check below)")
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("transport", "loses"),
    [
        pytest.param("tests.reliability.kill_on_take:KombuTransport", True, id="kombu-brpop-then-record"),
        pytest.param("tests.reliability.kill_on_take:FlowscopeTransport", False, id="flowscope-claim"),
    ],
)
def test_a_worker_killed_right_after_taking_a_message_loses_it_only_where_taking_and_recording_are_two_steps(chaos_worker, figure, transport, loses):
    redis = get_redis()
    victim = chaos_worker("victim", ["r.credits"], env={TRANSPORT_ENV: transport, KILL_AT_ENV: str(KILL_AT)})
    keys = [f"w{i}" for i in range(SENT)]
    for k in keys:
        flows.send("rel.credit", {"key": k})

    wait_for(lambda: victim.process.poll() is not None, timeout=60, what=f"the victim to be killed at the message it takes {KILL_AT}th")
    killed = {k.decode(): v.decode() for k, v in redis.hgetall(KILLED_AT).items()}
    assert killed.get("tag") and killed.get("key") in keys, f"the hook noted no message of ours: {killed}"
    in_queue = any(killed["tag"].encode() in item for item in redis.lrange("r.credits", 0, -1))
    in_unacked = bool(redis.hexists("unacked", killed["tag"]))
    assert not in_queue, "the message taken is still on its queue"

    chaos_worker("survivor", ["r.credits"])
    # Nothing left anywhere in Redis: what the victim held came back (visibility timeout) and ran.
    wait_for(
        lambda: redis.llen("r.credits") == 0 and redis.hlen("unacked") == 0 and accounted() >= SENT - 1,
        timeout=VISIBILITY_SECONDS + 90,
        interval=0.25,
        what="the queue and the unacknowledged set to drain",
    )
    processed = set(LedgerEntry.objects.filter(service="rel").values_list("reference", flat=True))
    dead = set(DeadLetter.objects.filter(consumer="r_credit").values_list("envelope__payload__key", flat=True))
    lost = sorted(set(keys) - processed - dead)
    figure(
        f"{transport.rsplit(':', 1)[-1]}: killed at take {KILL_AT} ({killed['key']}): on its queue {in_queue}, in unacked {in_unacked}; {len(processed)} processed, {len(dead)} dead-lettered, lost {lost}"
    )
    if loses:
        assert not in_unacked and lost == [killed["key"]], "kombu's two-step take no longer loses the message: the hook missed the window"
    else:
        assert in_unacked, "the message taken was not recorded as held when the worker died"
        assert lost == [], f"lost: {lost}"


@rabbitmq_only
@pytest.mark.timeout(240)
def test_a_worker_killed_the_moment_it_has_a_message_on_rabbitmq_loses_nothing_the_broker_takes_it_back(chaos_worker, figure):
    redis = get_redis()
    victim = chaos_worker("victim", ["r.credits"], env={TRANSPORT_ENV: "tests.reliability.kill_on_take:RabbitTransport", KILL_AT_ENV: str(KILL_AT)})
    keys = [f"w{i}" for i in range(SENT)]
    for k in keys:
        flows.send("rel.credit", {"key": k})

    wait_for(lambda: victim.process.poll() is not None, timeout=60, what=f"the victim to be killed at the message it takes {KILL_AT}th")
    killed = {k.decode(): v.decode() for k, v in redis.hgetall(KILLED_AT).items()}
    assert killed.get("key") in keys, f"the hook noted no message of ours: {killed}"

    chaos_worker("survivor", ["r.credits"])
    wait_for(lambda: accounted() >= SENT and settled("r.credits"), timeout=90, interval=0.25, what="every message to run and the queue to drain")
    processed = set(LedgerEntry.objects.filter(service="rel").values_list("reference", flat=True))
    dead = set(DeadLetter.objects.filter(consumer="r_credit").values_list("envelope__payload__key", flat=True))
    lost = sorted(set(keys) - processed - dead)
    figure(f"RabbitTransport: killed at take {KILL_AT} ({killed['key']}, the moment kombu first had it): {len(processed)} processed, {len(dead)} dead-lettered, lost {lost}")
    assert killed["key"] in processed, "the message the victim died with was not run by the survivor"
    assert lost == [], f"lost: {lost}"

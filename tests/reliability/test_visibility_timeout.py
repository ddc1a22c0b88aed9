"""Check 6: a delay longer than the broker's visibility timeout is refused at publish; one
within it runs exactly once, even with a second worker waiting for the timeout to pass."""

import time

import pytest

import flows
from flows.core.errors import ConfigurationError
from flows.core.registry import catalog
from flows.produce.publishing import publish_to
from tests.reliability.catalog import runs
from tests.reliability.conftest import VISIBILITY_SECONDS, sized
from tests.support.waiting import wait_for
from tracing.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_delay_past_half_the_visibility_timeout_is_refused_at_publish_and_at_declaration(settings, figure):
    settings.FLOWS_VISIBILITY_TIMEOUT = VISIBILITY_SECONDS
    handler = catalog.handler("r_note")
    envelope = flows.Envelope(type="rel.note", payload={"key": "late"})
    with pytest.raises(ConfigurationError, match=r"a delay of 6s exceeds half the broker visibility timeout \(10s\)") as refused:
        publish_to(handler, envelope, countdown=6)
    saved = catalog.snapshot()
    try:
        flows.message_type("rel.scratch", pattern="fire_and_forget")
        with pytest.raises(ConfigurationError, match="backoff maximum 60s exceeds half the broker visibility timeout") as declared:
            flows.handler("rel.scratch", consumer="slow_retry", queue="r.scratch", backoff=flows.Backoff(maximum=60))(lambda m: None)
    finally:
        catalog.restore(saved)
    assert get_redis().llen("r.notes") == 0, "nothing was sent"
    figure(f"countdown 6s on a 10s timeout: refused ({refused.value}); retry backoff 60s: refused at declaration ({declared.value})")


def test_a_delay_within_the_visibility_timeout_runs_exactly_once_with_two_workers_watching(chaos_worker, settings, figure):
    settings.FLOWS_VISIBILITY_TIMEOUT = VISIBILITY_SECONDS
    n = sized(20, 5)
    chaos_worker("holder", ["r.notes"])
    chaos_worker("watcher", ["r.notes"])
    handler = catalog.handler("r_note")
    delay = VISIBILITY_SECONDS / 2 - 0.5
    for i in range(n):
        publish_to(handler, flows.Envelope(type="rel.note", payload={"key": f"delayed-{i}"}), countdown=delay)
    sent_at = time.monotonic()
    wait_for(lambda: len(runs("r_note")) >= n, timeout=60, what="the delayed messages to run")
    # Past the visibility timeout, a delivery held too long would be restored and run again.
    wait_for(lambda: time.monotonic() - sent_at > VISIBILITY_SECONDS + 3 and get_redis().zcard("unacked_index") == 0, timeout=60, what="the visibility timeout to pass")
    ran = runs("r_note")
    figure(f"{n} messages delayed {delay:g}s on a {VISIBILITY_SECONDS}s visibility timeout, two workers: {len(ran)} runs, {len(ran) - len(set(ran))} duplicated")
    assert sorted(ran) == sorted(f"delayed-{i}" for i in range(n))

"""The rule kinds that read the flow graph's aggregates and the sagas, driven by real handlers
through a real worker (and the collector, for the aggregates): each fires on what happened."""

from __future__ import annotations

import pytest

import flows
from console.alerts.evaluate import evaluate_rules
from console.alerts.models import Alert, AlertRule
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def fired(rule: AlertRule) -> Alert | None:
    evaluate_rules()
    return Alert.objects.filter(rule=rule).first()


def test_a_handlers_error_rate_and_p95_latency_fire_from_its_spans(worker, collector):
    errors = AlertRule.objects.create(name="graph errors", kind="error_rate", scope="handler", scope_value="t_graph", threshold=20, created_by="tests")
    slow = AlertRule.objects.create(name="graph slow", kind="p95_latency", scope="handler", scope_value="t_graph", threshold=150, created_by="tests")
    calm = AlertRule.objects.create(name="graph very slow", kind="p95_latency", scope="handler", scope_value="t_graph", threshold=60_000, created_by="tests")
    flows.send("test.graph", {"key": "g-ok"})
    flows.send("test.graph", {"key": "g-slow", "sleep": 0.4})
    flows.send("test.graph", {"key": "g-flaky", "fail_times": 2})  # two failed attempts, then done
    # The collector may have other tests' spans to store first: a minute on a busy machine.
    alert = wait_for(lambda: fired(errors), timeout=60, what="the error-rate alert")
    seen = alert.observed
    assert seen["handler"] == "t_graph" and seen["errors"] >= 1 and seen["error_rate_pct"] == round(100 * seen["errors"] / seen["count"], 2) > 20
    slow_alert = wait_for(lambda: fired(slow), timeout=60, what="the p95 alert")
    assert slow_alert.observed["p95_ms"] > 150
    assert not Alert.objects.filter(rule=calm).exists()


def test_a_saga_left_in_one_state_past_the_threshold_fires_for_its_flow():
    """No worker consumes the crash trip's queue here: its first step waits, the saga stays running."""
    stuck = AlertRule.objects.create(name="trips stuck", kind="saga_stuck", scope="flow", scope_value="test.crashtrip", threshold=1, created_by="tests")
    other = AlertRule.objects.create(name="other flow", kind="saga_stuck", scope="flow", scope_value="test.trip", threshold=1, created_by="tests")
    saga = flows.start_saga("test.crashtrip", {"trip": "stuck-1"})
    assert fired(stuck) is None, "not yet past the threshold"
    alert = wait_for(lambda: fired(stuck), timeout=10, what="the stuck-saga alert")
    assert alert.observed["stuck"] == 1 and alert.observed["oldest"][0]["id"] == str(saga.id)
    assert not Alert.objects.filter(rule=other).exists()

"""The standard OTEL_* variables steer tracing in the workers."""

import pytest

import flows
from tests.flows_under_test import recorded
from tests.support.waiting import wait_for
from tests.tracing_helpers import flush_here, spans_where, wait_spans
from tracing import sink

# The OTEL_* variables reach the SDK the same way whatever the database and the broker.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.portable]
PRODUCER, CONSUMER = 3, 4


def test_the_service_name_and_resource_attributes_come_from_the_environment(start_worker, collector):
    start_worker("named", ["t.work"], concurrency=1, extra_env={"OTEL_SERVICE_NAME": "billing-svc", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging"})
    envelope = flows.send("test.work", {"key": "named"})
    (span,) = wait_spans(1, message_id=str(envelope.message_id), kind=CONSUMER)
    assert span.service == "billing-svc"


def no_consumer_spans_from(worker, envelope) -> None:
    """Once the worker has exited (flushing whatever it held) and the sink is drained, any span
    it made is stored: so none stored means none made."""
    worker.stop()
    flush_here()
    wait_for(lambda: sink.sink_status()["pending"] <= 0, what="the sink to drain")
    assert spans_where(message_id=str(envelope.message_id), kind=CONSUMER) == []
    assert spans_where(message_id=str(envelope.message_id), kind=PRODUCER), "the sending process is still traced"


def test_a_sampler_that_samples_nothing_stops_the_spans_but_not_the_flows(start_worker, collector):
    worker = start_worker("unsampled", ["t.work"], concurrency=1, extra_env={"OTEL_TRACES_SAMPLER": "always_off"})
    envelope = flows.send("test.work", {"key": "unsampled"})
    wait_for(lambda: any(e.startswith("unsampled|") for e in recorded("t_work")), what="the message to be handled")
    no_consumer_spans_from(worker, envelope)


def test_tracing_can_be_switched_off_entirely(start_worker, collector):
    worker = start_worker("untraced", ["t.work"], concurrency=1, extra_env={"OTEL_SDK_DISABLED": "true"})
    envelope = flows.send("test.work", {"key": "untraced"})
    wait_for(lambda: any(e.startswith("untraced|") for e in recorded("t_work")), what="the message to be handled")
    no_consumer_spans_from(worker, envelope)

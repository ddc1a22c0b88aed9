import pytest

import flows
from flows.models import SagaInstance
from tests.support.waiting import wait_for
from tests.tracing_helpers import wait_spans
from tracing.selectors import traces_for
from tracing.trace_tree import trace_tree

pytestmark = pytest.mark.django_db(transaction=True)


def test_traces_are_found_by_correlation_id_message_id_and_saga_id(worker, collector):
    first = flows.send("test.command", {"key": "q1"}, correlation_id="order-500")
    second = flows.send("test.command", {"key": "q2"}, correlation_id="order-500")
    saga = flows.start_saga("test.trip", {"trip": "q3"}, correlation_id="order-500")
    wait_for(lambda: SagaInstance.objects.filter(pk=saga.pk, state="completed").exists())
    wait_spans(2 + 2 + 7, correlation_id="order-500", what="every span of the conversation")

    by_conversation = traces_for(correlation_id="order-500")
    assert len(by_conversation) == 3
    (by_message,) = traces_for(message_id=str(second.message_id))
    assert by_message["spans"] == 2 and by_message["errors"] == 0
    (by_saga,) = traces_for(saga_id=str(saga.pk))
    assert by_saga["spans"] >= 6
    assert traces_for(message_id=str(first.message_id))[0]["trace_id"] != by_message["trace_id"]
    with pytest.raises(ValueError, match="name a correlation id"):
        traces_for()


def test_a_trace_tree_walks_depth_first_in_start_order(worker, collector):
    saga = flows.start_saga("test.trip", {"trip": "tree"})
    wait_for(lambda: SagaInstance.objects.filter(pk=saga.pk, state="completed").exists())
    spans = wait_spans(7, saga_id=str(saga.pk))
    tree = trace_tree(spans[0].trace_id)
    walked = [(depth, span.name) for depth, span in tree.walk()]
    assert walked == [
        (0, "saga test.trip"),
        (1, "send test.trip.flight"),
        (2, "process test.trip.flight"),
        (3, "send test.trip.hotel"),
        (4, "process test.trip.hotel"),
        (5, "send test.trip.charge"),
        (6, "process test.trip.charge"),
    ]
    assert tree.spans == 7 and tree.links_in == [] and tree.links_out == []
    assert trace_tree("f" * 32) is None

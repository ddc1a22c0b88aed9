import pytest

import flows
from flows.models import DeadLetter, SagaInstance
from flows.operate.dead_letters import dead_letter_requeue
from tests.flows_under_test import fix
from tests.support.waiting import wait_for
from tests.tracing_helpers import flush_here, spans_where, wait_spans
from tracing.trace_tree import trace_tree

pytestmark = pytest.mark.django_db(transaction=True)
PRODUCER, CONSUMER = 3, 4


def test_every_copy_of_a_fan_out_event_is_in_the_event_s_trace(worker, collector):
    event = flows.send("test.event", {"key": "traced"})
    # fast and slow succeed once, failing is tried twice: four process spans, three sends
    processed = wait_spans(4, message_id=str(event.message_id), kind=CONSUMER)
    sends = spans_where(message_id=str(event.message_id), kind=PRODUCER)

    assert len(sends) == 3
    assert len({s.trace_id for s in processed + sends}) == 1
    assert {s.attributes["messaging.destination.name"] for s in sends} == {"t.fan.fast", "t.fan.slow", "t.fan.failing"}
    by_consumer = {}
    for span in processed:
        by_consumer.setdefault(span.attributes["flowscope.consumer"], []).append(span)
    assert sorted(by_consumer) == ["t_sub_failing", "t_sub_fast", "t_sub_slow"]
    send_of_queue = {s.attributes["messaging.destination.name"]: s.span_id for s in sends}
    for consumer, spans in by_consumer.items():
        queue = spans[0].attributes["messaging.destination.name"]
        assert all(s.parent_span_id == send_of_queue[queue] for s in spans), f"{consumer}'s attempts hang under the send to {queue}"


def test_a_message_retried_twice_has_three_attempt_spans_under_one_send(worker, collector):
    envelope = flows.send("test.command", {"key": "retried", "fail_times": 2})
    attempts = wait_spans(3, message_id=str(envelope.message_id), kind=CONSUMER)

    assert [s.attributes["flowscope.attempt"] for s in attempts] == [1, 2, 3]
    assert [s.status_code for s in attempts] == [2, 2, 1]
    assert [s.attributes["flowscope.outcome"] for s in attempts] == ["retry", "retry", "ok"]
    assert all(s.events[0]["attributes"]["exception.message"] == f"planned failure {i} of 2" for i, s in enumerate(attempts[:2], 1))
    assert len({s.parent_span_id for s in attempts}) == 1
    (send,) = spans_where(message_id=str(envelope.message_id), kind=PRODUCER)
    assert attempts[0].parent_span_id == send.span_id and attempts[0].trace_id == send.trace_id


def test_spans_carry_the_messaging_conventions_and_flowscope_s_own_attributes(worker, collector):
    envelope = flows.send("test.command", {"key": "attrs"}, correlation_id="order-42")
    (span,) = wait_spans(1, message_id=str(envelope.message_id), kind=CONSUMER)
    a = span.attributes
    assert a["messaging.system"] == "celery"
    assert a["messaging.destination.name"] == "t.commands"
    assert a["messaging.operation.type"] == "process"
    assert a["messaging.message.id"] == str(envelope.message_id)
    assert a["messaging.message.conversation_id"] == "order-42" == span.correlation_id
    assert (a["flowscope.pattern"], a["flowscope.message_type"], a["flowscope.schema_version"], a["flowscope.consumer"]) == ("fire_and_forget", "test.command", 1, "t_command")
    assert a["flowscope.worker"].startswith("session@")
    assert "flowscope.payload" not in a, "payloads stay out of span attributes unless configured"
    assert span.name == "process test.command" and span.service == "flowscope-worker"


def test_a_request_and_its_reply_are_one_trace(worker, collector):
    pending = flows.request_async("test.ask", {"text": "trace me"}, timeout=10)
    assert pending.result() == {"echo": "TRACE ME"}
    flush_here()
    (process,) = wait_spans(1, message_id=pending.message_id, kind=CONSUMER)
    wait_spans(4, trace_id=process.trace_id, what="request, send, process and await spans")
    tree = trace_tree(process.trace_id)
    names = [span.name for _, span in tree.walk()]
    assert names[0] == "request test.ask"
    assert {"send test.ask", "process test.ask", "await reply test.ask"} <= set(names)


def test_a_saga_s_steps_and_compensations_are_in_its_trace_in_order(worker, collector):
    saga = flows.start_saga("test.trip", {"trip": "traced", "fail_at": "charge"})
    wait_for(lambda: SagaInstance.objects.filter(pk=saga.pk, state="compensated").exists(), what="the saga to compensate")
    processed = wait_spans(6, saga_id=str(saga.pk), kind=CONSUMER)

    assert len({s.trace_id for s in processed}) == 1
    assert [s.name for s in processed] == [
        "process test.trip.flight",
        "process test.trip.hotel",
        "process test.trip.charge",
        "process test.trip.charge",
        "process test.trip.hotel.undo",
        "process test.trip.flight.undo",
    ]
    assert [(s.attributes["flowscope.saga_step"], s.attributes["flowscope.saga_phase"]) for s in processed] == [
        (0, "action"),
        (1, "action"),
        (2, "action"),
        (2, "action"),
        (1, "compensation"),
        (0, "compensation"),
    ]
    wait_spans(1, trace_id=processed[0].trace_id, name="saga test.trip", what="the saga's root span")
    tree = trace_tree(processed[0].trace_id)
    assert tree.roots[0].span.name == "saga test.trip" and len(tree.roots) == 1


def test_a_requeue_is_one_span_rooting_a_new_trace_linked_to_the_old_with_the_copy_s_process_under_it(worker, collector):
    envelope = flows.send("test.command", {"key": "relink", "bug": "relink-bug"})
    dead = wait_for(lambda: DeadLetter.objects.filter(message_id=envelope.message_id).first(), what="the dead letter")
    assert len(dead.trace_id) == 32
    fix("relink-bug")
    assert dead_letter_requeue(dead_letter_id=dead.pk, actor="tracer")
    dead.refresh_from_db()
    assert len(dead.requeue_trace_id) == 32 and dead.requeue_trace_id != dead.trace_id

    wait_spans(1, trace_id=dead.requeue_trace_id, kind=CONSUMER, what="the requeued attempt's span")
    wait_spans(1, trace_id=dead.requeue_trace_id, kind=PRODUCER, what="the requeue span")
    new, old = trace_tree(dead.requeue_trace_id), trace_tree(dead.trace_id)
    (requeue, attempt) = (span for _, span in new.walk())
    assert len(new.roots) == 1 and new.spans == 2, "one requeue span, one attempt: no second span shape"
    assert (requeue.name, requeue.kind, requeue.parent_span_id) == ("requeue test.command", PRODUCER, "")
    assert (attempt.name, attempt.kind, attempt.parent_span_id) == ("process test.command", CONSUMER, requeue.span_id)
    assert requeue.attributes["messaging.destination.name"] == "t.commands" and requeue.attributes["messaging.message.id"] == str(envelope.message_id)
    assert requeue.attributes["flowscope.dead_letter_id"] == dead.pk and requeue.attributes["flowscope.actor"] == "tracer"
    assert [(link["span_id"], link["trace_id"]) for link in new.links_out] == [(requeue.span_id, dead.trace_id)]
    assert [link["trace_id"] for link in old.links_in] == [dead.requeue_trace_id]
    assert attempt.attributes["flowscope.attempt"] == 1 and attempt.attributes["flowscope.outcome"] == "ok"


@pytest.mark.portable
def test_pool_children_recycled_after_every_task_lose_no_spans(start_worker, collector):
    start_worker("recycler", ["t.work"], concurrency=1, args=["--max-tasks-per-child", "1"])
    # Four tasks: each one past the first runs in a child that replaced one gone with its spans
    # (three recycles); ten only took longer to show the same.
    sent = [flows.send("test.work", {"key": f"r{i}"}) for i in range(4)]
    ids = [str(e.message_id) for e in sent]
    # Replacing a pool child now and then takes the pool seconds; what counts is that none is lost.
    processed = wait_spans(4, message_id__in=ids, kind=CONSUMER, timeout=120, what="four consumer spans")
    assert sorted(s.message_id for s in processed) == sorted(ids)
    assert len({s.attributes["flowscope.worker"] for s in processed}) == 4, "each task ran in a fresh child"


def test_captured_payloads_are_redacted_in_span_attributes(start_worker, collector):
    start_worker("capturing", ["t.work"], concurrency=1, extra_env={"TRACING_CAPTURE_PAYLOAD": "1"})
    envelope = flows.send("test.work", {"key": "mail ada@example.com card 4111-1111-1111-1111"})
    (span,) = wait_spans(1, message_id=str(envelope.message_id), kind=CONSUMER)
    captured = span.attributes["flowscope.payload"]
    assert '"key": "mail [redacted] card [redacted]"' in captured
    assert "ada@example.com" not in str(span.attributes) and "4111" not in str(span.attributes)

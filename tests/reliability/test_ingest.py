"""Check 11, ingest: every door a message or a span comes in by refuses what is wrong, says why,
and writes nothing of it.

Three doors: `POST /api/v1/messages` (a clear 4xx), the OTLP receiver `POST /v1/traces` (a clear
4xx; nothing of a refused request reaches the span table), and deliveries put straight on a queue
for the worker, as a producer that skips `flows.send` would (a dead letter with the reason, the
handler never runs). Each door also takes one good input, so the counting can be seen to count.
OTLP has no message types or schema versions of ours; unknown fields in its JSON are ignored, as
the OTLP specification asks of receivers.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import current_app
from celery.signals import before_task_publish
from django.test import Client
from kombu import Producer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from console.models import AuditEntry
from flows.models import DeadLetter
from flows.tasks import deliver
from tests.flows_under_test import recorded
from tests.people import token_for
from tests.reliability.held import settled
from tests.support.brokers import rabbitmq_only, redis_only_because
from tests.support.waiting import wait_for
from tracing.models import Span

pytestmark = pytest.mark.django_db(transaction=True)

BIG = 300_000  # over FLOWS_MAX_PAYLOAD_BYTES (256 KiB)


def deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


# (what is wrong, request body, status, words the answer must contain)
API_CASES: list[tuple[str, bytes, int, str]] = [
    ("malformed JSON", b'{"type": "test.command", "payload": {', 400, "not valid JSON"),
    ("not UTF-8", b'{"type": "test.command", "payload": {"key": "\xff"}}', 400, "not valid JSON"),
    ("nested past the parser", ('{"type": "test.command", "payload": ' + deep(100_000) + "}").encode(), 400, "nests too deeply"),
    ("an array, not an object", b"[1, 2]", 422, "valid dictionary"),
    ("empty body", b"", 422, "Field required"),
    ("type is a number", b'{"type": 5, "payload": {"key": "x"}}', 422, "type"),
    ("payload is a list", b'{"type": "test.command", "payload": [1]}', 422, "payload"),
    ("payload is null", b'{"type": "test.command", "payload": null}', 422, "payload"),
    ("schema_version is text", b'{"type": "test.command", "payload": {"key": "x"}, "schema_version": "two"}', 422, "schema_version"),
    ("schema_version is zero", b'{"type": "test.command", "payload": {"key": "x"}, "schema_version": 0}', 422, "schema_version"),
    ("a misspelt field", b'{"type": "test.command", "payload": {"key": "x"}, "schema_verison": 1}', 422, "schema_verison"),
    ("payload field of the wrong type", b'{"type": "test.command", "payload": {"key": 5}}', 400, "key: Input should be a valid string"),
    ("payload with NaN", b'{"type": "test.command", "payload": {"key": "x", "sleep": NaN}}', 400, "not JSON-serialisable"),
    ("unknown message type", b'{"type": "no.such.type", "payload": {"key": "x"}}', 404, "unknown message type 'no.such.type'"),
    ("unknown schema version", b'{"type": "test.command", "payload": {"key": "x"}, "schema_version": 99}', 400, "unknown schema version 99"),
    ("a type not sent this way", b'{"type": "test.ask", "payload": {"text": "x"}}', 409, "test.ask"),
    ("payload over the limit", json.dumps({"type": "test.command", "payload": {"key": "x" * BIG}}).encode(), 413, "over the limit"),
    ("body over Django's limit", json.dumps({"type": "test.command", "payload": {"key": "x" * 3_000_000}}).encode(), 413, "over the limit"),
    ("correlation id too long", json.dumps({"type": "test.command", "payload": {"key": "x"}, "correlation_id": "c" * 500}).encode(), 422, "correlation_id"),
]


def says_what_is_wrong(answer: Any, words: str) -> bool:
    if isinstance(answer, list):  # django-ninja's validation errors: where, and what
        return all(item.get("loc") and item.get("msg") for item in answer) and words in json.dumps(answer)
    return isinstance(answer, str) and words in answer


@pytest.fixture
def publishes() -> Iterator[list[str]]:
    """Every task this process hands to the broker, by Celery's own signal."""
    sent: list[str] = []

    def count(sender: str = "", **_: Any) -> None:
        sent.append(sender)

    before_task_publish.connect(count, weak=False)
    yield sent
    before_task_publish.disconnect(count)


def test_the_messages_endpoint_refuses_bad_input_with_a_reason_and_writes_nothing(figure, publishes):
    auth = {"Authorization": f"Bearer {token_for('operator')}"}
    rows_before = (DeadLetter.objects.count(), AuditEntry.objects.count())
    wrong = []
    for what, body, status, words in API_CASES:
        response = Client().post("/api/v1/messages", body, content_type="application/json", headers=auth)
        answer = response.json().get("detail") if response["Content-Type"].startswith("application/json") else None
        if response.status_code != status or not says_what_is_wrong(answer, words):
            wrong.append(f"{what}: {response.status_code} {response.content[:300]!r}")
    assert not wrong, "\n".join(wrong)
    assert publishes == [] and (DeadLetter.objects.count(), AuditEntry.objects.count()) == rows_before, "a refused message left something behind"
    # The control: one good message is published once and audited once.
    # (test.bulk's queue is one no worker of the run consumes, and each test starts with it empty.)
    good = Client().post("/api/v1/messages", {"type": "test.bulk", "payload": {"key": "ingest-control"}}, content_type="application/json", headers=auth)
    assert good.status_code == 202 and publishes == ["flows.deliver"] and AuditEntry.objects.count() == rows_before[1] + 1
    figure(f"POST /api/v1/messages: {len(API_CASES)} bad inputs, {len(API_CASES)} answered 4xx with the reason; 0 published, 0 rows written")


def otlp_span(trace_id: str, name: str = "ingest") -> dict[str, Any]:
    return {"traceId": trace_id, "spanId": uuid.uuid4().hex[:16], "name": name, "kind": 1, "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000"}


def otlp_body(*resource_spans: dict[str, Any]) -> dict[str, Any]:
    return {"resourceSpans": list(resource_spans)}


def with_span(trace_id: str, **scope: Any) -> dict[str, Any]:
    return {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "ingest-check"}}]}, "scopeSpans": [{"spans": [otlp_span(trace_id)], **scope}]}


def otlp_cases() -> list[tuple[str, str, bytes, str, dict[str, str], int, str]]:
    """(what is wrong, the good span's trace id inside it, body, content type, headers, status, words)."""
    cases = []

    def case(what: str, build: Any, content_type: str = "application/json", headers: dict[str, str] | None = None, status: int = 400, words: str = "") -> None:
        trace_id = uuid.uuid4().hex
        cases.append((what, trace_id, build(trace_id), content_type, headers or {}, status, words))

    case("malformed JSON", lambda t: json.dumps(otlp_body(with_span(t))).encode()[:-3], words="not an OTLP ExportTraceServiceRequest in JSON")
    case("scopeSpans is a number", lambda t: json.dumps(otlp_body(with_span(t), {"scopeSpans": 5})).encode(), words="scopeSpans must be a list of objects")
    case("a span name is a number", lambda t: json.dumps(otlp_body(with_span(t), {"scopeSpans": [{"spans": [{**otlp_span(uuid.uuid4().hex), "name": 5}]}]})).encode(), words="name")
    case("an attribute nested past the parser", lambda t: json.dumps(otlp_body(with_span(t))).encode()[:-1] + b', "x": ' + deep(50_000).encode() + b"}", words="nests too deeply")
    case("the top level is a list", lambda t: json.dumps([otlp_body(with_span(t))]).encode(), words="the top level must be an object")
    case("protobuf cut short", lambda t: _protobuf(t)[:-5], content_type="application/x-protobuf", words="not an OTLP ExportTraceServiceRequest in protobuf")
    case("an unknown content type", lambda t: json.dumps(otlp_body(with_span(t))).encode(), content_type="text/plain", status=415, words="Content-Type must be")
    case("an unknown encoding", lambda t: json.dumps(otlp_body(with_span(t))).encode(), headers={"Content-Encoding": "br"}, words="unsupported Content-Encoding")
    case("gzip that is not gzip", lambda t: json.dumps(otlp_body(with_span(t))).encode(), headers={"Content-Encoding": "gzip"}, words="not valid gzip")
    case("over the size limit", lambda t: json.dumps(otlp_body(with_span(t, padding="x" * 2_200_000))).encode(), status=413, words="over the limit")
    case(
        "inflates past the size limit",
        lambda t: gzip.compress(json.dumps(otlp_body(with_span(t, padding=" " * 3_000_000))).encode()),
        headers={"Content-Encoding": "gzip"},
        status=413,
        words="inflates past the limit",
    )
    return cases


def _protobuf(trace_id: str) -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes.fromhex(trace_id), uuid.uuid4().bytes[:8], "ingest"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_100_000_000
    return request.SerializeToString()


def otlp_message(response: Any) -> str:
    if response["Content-Type"] == "application/x-protobuf":
        from google.rpc.status_pb2 import Status

        return Status.FromString(response.content).message
    return str(response.json().get("message", ""))


def test_the_otlp_receiver_refuses_bad_requests_whole_with_a_reason(figure, collector):
    cases = otlp_cases()
    wrong = []
    for what, _, body, content_type, headers, status, words in cases:
        response = Client().post("/v1/traces", body, content_type=content_type, headers=headers)
        if response.status_code != status or words not in otlp_message(response):
            wrong.append(f"{what}: {response.status_code} {response.content[:300]!r}")
    assert not wrong, "\n".join(wrong)
    # The control goes in after them: once the collector stored it, it had read all that came before.
    control = uuid.uuid4().hex
    assert Client().post("/v1/traces", json.dumps(otlp_body(with_span(control))), content_type="application/json").status_code == 200
    wait_for(lambda: Span.objects.filter(trace_id=control).exists(), what="the control span to be stored")
    leaked = Span.objects.filter(trace_id__in=[trace_id for _, trace_id, *_ in cases]).values_list("trace_id", flat=True)
    assert not leaked, f"spans of refused requests were stored: {list(leaked)}"
    figure(f"POST /v1/traces: {len(cases)} bad requests, {len(cases)} answered 4xx with the reason; 0 of their valid spans stored")


def envelope(**fields: Any) -> dict[str, Any]:
    return {"message_id": str(uuid.uuid4()), "type": "test.command", "schema_version": 1, "payload": {"key": "bad-delivery"}, "headers": {}, **fields}


# (what is wrong, the task's arguments, words the dead letter's reason must contain)
QUEUE_CASES: list[tuple[str, list[Any], str]] = [
    ("not an object", ["just a string", "t_command"], "envelope must be a JSON object, got str"),
    ("an unknown envelope field", [envelope(evil=1), "t_command"], "envelope has unknown fields: evil"),
    ("no payload", [{k: v for k, v in envelope().items() if k != "payload"}, "t_command"], "envelope is missing 'payload'"),
    ("payload is a list", [envelope(payload=[1, 2]), "t_command"], "payload must be a JSON object, got list"),
    ("schema_version is text", [envelope(schema_version="two"), "t_command"], "schema_version must be a positive integer, got 'two'"),
    ("unknown schema version", [envelope(schema_version=99), "t_command"], "unknown schema version 99"),
    ("payload field of the wrong type", [envelope(payload={"key": 5}), "t_command"], "key: Input should be a valid string"),
    ("a message id that is no UUID", [envelope(message_id="not-a-uuid"), "t_command"], "message_id 'not-a-uuid' is not a UUID"),
    ("an attempt header of the wrong type", [envelope(headers={"attempt": "1"}), "t_command"], "header 'attempt' must be a positive integer"),
    ("a message type its consumer does not handle", [envelope(type="no.such.type"), "t_command"], "handles 'test.command', not 'no.such.type'"),
    ("an unknown consumer", [envelope(), "nobody"], "no handler is registered as consumer 'nobody'"),
    ("no arguments at all", [], "no handler is registered as consumer None"),
    ("payload over the limit", [envelope(payload={"key": "x" * BIG}), "t_command"], "over the limit"),
]


def test_deliveries_put_straight_on_a_queue_become_dead_letters_with_the_reason(figure, worker):
    before = DeadLetter.objects.order_by("-id").values_list("id", flat=True).first() or 0
    for _, args, _ in QUEUE_CASES:
        deliver.apply_async(args=args, queue="t.commands")
    deliver.apply_async(args=[envelope(payload={"key": "queue-control"}), "t_command"], queue="t.commands")
    wait_for(lambda: any(e.startswith("queue-control|") for e in recorded("t_command")), what="the control message to be handled")
    new = wait_for(lambda: (rows := list(DeadLetter.objects.filter(id__gt=before))) and len(rows) >= len(QUEUE_CASES) and rows, what="a dead letter per bad delivery")
    reasons = [d.error_message for d in new]
    missing = [what for what, _, words in QUEUE_CASES if sum(words in r for r in reasons) != 1]
    assert not missing, f"no dead letter (or more than one) saying what is wrong with: {missing}\nreasons: {reasons}"
    assert len(new) == len(QUEUE_CASES) and all(d.poison and d.attempts == 1 for d in new), [(d.error_message[:80], d.attempts) for d in new]
    handled = [e.split("|")[0] for e in recorded("t_command")]
    assert not [k for k in handled if k.startswith(("bad-delivery", "xxx"))], f"the handler ran for a bad delivery: {handled}"
    figure(f"raw deliveries on a queue: {len(QUEUE_CASES)} bad, {len(QUEUE_CASES)} dead letters (poison, 1 attempt) with the reason; handler ran 0 times for them")


# Items a foreign producer might push straight onto the Redis list: not Celery messages at all.
GARBAGE: list[tuple[str, bytes, str]] = [
    ("bytes that are not JSON", b"garbage \xff not json", "queue item is not JSON"),
    ("JSON that is not an object", b"[1, 2, 3]", "not a message: a list"),
    ("an object that is no message", json.dumps({"type": "test.command", "payload": {"key": "bad-delivery"}}).encode(), "no body, properties, headers"),
    ("a message for a task no worker has", b"", "names task 'no.such.task', which no worker has"),
    ("a message whose body is not JSON", b"", "message body cannot be decoded"),
]


def celery_message(task: str, body: bytes) -> bytes:
    """A message as Celery's Redis transport lays it on the list (protocol 2)."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"task": task, "id": str(uuid.uuid4()), "lang": "py"},
            "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64", "delivery_info": {"exchange": "", "routing_key": "t.commands"}, "priority": 0},
        }
    ).encode()


GARBAGE[3] = (GARBAGE[3][0], celery_message("no.such.task", json.dumps([[], {}, {}]).encode()), GARBAGE[3][2])
GARBAGE[4] = (GARBAGE[4][0], celery_message("flows.deliver", b"not json"), GARBAGE[4][2])


@redis_only_because("items pushed onto the Redis list; the AMQP messages below are RabbitMQ's")
def test_items_on_a_queue_that_are_not_messages_become_dead_letters_and_the_worker_lives_on(figure, worker):
    from tracing.redis import get_redis

    before = DeadLetter.objects.order_by("-id").values_list("id", flat=True).first() or 0
    for _, item, _ in GARBAGE:
        get_redis().lpush("t.commands", item)
    deliver.apply_async(args=[envelope(payload={"key": "after-garbage"}), "t_command"], queue="t.commands")
    wait_for(lambda: any(e.startswith("after-garbage|") for e in recorded("t_command")), what="the worker to handle the message after the garbage")
    new = wait_for(lambda: (rows := list(DeadLetter.objects.filter(id__gt=before))) and len(rows) >= len(GARBAGE) and rows, what="a dead letter per item")
    reasons = [d.error_message for d in new]
    missing = [what for what, _, words in GARBAGE if sum(words in r for r in reasons) != 1]
    assert not missing and len(new) == len(GARBAGE), f"no dead letter saying what is wrong with: {missing}\nreasons: {reasons}"
    assert all(d.envelope.get("unparsed") and d.queue == "t.commands" for d in new), [(d.queue, d.envelope) for d in new]
    assert worker.process.poll() is None and "Unrecoverable error" not in worker.log_text()
    figure(
        f"{len(GARBAGE)} items pushed on a queue that no worker can run (not JSON, not a message, unknown task, undecodable body): {len(GARBAGE)} dead letters with the reason, the worker alive and consuming"
    )


# Messages a foreign AMQP client might publish to a queue: (what, body, content type, headers,
# a word of the body to find its dead letter by, words its reason must contain).
AMQP_GARBAGE: list[tuple[str, bytes, str, dict[str, Any], str, str]] = [
    ("bytes that are not JSON", b"garbage-1 \xff not json", "application/json", {}, "garbage-1", "message body cannot be decoded"),
    ("a body of a type no worker accepts", b"garbage-2 pickled", "application/x-python-serialize", {}, "garbage-2", "message body cannot be decoded"),
    ("JSON that is not an object", b'["garbage-3", 2, 3]', "application/json", {}, "garbage-3", "message is not a Celery task: it names no task"),
    (
        "an object that is no message",
        json.dumps({"type": "test.command", "payload": {"key": "garbage-4"}}).encode(),
        "application/json",
        {},
        "garbage-4",
        "message is not a Celery task: it names no task",
    ),
    (
        "a message for a task no worker has",
        json.dumps([["garbage-5"], {}, {}]).encode(),
        "application/json",
        {"task": "no.such.task", "id": str(uuid.uuid4())},
        "garbage-5",
        "names task 'no.such.task', which no worker has",
    ),
    ("a message whose body is not JSON", b"garbage-6 not json", "application/json", {"task": "flows.deliver", "id": str(uuid.uuid4())}, "garbage-6", "cannot be decoded"),
]


@rabbitmq_only
def test_amqp_messages_on_a_queue_that_are_not_celery_tasks_become_dead_letters_and_the_worker_lives_on(figure, worker):
    before = DeadLetter.objects.order_by("-id").values_list("id", flat=True).first() or 0
    with current_app.connection_for_write() as connection:
        producer = Producer(connection.default_channel)
        for _, body, content_type, headers, _, _ in AMQP_GARBAGE:
            # The default exchange routes by queue name: straight to the worker's queue, past Celery.
            producer.publish(body, exchange="", routing_key="t.commands", content_type=content_type, content_encoding="binary", headers=headers, retry=False)
    deliver.apply_async(args=[envelope(payload={"key": "after-garbage"}), "t_command"], queue="t.commands")
    wait_for(lambda: any(e.startswith("after-garbage|") for e in recorded("t_command")), what="the worker to handle the message after the garbage")
    new = wait_for(lambda: (rows := list(DeadLetter.objects.filter(id__gt=before))) and len(rows) >= len(AMQP_GARBAGE) and rows, what="a dead letter per message")
    found = {what: [d for d in new if marker in str(d.envelope.get("unparsed"))] for what, _, _, _, marker, _ in AMQP_GARBAGE}
    wrong = {
        what: [(d.error_message[:120], d.queue) for d in found[what]]
        for what, *_, words in AMQP_GARBAGE
        if len(found[what]) != 1 or words not in found[what][0].error_message or found[what][0].queue != "t.commands"
    }
    # None goes back to the queue to come round again: the queue empties and stays one dead letter each.
    wait_for(lambda: settled("t.commands"), what="t.commands to be empty with nothing held")
    new = list(DeadLetter.objects.filter(id__gt=before))
    assert not wrong and len(new) == len(AMQP_GARBAGE), f"not one dead letter on t.commands with the reason: {wrong}\nall: {[d.error_message for d in new]}"
    assert all(d.poison and d.attempts == 1 for d in new)
    handled = [e.split("|")[0] for e in recorded("t_command")]
    assert not [k for k in handled if k.startswith("garbage")], f"the handler ran for a foreign message: {handled}"
    assert worker.process.poll() is None and "Unrecoverable error" not in worker.log_text()
    figure(
        f"{len(AMQP_GARBAGE)} AMQP messages published straight to a queue that no worker can run (not JSON, a refused content type, no task, unknown task, undecodable body): "
        f"{len(new)} dead letters with the reason, the worker alive and consuming"
    )

"""The API's OpenAPI description declares every answer, and the answers keep to it.

Each operation declares its success body and the error statuses it can give (one error body,
ErrorOut); answers on real rows are validated against the document and compared with the
presenters field for field (the console's JavaScript reads those names); errors are mapped by
type (console.api.errors), and a bug in an operation is a logged 500 that tells nothing of the
server's insides.
"""

import importlib
import json
import logging
import pkgutil
from datetime import timedelta
from typing import Any

import jsonschema_rs
import kombu.exceptions
import pytest
import redis.exceptions
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from ninja import Schema
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from console.api.errors import status_of
from console.models import ApiToken, hash_token
from console.presenters import dead_letter_detail, dead_letter_summary, job_summary, saga_detail, saga_summary
from flows.core.errors import (
    ConfigurationError,
    EnvelopeError,
    FlowsError,
    InvalidArgument,
    PayloadInvalid,
    PayloadTooLarge,
    QueueFull,
    StaleTransition,
    UnknownMessageType,
    UnknownSchemaVersion,
)
from flows.models import DeadLetter, RequeueJob, SagaInstance, SagaStep
from flows.operate.selectors import BadCursor
from flows.produce.backpressure import backpressure
from tests.people import client_for, token_for
from tests.support.brokers import purge, rabbitmq_only
from tracing import summaries
from tracing.models import Span

pytestmark = pytest.mark.django_db(transaction=True)

ERROR_STATUSES = {"400", "401", "403", "404", "409", "413", "422", "503"}
ERROR_BODY = {"$ref": "#/components/schemas/ErrorOut"}


def openapi() -> dict[str, Any]:
    return client_for("viewer").get("/api/v1/openapi.json").json()


def declared(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The schema the document declares for this answer, with the components it refers to."""
    schema = doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    return {**schema, "components": doc["components"]}


def conforms(doc: dict[str, Any], path: str, method: str, response: Any) -> Any:
    """The answer's body, after checking its status is declared and the body fits its schema."""
    assert str(response.status_code) in doc["paths"][path][method]["responses"], f"{method.upper()} {path} answered an undeclared {response.status_code}"
    body = response.json()
    jsonschema_rs.validator_for(declared(doc, path, method, response.status_code), validate_formats=True).validate(body)
    return body


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def post(client: Client, url: str, body: Any = None, **headers: str):
    return client.post(url, json.dumps({} if body is None else body), content_type="application/json", headers=headers)


def stored_dead_letter(**overrides: Any) -> DeadLetter:
    now = timezone.now()
    fields = {
        "message_id": "6f1c2c1e-1111-4a4a-9b9b-0123456789ab",
        "message_type": "test.command",
        "queue": "t.commands",
        "consumer": "t_command",
        "envelope": {"type": "test.command", "payload": {"key": "k", "email": "ada@example.com"}, "headers": {}},
        "error_type": "builtins.ValueError",
        "error_message": "boom for ada@example.com",
        "traceback": "Traceback (most recent call last): ...",
        "fingerprint": "f" * 16,
        "attempts": 3,
        "first_dead_at": now,
        "dead_at": now,
        "trace_id": "a" * 32,
    }
    return DeadLetter.objects.create(**(fields | overrides))


def described(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    """Whether a schema says what the body holds: named fields, or items that have them."""
    if "$ref" in schema:
        return described(components["schemas"][schema["$ref"].rsplit("/", 1)[-1]], components)
    if "anyOf" in schema:
        return all(described(s, components) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return described(schema.get("items", {}), components)
    return bool(schema.get("properties"))


def test_the_declared_schemas_refuse_an_answer_missing_a_field_or_of_the_wrong_type():
    doc = openapi()
    dead = stored_dead_letter()
    good = as_json(dead_letter_summary(dead))
    validator = jsonschema_rs.validator_for(declared(doc, "/api/v1/deadletters", "get", 200), validate_formats=True)
    assert validator.is_valid({"items": [good], "next_cursor": ""})
    assert not validator.is_valid({"items": [{k: v for k, v in good.items() if k != "fingerprint"}], "next_cursor": ""})
    assert not validator.is_valid({"items": [good | {"attempts": "three"}], "next_cursor": ""})
    assert not validator.is_valid({"items": [good | {"dead_at": "yesterday"}], "next_cursor": ""})
    assert not validator.is_valid({"items": [good | {"state": "undead"}], "next_cursor": ""})


def test_every_operation_declares_its_success_body_and_each_error_status_with_one_error_body():
    doc = openapi()
    operations = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 20
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        successes = [status for status in responses if status.startswith("2")]
        assert len(successes) == 1 and successes[0] in {"200", "201", "202"}, where
        schema = responses[successes[0]].get("content", {}).get("application/json", {}).get("schema")
        assert schema and described(schema, doc["components"]), f"{where} does not describe its answer"
        errors = set(responses) - set(successes)
        assert {"401", "403"} <= errors <= ERROR_STATUSES, f"{where}: {sorted(errors)}"
        for status in errors:
            assert responses[status]["content"]["application/json"]["schema"] == ERROR_BODY, f"{where} {status}"
        if "requestBody" in op:  # a body can be unparsable, too big or invalid
            assert {"400", "413", "422"} <= errors, where
        if op.get("parameters"):
            assert "422" in errors, where


def test_dead_letter_answers_fit_their_schema_and_carry_every_field_the_presenters_make():
    doc = openapi()
    dead = stored_dead_letter()
    other = stored_dead_letter(message_id="6f1c2c1e-2222-4a4a-9b9b-0123456789ab", fingerprint="e" * 16, envelope="not an object", trace_id="")
    viewer = client_for("viewer")
    page = conforms(doc, "/api/v1/deadletters", "get", viewer.get("/api/v1/deadletters"))
    assert page["items"] == [as_json(dead_letter_summary(d)) for d in (other, dead)] and page["next_cursor"] == ""
    for row in (dead, other):
        detail = conforms(doc, "/api/v1/deadletters/{dead_letter_id}", "get", viewer.get(f"/api/v1/deadletters/{row.pk}"))
        assert detail == as_json(dead_letter_detail(row))
    groups = conforms(doc, "/api/v1/deadletters/groups", "get", viewer.get("/api/v1/deadletters/groups"))
    assert {g["fingerprint"] for g in groups} == {"f" * 16, "e" * 16} and {g["example_id"] for g in groups} == {dead.pk, other.pk}
    missing = conforms(doc, "/api/v1/deadletters/{dead_letter_id}", "get", viewer.get("/api/v1/deadletters/999999"))
    assert missing == {"detail": "Not Found"}

    operator = client_for("operator")
    count = conforms(doc, "/api/v1/requeue-jobs", "post", post(operator, "/api/v1/requeue-jobs", {"ids": [dead.pk, other.pk], "dry_run": True}))
    assert count == {"count": 2}
    try:
        job = conforms(doc, "/api/v1/requeue-jobs", "post", post(operator, "/api/v1/requeue-jobs", {"ids": [dead.pk], "rate_per_s": 1, "canary_size": 0}))
        # A session worker started by an earlier test may run the job's slice first: cancelled
        # or already done, the answer has the same shape.
        cancelled = post(operator, f"/api/v1/requeue-jobs/{job['id']}/cancel")
        cancelled = conforms(doc, "/api/v1/requeue-jobs/{job_id}/cancel", "post", cancelled)
    finally:
        purge("flows.control")
    assert job["state"] == "running"
    if "detail" in cancelled:
        assert cancelled["detail"] == f"job {job['id']} is done: only a job in its canary, running or paused can be cancelled"
    else:
        # A slice already under way when the cancel came may still count its batch after the
        # answer: the counts may move (and the outcomes of what that batch requeued), nothing else.
        moving = ("done", "skipped", "progress", "outcomes")
        stored = as_json(job_summary(RequeueJob.objects.get(pk=job["id"])))
        assert cancelled["state"] == "cancelled" and {k: v for k, v in cancelled.items() if k not in moving} == {k: v for k, v in stored.items() if k not in moving}
    # A dead letter the job never saw, for the discard.
    spare = stored_dead_letter(message_id="6f1c2c1e-4444-4a4a-9b9b-0123456789ab", fingerprint="d" * 16)
    discarded = conforms(doc, "/api/v1/deadletters/{dead_letter_id}/discard", "post", post(operator, f"/api/v1/deadletters/{spare.pk}/discard", {"reason": "seen"}))
    assert discarded == {"discarded": True}
    again = conforms(doc, "/api/v1/deadletters/{dead_letter_id}/discard", "post", post(operator, f"/api/v1/deadletters/{spare.pk}/discard", {"reason": "seen"}))
    assert again["detail"] == f"dead letter {spare.pk} is discarded, not dead: nothing done"
    blank = post(operator, f"/api/v1/deadletters/{other.pk}/discard", {"reason": "   "})
    assert blank.status_code == 422 and conforms(doc, "/api/v1/deadletters/{dead_letter_id}/discard", "post", blank)["detail"][0]["loc"] == ["body", "body", "reason"]


def test_saga_trace_graph_queue_and_admin_answers_fit_their_schema():
    doc = openapi()
    now = timezone.now()
    saga = SagaInstance.objects.create(
        saga_type="test.trip", state="compensating", current_step=1, failed_step=2, data={"trip": "t", "card": "4111 1111 1111 1111"}, correlation_id="corr-schema", updated_at=now
    )
    SagaStep.objects.create(saga=saga, index=0, name="flight", phase="action", outcome="succeeded", message_id="6f1c2c1e-3333-4a4a-9b9b-0123456789ab", attempts=1, started_at=now, finished_at=now)
    for i, parent in enumerate(["", "0" * 15 + "1"]):
        Span.objects.create(
            trace_id="b" * 32, span_id="0" * 15 + str(i + 1), parent_span_id=parent, name=f"hop {i}", kind=3, start_time=now, duration_us=1500, correlation_id="corr-schema", attributes={"k": i}
        )
    summaries.rebuild(["b" * 32])  # as the collector keeps it for the trace search
    viewer = client_for("viewer")
    sagas = conforms(doc, "/api/v1/sagas", "get", viewer.get("/api/v1/sagas"))
    assert sagas[0]["id"] == str(saga.pk) and sagas[0].keys() == saga_summary(saga).keys()
    detail = conforms(doc, "/api/v1/sagas/{saga_id}", "get", viewer.get(f"/api/v1/sagas/{saga.pk}"))
    assert detail.keys() == saga_detail(saga).keys() and detail["plan"] == as_json(saga_detail(saga)["plan"])
    found = conforms(doc, "/api/v1/traces", "get", viewer.get("/api/v1/traces?correlation_id=corr-schema"))
    assert [(t["trace_id"], t["spans"]) for t in found["items"]] == [("b" * 32, 2)]
    trace = conforms(doc, "/api/v1/traces/{trace_id}", "get", viewer.get(f"/api/v1/traces/{'b' * 32}"))
    assert [(hop["depth"], hop["name"], hop["duration_ms"]) for hop in trace["items"]] == [(0, "hop 0", 1.5), (1, "hop 1", 1.5)]
    graph = conforms(doc, "/api/v1/graph", "get", viewer.get("/api/v1/graph"))
    # The session's worker and collector may have counted edges already: the graph must hold together.
    node_ids = [n["id"] for n in graph["nodes"]]
    assert len(node_ids) == len(set(node_ids)) and all({e["source"], e["target"]} <= set(node_ids) for e in graph["edges"])
    queues = conforms(doc, "/api/v1/queues", "get", viewer.get("/api/v1/queues"))
    assert "t.backlog.raise" in {q["name"] for q in queues}

    admin = client_for("admin")
    created = conforms(doc, "/api/v1/admin/tokens", "post", post(admin, "/api/v1/admin/tokens", {"name": "schema script", "role": "viewer"}))
    assert created["token"].startswith(created["hint"]) and created["revoked"] is False
    tokens = conforms(doc, "/api/v1/admin/tokens", "get", admin.get("/api/v1/admin/tokens"))
    assert created["id"] in {t["id"] for t in tokens} and all("token" not in t for t in tokens)
    revoked = conforms(doc, "/api/v1/admin/tokens/{token_id}/revoke", "post", post(admin, f"/api/v1/admin/tokens/{created['id']}/revoke"))
    assert revoked["revoked"] is True
    # Ours made three days old: on PostgreSQL retention keeps whole days (the cutoff goes down to
    # midnight), so spans of today would stay; three days back they are in no day made, so
    # DEFAULT's batched delete counts them.
    Span.objects.filter(trace_id="b" * 32).update(start_time=timezone.now() - timedelta(days=3))
    pruned = conforms(doc, "/api/v1/admin/retention/prune", "post", post(admin, "/api/v1/admin/retention/prune", {"days": 1}))
    # The session's worker may have written spans and edge counts of its own: ours are gone, and counted.
    assert pruned.keys() == {"spans", "links", "edge_stats", "edge_hours", "trace_summaries", "span_days_dropped", "link_days_dropped"} and pruned["spans"] >= 2
    assert not Span.objects.filter(trace_id="b" * 32).exists()


def test_publishing_answers_202_until_the_queue_is_full_then_503_with_retry_after():
    doc = openapi()
    operator = client_for("operator")
    for n in range(5):  # t.backlog.raise: high watermark 5, no worker consumes it
        sent = conforms(doc, "/api/v1/messages", "post", post(operator, "/api/v1/messages", {"type": "test.bulk", "payload": {"n": n}, "correlation_id": f"bulk-{n}"}))
        assert sent["correlation_id"] == f"bulk-{n}" and len(sent["message_id"]) == 36
    backpressure.forget()  # the gate caches a queue's depth for a moment: read it now
    full = post(operator, "/api/v1/messages", {"type": "test.bulk", "payload": {"n": 5}})
    assert full.status_code == 503 and full["Retry-After"] == "5"
    assert conforms(doc, "/api/v1/messages", "post", full)["detail"].startswith("queue 't.backlog.raise' holds 5 messages")


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"type": "no.such", "payload": {}}, 404, "unknown message type 'no.such'"),
        ({"type": "test.command", "payload": {"key": 1}}, 400, "payload does not match schema 'test.command' v1"),
        ({"type": "test.command", "payload": {"key": "k"}, "schema_version": 99}, 400, "unknown schema version 99"),
        ({"type": "test.ask", "payload": {"text": "x"}}, 409, "'test.ask' is a request_reply type"),
        ({"type": "test.command", "payload": {"key": "x" * 300_000}}, 413, "over the limit of 262144 bytes (FLOWS_MAX_PAYLOAD_BYTES)"),
    ],
)
def test_the_engines_typed_errors_answer_their_status_with_the_engines_message(body, status, detail):
    response = post(client_for("operator"), "/api/v1/messages", body)
    assert response.status_code == status
    assert detail in conforms(openapi(), "/api/v1/messages", "post", response)["detail"]


def test_the_apis_own_refusals_answer_by_type():
    doc = openapi()
    operator = client_for("operator")
    empty = post(operator, "/api/v1/requeue-jobs", {"ids": []})  # InvalidArgument from the engine
    assert (empty.status_code, conforms(doc, "/api/v1/requeue-jobs", "post", empty)) == (400, {"detail": "the selection is empty"})
    nothing = post(operator, "/api/v1/requeue-jobs", {"fingerprint": "nothing-here"})
    assert (nothing.status_code, conforms(doc, "/api/v1/requeue-jobs", "post", nothing)) == (409, {"detail": "nothing to requeue: no dead letter matches"})
    cursor = client_for("viewer").get("/api/v1/deadletters?cursor=bogus")  # BadCursor
    assert cursor.status_code == 400 and conforms(doc, "/api/v1/deadletters", "get", cursor)["detail"]


def test_a_body_over_djangos_limit_is_413_naming_the_setting(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(client_for("operator"), "/api/v1/messages", {"type": "test.command", "payload": {"key": "x" * 2000}})
    assert response.status_code == 413
    assert conforms(openapi(), "/api/v1/messages", "post", response) == {"detail": "request body is over the limit of 1000 bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)"}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument("the selection is empty"), 400),
        (BadCursor("not a cursor this API gave out"), 400),
        (PayloadInvalid("t", 1, "key: field required"), 400),
        (UnknownSchemaVersion("t", 9, [1]), 400),
        (EnvelopeError("payload is 9 bytes, over the limit of 5 bytes"), 400),  # its words say 413; its type says 400
        (UnknownMessageType("t"), 404),
        (PayloadTooLarge(9, 5), 413),
        (ConfigurationError("a request_reply type"), 409),
        (StaleTransition("applied already"), 409),
        (FlowsError("nothing to requeue"), 409),
        (QueueFull("q", 9, 5), 503),
        (redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.3:6379"), 503),
        (kombu.exceptions.OperationalError("broker gone"), 503),
        (ValueError("a bug"), None),
        (TypeError("a bug"), None),
        (KeyError("a bug"), None),
    ],
)
def test_each_error_type_maps_to_its_status_and_plain_errors_to_none(error, status):
    assert status_of(error) == status


@pytest.mark.parametrize("bug", [ValueError("invalid literal for int(): 'hunter2'"), TypeError("'NoneType' is not subscriptable: hunter2"), KeyError("hunter2")])
def test_a_bug_inside_an_operation_is_a_logged_500_with_a_body_that_tells_nothing(monkeypatch, caplog, bug):
    def broken() -> None:
        raise bug

    monkeypatch.setattr("console.api.system.queue_statuses", broken)  # a fault injected: no real operation has this bug
    with caplog.at_level(logging.ERROR, logger="console.api"):
        response = client_for("viewer").get("/api/v1/queues")
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert "hunter2" not in response.content.decode() and detail.startswith("internal error (reference ")
    reference = detail.split("reference ", 1)[1].split(")", 1)[0]
    (record,) = [r for r in caplog.records if r.name == "console.api"]
    assert record.levelno == logging.ERROR and reference in record.getMessage() and "GET /api/v1/queues" in record.getMessage()
    assert record.exc_info and record.exc_info[1] is bug


def test_an_unreachable_redis_is_503_with_retry_after_and_no_host_in_the_body(monkeypatch, caplog):
    def unreachable() -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.3:6379. Connection refused.")

    monkeypatch.setattr("console.api.system.queue_statuses", unreachable)  # the shared Redis must stay up
    with caplog.at_level(logging.WARNING, logger="console.api"):
        response = client_for("viewer").get("/api/v1/queues")
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    assert "10.0.0.3" not in response.content.decode() and "unreachable" in response.json()["detail"]
    (record,) = [r for r in caplog.records if r.name == "console.api"]
    assert record.levelno == logging.WARNING and "ConnectionError" in record.getMessage() and "GET /api/v1/queues" in record.getMessage()


@rabbitmq_only
def test_an_unreachable_rabbitmq_is_503_with_retry_after(caplog):
    from celery import Celery

    from console.celery import app as engine
    from tooling.devredis import free_port

    unreachable = Celery("unreachable", set_as_current=False)
    # The write URL, as the producers' pool connects with it (CELERY_BROKER_URL, in the
    # environment, would win over a broker given here).
    unreachable.conf.broker_write_url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    unreachable.set_current()
    try:
        with caplog.at_level(logging.WARNING, logger="console.api"):
            response = client_for("viewer").get("/api/v1/queues")
    finally:
        engine.set_current()
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    (record,) = [r for r in caplog.records if r.name == "console.api"]
    assert record.levelno == logging.WARNING and "OperationalError" in record.getMessage()


CONFORMANCE_EXAMPLES = 6  # per operation: generated, valid by the document


def check_conformance(operation: Any, auth: dict[str, str], own_token: Any, failures: list[str]) -> None:
    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE))
    @settings(max_examples=CONFORMANCE_EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=auth)
        own_token.update(revoked_at=None)  # it may have revoked its own token; go on as admin
        try:
            case.validate_response(response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance], headers=auth)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's failures (a group), one line each
            failures.append(f"{operation.method.upper()} {operation.path}: {' '.join(str(exc).split())[:300]}")

    check()


@pytest.mark.timeout(600)
def test_generated_requests_get_answers_that_keep_to_the_document():
    """Every operation but publishing (its messages would reach the session worker's queues):
    each answer's status declared, its content type and body as declared."""
    secret = token_for("admin")
    auth = {"Authorization": f"Bearer {secret}"}
    own_token = ApiToken.objects.filter(token_hash=hash_token(secret))
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application(), headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: list[str] = []
    for operation in operations:
        if operation.path != "/api/v1/messages":
            check_conformance(operation, auth, own_token, failures)
    purge("flows.control")  # bulk requeue jobs it may have started
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/deadletters?app=shop%00",
        "/api/v1/deadletters?message_type=a%00b",
        "/api/v1/deadletters/groups?queue=%00",
        "/api/v1/traces?correlation_id=c%00",
        "/api/v1/traces?app=%00",
        "/api/v1/sagas?saga_type=s%00",
        "/api/v1/graph?app=%00",
        "/api/v1/tasks?name=t%00",
    ],
)
def test_a_nul_character_in_a_text_filter_is_a_422_naming_it_not_a_database_error(path):
    """PostgreSQL's text holds no NUL: unchecked, such a filter failed inside the query as a 500
    (the generated requests found it on the dead-letter list's app filter)."""
    response = client_for("viewer").get(path)
    assert response.status_code == 422, (path, response.content)
    assert "contains a NUL character" in json.dumps(response.json()), response.content


def test_no_two_answer_or_body_schemas_share_a_name():
    """The OpenAPI description names components by class name: two schemas of one name would be
    described as one, and one of them checked against the other's fields (seen with QueueOut)."""

    seen: dict[str, str] = {}
    clashes = []
    for info in pkgutil.iter_modules(importlib.import_module("console.api").__path__):
        module = importlib.import_module(f"console.api.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Schema) and value.__module__ == module.__name__:
                if value.__name__ in seen and seen[value.__name__] != module.__name__:
                    clashes.append(f"{value.__name__}: {seen[value.__name__]} and {module.__name__}")
                seen.setdefault(value.__name__, module.__name__)
    assert not clashes, clashes

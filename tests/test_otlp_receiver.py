import gzip
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from console.models import ApiToken
from console.roles import set_role
from tests.people import token_for
from tests.reliability.test_deploy_check import PRODUCTION
from tests.support import REPO
from tests.test_settings import manage
from tests.tracing_helpers import flush_here, spans_where, wait_spans
from tracing import sink
from tracing.trace_tree import trace_tree

pytestmark = pytest.mark.django_db(transaction=True)

SENDER = textwrap.dedent(
    """
    import sys
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    provider = TracerProvider(resource=Resource.create({"service.name": "legacy-billing"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1])))
    tracer = provider.get_tracer("legacy")
    with tracer.start_as_current_span("POST /invoices", kind=SpanKind.SERVER) as root:
        with tracer.start_as_current_span("send invoices", kind=SpanKind.PRODUCER, attributes={"messaging.destination.name": "invoices", "flowscope.producer": "service:legacy-billing", "messaging.message.conversation_id": "order-77"}):
            pass
    provider.shutdown()
    print(format(root.get_span_context().trace_id, "032x"))
    """
)


def test_spans_from_the_real_otlp_exporter_in_another_process_are_stored_and_found_by_trace_id(live_server, collector):
    # The exporter's own environment, free of this project's variables.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DJANGO_"))}
    result = subprocess.run([sys.executable, "-c", SENDER, f"{live_server.url}/v1/traces"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    trace_id = result.stdout.strip()

    wait_spans(2, trace_id=trace_id, what="the exporter's two spans")
    tree = trace_tree(trace_id)
    (root,) = tree.roots
    assert (root.span.name, root.span.kind, root.span.service) == ("POST /invoices", 1, "legacy-billing")
    (child,) = root.children
    assert (child.span.name, child.span.kind, child.span.correlation_id) == ("send invoices", 3, "order-77")


def otlp_json(*spans: dict) -> bytes:
    return json.dumps({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "edge"}}]}, "scopeSpans": [{"spans": list(spans)}]}]}).encode()


def json_span(trace: str, span: str, name: str = "op", **extra: object) -> dict:
    return {"traceId": trace, "spanId": span, "name": name, "kind": 5, "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000500000000", **extra}


def test_json_with_hex_ids_is_accepted_and_bad_spans_are_rejected_alone_with_a_reason(client, collector):
    good = json_span("ab" * 16, "cd" * 8, "good", attributes=[{"key": "n", "value": {"intValue": "7"}}], status={"code": 2, "message": "boom"})
    bad_trace = json_span("00" * 16, "cd" * 8, "zero-trace")
    backwards = json_span("ab" * 16, "ef" * 8, "backwards", endTimeUnixNano="1")
    response = client.post("/v1/traces", otlp_json(good, bad_trace, backwards), content_type="application/json")

    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "'zero-trace': trace_id must be 16 bytes" in partial["errorMessage"]
    assert "'backwards': start time missing, or after the end time" in partial["errorMessage"]
    (span,) = wait_spans(1, trace_id="ab" * 16)
    assert (span.name, span.kind, span.service, span.status_code, span.status_message, span.attributes) == ("good", 4, "edge", 2, "boom", {"n": 7})
    assert span.duration_us == 500_000


def test_protobuf_and_gzip_are_accepted_with_a_protobuf_answer(client, collector):
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes.fromhex("12" * 16), bytes.fromhex("34" * 8), "from protobuf"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_000_001_000
    response = client.post("/v1/traces", gzip.compress(request.SerializeToString()), content_type="application/x-protobuf", headers={"Content-Encoding": "gzip"})

    assert response.status_code == 200 and response["Content-Type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 0
    wait_spans(1, trace_id="12" * 16)


@pytest.mark.parametrize(
    "body, content_type, headers, status, message",
    [
        (b"{}", "text/plain", {}, 415, "Content-Type must be application/x-protobuf or application/json"),
        (b"not json", "application/json", {}, 400, "not an OTLP ExportTraceServiceRequest in JSON"),
        (b"[1, 2]", "application/json", {}, 400, "the top level must be an object"),
        (b"\xff\xff\xff", "application/x-protobuf", {}, 400, "not an OTLP ExportTraceServiceRequest in protobuf"),
        (b"{}", "application/json", {"Content-Encoding": "br"}, 400, "unsupported Content-Encoding 'br'"),
        (b"garbage", "application/json", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    ],
)
def test_unreadable_requests_are_refused_with_the_otlp_status_and_a_message(client, body, content_type, headers, status, message):
    response = client.post("/v1/traces", body, content_type=content_type, headers=headers)
    assert response.status_code == status
    if response["Content-Type"] == "application/x-protobuf":  # a protobuf request gets a google.rpc.Status
        from google.rpc.status_pb2 import Status

        assert message in Status.FromString(response.content).message
    else:
        assert message in response.json()["message"]


def test_oversized_bodies_are_413_even_when_they_inflate_past_the_limit(client, settings):
    settings.TRACING_OTLP_MAX_BYTES = 2048
    assert client.post("/v1/traces", b" " * 4096, content_type="application/json").status_code == 413
    bomb = gzip.compress(b" " * 100_000)
    response = client.post("/v1/traces", bomb, content_type="application/json", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "inflates past the limit" in response.json()["message"]


def test_a_full_sink_answers_503_with_retry_after_and_counts_the_drop(client, settings):
    flush_here()  # so this process's own exporter has nothing to drop while the bound is 0
    settings.TRACING_SINK_MAX_SPANS = 0
    before = sink.sink_status()["dropped"]
    response = client.post("/v1/traces", otlp_json(json_span("ab" * 16, "99" * 8)), content_type="application/json")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert sink.sink_status()["dropped"] == before + 1


def test_a_configured_token_is_required(client, settings):
    settings.TRACING_OTLP_TOKEN = "s3cret"
    body = otlp_json(json_span("ab" * 16, "98" * 8))
    assert client.post("/v1/traces", body, content_type="application/json").status_code == 401
    assert client.post("/v1/traces", body, content_type="application/json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/traces", body, content_type="application/json", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_only_post_is_allowed(client):
    assert client.get("/v1/traces").status_code == 405


# --- Who may report: agent tokens, the shared token, anyone only where explicitly opened ---


@pytest.fixture
def closed(settings):
    """Production's default: no shared token, not opened (the suite opens it in tests/settings.py)."""
    settings.TRACING_OTLP_OPEN = False
    settings.TRACING_OTLP_TOKEN = ""


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def post_span(client, trace: str, **headers: str):
    return client.post("/v1/traces", otlp_json(json_span(trace, "cd" * 8)), content_type="application/json", headers=headers)


def test_in_production_spans_without_a_token_are_refused_and_an_agent_token_is_taken(client, closed, collector):
    refused_trace, agent_trace = "a1" * 16, "a2" * 16
    response = post_span(client, refused_trace)
    assert response.status_code == 401 and "an API token of the agent role" in response.json()["message"]
    assert post_span(client, agent_trace, **bearer(token_for("agent"))).status_code == 200
    wait_spans(1, trace_id=agent_trace)  # stored after the refused one would have been
    assert not spans_where(trace_id=refused_trace)


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_a_token_of_another_role_is_403_naming_the_agent_role(client, closed, role):
    response = post_span(client, "a3" * 16, **bearer(token_for(role)))
    assert response.status_code == 403 and "only agent tokens may" in response.json()["message"]


def test_unknown_revoked_and_non_bearer_credentials_are_401(client, closed):
    token, secret = ApiToken.issue(name="gone", role="agent", created_by="tests")
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    for headers in (bearer(secret), bearer("fs_not-a-token"), bearer("x" * 40), {"Authorization": "Basic YWdlbnQ6YWdlbnQ="}, bearer("ünïcode")):
        response = post_span(client, "a4" * 16, **headers)
        assert response.status_code == 401, (headers, response.content)


def test_the_shared_token_closes_the_receiver_even_where_it_is_opened(client, settings):
    settings.TRACING_OTLP_OPEN, settings.TRACING_OTLP_TOKEN = True, "s3cret"
    assert post_span(client, "a5" * 16).status_code == 401
    assert post_span(client, "a5" * 16, **bearer("s3cret")).status_code == 200
    assert post_span(client, "a5" * 16, **bearer(token_for("agent"))).status_code == 200  # agent tokens work beside it


def test_a_malformed_report_with_an_agent_token_is_refused_whole_and_nothing_is_stored(client, closed, collector):
    agent = bearer(token_for("agent"))
    good = json_span("a6" * 16, "cd" * 8)
    cut_short = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [good]}]}]}).encode()[:-4]
    assert client.post("/v1/traces", cut_short, content_type="application/json", headers=agent).status_code == 400
    wrong_shape = json.dumps({"resourceSpans": [{"scopeSpans": 5}], "extra": [good]}).encode()
    assert client.post("/v1/traces", wrong_shape, content_type="application/json", headers=agent).status_code == 400
    assert post_span(client, "a7" * 16, **agent).status_code == 200  # the control, sent after
    wait_spans(1, trace_id="a7" * 16)
    assert not spans_where(trace_id="a6" * 16)


def test_an_agent_token_may_do_nothing_but_report(client):
    agent = bearer(token_for("agent"))
    for method, path in (("get", "/api/v1/deadletters"), ("get", "/api/v1/traces?message_id=x"), ("get", "/api/v1/admin/tokens"), ("post", "/api/v1/messages")):
        response = getattr(client, method)(path, content_type="application/json", headers=agent, **({"data": {"type": "x", "payload": {}}} if method == "post" else {}))
        assert response.status_code == 403 and "has the agent role" in response.json()["detail"], (path, response.content)
    assert client.get("/metrics", headers=agent).status_code in (401, 403)
    assert client.get("/api/v1/openapi.json", headers=agent).status_code in (401, 403)
    page = client.get("/", headers=agent)  # pages are for people: a token is sent to sign in
    assert page.status_code == 302 and "login/" in page["Location"]
    user = User.objects.create_user("an-agent-person", password="a-long-test-password")
    set_role(user, "agent")
    client.force_login(user)
    assert client.get("/").status_code == 403 and client.get("/deadletters/").status_code == 403


def test_create_token_makes_agent_tokens():
    out = io.StringIO()
    call_command("create_token", "--name", "shop workers", "--role", "agent", stdout=out, stderr=io.StringIO())
    token = ApiToken.objects.get(name="shop workers")
    assert token.role == "agent" and out.getvalue().strip().startswith(token.hint)


def test_check_deploy_warns_when_the_receiver_is_opened():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION, TRACING_OTLP_OPEN="1")
    assert result.returncode != 0 and "console.W001" in result.stdout + result.stderr and "takes spans from anyone" in result.stdout + result.stderr


def test_a_token_tied_to_an_app_sends_only_that_apps_spans_and_a_mixed_report_is_refused_whole(client, closed, collector):
    _, secret = ApiToken.issue(name="shop agent", role="agent", created_by="tests", app="edge")  # otlp_json's service
    _, other = ApiToken.issue(name="billing agent", role="agent", created_by="tests", app="billing")
    own, foreign = "b1" * 16, "b2" * 16
    response = post_span(client, foreign, **bearer(other))
    assert response.status_code == 403 and "reports for the app 'billing' only; spans of 'edge' refused" in response.json()["message"]
    mixed = json.loads(otlp_json(json_span(foreign, "cd" * 8)))
    mixed["resourceSpans"].append({"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]}, "scopeSpans": [{"spans": [json_span(foreign, "ce" * 8)]}]})
    assert client.post("/v1/traces", json.dumps(mixed), content_type="application/json", headers=bearer(other)).status_code == 403
    assert post_span(client, own, **bearer(secret)).status_code == 200
    wait_spans(1, trace_id=own)  # stored after the refused ones would have been
    assert not spans_where(trace_id=foreign)

import gzip
import json
import os
import subprocess
import sys
import textwrap

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from tests.support import REPO
from tests.tracing_helpers import flush_here, wait_spans
from tracing import sink
from tracing.selectors import trace_tree

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

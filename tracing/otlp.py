"""Decoding OTLP/HTTP trace requests (protobuf or JSON) into the sink's span form.

JSON follows the OTLP specification, not plain protobuf JSON: trace and span ids are hex, and
enums are integers. A span the store cannot take (bad ids, end before start) is rejected alone
and counted, as the specification's partial success allows; the rest of the request is kept.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tracing.redaction import redact, redact_text

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class Bearer(enum.Enum):
    """What the verifier named by TRACING_OTLP_AUTH says of a bearer token, as the HTTP status
    the receiver answers: the console owns tokens and roles, tracing only asks."""

    REPORTER = 200  # a token that may send spans
    UNKNOWN = 401  # no such token, or revoked
    NOT_A_REPORTER = 403  # a real token whose role may not send spans


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A verifier's answer: the Bearer, and for a token tied to one attached app, that app, whose
    spans (service.name) are the only ones it may send."""

    bearer: Bearer
    app: str = ""


class OtlpError(ValueError):
    """The request as a whole cannot be read."""


@dataclasses.dataclass
class Decoded:
    spans: list[dict[str, Any]]
    rejected: int
    reasons: list[str]


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    # Redacted on the way in, as our own workers' spans are at the source: a foreign service's
    # span may carry an e-mail address or a token, and the span table must not keep it.
    return redact({kv.key: value_of(kv.value) for kv in pairs})


def decode(body: bytes, content_type: str) -> Decoded:
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpError(f"body is not an OTLP ExportTraceServiceRequest in protobuf: {exc}") from None
    elif content_type == JSON:
        try:
            data = json.loads(body)
            json_format.ParseDict(_hex_ids_to_base64(data), request, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError, TypeError, AttributeError) as exc:
            raise OtlpError(f"body is not an OTLP ExportTraceServiceRequest in JSON: {exc}") from None
        except RecursionError:  # a few hundred KiB of brackets would otherwise be a 500
            raise OtlpError("body is not an OTLP ExportTraceServiceRequest in JSON: it nests too deeply") from None
    else:
        raise OtlpError(f"unsupported content type {content_type!r}")
    return _spans(request)


def _hex_ids_to_base64(data: Any) -> Any:
    """OTLP/JSON carries ids as hex; protobuf's JSON parser wants bytes as base64."""
    if not isinstance(data, dict):
        raise ValueError("the top level must be an object")
    for resource_spans in _objects(data, "resourceSpans"):
        for scope_spans in _objects(resource_spans, "scopeSpans"):
            for span in _objects(scope_spans, "spans"):
                _convert(span, ("traceId", "spanId", "parentSpanId"))
                for link in _objects(span, "links"):
                    _convert(link, ("traceId", "spanId"))
    return data


def _objects(parent: dict[str, Any], field: str) -> list[dict[str, Any]]:
    value = parent.get(field) or []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"{field} must be a list of objects")
    return value


def _convert(obj: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        value = obj.get(field)
        if isinstance(value, str) and value:
            try:
                obj[field] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                obj[field] = ""  # rejected below with the span's other checks


def _spans(request: ExportTraceServiceRequest) -> Decoded:
    spans: list[dict[str, Any]] = []
    reasons: list[str] = []
    rejected = 0
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", "unknown_service"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
                problem = None
                if len(trace_id) != 32 or trace_id == "0" * 32:
                    problem = "trace_id must be 16 bytes, not all zero"
                elif len(span_id) != 16 or span_id == "0" * 16:
                    problem = "span_id must be 8 bytes, not all zero"
                elif span.parent_span_id and len(span.parent_span_id) != 8:
                    problem = "parent_span_id must be 8 bytes"
                elif span.end_time_unix_nano < span.start_time_unix_nano or not span.start_time_unix_nano:
                    problem = "start time missing, or after the end time"
                if problem:
                    rejected += 1
                    if len(reasons) < 5:
                        reasons.append(f"span {span.name!r}: {problem}")
                    continue
                spans.append(
                    {
                        "t": trace_id,
                        "s": span_id,
                        "p": span.parent_span_id.hex(),
                        "n": redact_text(span.name),
                        "k": max(0, span.kind - 1),  # OTLP counts UNSPECIFIED as 0; the SDK starts at INTERNAL
                        "sv": service,
                        "st": span.start_time_unix_nano,
                        "en": span.end_time_unix_nano,
                        "sc": span.status.code,
                        "sm": redact_text(span.status.message),
                        "a": _attributes(span.attributes),
                        "e": [[e.name, e.time_unix_nano, _attributes(e.attributes)] for e in span.events],
                        "l": [[link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes)] for link in span.links if len(link.trace_id) == 16 and len(link.span_id) == 8],
                    }
                )
    return Decoded(spans=spans, rejected=rejected, reasons=reasons)


def response_body(decoded: Decoded | None, content_type: str) -> bytes:
    response = ExportTraceServiceResponse()
    if decoded is not None and decoded.rejected:
        response.partial_success.rejected_spans = decoded.rejected
        response.partial_success.error_message = "; ".join(decoded.reasons)
    if content_type == PROTOBUF:
        return response.SerializeToString()
    return json.dumps(json_format.MessageToDict(response)).encode()

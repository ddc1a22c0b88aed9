"""The OTLP/HTTP trace receiver: services outside Python join Flowscope's traces through it."""

from __future__ import annotations

import functools
import gzip
import hmac
import json
import zlib
from collections.abc import Callable

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from google.rpc.status_pb2 import Status

from tracing import otlp, sink


def _error(status: int, message: str, content_type: str, **headers: str) -> HttpResponse:
    # OTLP answers errors with a google.rpc.Status; its message field is what clients log.
    if content_type == otlp.PROTOBUF:
        body, ctype = Status(code=status, message=message).SerializeToString(), otlp.PROTOBUF
    else:
        body, ctype = json.dumps({"code": status, "message": message}).encode(), otlp.JSON
    response = HttpResponse(body, status=status, content_type=ctype)
    for name, value in headers.items():
        response[name] = value
    return response


def _body(request: HttpRequest) -> bytes:
    limit = settings.TRACING_OTLP_MAX_BYTES
    try:
        raw = request.body
    except RequestDataTooBig:
        raise OverflowError(f"request body is over Django's DATA_UPLOAD_MAX_MEMORY_SIZE ({settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes)") from None
    if len(raw) > limit:
        raise OverflowError(f"request body is {len(raw)} bytes, over the limit of {limit}")
    encoding = request.headers.get("Content-Encoding", "identity").lower()
    if encoding == "identity":
        return raw
    if encoding != "gzip":
        raise ValueError(f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"body is not valid gzip: {exc}") from None
    if len(body) > limit:
        raise OverflowError(f"request body inflates past the limit of {limit} bytes")
    return body


@functools.cache
def _verifier(path: str) -> Callable[[str], otlp.Bearer]:
    return import_string(path)


def _refusal(request: HttpRequest) -> tuple[tuple[int, str] | None, str]:
    """Why this caller may not send spans (status, reason), or None if it may; and the one app
    whose spans it may send, for a token tied to an app ("" for any).

    The shared TRACING_OTLP_TOKEN and the API tokens the console's verifier accepts (the agent
    role) both open the door. Without a shared token, TRACING_OTLP_OPEN (on with DEBUG, off in
    production unless set) lets anyone in; a shared token always closes it to strangers.
    """
    header = request.headers.get("Authorization", "")
    bearer = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    shared = settings.TRACING_OTLP_TOKEN
    if shared and bearer and hmac.compare_digest(bearer.encode(), shared.encode()):
        return None, ""
    if not bearer:
        if not shared and settings.TRACING_OTLP_OPEN:
            return None, ""
        return (401, "a bearer token is needed: 'Authorization: Bearer <token>' with an API token of the agent role (manage.py create_token --role agent)"), ""
    verdict = _verifier(settings.TRACING_OTLP_AUTH)(bearer) if settings.TRACING_OTLP_AUTH else otlp.Verdict(otlp.Bearer.UNKNOWN)
    if isinstance(verdict, otlp.Bearer):  # a verifier of before app-tied tokens
        verdict = otlp.Verdict(verdict)
    if verdict.bearer is otlp.Bearer.REPORTER:
        return None, verdict.app
    if not shared and settings.TRACING_OTLP_OPEN:
        return None, ""  # an open receiver takes spans from anyone, as if no token had been given
    if verdict.bearer is otlp.Bearer.NOT_A_REPORTER:
        return (403, "this token's role may not send spans; only agent tokens may (manage.py create_token --role agent)"), ""
    return (401, "unknown or revoked bearer token"), ""


def _foreign_services(spans: list[dict], app: str) -> list[str]:
    """The services (apps) in a report other than the one its token is tied to."""
    return sorted({span["sv"] for span in spans if span["sv"] != app})


@csrf_exempt
@require_POST
def receive_traces(request: HttpRequest) -> HttpResponse:
    """POST /v1/traces: an OTLP ExportTraceServiceRequest, protobuf or JSON.

    200 with ExportTraceServiceResponse (partial_success names rejected spans); 400 unreadable;
    401 without a token that may report (see _refusal), 403 with a token of a role that may not,
    or one tied to another app than the spans' service.name;
    413 too large; 415 other content types;
    503 with Retry-After when the span sink is full or unreachable (the exporter retries).
    """
    content_type = request.content_type or ""
    reply_type = otlp.PROTOBUF if content_type == otlp.PROTOBUF else otlp.JSON
    refusal, app = _refusal(request)
    if refusal is not None:
        return _error(*refusal, reply_type)
    if content_type not in (otlp.PROTOBUF, otlp.JSON):
        return _error(415, f"Content-Type must be {otlp.PROTOBUF} or {otlp.JSON}, got {content_type or 'none'!r}", reply_type)
    try:
        decoded = otlp.decode(_body(request), content_type)
    except OverflowError as exc:
        return _error(413, str(exc), reply_type)
    except (ValueError, gzip.BadGzipFile) as exc:
        return _error(400, str(exc), reply_type)
    foreign = _foreign_services(decoded.spans, app) if app else []
    if foreign:  # refused whole: an agent sends one app's spans, so a mixed report is not its own
        return _error(403, f"this token reports for the app {app!r} only; spans of {', '.join(map(repr, foreign[:5]))} refused, none stored", reply_type)
    try:
        sink.push(decoded.spans)
    except sink.SinkFull as exc:
        return _error(503, str(exc), reply_type, **{"Retry-After": "5"})
    except redis.RedisError:
        return _error(503, "span sink unreachable", reply_type, **{"Retry-After": "5"})
    return HttpResponse(otlp.response_body(decoded, reply_type), status=200, content_type=reply_type)

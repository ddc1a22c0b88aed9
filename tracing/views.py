"""The OTLP/HTTP trace receiver: services outside Python join Flowscope's traces through it."""

from __future__ import annotations

import gzip
import hmac
import json
import zlib

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
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


@csrf_exempt
@require_POST
def receive_traces(request: HttpRequest) -> HttpResponse:
    """POST /v1/traces: an OTLP ExportTraceServiceRequest, protobuf or JSON.

    200 with ExportTraceServiceResponse (partial_success names rejected spans); 400 unreadable;
    401 without the token TRACING_OTLP_TOKEN asks for; 413 too large; 415 other content types;
    503 with Retry-After when the span sink is full or unreachable (the exporter retries).
    """
    content_type = request.content_type or ""
    reply_type = otlp.PROTOBUF if content_type == otlp.PROTOBUF else otlp.JSON
    token = settings.TRACING_OTLP_TOKEN
    if token and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
        return _error(401, "missing or wrong bearer token", reply_type)
    if content_type not in (otlp.PROTOBUF, otlp.JSON):
        return _error(415, f"Content-Type must be {otlp.PROTOBUF} or {otlp.JSON}, got {content_type or 'none'!r}", reply_type)
    try:
        decoded = otlp.decode(_body(request), content_type)
    except OverflowError as exc:
        return _error(413, str(exc), reply_type)
    except (ValueError, gzip.BadGzipFile) as exc:
        return _error(400, str(exc), reply_type)
    try:
        sink.push(decoded.spans)
    except sink.SinkFull as exc:
        return _error(503, str(exc), reply_type, **{"Retry-After": "5"})
    except redis.RedisError:
        return _error(503, "span sink unreachable", reply_type, **{"Retry-After": "5"})
    return HttpResponse(otlp.response_body(decoded, reply_type), status=200, content_type=reply_type)

"""What goes wrong, as HTTP answers: by the error's type, in one table, never by its message.

Every refusal has one body, `ErrorOut`: {"detail": "<a sentence saying what is wrong>"}, or for a
422 django-ninja's list of where and what. The engine's typed errors (flows.core.errors) map to
their status in STATUS, the most specific class winning (PayloadTooLarge is an EnvelopeError, yet
413). Anything else raised inside an operation is a bug, whatever its type (a ValueError too): it
is logged with its traceback and answered 500 with a reference to the log line, and no detail of
the server's insides.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import kombu.exceptions
import redis.exceptions
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import HttpError
from pydantic import Field

from flows.core.errors import (
    ConfigurationError,
    EnvelopeError,
    FlowsError,
    InvalidArgument,
    PayloadTooLarge,
    PoisonMessage,
    QueueFull,
    UnknownMessageType,
)
from flows.operate.live_tasks import LiveReportError
from flows.operate.revokes import RevokeError
from flows.operate.selectors import BadCursor

logger = logging.getLogger("console.api")

# Every operation checks its caller: no credentials is 401, too small a role 403.
CALLER_CHECKS = (401, 403)
# Back-pressure and an unreachable Redis or broker pass: the same pause the OTLP receiver asks for.
RETRY_AFTER_SECONDS = 5

UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError)

STATUS: dict[type[Exception], int] = {
    InvalidArgument: 400,  # an operator's request out of range or contradicting itself
    BadCursor: 400,
    RevokeError: 400,
    LiveReportError: 422,  # an agent's or watcher's report the ingest refuses, past the schema
    PoisonMessage: 400,  # the payload does not fit its schema (PayloadInvalid, UnknownSchemaVersion)
    EnvelopeError: 400,
    UnknownMessageType: 404,
    PayloadTooLarge: 413,
    RequestDataTooBig: 413,
    ConfigurationError: 409,  # e.g. a request-reply type published as fire-and-forget
    FlowsError: 409,  # the engine refused in the state things are in (nothing to requeue, a consumer gone)
    QueueFull: 503,
    **dict.fromkeys(UNREACHABLE, 503),
}


class ErrorOut(Schema):
    detail: str | list[dict[str, Any]] = Field(description="what is wrong: a sentence; for a 422, a list of {loc, msg, type}: where and what")


def answers(status: int, schema: Any, *errors: int) -> dict[int, Any]:
    """An operation's `response=`: its success answer, and ErrorOut for the caller checks and
    each status in `errors` that it can give."""
    return {status: schema, **dict.fromkeys(sorted({*CALLER_CHECKS, *errors}), ErrorOut)}


def status_of(exc: Exception) -> int | None:
    """The status STATUS maps `exc` to by its most specific class; None for an unmapped type."""
    return next((STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS), None)


def install(api: NinjaAPI) -> None:
    """Answer every mapped type by STATUS, ninja's own refusals with their reasons, and
    anything else as a logged 500."""

    def answer(request: HttpRequest, status: int, detail: str, **headers: str) -> HttpResponse:
        response = api.create_response(request, {"detail": detail}, status=status)
        for name, value in headers.items():
            response[name] = value
        return response

    def typed(request: HttpRequest, exc: Exception) -> HttpResponse:
        status = status_of(exc)
        if status is None:
            return unexpected(request, exc)
        if isinstance(exc, RequestDataTooBig):  # Django's message names no limit: say which
            return answer(request, status, f"request body is over the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)")
        if isinstance(exc, UNREACHABLE):  # the driver's message is about hosts and sockets
            logger.warning("API %s %s: a backing service is unreachable: %r", request.method, request.path, exc)
            return answer(request, status, "Redis or the message broker is unreachable; try again shortly", **{"Retry-After": str(RETRY_AFTER_SECONDS)})
        if status == 503:
            return answer(request, status, str(exc), **{"Retry-After": str(RETRY_AFTER_SECONDS)})
        return answer(request, status, str(exc))

    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        """Ninja's own refusals (401, 403, a body it cannot parse) and the operations' HttpErrors;
        for an unparsable body, ninja keeps the cause to itself: say it."""
        detail, cause = str(exc), exc.__cause__
        if cause is not None and detail.startswith("Cannot parse request body"):
            reason = "it nests too deeply" if isinstance(cause, RecursionError) else str(cause)
            detail = f"request body is not valid JSON: {reason}"
        return answer(request, exc.status_code, detail)

    def unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
        reference = uuid.uuid4().hex[:12]
        logger.error("API %s %s failed unexpectedly (reference %s)", request.method, request.path, reference, exc_info=exc)
        return answer(request, 500, f"internal error (reference {reference}): a fault on the server, logged there under this reference")

    for error_type in STATUS:
        api.add_exception_handler(error_type, typed)
    api.add_exception_handler(HttpError, http_error)
    api.add_exception_handler(Exception, unexpected)

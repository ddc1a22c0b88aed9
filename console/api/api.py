"""The JSON API under /api/v1/, described by OpenAPI at /api/v1/openapi.json."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError

from console.api import admin, deadletters, sagas, system, traces
from console.api.auth import AUTH, signed_in_or_token
from flows.core.errors import EnvelopeError, FlowsError, InvalidArgument, PoisonMessage, UnknownMessageType
from flows.operate.selectors import BadCursor

api = NinjaAPI(title="Flowscope", version="1", description="Dead letters, sagas, traces and flows.", auth=AUTH, docs_url=None, docs_decorator=signed_in_or_token, urls_namespace="api")
for module in (deadletters, sagas, traces, system):
    api.add_router("/", module.router)
api.add_router("/admin", admin.router)


def _error(request: HttpRequest, status: int, message: str) -> HttpResponse:
    return api.create_response(request, {"detail": message}, status=status)


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    """Ninja's own answer, but a body it cannot parse says why (it keeps the cause to itself)."""
    message, cause = str(exc), exc.__cause__
    if cause is not None and message.startswith("Cannot parse request body"):
        reason = "it nests too deeply" if isinstance(cause, RecursionError) else str(cause)
        message = f"request body is not valid JSON: {reason}"
    return _error(request, exc.status_code, message)


@api.exception_handler(RequestDataTooBig)
def body_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _error(request, 413, f"request body is over the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)")


@api.exception_handler(UnknownMessageType)
def unknown_type(request: HttpRequest, exc: UnknownMessageType) -> HttpResponse:
    return _error(request, 404, str(exc))


@api.exception_handler(PoisonMessage)  # schema problems: the payload does not fit
def invalid_payload(request: HttpRequest, exc: PoisonMessage) -> HttpResponse:
    return _error(request, 400, str(exc))


@api.exception_handler(EnvelopeError)
def bad_envelope(request: HttpRequest, exc: EnvelopeError) -> HttpResponse:
    return _error(request, 413 if "over the limit" in str(exc) else 400, str(exc))


@api.exception_handler(BadCursor)
def bad_cursor(request: HttpRequest, exc: BadCursor) -> HttpResponse:
    return _error(request, 400, str(exc))


@api.exception_handler(InvalidArgument)
def invalid_argument(request: HttpRequest, exc: InvalidArgument) -> HttpResponse:
    return _error(request, 400, str(exc))


@api.exception_handler(FlowsError)
def engine_refused(request: HttpRequest, exc: FlowsError) -> HttpResponse:
    return _error(request, 409, str(exc))


@api.exception_handler(ValueError)
def bad_value(request: HttpRequest, exc: ValueError) -> HttpResponse:
    return _error(request, 400, str(exc))

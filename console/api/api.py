"""The JSON API under /api/v1/, described by OpenAPI at /api/v1/openapi.json."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI

from console.api import admin, deadletters, sagas, system, traces
from console.api.auth import AUTH, signed_in_or_token
from flows.errors import EnvelopeError, FlowsError, PoisonMessage, UnknownMessageType
from flows.selectors import BadCursor

api = NinjaAPI(title="Flowscope", version="1", description="Dead letters, sagas, traces and flows.", auth=AUTH, docs_url=None, docs_decorator=signed_in_or_token, urls_namespace="api")
for module in (deadletters, sagas, traces, system):
    api.add_router("/", module.router)
api.add_router("/admin", admin.router)


def _error(request: HttpRequest, status: int, message: str) -> HttpResponse:
    return api.create_response(request, {"detail": message}, status=status)


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


@api.exception_handler(FlowsError)
def engine_refused(request: HttpRequest, exc: FlowsError) -> HttpResponse:
    return _error(request, 409, str(exc))


@api.exception_handler(ValueError)
def bad_value(request: HttpRequest, exc: ValueError) -> HttpResponse:
    return _error(request, 400, str(exc))

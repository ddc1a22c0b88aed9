"""API authentication: a signed-in session (with CSRF on writes) or a bearer API token."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja.errors import HttpError
from ninja.security import HttpBearer, SessionAuth

from console.models import ApiToken, Role
from console.roles import Principal, principal_for_token, principal_for_user


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Principal | None:
        row = ApiToken.active(token)  # the same lookup the OTLP receiver's agent tokens go through
        return principal_for_token(row) if row is not None else None


class SessionPrincipal(SessionAuth):
    """The session cookie, with the CSRF token checked on unsafe methods."""

    def _get_key(self, request: HttpRequest) -> str | None:
        # No session, nothing for a forged request to borrow: the caller is anonymous (401), not
        # a CSRF failure (ninja checks CSRF before it looks at the cookie).
        if not (request.user.is_authenticated and request.user.is_active):
            return None
        try:
            return super()._get_key(request)
        except HttpError:
            raise HttpError(403, "CSRF check failed: a signed-in session's writes need the X-CSRFToken header (the csrftoken cookie's value); scripts use an API token") from None

    def authenticate(self, request: HttpRequest, key: Any) -> Principal | None:
        if request.user.is_authenticated and request.user.is_active:
            return principal_for_user(request.user)
        return None


AUTH = [TokenAuth(), SessionPrincipal()]


def need(request: HttpRequest, role: str) -> Principal:
    """The caller, if its role reaches `role`; 403 naming both otherwise."""
    principal: Principal = request.auth  # type: ignore[attr-defined]
    if not principal.can(role):
        held = f"the {principal.role} role" if principal.role else "no role"
        raise HttpError(403, f"this needs the {role} role; {principal.name or 'this caller'} has {held} (an admin can change it: manage.py set_role)")
    return principal


def principal_of(request: HttpRequest) -> Principal | None:
    """The caller by session or by bearer token, outside the API's own views (metrics, the schema)."""
    if request.user.is_authenticated and request.user.is_active:
        return principal_for_user(request.user)
    header = request.headers.get("Authorization", "")
    return TokenAuth().authenticate(request, header[7:]) if header.startswith("Bearer ") else None


def signed_in_or_token(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """401 unless a session or an API token (any role) is presented: the OpenAPI description
    maps every door of the API, so it is shown to those who may use the API, not to strangers."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        principal = principal_of(request)
        if principal is None or not principal.can(Role.VIEWER):
            return JsonResponse({"detail": "authentication required: a session or 'Authorization: Bearer <token>'"}, status=401)
        return view(request, *args, **kwargs)

    return checked

"""API authentication: a signed-in session (with CSRF on writes) or a bearer API token."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils import timezone
from ninja.errors import HttpError
from ninja.security import HttpBearer, SessionAuth

from console.models import TOKEN_PREFIX, ApiToken, hash_token
from console.roles import Principal, principal_for_token, principal_for_user


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        row = ApiToken.objects.filter(token_hash=hash_token(token), revoked_at__isnull=True).first()
        if row is None:
            return None
        now = timezone.now()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)  # at most a write a minute per token
        return principal_for_token(row)


class SessionPrincipal(SessionAuth):
    """The session cookie; ninja checks the CSRF token on unsafe methods for cookie auth."""

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

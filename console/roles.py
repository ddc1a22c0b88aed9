"""Roles, checked on the server: viewer reads, operator also moves messages, admin also runs the place."""

from __future__ import annotations

import dataclasses

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from console.models import RANK, ApiToken, Role, UserRole
from tracing.otlp import Bearer, Verdict


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is asking: a signed-in user or an API token, with its role."""

    name: str
    role: str | None
    via: str  # "web" (session) or "token"
    app: str = ""  # an agent token tied to one attached app; empty: any

    def can(self, role: str) -> bool:
        return self.role is not None and RANK[Role(self.role)] >= RANK[Role(role)]


def role_of(user: AbstractBaseUser | AnonymousUser) -> str | None:
    if not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return Role.ADMIN
    try:
        return user.console_role.role  # type: ignore[union-attr]
    except UserRole.DoesNotExist:
        return Role.VIEWER  # signed in with no role given: may look, not touch


def principal_for_user(user: AbstractBaseUser | AnonymousUser) -> Principal:
    return Principal(name=user.get_username() if user.is_authenticated else "", role=role_of(user), via="web")


def principal_for_token(token: ApiToken) -> Principal:
    return Principal(name=f"token:{token.name}", role=token.role, via="token", app=token.app)


def set_role(user: AbstractBaseUser, role: str) -> None:
    UserRole.objects.update_or_create(user=user, defaults={"role": Role(role)})


def otlp_bearer(secret: str) -> Verdict:
    """The OTLP receiver's verifier (settings.TRACING_OTLP_AUTH): only agent tokens report, and
    one tied to an app only that app's spans."""
    token = ApiToken.active(secret)
    if token is None:
        return Verdict(Bearer.UNKNOWN)
    return Verdict(Bearer.REPORTER, token.app) if token.role == Role.AGENT else Verdict(Bearer.NOT_A_REPORTER)

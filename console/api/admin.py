"""Admin-only: API tokens and span retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Router, Schema
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from console.api.answers import DateTime
from console.api.auth import need
from console.api.errors import answers
from console.api.schemas import RowId
from console.audit import audit
from console.models import ApiToken, Role
from tracing.retention import prune_spans

router = Router(tags=["admin"])


class TokenIn(Schema):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    role: Role
    app: str = Field("", max_length=100, pattern=r"^[\w.:@-]*$", description="agent tokens only: the one attached app it may report and take orders for; empty: any")


class PruneIn(Schema):
    model_config = ConfigDict(extra="forbid")
    days: float = Field(ge=0, le=3650, strict=True)  # strict: `false` would be 0 days, every span deleted


class TokenOut(Schema):
    id: int
    name: str
    role: str = Field(json_schema_extra={"enum": Role.values})
    app: str = Field(description="the attached app an agent token is tied to; empty: any")
    hint: str = Field(description="the token's first characters, to recognise it by")
    created_by: str
    created_at: DateTime
    last_used_at: DateTime | None
    revoked: bool


class TokenCreated(TokenOut):
    token: str = Field(description="the secret: in this answer only; afterwards only its hash exists")


class Pruned(Schema):
    spans: int
    links: int
    edge_stats: int
    edge_hours: int = Field(0, description="the flow graph's hourly sums")
    trace_summaries: int = 0
    span_days_dropped: int = Field(0, description="PostgreSQL: whole day partitions of spans dropped; their rows are not counted in spans")
    link_days_dropped: int = Field(0, description="PostgreSQL: whole day partitions of links dropped; their rows are not counted in links")


def _token(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.pk,
        "name": t.name,
        "role": t.role,
        "app": t.app,
        "hint": t.hint,
        "created_by": t.created_by,
        "created_at": t.created_at.isoformat(),
        "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
        "revoked": t.revoked_at is not None,
    }


@router.get("/tokens", response=answers(200, list[TokenOut]))
def list_tokens(request: HttpRequest) -> list[dict[str, Any]]:
    need(request, Role.ADMIN)
    return [_token(t) for t in ApiToken.objects.order_by("-created_at")]


@router.post("/tokens", response=answers(200, TokenCreated, 400, 413, 422))
def create_token(request: HttpRequest, body: TokenIn) -> dict[str, Any]:
    """The token itself is in this answer only; afterwards only its hash exists."""
    principal = need(request, Role.ADMIN)
    with transaction.atomic():
        try:
            token, secret = ApiToken.issue(name=body.name, role=body.role.value, app=body.app, created_by=principal.name)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        audit(principal, "create_token", object_type="api_token", object_ids=[token.pk], after={"name": token.name, "role": token.role, "app": token.app})
    return {**_token(token), "token": secret}


@router.post("/tokens/{token_id}/revoke", response=answers(200, TokenOut, 404, 409, 422))
def revoke_token(request: HttpRequest, token_id: RowId) -> dict[str, Any]:
    principal = need(request, Role.ADMIN)
    token = get_object_or_404(ApiToken, pk=token_id)
    with transaction.atomic():
        if not ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
            raise HttpError(409, f"token {token.pk} is already revoked")
        audit(principal, "revoke_token", object_type="api_token", object_ids=[token.pk])
    return _token(ApiToken.objects.get(pk=token.pk))


@router.post("/retention/prune", response=answers(200, Pruned, 400, 413, 422))
def prune(request: HttpRequest, body: PruneIn) -> dict[str, int]:
    """Delete spans older than `days` now (the hourly task applies TRACING_RETENTION_DAYS)."""
    principal = need(request, Role.ADMIN)
    deleted = prune_spans(older_than=timedelta(days=body.days))
    audit(principal, "prune_spans", object_type="spans", after={**deleted, "older_than_days": body.days})
    return deleted

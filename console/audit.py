"""Writing the audit log: every operator action, in the same transaction as the action."""

from __future__ import annotations

from typing import Any

from console.models import AuditEntry
from console.roles import Principal


def audit(
    principal: Principal | str,
    action: str,
    *,
    object_type: str = "",
    object_ids: list[Any] | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    detail: str = "",
    via: str = "",
) -> AuditEntry:
    name, channel = (principal.name, principal.via) if isinstance(principal, Principal) else (principal, via or "command")
    return AuditEntry.objects.create(
        actor=name[:150], via=via or channel, action=action, object_type=object_type, object_ids=list(object_ids or []), before=before or {}, after=after or {}, detail=detail
    )

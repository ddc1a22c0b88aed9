"""Revoke orders for attached apps' tasks: written by an operator, carried out by the app's agent.

The console holds no broker credentials of an attached app, so it cannot send Celery's revoke
broadcast itself. It writes a RevokeOrder; the app's agent (its worker's main process, beside
the requeue orders) leases the pending ones, calls `app.control.revoke(task_id,
terminate=..., signal=...)` on the app's own broker and acknowledges them. As with requeue
orders, one leased and never acknowledged is offered again once its lease runs out: a revoke is
idempotent on the workers' side, so sending it twice is harmless.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from flows.models import RevokeOrder
from flows.operate.leases import lease_pending

LEASE_SECONDS = 60.0
# The signals an operator may send a task's pool process with terminate (Celery takes a name
# and looks it up on the worker's platform). SIGKILL cannot be caught: the task gets no say.
SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGABRT")


class RevokeError(ValueError):
    """A revoke that cannot be ordered; the message says why."""


def signal_name(value: str) -> str:
    """ "term", "TERM" or "SIGTERM" as "SIGTERM"; RevokeError for a name not in SIGNALS."""
    name = value.strip().upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if name not in SIGNALS:
        raise RevokeError(f"signal {value!r} is not one of {', '.join(SIGNALS)}")
    return name


def revoke_order(*, app: str, task_id: str, terminate: bool, signal: str | None, actor: str) -> RevokeOrder:
    """The order for one task; `signal` only with `terminate` (the pool process gets it; SIGTERM when left out)."""
    if signal and not terminate:
        raise RevokeError("a signal is sent only to terminate a running task: give terminate: true, or leave signal out")
    name = signal_name(signal) if signal else ("SIGTERM" if terminate else "")
    return RevokeOrder.objects.create(app=app, task_id=task_id, terminate=terminate, signal=name, requested_by=actor[:150])


def revokes_lease(*, app: str, limit: int = 50, lease_seconds: float = LEASE_SECONDS) -> list[dict[str, Any]]:
    """Lease `app`'s pending revoke orders to the calling agent, each to one agent at a time."""
    return [{"id": o.pk, "task_id": o.task_id, "terminate": o.terminate, "signal": o.signal or None} for o in lease_pending(RevokeOrder, app=app, limit=limit, lease_seconds=lease_seconds)]


def revokes_ack(*, app: str, ids: list[int]) -> int:
    """The agent sent these revokes: they are not offered again. Returns how many were pending."""
    return RevokeOrder.objects.filter(app=app, pk__in=ids, sent_at__isnull=True).update(sent_at=timezone.now())

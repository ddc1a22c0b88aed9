"""Silences in force: which rules and failure groups are muted now, by whom, until when, why."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.utils import timezone

from console.alerts.models import Silence


def active_silences() -> list[Silence]:
    return list(Silence.objects.filter(until__gt=timezone.now()).select_related("rule").order_by("until", "id"))


def silenced_rule_ids(now: datetime | None = None) -> set[int]:
    return set(Silence.objects.filter(until__gt=now or timezone.now(), rule__isnull=False).values_list("rule_id", flat=True))


def silenced_fingerprints(now: datetime | None = None) -> set[str]:
    return set(Silence.objects.filter(until__gt=now or timezone.now()).exclude(fingerprint="").values_list("fingerprint", flat=True))


def group_silences(fingerprints: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The silence in force on each of these failure groups (the one that lasts longest), as
    {fingerprint: {"until", "by", "why", "text"}}; a group without one is absent."""
    wanted = {f for f in fingerprints if f}
    found: dict[str, dict[str, Any]] = {}
    if not wanted:
        return found
    for silence in Silence.objects.filter(fingerprint__in=wanted, until__gt=timezone.now()).order_by("until"):
        found[silence.fingerprint] = {
            "until": silence.until.isoformat(),
            "by": silence.created_by,
            "why": silence.reason,
            "text": f"muted until {silence.until:%Y-%m-%d %H:%M} UTC by {silence.created_by} ({silence.reason})",
        }
    return found

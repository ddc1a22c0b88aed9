"""Rules, channels, alerts, deliveries and silences as the API and the Alerts page show them.
A channel's secret is never among them: only whether one is set."""

from __future__ import annotations

from typing import Any

from console.alerts.models import Alert, AlertRule, AlertState, Channel, Delivery, Silence


def _at(value: Any) -> str | None:
    return value.isoformat() if value else None


def rule_out(rule: AlertRule, *, firing: int = 0, silence: Silence | None = None) -> dict[str, Any]:
    return {
        "id": rule.pk,
        "name": rule.name,
        "kind": rule.kind,
        "scope": rule.scope,
        "scope_value": rule.scope_value,
        "threshold": rule.threshold,
        "window_seconds": rule.window_seconds,
        "for_seconds": rule.for_seconds,
        "clear_seconds": rule.clear_seconds,
        "enabled": rule.enabled,
        "channels": sorted(c.pk for c in rule.channels.all()),
        "created_by": rule.created_by,
        "created_at": _at(rule.created_at),
        "evaluated_at": _at(rule.evaluated_at),
        "state": "firing" if firing else ("disabled" if not rule.enabled else "ok"),
        "firing": firing,
        "silence": silence_out(silence) if silence else None,
    }


def channel_out(channel: Channel) -> dict[str, Any]:
    return {
        "id": channel.pk,
        "name": channel.name,
        "kind": channel.kind,
        "url": channel.url,
        "slack": channel.slack,
        "emails": list(channel.emails),
        "enabled": channel.enabled,
        "secret_set": bool(channel.secret),
        "created_by": channel.created_by,
        "created_at": _at(channel.created_at),
    }


def delivery_out(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.pk,
        "alert_id": delivery.alert_id,
        "channel_id": delivery.channel_id,
        "channel": delivery.channel.name,
        "kind": delivery.kind,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_error": delivery.last_error,
        "created_at": _at(delivery.created_at),
        "sent_at": _at(delivery.sent_at),
    }


def alert_out(alert: Alert, *, deliveries: list[Delivery] | None = None) -> dict[str, Any]:
    out = {
        "id": alert.pk,
        "rule_id": alert.rule_id,
        "rule": alert.rule.name,
        "kind": alert.rule.kind,
        "subject": alert.subject,
        "state": alert.state,
        "started_at": _at(alert.started_at),
        "resolved_at": _at(alert.resolved_at),
        "summary": alert.summary,
        "observed": alert.observed,
        "last_observed": alert.last_observed if alert.state == AlertState.FIRING else {},
        "muted": alert.muted,
    }
    if deliveries is not None:
        out["deliveries"] = [delivery_out(d) for d in deliveries]
    return out


def silence_out(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.pk,
        "rule_id": silence.rule_id,
        "fingerprint": silence.fingerprint,
        "until": _at(silence.until),
        "created_by": silence.created_by,
        "reason": silence.reason,
        "created_at": _at(silence.created_at),
    }

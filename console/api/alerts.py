"""Alerts: rules, channels (their secrets write-only), silences, the alert history and each
alert's deliveries, and a test notice per channel. Viewers read; operators and admins write,
every write audited (a channel's secret only as "set" or "cleared")."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Query, Router, Schema
from ninja.errors import HttpError
from pydantic import AfterValidator, ConfigDict, Field, field_validator

from console.alerts.models import Alert, AlertRule, AlertState, Channel, ChannelKind, Delivery, RuleKind, Scope, Silence
from console.alerts.notify import send_test
from console.alerts.presenters import alert_out, channel_out, delivery_out, rule_out, silence_out
from console.api.answers import DateTime
from console.api.auth import need
from console.api.errors import answers
from console.api.schemas import BodyRowId, RowId, _without_nul
from console.audit import audit
from console.models import Role

router = Router(tags=["alerts"])

Text = Annotated[str, AfterValidator(_without_nul)]
MAX_SILENCE = timedelta(days=365)
MAX_WINDOW = 7 * 24 * 3600


class RuleIn(Schema):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=100, pattern=r"\S")
    kind: RuleKind
    scope: Scope = Scope.ALL
    scope_value: Text = Field("", max_length=200, description="the app, queue, handler, message type or saga type the scope names; empty with scope all")
    threshold: float = Field(0, ge=0, le=1e9, strict=True, description="by kind: dead letters, rate factor, %, ms, depth, seconds or spans waiting")
    window_seconds: int = Field(300, ge=1, le=MAX_WINDOW, strict=True)
    for_seconds: int = Field(0, ge=0, le=MAX_WINDOW, strict=True)
    clear_seconds: int = Field(60, ge=0, le=MAX_WINDOW, strict=True)
    enabled: bool = Field(True, strict=True)
    channels: list[BodyRowId] = Field(default_factory=list, max_length=50, description="channel ids; empty: every enabled channel")


class ChannelIn(Schema):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=100, pattern=r"\S")
    kind: ChannelKind
    url: Text = Field("", max_length=500, description="webhooks: the http(s) URL notices are POSTed to")
    secret: Text | None = Field(None, max_length=200, description="webhooks: the HMAC-SHA256 key; write-only. Left out on an update: kept; empty: cleared")
    slack: bool = Field(False, strict=True, description="webhooks: a Slack-compatible body")
    emails: list[Text] = Field(default_factory=list, max_length=20, description="e-mail channels: the addresses")
    enabled: bool = Field(True, strict=True)

    @field_validator("url")
    @classmethod
    def http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("an http:// or https:// URL")
        return value

    @field_validator("emails")
    @classmethod
    def addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                validate_email(address)
            except ValidationError:
                raise ValueError(f"{address[:100]!r} is not an e-mail address") from None
        return value


class SilenceIn(Schema):
    model_config = ConfigDict(extra="forbid")
    rule_id: BodyRowId | None = Field(None, description="mute this rule; or give a fingerprint")
    fingerprint: str = Field("", max_length=40, pattern=r"^[0-9A-Za-z_.:-]*$", description="mute this failure group")
    until: datetime
    reason: Text = Field(min_length=1, max_length=500, pattern=r"\S", description="why: shown wherever the silence is")

    @field_validator("until", mode="before")
    @classmethod
    def iso_8601_only(cls, value: Any) -> Any:
        if isinstance(value, int | float) or (isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()):
            raise ValueError("give an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z, not a number")
        return value

    @field_validator("until")
    @classmethod
    def in_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-01-31T12:00:00Z")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("date-time out of range once converted to UTC") from None


class RuleOut(Schema):
    id: int
    name: str
    kind: str = Field(json_schema_extra={"enum": RuleKind.values})
    scope: str = Field(json_schema_extra={"enum": Scope.values})
    scope_value: str
    threshold: float
    window_seconds: int
    for_seconds: int
    clear_seconds: int
    enabled: bool
    channels: list[int]
    created_by: str
    created_at: DateTime
    evaluated_at: DateTime | None
    state: str = Field(json_schema_extra={"enum": ["ok", "firing", "disabled"]})
    firing: int = Field(description="its alerts firing now")
    silence: SilenceOut | None = None


class SilenceOut(Schema):
    id: int
    rule_id: int | None
    fingerprint: str
    until: DateTime
    created_by: str
    reason: str
    created_at: DateTime


RuleOut.model_rebuild()


class ChannelOut(Schema):
    id: int
    name: str
    kind: str = Field(json_schema_extra={"enum": ChannelKind.values})
    url: str
    slack: bool
    emails: list[str]
    enabled: bool
    secret_set: bool = Field(description="whether a signing secret is set; the secret itself is never shown again")
    created_by: str
    created_at: DateTime


class DeliveryOut(Schema):
    id: int
    alert_id: int | None
    channel_id: int
    channel: str
    kind: str = Field(json_schema_extra={"enum": ["fired", "resolved", "test"]})
    state: str = Field(json_schema_extra={"enum": ["pending", "sent", "failed", "muted"]})
    attempts: int
    last_error: str
    created_at: DateTime
    sent_at: DateTime | None


class AlertOut(Schema):
    id: int
    rule_id: int
    rule: str
    kind: str
    subject: str = Field(description="a failure group's fingerprint, a queue, a handler edge, or empty")
    state: str = Field(json_schema_extra={"enum": AlertState.values})
    started_at: DateTime
    resolved_at: DateTime | None
    summary: str
    observed: dict[str, Any] = Field(description="what the rule saw when it fired")
    last_observed: dict[str, Any] = Field(description="while firing: what it saw last")
    muted: bool


class AlertDetail(AlertOut):
    deliveries: list[DeliveryOut]


class AlertPage(Schema):
    items: list[AlertOut]
    next_cursor: str


class Deleted(Schema):
    deleted: bool


def _clean_rule(body: RuleIn) -> list[Channel]:
    """The checks across fields: 422 naming the field."""
    if body.scope == Scope.ALL and body.scope_value:
        raise HttpError(422, "scope_value: must be empty when scope is all")
    if body.scope != Scope.ALL and not body.scope_value:
        raise HttpError(422, f"scope_value: name the {body.scope.value} the rule watches")
    if body.kind == RuleKind.ERROR_RATE and body.threshold > 100:
        raise HttpError(422, "threshold: an error rate is a percentage, at most 100")
    if body.kind in (RuleKind.ERROR_RATE, RuleKind.P95_LATENCY, RuleKind.DEAD_LETTERS) and body.threshold <= 0:
        raise HttpError(422, f"threshold: a {body.kind.value} rule needs a threshold above 0")
    channels = list(Channel.objects.filter(pk__in=body.channels))
    missing = sorted(set(body.channels) - {c.pk for c in channels})
    if missing:
        raise HttpError(422, f"channels: no channel {missing}")
    return channels


def _rule_fields(body: RuleIn) -> dict[str, Any]:
    fields = body.model_dump(exclude={"channels"})
    return {**fields, "kind": body.kind.value, "scope": body.scope.value}


def _rule_answer(rule: AlertRule) -> dict[str, Any]:
    firing = rule.alerts.filter(state=AlertState.FIRING).count()
    silence = Silence.objects.filter(rule=rule, until__gt=timezone.now()).order_by("-until").first()
    return rule_out(rule, firing=firing, silence=silence)


@router.get("/alerts/rules", response=answers(200, list[RuleOut]))
def list_rules(request: HttpRequest) -> list[dict[str, Any]]:
    """Every rule with its state now: ok, firing (how many of its alerts) or disabled, and its silence."""
    need(request, Role.VIEWER)
    now = timezone.now()
    firing = dict(Alert.objects.filter(state=AlertState.FIRING).values_list("rule_id").annotate(n=Count("id")).order_by())
    silences = {s.rule_id: s for s in Silence.objects.filter(rule__isnull=False, until__gt=now).order_by("until")}
    return [rule_out(r, firing=firing.get(r.pk, 0), silence=silences.get(r.pk)) for r in AlertRule.objects.prefetch_related("channels").order_by("name", "id")]


@router.post("/alerts/rules", response=answers(200, RuleOut, 400, 413, 422))
def create_rule(request: HttpRequest, body: RuleIn) -> dict[str, Any]:
    """200 with the rule; 422 naming the field that is wrong."""
    principal = need(request, Role.OPERATOR)
    channels = _clean_rule(body)
    with transaction.atomic():
        rule = AlertRule.objects.create(**_rule_fields(body), created_by=principal.name)
        rule.channels.set(channels)
        audit(principal, "create_alert_rule", object_type="alert_rule", object_ids=[rule.pk], after=body.model_dump(mode="json"))
    return _rule_answer(rule)


@router.get("/alerts/rules/{rule_id}", response=answers(200, RuleOut, 404, 422))
def get_rule(request: HttpRequest, rule_id: RowId) -> dict[str, Any]:
    need(request, Role.VIEWER)
    return _rule_answer(get_object_or_404(AlertRule, pk=rule_id))


@router.put("/alerts/rules/{rule_id}", response=answers(200, RuleOut, 400, 404, 413, 422))
def update_rule(request: HttpRequest, rule_id: RowId, body: RuleIn) -> dict[str, Any]:
    """Replace the rule's settings. What the evaluator remembered starts over; alerts firing
    resolve once their condition has been clear for the (new) clear time."""
    principal = need(request, Role.OPERATOR)
    channels = _clean_rule(body)
    with transaction.atomic():
        rule = get_object_or_404(AlertRule.objects.select_for_update(), pk=rule_id)
        before = rule_out(rule)
        for field, value in _rule_fields(body).items():
            setattr(rule, field, value)
        rule.memory = {}
        rule.save()
        rule.channels.set(channels)
        audit(principal, "update_alert_rule", object_type="alert_rule", object_ids=[rule.pk], before={k: before[k] for k in body.model_dump()}, after=body.model_dump(mode="json"))
    return _rule_answer(rule)


@router.delete("/alerts/rules/{rule_id}", response=answers(200, Deleted, 404, 422))
def delete_rule(request: HttpRequest, rule_id: RowId) -> dict[str, bool]:
    """The rule goes, and its alert history with it."""
    principal = need(request, Role.OPERATOR)
    with transaction.atomic():
        rule = get_object_or_404(AlertRule, pk=rule_id)
        before = rule_out(rule)
        rule.delete()
        audit(principal, "delete_alert_rule", object_type="alert_rule", object_ids=[rule_id], before=before)
    return {"deleted": True}


def _clean_channel(body: ChannelIn) -> None:
    if body.kind == ChannelKind.WEBHOOK and not body.url:
        raise HttpError(422, "url: a webhook channel needs the URL to POST to")
    if body.kind == ChannelKind.EMAIL and not body.emails:
        raise HttpError(422, "emails: an e-mail channel needs at least one address")
    if body.kind == ChannelKind.EMAIL and (body.url or body.secret or body.slack):
        raise HttpError(422, "url: an e-mail channel has no url, secret or slack body")


def _channel_audit(body: ChannelIn) -> dict[str, Any]:
    """What the audit log keeps of a channel's settings: never the secret, only what became of it."""
    kept = body.model_dump(mode="json", exclude={"secret"})
    kept["secret"] = "unchanged" if body.secret is None else ("set" if body.secret else "cleared")
    return kept


@router.get("/alerts/channels", response=answers(200, list[ChannelOut]))
def list_channels(request: HttpRequest) -> list[dict[str, Any]]:
    """Channels; a secret shows only as `secret_set`."""
    need(request, Role.VIEWER)
    return [channel_out(c) for c in Channel.objects.order_by("name", "id")]


@router.post("/alerts/channels", response=answers(200, ChannelOut, 400, 413, 422))
def create_channel(request: HttpRequest, body: ChannelIn) -> dict[str, Any]:
    """The secret is taken here and never shown again: the answer says `secret_set: true`."""
    principal = need(request, Role.OPERATOR)
    _clean_channel(body)
    with transaction.atomic():
        channel = Channel.objects.create(**body.model_dump(exclude={"secret", "kind"}), kind=body.kind.value, secret=body.secret or "", created_by=principal.name)
        audit(principal, "create_alert_channel", object_type="alert_channel", object_ids=[channel.pk], after=_channel_audit(body))
    return channel_out(channel)


@router.put("/alerts/channels/{channel_id}", response=answers(200, ChannelOut, 400, 404, 413, 422))
def update_channel(request: HttpRequest, channel_id: RowId, body: ChannelIn) -> dict[str, Any]:
    """Replace the channel's settings; a `secret` left out keeps the one set, "" clears it."""
    principal = need(request, Role.OPERATOR)
    _clean_channel(body)
    with transaction.atomic():
        channel = get_object_or_404(Channel.objects.select_for_update(), pk=channel_id)
        before = channel_out(channel)
        for field, value in body.model_dump(exclude={"secret", "kind"}).items():
            setattr(channel, field, value)
        channel.kind = body.kind.value
        if body.secret is not None:
            channel.secret = body.secret
        channel.save()
        audit(principal, "update_alert_channel", object_type="alert_channel", object_ids=[channel.pk], before=before, after=_channel_audit(body))
    return channel_out(channel)


@router.delete("/alerts/channels/{channel_id}", response=answers(200, Deleted, 404, 422))
def delete_channel(request: HttpRequest, channel_id: RowId) -> dict[str, bool]:
    principal = need(request, Role.OPERATOR)
    with transaction.atomic():
        channel = get_object_or_404(Channel, pk=channel_id)
        before = channel_out(channel)
        channel.delete()
        audit(principal, "delete_alert_channel", object_type="alert_channel", object_ids=[channel_id], before=before)
    return {"deleted": True}


@router.post("/alerts/channels/{channel_id}/test", response=answers(200, DeliveryOut, 404, 422))
def test_channel(request: HttpRequest, channel_id: RowId) -> dict[str, Any]:
    """Send a test notice through the channel now: 200 with its delivery, pending; poll
    /alerts/deliveries?channel= for whether it was sent or why it failed."""
    principal = need(request, Role.OPERATOR)
    channel = get_object_or_404(Channel, pk=channel_id)
    with transaction.atomic():
        delivery = send_test(channel)
        audit(principal, "test_alert_channel", object_type="alert_channel", object_ids=[channel.pk], after={"delivery": delivery.pk})
    return delivery_out(delivery)


@router.get("/alerts/deliveries", response=answers(200, list[DeliveryOut], 422))
def list_deliveries(request: HttpRequest, channel: RowId | None = None, alert: RowId | None = None, limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    """The delivery log, newest first: every notice and test, sent, failed (why) or muted."""
    need(request, Role.VIEWER)
    rows = Delivery.objects.select_related("channel").order_by("-id")
    if channel is not None:
        rows = rows.filter(channel_id=channel)
    if alert is not None:
        rows = rows.filter(alert_id=alert)
    return [delivery_out(d) for d in rows[:limit]]


@router.get("/alerts/silences", response=answers(200, list[SilenceOut]))
def list_silences(request: HttpRequest) -> list[dict[str, Any]]:
    """Silences in force now."""
    need(request, Role.VIEWER)
    return [silence_out(s) for s in Silence.objects.filter(until__gt=timezone.now()).order_by("until", "id")]


@router.post("/alerts/silences", response=answers(200, SilenceOut, 400, 404, 413, 422))
def create_silence(request: HttpRequest, body: SilenceIn) -> dict[str, Any]:
    """Mute a rule (`rule_id`) or a failure group (`fingerprint`) until a time, saying why.
    Its alerts are still recorded, and their notices too, as muted: none is sent."""
    principal = need(request, Role.OPERATOR)
    if (body.rule_id is None) == (not body.fingerprint):
        raise HttpError(422, "rule_id: give a rule_id or a fingerprint, one of them")
    now = timezone.now()
    if body.until <= now:
        raise HttpError(422, "until: must be in the future")
    if body.until > now + MAX_SILENCE:
        raise HttpError(422, "until: at most a year from now")
    rule = get_object_or_404(AlertRule, pk=body.rule_id) if body.rule_id is not None else None
    with transaction.atomic():
        silence = Silence.objects.create(rule=rule, fingerprint=body.fingerprint, until=body.until, reason=body.reason, created_by=principal.name)
        audit(principal, "create_silence", object_type="silence", object_ids=[silence.pk], after=silence_out(silence))
    return silence_out(silence)


@router.delete("/alerts/silences/{silence_id}", response=answers(200, Deleted, 404, 422))
def delete_silence(request: HttpRequest, silence_id: RowId) -> dict[str, bool]:
    """End a silence now."""
    principal = need(request, Role.OPERATOR)
    with transaction.atomic():
        silence = get_object_or_404(Silence, pk=silence_id)
        before = silence_out(silence)
        silence.delete()
        audit(principal, "delete_silence", object_type="silence", object_ids=[silence_id], before=before)
    return {"deleted": True}


def _cursor(alert_id: int) -> str:
    return base64.urlsafe_b64encode(f"alert|{alert_id}".encode()).decode()


def _after(cursor: str) -> int:
    try:
        kind, value = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        if kind != "alert":
            raise ValueError(kind)
        return int(value)
    except ValueError:
        raise HttpError(400, f"cursor {cursor[:100]!r} is not one this API gave out") from None


@router.get("/alerts/history", response=answers(200, AlertPage, 400, 422))
def alert_history(request: HttpRequest, rule: RowId | None = None, state: Literal["firing", "resolved"] | None = None, cursor: Text = "", limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """When each alert fired and resolved and what it saw, newest first; keyset pages
    (`next_cursor`), filtered by rule and state."""
    need(request, Role.VIEWER)
    rows = Alert.objects.select_related("rule").order_by("-id")
    if rule is not None:
        rows = rows.filter(rule_id=rule)
    if state:
        rows = rows.filter(state=state)
    if cursor:
        rows = rows.filter(id__lt=_after(cursor))
    page = list(rows[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {"items": [alert_out(a) for a in page], "next_cursor": _cursor(page[-1].pk) if more and page else ""}


@router.get("/alerts/history/{alert_id}", response=answers(200, AlertDetail, 404, 422))
def get_alert(request: HttpRequest, alert_id: RowId) -> dict[str, Any]:
    """One alert with the notices that went out for it (or were muted)."""
    need(request, Role.VIEWER)
    alert = get_object_or_404(Alert.objects.select_related("rule"), pk=alert_id)
    return alert_out(alert, deliveries=list(alert.deliveries.select_related("channel").order_by("id")))

"""Alert rules, notification channels, alerts (one firing each), deliveries and silences.

A rule's `memory` is the evaluator's: which of its subjects hold (since when) and which are
clearing (since when), so hysteresis survives a worker's restart and any beat node may evaluate.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class RuleKind(models.TextChoices):
    DEAD_LETTERS = "dead_letters", "new dead letters: at least `threshold` in the window"
    FAILURE_GROUP = "failure_group", "a failure group new in the window, or its rate `threshold` times the window before"
    ERROR_RATE = "error_rate", "a handler's error rate over `threshold` % in the window"
    P95_LATENCY = "p95_latency", "a handler's p95 latency over `threshold` ms in the window"
    QUEUE_DEPTH = "queue_depth", "a queue's depth at or above its high watermark (or `threshold` when set)"
    SAGA_STUCK = "saga_stuck", "a running or compensating saga unchanged for `threshold` seconds"
    NO_CONSUMER = "no_consumer", "no worker consuming a queue"
    SPANS = "spans", "spans dropped in the window, or over `threshold` spans waiting for the collector"


class Scope(models.TextChoices):
    ALL = "all"
    APP = "app"  # an attached app; "(flowscope)" for Flowscope's own flows
    QUEUE = "queue"
    HANDLER = "handler"  # a consumer's name
    MESSAGE_TYPE = "message_type"
    FLOW = "flow"  # a saga type: the flow of steps a saga runs


class AlertRule(models.Model):
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=RuleKind.choices)
    scope = models.CharField(max_length=20, choices=Scope.choices, default=Scope.ALL)
    scope_value = models.CharField(max_length=200, blank=True, help_text="the app, queue, handler, message type or saga type; empty for all")
    threshold = models.FloatField(default=0)
    window_seconds = models.PositiveIntegerField(default=300)
    for_seconds = models.PositiveIntegerField(default=0, help_text="the condition must hold this long before the rule fires")
    clear_seconds = models.PositiveIntegerField(default=60, help_text="clear this long before a firing rule resolves: a flapping value notifies once")
    enabled = models.BooleanField(default=True)
    channels = models.ManyToManyField("console.Channel", blank=True, related_name="rules", help_text="none chosen: every enabled channel")
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    memory = models.JSONField(default=dict, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True, help_text="the evaluator holding the rule, until then")


class ChannelKind(models.TextChoices):
    WEBHOOK = "webhook"
    EMAIL = "email"


class Channel(models.Model):
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    url = models.URLField(max_length=500, blank=True)
    secret = models.CharField(max_length=200, blank=True, help_text="HMAC-SHA256 key of the webhook's signature: write-only, never shown again")
    slack = models.BooleanField(default=False, help_text="a Slack-compatible body ({'text': ...}) instead of the JSON alert")
    emails = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)


class AlertState(models.TextChoices):
    FIRING = "firing"
    RESOLVED = "resolved"


class Alert(models.Model):
    """One firing of a rule for one subject (a failure group's fingerprint, a queue, or "")."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    subject = models.CharField(max_length=300, blank=True)
    state = models.CharField(max_length=10, choices=AlertState.choices, default=AlertState.FIRING)
    started_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    observed = models.JSONField(default=dict, help_text="what the rule saw when it fired")
    last_observed = models.JSONField(default=dict, help_text="what it saw last while firing")
    summary = models.CharField(max_length=500)
    muted = models.BooleanField(default=False, help_text="a silence covered it when it fired: recorded, not sent")

    class Meta:
        indexes = [models.Index(fields=["rule", "state"], name="alert_rule_state"), models.Index(fields=["-id"], name="alert_recent")]


class DeliveryKind(models.TextChoices):
    FIRED = "fired"
    RESOLVED = "resolved"
    TEST = "test"


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    MUTED = "muted"  # a silence covered it: recorded, never sent


class Delivery(models.Model):
    alert = models.ForeignKey(Alert, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="deliveries")
    kind = models.CharField(max_length=10, choices=DeliveryKind.choices)
    state = models.CharField(max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["channel", "-id"], name="delivery_channel_recent")]


class Silence(models.Model):
    """Mutes a rule, or a failure group (by fingerprint), until a time."""

    rule = models.ForeignKey(AlertRule, null=True, blank=True, on_delete=models.CASCADE, related_name="silences")
    fingerprint = models.CharField(max_length=40, blank=True)
    until = models.DateTimeField()
    created_by = models.CharField(max_length=150)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["fingerprint", "until"], name="silence_group_until")]

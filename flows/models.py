"""The engine's durable state: dead letters, the idempotency inbox, sagas and late replies.

Per-hop records are spans (the tracing app), written in batches off the hot path; these rows
are the writes that must not be lost.
"""

from __future__ import annotations

import uuid

from django.db import models


class DeadLetter(models.Model):
    class State(models.TextChoices):
        DEAD = "dead"
        REQUEUED = "requeued"
        RESOLVED = "resolved"
        DISCARDED = "discarded"

    message_id = models.UUIDField()
    message_type = models.CharField(max_length=200)
    schema_version = models.PositiveIntegerField(default=1)
    correlation_id = models.CharField(max_length=128, blank=True)
    causation_id = models.CharField(max_length=128, blank=True)
    queue = models.CharField(max_length=200)
    consumer = models.CharField(max_length=200)
    pattern = models.CharField(max_length=50, blank=True)
    envelope = models.JSONField(help_text="the original envelope, as first published")

    error_type = models.CharField(max_length=300)
    error_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    fingerprint = models.CharField(max_length=40, help_text="exception type plus the handler's top frames")
    poison = models.BooleanField(default=False, help_text="dead-lettered at once: it could never succeed as sent")
    attempts = models.PositiveIntegerField()

    state = models.CharField(max_length=12, choices=State.choices, default=State.DEAD)
    series = models.PositiveIntegerField(default=0, help_text="how many times it was requeued")
    times_dead = models.PositiveIntegerField(default=1)
    first_dead_at = models.DateTimeField()
    dead_at = models.DateTimeField()
    requeued_at = models.DateTimeField(null=True, blank=True)
    requeued_by = models.CharField(max_length=150, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    discarded_at = models.DateTimeField(null=True, blank=True)
    discarded_by = models.CharField(max_length=150, blank=True)
    discard_reason = models.TextField(blank=True)

    saga = models.ForeignKey("SagaInstance", null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_letters")
    saga_step = models.PositiveIntegerField(null=True, blank=True)
    trace_id = models.CharField(max_length=32, blank=True, help_text="the trace the message died in")
    requeue_trace_id = models.CharField(max_length=32, blank=True, help_text="the trace of its latest requeue")
    app = models.CharField(max_length=100, blank=True, default="", help_text="the attached Celery app it died in; empty for Flowscope's own flows")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["consumer", "message_id"], name="deadletter_once_per_consumer")]
        indexes = [
            models.Index(fields=["dead_at", "id"], name="deadletter_recent"),
            models.Index(fields=["state", "dead_at", "id"], name="deadletter_state_recent"),
            models.Index(fields=["fingerprint", "dead_at"], name="deadletter_group_recent"),
            models.Index(fields=["message_type", "dead_at"], name="deadletter_type_recent"),
            models.Index(fields=["queue", "dead_at"], name="deadletter_queue_recent"),
            models.Index(fields=["consumer", "dead_at"], name="deadletter_consumer_recent"),
            models.Index(fields=["correlation_id"], name="deadletter_correlation"),
            models.Index(fields=["message_id"], name="deadletter_message"),
            models.Index(fields=["trace_id"], name="deadletter_trace"),
            models.Index(fields=["requeue_trace_id"], name="deadletter_requeue_trace"),
        ]

    def __str__(self) -> str:
        return f"{self.message_type} {self.message_id} at {self.consumer} ({self.state})"


class AttachedRequeue(models.Model):
    """A requeue order for an attached app: the call its agent sends on the app's own broker.

    Written in the transaction that claims the dead letter, so a claim never commits without its
    order; an agent leases pending orders (`lease`, `leased_until`) and acknowledges each once
    sent (`sent_at`). A lease that runs out unacknowledged offers the order again."""

    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="attached_requeues")
    app = models.CharField(max_length=100)
    series = models.PositiveIntegerField()
    call = models.JSONField(help_text="task, args, kwargs, routing and the requeue's trace context")
    created_at = models.DateTimeField(auto_now_add=True)
    lease = models.CharField(max_length=32, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["dead_letter", "series"], name="attachedrequeue_once_per_series")]
        indexes = [models.Index(fields=["app", "sent_at", "id"], name="attachedrequeue_pending")]


class InboxEntry(models.Model):
    """One row per (consumer, message) an idempotent handler has applied, written in its transaction."""

    consumer = models.CharField(max_length=200)
    message_id = models.UUIDField()
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["consumer", "message_id"], name="inbox_once_per_consumer")]
        indexes = [models.Index(fields=["processed_at"], name="inbox_age")]


class SagaInstance(models.Model):
    class State(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        COMPENSATING = "compensating"
        COMPENSATED = "compensated"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    saga_type = models.CharField(max_length=200)
    state = models.CharField(max_length=12, choices=State.choices, default=State.RUNNING)
    current_step = models.IntegerField(default=0, help_text="the step running, or being compensated")
    failed_step = models.IntegerField(null=True, blank=True)
    data = models.JSONField(default=dict)
    correlation_id = models.CharField(max_length=128)
    headers = models.JSONField(default=dict, help_text="trace context carried to every step")
    error = models.TextField(blank=True)
    resumed = models.PositiveIntegerField(default=0, help_text="times the sweeper republished a stalled step")
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "updated_at"], name="saga_state_age"),
            models.Index(fields=["saga_type", "state"], name="saga_type_state"),
            models.Index(fields=["correlation_id"], name="saga_correlation"),
        ]

    def __str__(self) -> str:
        return f"{self.saga_type} {self.id} ({self.state})"


class SagaStep(models.Model):
    """The saga's history: one row per step outcome, actions and compensations alike."""

    class Phase(models.TextChoices):
        ACTION = "action"
        COMPENSATION = "compensation"

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    saga = models.ForeignKey(SagaInstance, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    phase = models.CharField(max_length=12, choices=Phase.choices)
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    message_id = models.UUIDField()
    attempts = models.PositiveIntegerField()
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["finished_at", "id"]
        indexes = [models.Index(fields=["saga", "finished_at"], name="sagastep_history")]


class LateReply(models.Model):
    """A reply that arrived after its requester stopped waiting: kept, not lost."""

    request_id = models.UUIDField()
    request_type = models.CharField(max_length=200)
    correlation_id = models.CharField(max_length=128)
    consumer = models.CharField(max_length=200)
    reply = models.JSONField()
    deadline = models.DateTimeField(null=True)
    arrived_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["arrived_at"], name="latereply_recent")]


class RequeueJob(models.Model):
    """A bulk requeue: the dead letters matching a filter (or a selection), at a set rate."""

    class State(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        CANCELLED = "cancelled"
        FAILED = "failed"

    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    filters = models.JSONField(default=dict, help_text="a DeadLetterFilter, as strings")
    ids = models.JSONField(default=list, help_text="a selection of dead letter ids, instead of a filter")
    rate_per_s = models.FloatField(null=True, blank=True, help_text="at most this many a second; empty: as fast as it goes")
    max_id = models.BigIntegerField(help_text="dead letters that arrive after the job started are not part of it")
    total = models.PositiveIntegerField()
    done = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0, help_text="no longer dead when their turn came")
    cursor_id = models.BigIntegerField(default=0)
    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    error = models.TextField(blank=True)

    @property
    def progress(self) -> float:
        return 1.0 if not self.total else min(1.0, (self.done + self.skipped) / self.total)

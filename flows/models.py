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
    app = models.CharField(max_length=100, blank=True, default="", db_default="", help_text="the attached Celery app it died in; empty for Flowscope's own flows")

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
            models.Index(fields=["app", "dead_at", "id"], name="deadletter_app_recent"),  # the ?app= filter, newest first (the page orders by dead_at, id)
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


class LiveSource(models.TextChoices):
    """Who told the console about a task or worker: an app's agent, or its Celery events alone
    (which carry no exact call: such a task cannot be requeued exactly nor revoked by order)."""

    AGENT = "agent"
    EVENTS = "events"


class LiveTask(models.Model):
    """The latest known state of one task of an attached app, Flower's task list: one row per
    (app, task id), moved forward by newer events only (flows.operate.live_tasks)."""

    class State(models.TextChoices):
        RECEIVED = "received"
        STARTED = "started"
        RETRIED = "retried"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        REVOKED = "revoked"

    app = models.CharField(max_length=100)
    task_id = models.CharField(max_length=200)
    name = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=10, choices=State.choices)
    state_at = models.DateTimeField(help_text="when the app saw the current state (the newest event's time)")
    source = models.CharField(max_length=6, choices=LiveSource.choices, default=LiveSource.AGENT)
    worker = models.CharField(max_length=200, blank=True)
    queue = models.CharField(max_length=200, blank=True)
    args = models.TextField(blank=True, help_text="repr of the args, redacted before it was stored")
    kwargs = models.TextField(blank=True, help_text="repr of the kwargs, redacted before it was stored")
    exception = models.TextField(blank=True)
    runtime_s = models.FloatField(null=True, blank=True)
    retries = models.PositiveIntegerField(null=True, blank=True, help_text="Celery's retries count of the attempt the state belongs to (0: the first)")
    trace_id = models.CharField(max_length=32, blank=True)
    received_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(help_text="when the console stored the latest change")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["app", "task_id"], name="livetask_once_per_app")]
        indexes = [
            models.Index(fields=["state_at", "id"], name="livetask_recent"),
            models.Index(fields=["app", "state_at", "id"], name="livetask_app_recent"),
            models.Index(fields=["state", "state_at", "id"], name="livetask_state_recent"),
            models.Index(fields=["name", "state_at"], name="livetask_name_recent"),
            models.Index(fields=["worker", "state_at"], name="livetask_worker_recent"),
            models.Index(fields=["task_id"], name="livetask_task"),
            models.Index(fields=["updated_at"], name="livetask_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.app} {self.name} {self.task_id} ({self.state})"


class LiveWorker(models.Model):
    """A worker of an attached app, as its last report described it. Shown offline once it said
    so (worker_shutdown) or once no report came for LIVE_WORKER_TIMEOUT_S."""

    app = models.CharField(max_length=100)
    hostname = models.CharField(max_length=200)
    source = models.CharField(max_length=6, choices=LiveSource.choices, default=LiveSource.AGENT)
    online = models.BooleanField(default=True, help_text="as last reported; see heartbeat_at for a worker that stopped reporting")
    pool = models.CharField(max_length=50, blank=True)
    concurrency = models.PositiveIntegerField(null=True, blank=True)
    active = models.PositiveIntegerField(null=True, blank=True)
    processed = models.PositiveBigIntegerField(null=True, blank=True)
    dropped = models.PositiveBigIntegerField(default=0, help_text="task reports its agent dropped (outbox full)")
    heartbeat_at = models.DateTimeField(help_text="when the app sent its latest report")
    first_seen_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["app", "hostname"], name="liveworker_once_per_app")]
        indexes = [models.Index(fields=["app", "hostname"], name="liveworker_app")]

    def __str__(self) -> str:
        return f"{self.app} {self.hostname} ({'online' if self.online else 'offline'})"


class RevokeOrder(models.Model):
    """An operator's revoke of an attached app's task: carried out by the app's agent with
    `app.control.revoke(task_id, terminate=..., signal=...)`, leased and acknowledged like an
    AttachedRequeue, so the app's broker credentials never leave it."""

    app = models.CharField(max_length=100)
    task_id = models.CharField(max_length=200)
    terminate = models.BooleanField(default=False)
    signal = models.CharField(max_length=10, blank=True, help_text="with terminate: the signal the pool process gets")
    requested_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    lease = models.CharField(max_length=32, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["app", "sent_at", "id"], name="revokeorder_pending")]


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
    """A bulk requeue: the dead letters matching a filter (or a selection), at a set rate.

    It first sends a canary of `canary_size` and waits for their outcomes; it goes on, ramping up
    to the rate, only if no more than `max_failure_share` of them died again, and pauses by
    itself when the share of recent outcomes that died again passes it (flows.operate.requeue_jobs).
    """

    class State(models.TextChoices):
        CANARY = "canary"
        RUNNING = "running"
        PAUSED = "paused"
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
    min_id = models.BigIntegerField(default=0, help_text="its first candidate: bounds the scan for its outcomes")
    total = models.PositiveIntegerField()
    done = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0, help_text="no longer dead when their turn came")
    cursor_id = models.BigIntegerField(default=0)
    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    error = models.TextField(blank=True)

    canary_size = models.PositiveIntegerField(default=10, help_text="sent first, their outcomes awaited; 0: no canary")
    max_failure_share = models.FloatField(default=0.2, help_text="the share of outcomes dying again above which the job pauses")
    canary_timeout_s = models.FloatField(default=60.0, help_text="how long the canary's outcomes are awaited")
    canary_ids = models.JSONField(default=list, help_text="the dead letters the canary requeued")
    canary_started_at = models.DateTimeField(null=True, blank=True)
    canary_ended_at = models.DateTimeField(null=True, blank=True, help_text="when the canary was judged")
    ramp_from = models.DateTimeField(null=True, blank=True, help_text="the ramp to the rate starts here (after the canary, or a resume)")
    window_after_id = models.BigIntegerField(default=0, help_text="outcomes of dead letters up to this id are behind the job (set on resume)")
    paused_reason = models.TextField(blank=True)

    @property
    def progress(self) -> float:
        return 1.0 if not self.total else min(1.0, (self.done + self.skipped) / self.total)

    @property
    def actor(self) -> str:
        """Who the job's requeues are by (DeadLetter.requeued_by): how its outcomes are found."""
        return f"{self.created_by[:120]} (job {self.pk})"

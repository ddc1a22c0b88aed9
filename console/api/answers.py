"""Response bodies of the JSON API, as /api/v1/openapi.json describes them.

They describe what console.presenters and the selectors already return, field for field: the
console's JavaScript reads these names, so a field is added here, never renamed. Times are the
ISO 8601 strings the presenters make (typed as strings with the date-time format, so validation
leaves them exactly as they were written). A presenter that gains a field must gain it here too:
ninja drops what a schema does not name (tests/test_api_schemas.py compares the two).
"""

from __future__ import annotations

from typing import Annotated, Any

from ninja import Schema
from pydantic import Field, WithJsonSchema

from flows.models import DeadLetter, RequeueJob, SagaInstance

DateTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


def _one_of(choices: list[str], description: str = "") -> Any:
    return Field(json_schema_extra={"enum": choices}, description=description or None)


class DeadLetterSummary(Schema):
    id: int
    message_id: str
    message_type: str
    queue: str
    consumer: str
    state: str = _one_of(DeadLetter.State.values)
    error_type: str
    error_message: str = Field(description="redacted, at most 500 characters")
    fingerprint: str = Field(description="groups dead letters of one cause")
    attempts: int
    poison: bool
    dead_at: DateTime
    correlation_id: str
    app: str = Field("", description="the attached Celery app it died in; empty for Flowscope's own flows")


class DeadLetterDetail(DeadLetterSummary):
    error_message: str = Field(description="redacted, whole")
    schema_version: int
    causation_id: str
    pattern: str
    envelope: dict[str, Any] = Field(description='as first published, payload redacted; {"unparsed": ...} for a malformed delivery')
    traceback: str
    times_dead: int
    series: int
    first_dead_at: DateTime
    requeued_at: DateTime | None
    requeued_by: str
    resolved_at: DateTime | None
    discarded_by: str
    discard_reason: str
    trace_id: str
    requeue_trace_id: str
    saga_id: str | None
    saga_step: int | None
    events_only: bool = Field(False, description="seen through Celery's events alone (manage.py watch_celery): no exact call, so no requeue")


class DeadLetterPage(Schema):
    items: list[DeadLetterSummary]
    next_cursor: str = Field(description="fetches the following page; empty on the last")


class GroupSilence(Schema):
    until: DateTime
    by: str
    why: str
    text: str = Field(description="muted until … by … (why), as the pages show it")


class DeadLetterGroup(Schema):
    fingerprint: str
    count: int
    first_seen: DateTime
    last_seen: DateTime
    example_id: int
    error_type: str
    error_message: str
    message_type: str
    consumer: str
    app: str = Field("", description="the app of the group's example; empty for Flowscope's own flows")
    silence: GroupSilence | None = Field(None, description="the silence muting this group's alerts now, if any")


class Requeued(Schema):
    requeued: bool
    dead_letter: DeadLetterSummary


class EditRequeued(Schema):
    requeued: bool
    payload: dict[str, Any] = Field(description="the corrected payload as sent, redacted")


class Discarded(Schema):
    discarded: bool


class RequeueOutcomesOut(Schema):
    succeeded: int = Field(description="resolved: the requeued copy succeeded")
    failed_again: int = Field(description="dead again (or discarded since)")
    pending: int = Field(description="requeued, outcome not yet known")


class RequeueCanaryOut(RequeueOutcomesOut):
    size: int = Field(description="asked for; 0: no canary")
    timeout_s: float
    sent: int
    seconds: float | None = Field(description="from its first send to its verdict; null until judged")


class RequeueJobOut(Schema):
    id: int
    state: str = _one_of(RequeueJob.State.values)
    total: int
    done: int
    skipped: int
    progress: float = Field(description="0 to 1")
    rate_per_s: float | None
    created_by: str
    created_at: DateTime
    finished_at: DateTime | None
    error: str
    paused_reason: str = Field(description="why the job paused itself (state paused)")
    max_failure_share: float = Field(description="0 to 1: above this share of outcomes dead again, the job pauses")
    canary: RequeueCanaryOut
    outcomes: RequeueOutcomesOut = Field(description="of every message the job requeued so far, the canary's included")


class RequeueCount(Schema):
    count: int = Field(description="dead letters a job with these arguments would requeue now (dry_run)")


class SagaSummary(Schema):
    id: str
    saga_type: str
    state: str = _one_of(SagaInstance.State.values)
    current_step: int
    correlation_id: str
    started_at: DateTime
    updated_at: DateTime
    finished_at: DateTime | None
    age_s: float


class SagaStepRun(Schema):
    status: str = _one_of(["succeeded", "failed", "running", "pending", "not needed", "none declared"])
    started_at: DateTime | None
    finished_at: DateTime | None
    duration_ms: float | None
    attempts: int
    error: str
    message_id: str


class SagaPlanStep(Schema):
    index: int
    name: str
    action: SagaStepRun
    compensation: SagaStepRun


class SagaDetail(SagaSummary):
    data: dict[str, Any] = Field(description="redacted")
    error: str
    failed_step: int | None
    resumed: int
    trace_id: str
    plan: list[SagaPlanStep] = Field(description="each declared step against what happened")
    dead_letters: list[int]


class TraceFound(Schema):
    trace_id: str
    first: DateTime
    last: DateTime
    spans: int
    errors: int


class LinkOut(Schema):
    span_id: str
    trace_id: str
    linked_span_id: str


class LinkIn(Schema):
    span_id: str
    trace_id: str
    linking_span_id: str


class TraceHop(Schema):
    depth: int
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: int = Field(description="OpenTelemetry SpanKind: 0 internal, 1 server, 2 client, 3 producer, 4 consumer")
    start_ms: float = Field(description="after the trace's first span began")
    duration_ms: float
    status_code: int = Field(description="0 unset, 1 ok, 2 error")
    status_message: str
    attributes: dict[str, Any] = Field(description="redacted")
    events: list[Any] = Field(description="redacted")
    links: list[Any]


class TraceOut(Schema):
    trace_id: str
    spans: int = Field(description="spans in the whole trace")
    offset: int
    links_out: list[LinkOut] = Field(description="spans here that link to other traces")
    links_in: list[LinkIn] = Field(description="spans of other traces that link here")
    items: list[TraceHop] = Field(description="depth first in start order, from `offset`")


class GraphNode(Schema):
    id: str = Field(description="kind:name for Flowscope's own flows, app|kind:name for an attached app's")
    kind: str
    label: str
    app: str = Field(description="the attached app; empty for Flowscope's own flows")


class GraphEdge(Schema):
    source: str
    target: str
    app: str = Field(description="the attached app; empty for Flowscope's own flows")
    kind: str = Field("message", description='"message"; "link" for hops joined by span links (a requeue: handler it died in -> queue it went to)')
    link: str | None = Field(None, description='a link edge\'s type (flowscope.link: "requeue-of"); null for a message edge')
    queue: str | None = Field(description="a task-to-task edge's queue node (source sent target through it); null for an edge to or from a queue")
    count: int
    errors: int
    dead: int
    rate_per_s: float
    error_rate: float
    dead_rate: float
    p50_ms: float | None = Field(description="null without traffic")
    p95_ms: float | None
    queue_wait_p95_ms: float | None = Field(description="p95 time from publish to start; null where spans do not say (Flowscope's own flows)")


class FlowGraph(Schema):
    since: DateTime
    until: DateTime
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class QueueOut(Schema):
    name: str
    depth: int
    consumers: int | None = Field(description="consumers attached, as RabbitMQ reports them; null on Redis, which does not say")
    high: int | None
    low: int | None
    mode: str | None
    state: str = _one_of(["open", "throttled", "unlimited"])
    activations: int


class Published(Schema):
    message_id: str
    correlation_id: str

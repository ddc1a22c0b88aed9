"""Async request-reply: send with reply-to and a deadline; the caller awaits the reply or times out.

The reply travels through a Redis list named in the request's reply_to header. Two small Lua
scripts settle the race at the deadline atomically: either the caller takes the reply, or it
marks the request closed, and a reply arriving after that is stored as a LateReply row.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from opentelemetry.trace import SpanKind, Status, StatusCode

from flows.core import telemetry
from flows.core.envelope import REPLY_DEADLINE, REPLY_TO, Envelope
from flows.core.errors import ReplyTimeout, RequestFailed
from flows.core.message import Message
from flows.models import LateReply
from flows.patterns.base import Pattern
from flows.produce.publishing import build_envelope
from tracing.redis import get_redis, key

# KEYS: reply list, closed marker. ARGV: reply JSON, ttl. Returns 1 delivered, 0 late.
_PUSH_REPLY = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: reply list, closed marker. ARGV: ttl. Returns a reply that slipped in, or nil after closing.
_CLOSE_REQUEST = """
local reply = redis.call('LPOP', KEYS[1])
if reply then return reply end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return false
"""


def _closed_key(reply_to: str) -> str:
    return reply_to + ":closed"


class PendingReply:
    """A request in flight. `result()` waits for the reply, at most until the deadline."""

    def __init__(self, envelope: Envelope, timeout: float, trace_headers: dict[str, str]) -> None:
        self.envelope = envelope
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.trace_headers = trace_headers  # the request's span: the wait joins its trace

    @property
    def message_id(self) -> str:
        return str(self.envelope.message_id)

    def result(self) -> dict[str, Any]:
        attributes = {"messaging.message.id": self.message_id, "flowscope.message_type": self.envelope.type}
        with telemetry.child_span(f"await reply {self.envelope.type}", parent_headers=self.trace_headers, kind=SpanKind.CLIENT, attributes=attributes) as span:
            try:
                reply = self._wait()
            except (ReplyTimeout, RequestFailed) as exc:
                # The outcome, so the console can count timeouts per request type (and so per
                # responder: a request type has exactly one handler).
                span.set_attribute(telemetry.REPLY_OUTCOME, "timeout" if isinstance(exc, ReplyTimeout) else "failed")
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise
            span.set_attribute(telemetry.REPLY_OUTCOME, "ok")
            return reply

    def _wait(self) -> dict[str, Any]:
        redis = get_redis()
        reply_to = self.envelope.headers[REPLY_TO]
        remaining = self.deadline - time.monotonic()
        raw = None
        if remaining > 0:
            popped = redis.blpop([reply_to], timeout=max(remaining, 0.01))
            raw = popped[1] if popped else None
        if raw is None:
            raw = redis.eval(_CLOSE_REQUEST, 2, reply_to, _closed_key(reply_to), settings.FLOWS_REPLY_TTL_SECONDS)
        if raw is None:
            raise ReplyTimeout(self.envelope.type, self.message_id, self.timeout)
        reply = json.loads(raw)
        if "error" in reply:
            raise RequestFailed(self.message_id, reply["error"])
        return reply["envelope"]["payload"]


class RequestReply(Pattern):
    name = "request_reply"

    def request(self, message_type: str, payload: dict[str, Any], *, timeout: float, **envelope_options: Any) -> PendingReply:
        envelope = build_envelope(message_type, payload, **envelope_options)
        deadline = datetime.now(UTC).timestamp() + timeout
        envelope = envelope.with_headers(**{REPLY_TO: key("reply", str(envelope.message_id)), REPLY_DEADLINE: deadline})
        with telemetry.child_span(f"request {message_type}", kind=SpanKind.PRODUCER, attributes={"messaging.message.id": str(envelope.message_id)}):
            self.dispatch(envelope)
            return PendingReply(envelope, timeout, telemetry.current_headers())

    def after_success(self, message: Message, result: Any) -> None:
        payload = result if isinstance(result, dict) else {"result": result}
        reply = message.envelope.child(message.envelope.type + ".reply", payload, **telemetry.current_headers())
        self._reply(message, {"envelope": reply.to_dict()})

    def after_dead(self, message: Message, exc: BaseException) -> None:
        # Tell the caller now rather than let it wait out its timeout; the request is in the
        # dead letters, so it can be fixed and requeued.
        self._reply(message, {"error": f"{type(exc).__name__}: {exc}"})

    def _reply(self, message: Message, body: dict[str, Any]) -> None:
        reply_to = message.envelope.header(REPLY_TO)
        if not reply_to:
            return  # sent without anyone waiting
        deadline = message.envelope.header(REPLY_DEADLINE)
        expired = isinstance(deadline, (int, float)) and time.time() > deadline
        delivered = False
        if not expired:
            # Past the deadline nobody is listening (or an operator requeued the request long
            # after): the reply goes straight to the durable record instead of a list that expires.
            encoded = json.dumps(body, separators=(",", ":"))
            delivered = get_redis().eval(_PUSH_REPLY, 2, reply_to, _closed_key(reply_to), encoded, settings.FLOWS_REPLY_TTL_SECONDS)
        if not delivered and "envelope" in body:
            LateReply.objects.create(
                request_id=message.message_id,
                request_type=message.envelope.type,
                correlation_id=message.correlation_id,
                consumer=message.handler.consumer,
                reply=body["envelope"],
                deadline=datetime.fromtimestamp(deadline, UTC) if isinstance(deadline, (int, float)) else None,
            )

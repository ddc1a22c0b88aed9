"""The message envelope: what travels between services, validated on the way in.

An envelope is immutable; a retry, a reply or a follow-up is a new envelope derived from it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from flows.core.errors import EnvelopeError, PayloadTooLarge

# Header names. Everything else in headers is carried along untouched.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
REPLY_TO = "reply_to"
REPLY_DEADLINE = "reply_deadline"
ATTEMPT = "attempt"
PATTERN = "pattern"
SAGA_ID = "saga_id"
SAGA_STEP = "saga_step"
SAGA_PHASE = "saga_phase"
SAGA_TYPE = "saga_type"
REQUEUE_OF = "requeue_of"
SERIES = "series"

_MAX_TYPE_LENGTH = 200
_MAX_ID_LENGTH = 128
# \w is what str.isalnum() accepts, plus "_" (the re module's definition for str patterns).
_TYPE_NAME = re.compile(r"[\w.\-]+")
# One encoder for every size check: json.dumps with these options builds a new one each call,
# which cost more than encoding a small payload. ASCII output (ensure_ascii), so the length of
# the text is its length in bytes.
_SIZE_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class Envelope:
    type: str
    payload: dict[str, Any]
    schema_version: int = 1
    message_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)
    correlation_id: str = ""
    causation_id: str = ""
    created_at: datetime = dataclasses.field(default_factory=_now)
    headers: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_type_name(self.type)
        if not isinstance(self.payload, dict):
            raise EnvelopeError(f"payload must be a JSON object, got {type(self.payload).__name__}")
        if isinstance(self.schema_version, bool) or not isinstance(self.schema_version, int) or self.schema_version < 1:
            raise EnvelopeError(f"schema_version must be a positive integer, got {self.schema_version!r}")
        if not isinstance(self.message_id, uuid.UUID):
            raise EnvelopeError("message_id must be a UUID")
        if not self.correlation_id:
            # A message that starts a conversation correlates with itself.
            object.__setattr__(self, "correlation_id", str(self.message_id))
        for name in ("correlation_id", "causation_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > _MAX_ID_LENGTH:
                raise EnvelopeError(f"{name} must be a string of at most {_MAX_ID_LENGTH} characters")
        if not isinstance(self.headers, dict) or not all(isinstance(k, str) for k in self.headers):
            raise EnvelopeError("headers must be an object with string keys")
        attempt = self.headers.get(ATTEMPT, 1)
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise EnvelopeError(f"header {ATTEMPT!r} must be a positive integer, got {attempt!r}")

    @property
    def attempt(self) -> int:
        return int(self.headers.get(ATTEMPT, 1))

    def header(self, name: str, default: Any = None) -> Any:
        return self.headers.get(name, default)

    def with_headers(self, **changes: Any) -> Envelope:
        """A copy with some headers set (None removes one); same message id."""
        headers = dict(self.headers)
        for name, value in changes.items():
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        return dataclasses.replace(self, headers=headers)

    def child(self, type: str, payload: dict[str, Any], *, schema_version: int = 1, **headers: Any) -> Envelope:
        """A new message caused by this one, in the same conversation."""
        return Envelope(
            type=type,
            payload=payload,
            schema_version=schema_version,
            correlation_id=self.correlation_id,
            causation_id=str(self.message_id),
            headers={k: v for k, v in headers.items() if v is not None},
        )

    def check_size(self) -> int:
        """Encode the payload once and refuse it if over FLOWS_MAX_PAYLOAD_BYTES; returns the size."""
        try:
            size = len(_SIZE_ENCODER.encode(self.payload))
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(f"payload is not JSON-serialisable: {exc}") from None
        limit = settings.FLOWS_MAX_PAYLOAD_BYTES
        if size > limit:
            raise PayloadTooLarge(size, limit)
        return size

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": str(self.message_id),
            "type": self.type,
            "schema_version": self.schema_version,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "created_at": self.created_at.isoformat(),
            "headers": self.headers,
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Envelope:
        """Parse an envelope from untrusted input, naming the first thing that is wrong."""
        if not isinstance(data, dict):
            raise EnvelopeError(f"envelope must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - _FIELDS
        if unknown:
            raise EnvelopeError(f"envelope has unknown fields: {', '.join(sorted(unknown))}")
        for required in ("type", "payload"):
            if required not in data:
                raise EnvelopeError(f"envelope is missing {required!r}")
        kwargs: dict[str, Any] = {"type": data["type"], "payload": data["payload"]}
        if "message_id" in data:
            kwargs["message_id"] = _parse_uuid(data["message_id"])
        if "created_at" in data:
            kwargs["created_at"] = _parse_time(data["created_at"])
        for name in ("schema_version", "correlation_id", "causation_id", "headers"):
            if name in data:
                kwargs[name] = data[name]
        envelope = cls(**kwargs)
        envelope.check_size()  # a producer that skipped flows.send is held to the same limit
        return envelope


_FIELDS = {f.name for f in dataclasses.fields(Envelope)}


def _check_type_name(name: Any) -> None:
    if not isinstance(name, str) or not name or len(name) > _MAX_TYPE_LENGTH:
        raise EnvelopeError(f"type must be a non-empty string of at most {_MAX_TYPE_LENGTH} characters, got {name!r}")
    if not _TYPE_NAME.fullmatch(name):
        raise EnvelopeError(f"type {name!r} may hold only letters, digits, '.', '_' and '-'")


def _parse_uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise EnvelopeError(f"message_id {value!r} is not a UUID") from None


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise EnvelopeError(f"created_at must be an ISO 8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EnvelopeError(f"created_at {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise EnvelopeError(f"created_at {value!r} has no time zone")
    return parsed

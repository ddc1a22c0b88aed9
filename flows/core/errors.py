"""What can go wrong in the engine, each with a message an operator can act on."""

from __future__ import annotations


class FlowsError(Exception):
    """Base of every error the engine raises on purpose."""


class EnvelopeError(FlowsError, ValueError):
    """An envelope is malformed: a missing or mistyped field, or a payload over the limit."""


class PayloadTooLarge(EnvelopeError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload is {size} bytes, over the limit of {limit} bytes (FLOWS_MAX_PAYLOAD_BYTES)")
        self.size = size
        self.limit = limit


class PoisonMessage(FlowsError):
    """The message can never succeed as it is: dead-letter it at once, without retries."""


class UnknownMessageType(PoisonMessage, LookupError):
    def __init__(self, message_type: str) -> None:
        super().__init__(f"unknown message type {message_type!r}")
        self.message_type = message_type


class UnknownSchemaVersion(PoisonMessage):
    def __init__(self, message_type: str, version: int, known: list[int]) -> None:
        super().__init__(f"unknown schema version {version} of {message_type!r} (this consumer accepts {known})")
        self.message_type = message_type
        self.version = version


class PayloadInvalid(PoisonMessage, ValueError):
    def __init__(self, message_type: str, version: int, detail: str) -> None:
        super().__init__(f"payload does not match schema {message_type!r} v{version}: {detail}")
        self.message_type = message_type
        self.version = version
        self.detail = detail


class ConfigurationError(FlowsError):
    """A declaration (handler, saga, queue) contradicts itself or the broker settings."""


class QueueFull(FlowsError):
    """Back-pressure refused a publish: the queue is above its high watermark."""

    def __init__(self, queue: str, depth: int, high: int, waited: float = 0.0) -> None:
        waited_text = f" after waiting {waited:.1f}s" if waited else ""
        super().__init__(f"queue {queue!r} holds {depth} messages, at or above its high watermark {high}{waited_text}; try again later")
        self.queue = queue
        self.depth = depth
        self.high = high


class ReplyTimeout(FlowsError, TimeoutError):
    def __init__(self, message_type: str, message_id: str, timeout: float) -> None:
        super().__init__(f"no reply to {message_type!r} (message {message_id}) within {timeout:g}s; a later reply is recorded as late")
        self.message_id = message_id


class RequestFailed(FlowsError):
    """The responder gave up on the request (dead-lettered it); the caller learns at once."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(f"request {message_id} failed: {reason}")
        self.message_id = message_id
        self.reason = reason


class StaleTransition(FlowsError):
    """A saga transition was already applied by another delivery of the same step."""


class InvalidArgument(FlowsError, ValueError):
    """An operator's request to the engine is out of range or contradicts itself (a rate over the
    limit, an empty selection, a blank reason): refused before anything changes. A ValueError too,
    so callers that caught the plain ValueError it used to be still catch it."""

"""What a handler receives: the envelope, its payload as this consumer reads it, and who runs it."""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any

from flows.core.envelope import Envelope
from flows.core.registry import Handler


@dataclasses.dataclass(frozen=True)
class Message:
    envelope: Envelope
    payload: dict[str, Any]  # validated and upcast to the handler's schema version
    handler: Handler
    worker: str

    @property
    def message_id(self) -> str:
        return str(self.envelope.message_id)

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlation_id

    @property
    def attempt(self) -> int:
        return self.envelope.attempt


# The message being handled in this thread, so that anything published from inside a handler
# joins its conversation (correlation id) and names it as the cause.
current_message: contextvars.ContextVar[Message | None] = contextvars.ContextVar("flows_current_message", default=None)

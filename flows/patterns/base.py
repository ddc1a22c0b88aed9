"""The small base every integration pattern implements.

The runtime calls these hooks around each delivery; a pattern overrides only what it needs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from flows.core.envelope import Envelope
from flows.core.errors import ConfigurationError
from flows.core.message import Message
from flows.core.registry import Handler, catalog
from flows.core.schemas import MessageType
from flows.produce.publishing import publish_to


class Pattern:
    name: ClassVar[str]
    # Run handler and on_success in one database transaction (with the inbox claim, if any).
    transactional: ClassVar[bool] = False
    # How many handlers a message type of this pattern must have: (least, most or None).
    handlers_allowed: ClassVar[tuple[int, int | None]] = (1, 1)

    def check(self, mtype: MessageType, handlers: list[Handler]) -> None:
        least, most = self.handlers_allowed
        if len(handlers) < least or (most is not None and len(handlers) > most):
            wanted = f"exactly {least}" if least == most else f"at least {least}"
            raise ConfigurationError(f"{self.name} type {mtype.name!r} needs {wanted} handler(s), has {len(handlers)}: {[h.consumer for h in handlers]}")

    def dispatch(self, envelope: Envelope) -> None:
        """Send a freshly built envelope to every handler this pattern routes it to."""
        for handler in catalog.handlers_for(envelope.type):
            publish_to(handler, envelope)

    # -- hooks around one delivery, in the order the runtime calls them --
    def validate(self, message: Message) -> None:
        """Raise PoisonMessage if the headers this pattern relies on are missing or wrong."""

    def should_process(self, message: Message) -> bool:
        """False skips the handler: the delivery is a duplicate the pattern can see."""
        return True

    def on_success(self, message: Message, result: Any) -> None:
        """Inside the handler's transaction, when there is one."""

    def after_success(self, message: Message, result: Any) -> None:
        """After the handler's effects are committed."""

    def on_retry(self, message: Message, exc: BaseException, delay: float) -> None:
        """A retry was scheduled."""

    def on_exhausted(self, message: Message, exc: BaseException) -> bool:
        """The last attempt failed (or the message is poison). True: the pattern took care of
        it and no dead letter is written; runs in the same transaction as the dead letter."""
        return False

    def after_dead(self, message: Message, exc: BaseException) -> None:
        """After the dead letter is committed."""

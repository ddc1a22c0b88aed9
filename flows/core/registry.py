"""The catalog: message types, their handlers, queues and sagas, declared in plain Python.

    flows.message_type("invoice.render", pattern="competing_consumers", schemas={1: RenderInvoice})

    @flows.handler("invoice.render", queue="invoices", max_attempts=4, idempotent=True)
    def render_invoice(message: flows.Message) -> None: ...

Declarations are checked as a whole when Django starts (`Catalog.check`), so a handler for a
type nobody declared, or a saga step with no handler, fails fast with a message naming both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pydantic

from flows.core.brokers import RABBITMQ, broker_kind
from flows.core.errors import ConfigurationError, UnknownMessageType
from flows.core.retry import Backoff
from flows.core.schemas import MessageType, Upcaster

if TYPE_CHECKING:
    from flows.core.message import Message
    from flows.core.sagas import SagaDefinition

HandlerFn = Callable[["Message"], Any]

# The kinds of message type; how each behaves is `flows.patterns` (one module each, checked
# against this list when it is imported, so the two cannot drift apart).
KNOWN_PATTERNS = ("fire_and_forget", "request_reply", "fan_out", "competing_consumers", "saga")


@dataclasses.dataclass(frozen=True)
class Handler:
    fn: HandlerFn
    message_type: str
    consumer: str
    queue: str
    max_attempts: int
    backoff: Backoff
    idempotent: bool
    version: int | None  # the schema version the code reads; None: the latest

    def target_version(self, mtype: MessageType) -> int:
        return self.version or mtype.latest


@dataclasses.dataclass(frozen=True)
class QueuePolicy:
    """Back-pressure watermarks: above `high` producers are slowed or refused until depth <= `low`."""

    name: str
    high: int
    low: int
    mode: str = "block"  # "block": wait up to block_timeout, then refuse; "raise": refuse at once
    block_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise ConfigurationError(f"queue {self.name!r}: watermarks need 0 <= low < high, got low={self.low} high={self.high}")
        if self.mode not in ("block", "raise"):
            raise ConfigurationError(f"queue {self.name!r}: mode must be 'block' or 'raise', got {self.mode!r}")
        if self.block_timeout < 0:
            raise ConfigurationError(f"queue {self.name!r}: block_timeout must not be negative")


class Catalog:
    def __init__(self) -> None:
        self.types: dict[str, MessageType] = {}
        self.handlers: dict[str, Handler] = {}
        self.queues: dict[str, QueuePolicy] = {}
        self.sagas: dict[str, SagaDefinition] = {}

    # -- declarations --
    def declare_type(self, mtype: MessageType) -> MessageType:
        existing = self.types.get(mtype.name)
        if existing is not None and existing != mtype:
            raise ConfigurationError(f"message type {mtype.name!r} is declared twice, differently")
        self.types[mtype.name] = mtype
        return mtype

    def add_handler(self, handler: Handler) -> Handler:
        if handler.consumer in self.handlers and self.handlers[handler.consumer].fn is not handler.fn:
            raise ConfigurationError(f"consumer name {handler.consumer!r} is taken; pass consumer=... to tell them apart")
        handler.backoff.check_against_broker(f"handler {handler.consumer!r}")
        self.handlers[handler.consumer] = handler
        return handler

    def add_queue(self, policy: QueuePolicy) -> QueuePolicy:
        self.queues[policy.name] = policy
        return policy

    def add_saga(self, saga: SagaDefinition) -> SagaDefinition:
        if saga.name in self.sagas and self.sagas[saga.name] is not saga:
            raise ConfigurationError(f"saga {saga.name!r} is declared twice")
        self.sagas[saga.name] = saga
        return saga

    # -- lookups --
    def message_type(self, name: str) -> MessageType:
        try:
            return self.types[name]
        except KeyError:
            raise UnknownMessageType(name) from None

    def handler(self, consumer: str) -> Handler:
        try:
            return self.handlers[consumer]
        except KeyError:
            raise LookupError(f"no handler is registered as consumer {consumer!r}") from None

    def handlers_for(self, message_type: str) -> list[Handler]:
        return [h for h in self.handlers.values() if h.message_type == message_type]

    def queue_names(self) -> list[str]:
        return sorted({h.queue for h in self.handlers.values()})

    def check(self) -> None:
        """Cross-check the declarations; raise ConfigurationError naming the first contradiction.
        What each pattern demands of its types is checked on top by `flows.patterns.check_catalog`."""
        for handler in self.handlers.values():
            mtype = self.types.get(handler.message_type)
            if mtype is None:
                raise ConfigurationError(f"handler {handler.consumer!r} consumes {handler.message_type!r}, which no message_type() declares")
            if handler.version is not None and handler.version not in mtype.versions:
                raise ConfigurationError(f"handler {handler.consumer!r} reads v{handler.version} of {mtype.name!r}, which has versions {mtype.versions}")
        for saga in self.sagas.values():
            saga.check(self)
        if broker_kind() == RABBITMQ:
            # A delayed message comes back from RabbitMQ's delay levels through a topic binding
            # "#.<queue>", which a queue named "<anything>.<queue>" matches as well: it would get
            # a copy of every delayed message meant for the shorter name.
            names = set(self.queue_names())
            for name in sorted(names):
                shadowed = sorted(other for other in names if other.endswith("." + name))
                if shadowed:
                    raise ConfigurationError(
                        f"queue {shadowed[0]!r} ends with '.{name}', another queue's name: on RabbitMQ it would receive copies of the delayed messages meant for {name!r}; rename one"
                    )

    def snapshot(self) -> dict[str, Any]:
        """Everything declared, for tests that add their own declarations and then restore."""
        return {"types": dict(self.types), "handlers": dict(self.handlers), "queues": dict(self.queues), "sagas": dict(self.sagas)}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.types, self.handlers = dict(snapshot["types"]), dict(snapshot["handlers"])
        self.queues, self.sagas = dict(snapshot["queues"]), dict(snapshot["sagas"])


catalog = Catalog()


def message_type(
    name: str,
    *,
    pattern: str,
    schemas: dict[int, type[pydantic.BaseModel]] | None = None,
    upcasters: dict[int, Upcaster] | None = None,
) -> MessageType:
    if pattern not in KNOWN_PATTERNS:  # fail at declaration on a misspelt pattern
        raise LookupError(f"unknown pattern {pattern!r}; known: {sorted(KNOWN_PATTERNS)}")
    return catalog.declare_type(MessageType(name=name, pattern=pattern, schemas=dict(schemas or {}), upcasters=dict(upcasters or {})))


def handler(
    message_type: str,
    *,
    consumer: str | None = None,
    queue: str | None = None,
    max_attempts: int = 5,
    backoff: Backoff | None = None,
    idempotent: bool = False,
    version: int | None = None,
) -> Callable[[HandlerFn], HandlerFn]:
    if max_attempts < 1:
        raise ConfigurationError(f"handler for {message_type!r}: max_attempts must be at least 1")

    def register(fn: HandlerFn) -> HandlerFn:
        catalog.add_handler(
            Handler(
                fn=fn,
                message_type=message_type,
                consumer=consumer or fn.__name__,
                queue=queue or message_type,
                max_attempts=max_attempts,
                backoff=backoff or Backoff(),
                idempotent=idempotent,
                version=version,
            )
        )
        return fn

    return register


def queue(name: str, *, high: int, low: int, mode: str = "block", block_timeout: float = 5.0) -> QueuePolicy:
    return catalog.add_queue(QueuePolicy(name=name, high=high, low=low, mode=mode, block_timeout=block_timeout))

"""Saga orchestration, as seen by the runtime: each step message advances or compensates its saga."""

from __future__ import annotations

from typing import Any

from flows.core.envelope import Envelope
from flows.core.errors import ConfigurationError
from flows.core.message import Message
from flows.patterns import saga_state as sagas
from flows.patterns.base import Pattern


class Saga(Pattern):
    name = "saga"
    # The step's writes and the saga's transition commit together, or not at all.
    transactional = True

    def dispatch(self, envelope: Envelope) -> None:
        raise ConfigurationError(f"{envelope.type!r} is a saga step: start the saga with flows.start_saga(), do not send its steps")

    def validate(self, message: Message) -> None:
        sagas.check_position(message)

    def should_process(self, message: Message) -> bool:
        return sagas.saga_is_at(message)

    def on_success(self, message: Message, result: Any) -> None:
        sagas.saga_step_succeeded(message, result)

    def on_retry(self, message: Message, exc: BaseException, delay: float) -> None:
        sagas.saga_touch(message)

    def on_exhausted(self, message: Message, exc: BaseException) -> bool:
        return sagas.saga_step_failed(message, exc)

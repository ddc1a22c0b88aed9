"""The registry of integration patterns: adding one is a new module and one line here."""

from __future__ import annotations

from flows.patterns.base import Pattern
from flows.patterns.competing_consumers import CompetingConsumers
from flows.patterns.fan_out import FanOut
from flows.patterns.fire_and_forget import FireAndForget
from flows.patterns.request_reply import RequestReply
from flows.patterns.saga import Saga

PATTERNS: dict[str, Pattern] = {p.name: p for p in (FireAndForget(), RequestReply(), FanOut(), CompetingConsumers(), Saga())}


def get_pattern(name: str) -> Pattern:
    try:
        return PATTERNS[name]
    except KeyError:
        raise LookupError(f"unknown pattern {name!r}; known: {sorted(PATTERNS)}") from None

"""The registry of integration patterns: adding one is a new module and one line here."""

from __future__ import annotations

from flows.core.errors import ConfigurationError
from flows.core.registry import KNOWN_PATTERNS, Catalog, catalog
from flows.patterns.base import Pattern
from flows.patterns.competing_consumers import CompetingConsumers
from flows.patterns.fan_out import FanOut
from flows.patterns.fire_and_forget import FireAndForget
from flows.patterns.request_reply import RequestReply
from flows.patterns.saga import Saga

PATTERNS: dict[str, Pattern] = {p.name: p for p in (FireAndForget(), RequestReply(), FanOut(), CompetingConsumers(), Saga())}
if set(PATTERNS) != set(KNOWN_PATTERNS):
    raise ConfigurationError(f"flows.patterns implements {sorted(PATTERNS)} but flows.core.registry declares {sorted(KNOWN_PATTERNS)}")


def get_pattern(name: str) -> Pattern:
    try:
        return PATTERNS[name]
    except KeyError:
        raise LookupError(f"unknown pattern {name!r}; known: {sorted(PATTERNS)}") from None


def check_catalog(cat: Catalog = catalog) -> None:
    """Everything declared, checked as a whole (at start-up): the declarations against each
    other, then each message type against what its pattern demands (handlers, queues)."""
    cat.check()
    for mtype in cat.types.values():
        get_pattern(mtype.pattern).check(mtype, cat.handlers_for(mtype.name))

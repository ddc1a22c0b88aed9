"""Retry policy: exponential backoff with jitter, bounded by the longest delay the broker holds."""

from __future__ import annotations

import dataclasses
import random

from flows.core.brokers import REDIS, broker_kind, max_delay
from flows.core.errors import ConfigurationError


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.5  # up to this fraction of each delay is taken off at random

    def __post_init__(self) -> None:
        if self.initial < 0 or self.factor < 1 or self.maximum < self.initial:
            raise ConfigurationError(f"backoff needs 0 <= initial <= maximum and factor >= 1, got {self}")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"backoff jitter must lie between 0 and 1, got {self.jitter}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`, after attempt `attempt` failed."""
        base = min(self.maximum, self.initial * self.factor ** (attempt - 1))
        return base * (1 - self.jitter * random.random())

    def check_against_broker(self, where: str) -> None:
        limit, reason = max_delay()
        if self.maximum > limit:
            hint = "lower it or raise FLOWS_VISIBILITY_TIMEOUT" if broker_kind() == REDIS else "lower it"
            # .15g: a delay near RabbitMQ's limit (2**28 s) reads in whole seconds, not as 2.68435e+08
            raise ConfigurationError(f"{where}: backoff maximum {self.maximum:.15g}s exceeds {reason}; {hint}")

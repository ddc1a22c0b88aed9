"""Retry policy: exponential backoff with jitter, bounded by the broker's visibility timeout."""

from __future__ import annotations

import dataclasses
import random

from django.conf import settings

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
        # Redis holds a delayed message as unacknowledged; past the visibility timeout it would
        # be handed to a second worker, and the message would run twice.
        limit = settings.FLOWS_VISIBILITY_TIMEOUT / 2
        if self.maximum > limit:
            raise ConfigurationError(
                f"{where}: backoff maximum {self.maximum:g}s exceeds half the broker visibility timeout ({settings.FLOWS_VISIBILITY_TIMEOUT}s); lower it or raise FLOWS_VISIBILITY_TIMEOUT"
            )

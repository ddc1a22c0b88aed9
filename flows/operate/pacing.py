"""A token bucket: at most `rate` a second over time, bursts of at most `capacity`."""

from __future__ import annotations

import time
from collections.abc import Callable

_EPSILON = 1e-6


class TokenBucket:
    """Tokens accrue at `rate` a second up to `capacity`; `take(n)` sleeps until n are there.

    It starts with one token, so the first message goes at once and n messages take (n - 1) /
    rate seconds: the achieved rate is the asked one, whatever each message costs (as long as
    it costs less than 1 / rate). The cap keeps a job that fell behind (a slow database moment)
    from catching up in one burst.
    """

    def __init__(self, rate: float, *, capacity: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and room for at least one token")
        self.rate, self.capacity = rate, capacity
        self._clock, self._sleep = clock, sleep
        self._tokens = 1.0
        self._at = clock()

    def retune(self, rate: float, *, capacity: float) -> None:
        """A new rate from now on (a ramp's next step), the tokens accrued so far kept."""
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and room for at least one token")
        self._refill()
        self.rate, self.capacity = rate, capacity
        self._tokens = min(self._tokens, capacity)

    def take(self, n: int) -> None:
        if not 0 < n <= self.capacity:
            raise ValueError(f"can take 1 to {self.capacity:g} tokens at once, not {n}")
        self._refill()
        # A loop, as sleep() may return a little early; the tolerance stops it chasing a
        # shortfall too small for the clock to measure.
        while self._tokens < n - _EPSILON:
            self._sleep((n - self._tokens) / self.rate)
            self._refill()
        self._tokens -= n

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

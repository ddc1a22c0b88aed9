"""A paced producer in a process of its own: `python -m flows.bench.sender TYPE N RATE MARKER`.

One Python process sends a few hundred traced messages a second on a busy two-core machine;
the benchmark starts several of these to reach its rate. Prints the rate it achieved.
"""

from __future__ import annotations

import os
import sys
import time


def pace(message_type: str, n: int, rate: float, marker: str) -> float:
    """Send n messages at `rate` a second, in small bursts on a fixed schedule; returns the rate achieved."""
    import flows

    started = time.monotonic()
    sent = 0
    while sent < n:
        due = min(n, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            flows.send(message_type, {"n": sent}, correlation_id=marker)
            sent += 1
        time.sleep(0.002)
    return n / (time.monotonic() - started)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    message_type, n, rate, marker = argv[0], int(argv[1]), float(argv[2]), argv[3]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    import flows.bench.catalog  # noqa: F401 - the benchmark's message types
    from tracing import setup

    setup.set_default_service("flowscope-bench")
    achieved = pace(message_type, n, rate, marker)
    setup.flush()
    print(f"{achieved:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

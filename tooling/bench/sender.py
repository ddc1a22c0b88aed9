"""A paced producer in a process of its own: `python -m tooling.bench.sender TYPE N RATE MARKER [QUEUE BACKLOG]`.

One Python process sends a few hundred traced messages a second on a busy two-core machine;
the benchmark starts several of these to reach its rate. With QUEUE and BACKLOG it also waits
while that queue holds more than BACKLOG messages (a long run keeps the broker small). Prints the
rate it achieved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from django.conf import settings

UNPACED = 1e8  # a rate at least this high means "as fast as the queue takes them"


def pace(message_type: str, n: int, rate: float, marker: str, *, queue: str = "", backlog: int = 0) -> float:
    """Send n messages at `rate` a second, in small bursts on a fixed schedule; returns the rate achieved.

    Unpaced, each burst is built as flows.send builds it (envelope, send span) and published in
    one pipelined round trip, so the senders leave the two cores to what is measured."""
    import flows
    from flows.core import telemetry
    from flows.core.registry import catalog
    from flows.produce.backpressure import queue_depth
    from flows.produce.publishing import build_envelope, publish_many

    (handler,) = catalog.handlers_for(message_type)
    started = time.monotonic()
    sent = 0
    while sent < n:
        due = min(n, int((time.monotonic() - started) * rate) + 1, sent + 200)
        if rate >= UNPACED:
            envelopes = [build_envelope(message_type, {"n": i}, correlation_id=marker) for i in range(sent, due)]
            publish_many([(handler, telemetry.traced_headers(e, queue=handler.queue)) for e in envelopes])
            sent = due
        while sent < due:
            flows.send(message_type, {"n": sent}, correlation_id=marker)
            sent += 1
        while queue and queue_depth(queue) > backlog:
            time.sleep(0.02)
        time.sleep(0.002)
    return n / (time.monotonic() - started)


def run_senders(message_type: str, n: int, rate: float, marker: str, *, senders: int, progress: Callable[[float], None], queue: str = "", backlog: int = 0) -> float:
    """n messages at `rate` a second from `senders` processes; returns the rate they achieved together."""
    started = time.monotonic()
    shares = [n // senders + (i < n % senders) for i in range(senders)]
    limit = [queue, str(backlog)] if queue else []
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "tooling.bench.sender", message_type, str(k), str(rate / senders), marker, *limit],
            cwd=settings.BASE_DIR,
            env={**os.environ, "REDIS_URL": settings.REDIS_URL},
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in shares
        if k
    ]
    while any(p.poll() is None for p in running):
        progress(time.monotonic() - started)
        time.sleep(0.5)
    rates = []
    for process in running:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"a sender exited with {process.returncode}")
        rates.append(float(out.strip().splitlines()[-1]))
    return sum(rates)


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 6):
        print(__doc__, file=sys.stderr)
        return 2
    message_type, n, rate, marker = argv[0], int(argv[1]), float(argv[2]), argv[3]
    queue, backlog = (argv[4], int(argv[5])) if len(argv) == 6 else ("", 0)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    import tooling.bench.catalog  # noqa: F401 - the benchmark's message types
    from tracing import setup

    setup.set_default_service("flowscope-bench")
    achieved = pace(message_type, n, rate, marker, queue=queue, backlog=backlog)
    setup.flush()
    print(f"{achieved:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A producer in a process of its own, for checks that take Redis away under load.

    python -m tests.reliability.publisher OUT RATE SECONDS

Sends `rel.credit` messages at RATE a second for SECONDS; appends the key of every send that
returned to OUT (acknowledged) and of every send that raised to OUT.refused, with the error.
"""

from __future__ import annotations

import os
import sys
import time


def main(out: str, rate: float, seconds: float) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    import flows

    started = time.monotonic()
    i = 0
    with open(out, "w") as acknowledged, open(f"{out}.refused", "w") as refused:
        while time.monotonic() - started < seconds:
            key = f"r{i}"
            i += 1
            try:
                flows.send("rel.credit", {"key": key})
            except Exception as exc:  # every failure counts as "not acknowledged", whatever its kind
                refused.write(f"{key} {type(exc).__name__}: {str(exc)[:200]}\n")
                refused.flush()
            else:
                acknowledged.write(f"{key}\n")
                acknowledged.flush()
            time.sleep(max(0.0, started + i / rate - time.monotonic()))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))

"""The reliability suite: faults injected into real processes, and the doors an attacker tries.

`make reliability` runs it at full size; CI runs it with RELIABILITY_SIZE=quick after the main
suite. Each check records its figure with `figure(...)`; the figures are printed together at the
end of the run, so they show whether or not pytest captures output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

import tests.reliability.catalog  # noqa: F401 - the checks' handlers, in this process too
from flows.core.brokers import broker_kind
from tests.reliability import held
from tests.support.workers import Worker

SIZE = os.environ.get("RELIABILITY_SIZE", "full")
if SIZE not in {"full", "quick"}:
    raise pytest.UsageError(f"RELIABILITY_SIZE must be 'full' or 'quick', not {SIZE!r}")

_FIGURES: list[tuple[str, str]] = []


def sized(full: int, quick: int) -> int:
    """The check's size at this run's RELIABILITY_SIZE."""
    return full if SIZE == "full" else quick


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record one line of this check's figures, e.g. figure("10000 sent, 0 lost, 0 twice")."""

    def record(text: str) -> None:
        _FIGURES.append((request.node.nodeid, text))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    # The broker named in the heading, so runs on Redis and on RabbitMQ can be set side by side.
    terminalreporter.section(f"reliability figures (broker: {broker_kind()}, size: {SIZE})")
    for nodeid, text in _FIGURES:
        terminalreporter.write_line(f"{nodeid.split('::', 1)[-1]}: {text}")


# -- real workers on the reliability catalog, with a short visibility timeout --

# Only its own catalog: the others declare backoffs (up to 60 s) longer than this timeout allows.
RELIABILITY_MODULES = "tests.reliability.catalog"
# On Redis, deliveries a killed worker held come back after this many seconds (the minimum
# allowed); a production broker keeps the default hour. Restores are looked for every second.
# RabbitMQ gives them back as soon as the worker's connection drops, and ignores these.
VISIBILITY_SECONDS = 10
WORKER_ENV = {"FLOWS_MODULES": RELIABILITY_MODULES, "FLOWS_VISIBILITY_TIMEOUT": str(VISIBILITY_SECONDS), "FLOWS_RESTORE_INTERVAL_SECONDS": "1"}


@pytest.fixture
def chaos_worker(django_db_setup: object) -> Iterator[Callable[..., Worker]]:
    """Start workers on reliability queues for one test; each is stopped (or was killed) after."""
    started: list[Worker] = []

    def start(name: str, queues: list[str], *, concurrency: int = 2, env: dict[str, str] | None = None) -> Worker:
        node = Worker(name, queues, concurrency=concurrency, extra_env={**WORKER_ENV, **(env or {})}).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture(autouse=True)
def empty_reliability_queues() -> None:
    """Each check starts with its queues empty and nothing a killed worker left unacknowledged,
    so one check's leftovers never reach the next check's workers."""
    held.empty_reliability_queues()

"""Completion counting shared by the bare task and the Flowscope handler: the same Redis work
per message on both sides, so the ratio compares only what differs."""

from __future__ import annotations

import time

from celery import shared_task

from tooling.bench.done import DONE_SCRIPT
from tracing.redis import get_redis, key


def keys(run: str) -> list[str]:
    """The counter, first and last completion time of a run (the plain Celery app is handed them)."""
    return [key("bench", run, "done"), key("bench", run, "first"), key("bench", run, "last")]


def count_done(run: str) -> None:
    get_redis().eval(DONE_SCRIPT, 3, *keys(run), repr(time.time()))


def reset(run: str) -> None:
    get_redis().delete(*keys(run))


def progress(run: str) -> tuple[int, float, float]:
    done, first, last = get_redis().mget(*keys(run))
    return int(done or 0), float(first or 0), float(last or 0)


@shared_task(name="flows.bench_noop", acks_late=True)
def bare_noop(run: str = "bare") -> None:
    count_done(run)


def ends_key(run: str) -> str:
    return key("bench", run, "ends")


def record_end(run: str) -> None:
    """When this hop ended, in completion order: the live-latency run matches frames against it."""
    get_redis().rpush(ends_key(run), repr(time.time()))


def ends(run: str) -> list[float]:
    return sorted(float(t) for t in get_redis().lrange(ends_key(run), 0, -1))

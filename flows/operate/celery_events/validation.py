"""Checking one Celery event before anything is made of it: a broker is a shared place, and an
event that is not the shape Celery sends (or is huge) is counted and skipped, never a crash."""

from __future__ import annotations

import math
from typing import Any

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a message of events (a worker's buffered batch) at most
MAX_EVENT_CHARS = 512 * 1024  # one event's text fields together, tracebacks included
MAX_ID = 200
MAX_NAME = 300
EARLIEST, LATEST = 946_684_800.0, 4_102_444_800.0  # 2000 and 2100 in epoch seconds, as the live task list takes them
TASK_EVENTS = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed", "task-retried", "task-revoked", "task-rejected")
WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")


class Malformed(ValueError):
    """Not an event this watcher can use; the reason goes to the log (a few) and the count."""


class Oversized(Malformed):
    pass


def _text(event: dict[str, Any], field: str, limit: int, *, required: bool = False) -> str:
    value = event.get(field)
    if value is None or value == "":
        if required:
            raise Malformed(f"{event.get('type')}: no {field}")
        return ""
    if not isinstance(value, str):
        raise Malformed(f"{event.get('type')}: {field} is {type(value).__name__}, not text")
    if len(value) > limit:
        raise Malformed(f"{event.get('type')}: {field} is {len(value)} characters, over {limit}")
    return value


def _number(event: dict[str, Any], field: str, *, required: bool = False) -> float | None:
    value = event.get(field)
    if value is None:
        if required:
            raise Malformed(f"{event.get('type')}: no {field}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise Malformed(f"{event.get('type')}: {field} is {value!r}, not a finite number of seconds")
    return float(value)


def _moment(event: dict[str, Any]) -> None:
    at = _number(event, "timestamp", required=True)
    if not EARLIEST <= at <= LATEST:  # type: ignore[operator]
        raise Malformed(f"{event.get('type')}: timestamp {at!r} is not between 2000 and 2100 in epoch seconds")


def checked(event: Any) -> dict[str, Any] | None:
    """The event with its fields checked, or None for a type the watcher does not use;
    Malformed (Oversized) with the reason otherwise. Text fields Celery sends as reprs (args,
    kwargs, result, exception, traceback) may be long; past MAX_EVENT_CHARS together, Oversized."""
    if not isinstance(event, dict):
        raise Malformed(f"an event is an object, not {type(event).__name__}")
    kind = event.get("type")
    if not isinstance(kind, str):
        raise Malformed("an event without a type")
    if kind not in TASK_EVENTS and kind not in WORKER_EVENTS:
        return None
    size = sum(len(v) for v in event.values() if isinstance(v, str))
    if size > MAX_EVENT_CHARS:
        raise Oversized(f"{kind}: {size} characters of text, over {MAX_EVENT_CHARS}")
    _text(event, "hostname", MAX_NAME, required=kind in WORKER_EVENTS)
    _moment(event)
    if kind in WORKER_EVENTS:
        for field in ("active", "processed"):
            value = event.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise Malformed(f"{kind}: {field} is {value!r}, not a count")
        return event
    _text(event, "uuid", MAX_ID, required=True)
    for field in ("root_id", "parent_id"):
        _text(event, field, MAX_ID)
    for field in ("name", "queue", "exchange", "routing_key"):
        _text(event, field, MAX_NAME)
    for field in ("args", "kwargs", "exception", "traceback", "result", "eta", "expires"):
        _text(event, field, MAX_EVENT_CHARS)
    _number(event, "runtime")
    retries = event.get("retries")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries < 1_000_000):
        raise Malformed(f"{kind}: retries is {retries!r}, not a count")
    return event

"""Reading back what the collector stored, for the tracing tests."""

from __future__ import annotations

from tests.support.waiting import wait_for
from tracing import setup
from tracing.models import Span


def flush_here() -> None:
    """Export the spans this test process made (sends, saga and request roots) now."""
    assert setup.flush(), "spans of the test process did not leave within the flush timeout"


def spans_where(**filters: object) -> list[Span]:
    return list(Span.objects.filter(**filters).order_by("start_time", "id"))


def wait_spans(n: int, *, timeout: float = 30.0, what: str = "", **filters: object) -> list[Span]:
    flush_here()
    return wait_for(lambda: (found := spans_where(**filters)) and len(found) >= n and found, timeout=timeout, what=what or f"{n} spans where {filters}")

"""A trace as a tree of its spans: parents over children in start order, the critical path, and
the time each consumer's message waited in its queue.

`trace_tree(id)` holds whole stored spans; `trace_tree(id, light=True)` only what drawing the
tree needs (no attributes, events or links: at 20,000 spans, reading and decoding those was most
of the answer's time), for the trace page, which asks for one span in full when it is picked.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models.fields.json import KeyTransform

from tracing.critical_path import critical_path
from tracing.models import Span, SpanLink

PRODUCER, CONSUMER = 3, 4
ERROR = 2
QUEUE_WAIT_MS = "flowscope.queue_wait_ms"  # an attached app's consumer span says its wait itself
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


@dataclasses.dataclass(slots=True)
class SpanRow:
    """A stored span without its attributes, events and links (all but the queue wait it says)."""

    span_id: str
    parent_span_id: str
    name: str
    kind: int
    service: str
    start_time: datetime
    duration_us: int
    status_code: int
    said_wait_ms: Any = None


LIGHT = ("span_id", "parent_span_id", "name", "kind", "service", "start_time", "duration_us", "status_code")


@dataclasses.dataclass
class SpanNode:
    span: Span | SpanRow
    children: list[SpanNode] = dataclasses.field(default_factory=list)
    parent: SpanNode | None = None


def _us(span: Span | SpanRow) -> int:
    """Microseconds since the epoch, exactly (a float timestamp may be one off)."""
    return (span.start_time - EPOCH) // ONE_US


@dataclasses.dataclass
class TraceTree:
    trace_id: str
    roots: list[SpanNode]
    spans: int
    links_out: list[dict[str, str]]  # spans here that link to other traces
    links_in: list[dict[str, str]]  # spans of other traces that link here

    def walk(self) -> list[tuple[int, Span | SpanRow]]:
        """Every span, depth first in start order, with its depth."""
        return [(depth, node.span) for depth, node in self.walk_nodes()]

    def walk_nodes(self) -> list[tuple[int, SpanNode]]:
        out: list[tuple[int, SpanNode]] = []
        stack = [(0, node) for node in reversed(self.roots)]
        while stack:
            depth, node = stack.pop()
            out.append((depth, node))
            stack.extend((depth + 1, child) for child in reversed(node.children))
        return out

    def critical_path(self) -> set[str]:
        """The span ids of the chain that decides when the trace ends (tracing.critical_path)."""
        path = critical_path(self.roots, start=lambda n: _us(n.span), end=lambda n: _us(n.span) + n.span.duration_us)
        return {node.span.span_id for node in path}


def queue_wait_ms(node: SpanNode) -> float | None:
    """How long a consumer's message waited in its queue: from the end of its parent `send` (the
    publish) to its own start; an attached app's consumer span says it in an attribute. None for
    any other span. Never negative: a publish confirmed after the consumer began waited 0."""
    span = node.span
    if span.kind != CONSUMER:
        return None
    parent = node.parent
    if parent is not None and parent.span.kind == PRODUCER:
        return max(0, _us(span) - _us(parent.span) - parent.span.duration_us) / 1000
    said = span.said_wait_ms if isinstance(span, SpanRow) else span.attributes.get(QUEUE_WAIT_MS) if isinstance(span.attributes, dict) else None
    return float(said) if isinstance(said, int | float) and not isinstance(said, bool) and said >= 0 else None


def trace_tree(trace_id: str, *, light: bool = False) -> TraceTree | None:
    """The stored trace as a tree; None when no span of it is stored. A span whose parent is not
    stored (yet, or ever) is a root."""
    stored = Span.objects.filter(trace_id=trace_id).order_by("start_time", "id")
    spans: list[Span | SpanRow] = [SpanRow(*row) for row in stored.values_list(*LIGHT, KeyTransform(QUEUE_WAIT_MS, "attributes"))] if light else list(stored)
    if not spans:
        return None
    nodes = {s.span_id: SpanNode(s) for s in spans}
    roots = []
    for node in nodes.values():
        parent = nodes.get(node.span.parent_span_id)
        if parent is node:  # a span naming itself as its parent: a root, not a loop
            parent = None
        node.parent = parent
        (parent.children if parent else roots).append(node)
    roots += _ring_roots(nodes, roots)
    links_out = [{"span_id": k.span_id, "trace_id": k.linked_trace_id, "linked_span_id": k.linked_span_id} for k in SpanLink.objects.filter(trace_id=trace_id)]
    links_in = [{"span_id": k.linked_span_id, "trace_id": k.trace_id, "linking_span_id": k.span_id} for k in SpanLink.objects.filter(linked_trace_id=trace_id)]
    return TraceTree(trace_id=trace_id, roots=roots, spans=len(spans), links_out=links_out, links_in=links_in)


def _ring_roots(nodes: dict[str, SpanNode], roots: list[SpanNode]) -> list[SpanNode]:
    """Spans whose parents name each other in a ring (a foreign client's bug, over OTLP) hang
    from no root and would not be shown: the earliest of each ring becomes a root."""
    seen: set[int] = set()

    def take(start: list[SpanNode]) -> None:
        stack = list(start)
        while stack:
            node = stack.pop()
            seen.add(id(node))
            stack.extend(node.children)

    take(roots)
    found = []
    for node in nodes.values():  # in start order
        if id(node) not in seen:
            assert node.parent is not None
            node.parent.children.remove(node)
            node.parent = None
            found.append(node)
            take([node])
    return found

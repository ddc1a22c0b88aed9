"""Two traces of one flow side by side: a good run (`a`) and the run in question (`b`).

Spans are aligned by their path, the names from the root down to them ("saga trip / send
flight / process flight"); where a path occurs more than once in a trace (a fan-out, a retry)
its occurrences pair up in start order, the first with the first. A span of `a` with no partner
in `b` is *missing* from `b`, one of `b` with none in `a` is *extra*; a pair is *matched*, and
its change is b's duration minus a's. Rows come biggest change first: a missing or extra span
counts its whole duration as its change.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import datetime
from typing import Any

from tracing.trace_tree import TraceTree


@dataclasses.dataclass(frozen=True)
class Side:
    span_id: str
    start_ms: float
    duration_ms: float
    status_code: int


def _sides(tree: TraceTree) -> tuple[dict[tuple[tuple[str, ...], int], tuple[int, Side]], float]:
    """Each span under its (path, occurrence) key with its place in the tree; and the trace's duration."""
    walked = tree.walk()
    first: datetime = min(s.start_time for _, s in walked)
    ends = [(s.start_time - first).total_seconds() * 1000 + s.duration_us / 1000 for _, s in walked]
    names: list[str] = []
    seen: dict[tuple[str, ...], int] = defaultdict(int)
    keyed = {}
    for order, (depth, span) in enumerate(walked):
        del names[depth:]
        names.append(span.name)
        path = tuple(names)
        keyed[(path, seen[path])] = (order, Side(span.span_id, round((span.start_time - first).total_seconds() * 1000, 3), span.duration_us / 1000, span.status_code))
        seen[path] += 1
    return keyed, round(max(ends), 3)


def compare_traces(a: TraceTree, b: TraceTree, *, limit: int = 500) -> dict[str, Any]:
    """The aligned rows (at most `limit`, biggest change first) and the counts of each kind."""
    in_a, a_ms = _sides(a)
    in_b, b_ms = _sides(b)
    rows = []
    for key in dict.fromkeys([*in_a, *in_b]):  # a's tree order, then b's extras in theirs
        (path, occurrence) = key
        order_a, side_a = in_a.get(key, (None, None))
        order_b, side_b = in_b.get(key, (None, None))
        if side_a and side_b:
            state, change = "matched", side_b.duration_ms - side_a.duration_ms
            percent = round(100 * change / side_a.duration_ms, 1) if side_a.duration_ms else None
        elif side_a:
            state, change, percent = "missing", -side_a.duration_ms, None
        else:
            assert side_b is not None
            state, change, percent = "extra", side_b.duration_ms, None
        rows.append(
            {
                "path": list(path),
                "name": path[-1],
                "depth": len(path) - 1,
                "occurrence": occurrence,
                "state": state,
                "a": dataclasses.asdict(side_a) if side_a else None,
                "b": dataclasses.asdict(side_b) if side_b else None,
                "change_ms": round(change, 3),
                "change_pct": percent,
                "order": order_a if order_a is not None else len(in_a) + (order_b or 0),
            }
        )
    counts = {state: sum(1 for r in rows if r["state"] == state) for state in ("matched", "missing", "extra")}
    rows.sort(key=lambda r: (-abs(r["change_ms"]), r["order"]))
    return {
        "a": {"trace_id": a.trace_id, "spans": a.spans, "duration_ms": a_ms},
        "b": {"trace_id": b.trace_id, "spans": b.spans, "duration_ms": b_ms},
        "change_ms": round(b_ms - a_ms, 3),
        "change_pct": round(100 * (b_ms - a_ms) / a_ms, 1) if a_ms else None,
        **counts,
        "rows": rows[:limit],
    }

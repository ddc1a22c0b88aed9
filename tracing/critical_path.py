"""The critical path of a trace: the chain of spans that decides when the trace ends.

Jaeger's rule, widened for asynchronous hops. Each span *reaches* as far as the latest end in
its subtree: a `send` ends in a millisecond, but its `process` (its child) and everything that
follows reach much further, and that is what the trace waits for. Starting from the roots (as
children of one imaginary span) with the cursor at the trace's end:

1. the span marks itself;
2. of its children, take the one reaching furthest without passing the cursor, mark it and
   walk it the same way; move the cursor back to that child's start;
3. repeat 2 with the children that reach no further than the new cursor: work the span waited
   on one after another (sequential children) joins the path, work that ran alongside a
   longer child does not.

A synchronous trace gets Jaeger's path; a chain of sends and processes is marked end to end.
Iterative, not recursive: a long asynchronous chain is as deep as it is long.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Timed(Protocol):
    children: Sequence[Timed]


Node = TypeVar("Node", bound=Timed)


def critical_path(roots: Sequence[Node], *, start: Callable[[Node], int], end: Callable[[Node], int]) -> list[Node]:
    """The spans on the critical path, in no particular order; `start` and `end` in any one unit."""
    order: list[Node] = []  # parents before children: walked backwards it is a post-order
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)  # type: ignore[arg-type]
    reach: dict[int, int] = {}
    for node in reversed(order):
        reach[id(node)] = max([end(node), *(reach[id(c)] for c in node.children)])

    marked: list[Node] = []

    def waited_on(children: Sequence[Node], cursor: int) -> list[Node]:
        picked = []
        for child in sorted(children, key=lambda c: reach[id(c)], reverse=True):
            if reach[id(child)] <= cursor:
                picked.append(child)
                cursor = start(child)
        return picked

    todo = waited_on(roots, max((reach[id(r)] for r in roots), default=0))
    while todo:
        node = todo.pop()
        marked.append(node)
        todo.extend(waited_on(node.children, reach[id(node)]))  # type: ignore[arg-type]
    return marked

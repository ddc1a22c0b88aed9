"""One trace's page (its tree, drawn by static/console/trace.js) and two traces compared."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from console.pages import TRACE_ID, page, page_context
from tracing.models import Span
from tracing.trace_compare import compare_traces
from tracing.trace_tree import trace_tree

COMPARED_ROWS = 2000


@page()
def trace(request: HttpRequest, trace_id: str) -> HttpResponse:
    if not TRACE_ID.match(trace_id):
        return render(request, "console/error.html", page_context(request, message="a trace id is 32 lowercase hexadecimal characters"), status=400)
    count = Span.objects.filter(trace_id=trace_id).count()
    if not count:
        raise Http404(f"no spans stored for trace {trace_id}")
    return render(request, "console/trace.html", page_context(request, nav="traces", trace_id=trace_id, span_count=count))


@page()
def compare(request: HttpRequest) -> HttpResponse:
    """/traces/compare/?a=<good run>&b=<run in question>; the form alone without both."""
    a, b = request.GET.get("a", "").strip(), request.GET.get("b", "").strip()
    context = page_context(request, nav="traces", a=a, b=b)
    if not (a and b):
        return render(request, "console/trace_compare.html", context)

    def refuse(message: str, status: int) -> HttpResponse:
        return render(request, "console/trace_compare.html", {**context, "refused": message}, status=status)

    for name, value in (("a", a), ("b", b)):
        if not TRACE_ID.match(value):
            return refuse(f"{name}: a trace id is 32 lowercase hexadecimal characters", 400)
    if a == b:
        return refuse("b: names the same trace as a; compare two different traces", 400)
    tree_a, tree_b = trace_tree(a, light=True), trace_tree(b, light=True)
    for name, value, tree in (("a", a, tree_a), ("b", b, tree_b)):
        if tree is None:
            return refuse(f"{name}: no spans stored for trace {value}", 404)
    assert tree_a is not None and tree_b is not None
    compared = compare_traces(tree_a, tree_b, limit=COMPARED_ROWS)
    return render(request, "console/trace_compare.html", {**context, "compared": compared, **_sections(compared["rows"])})


def _sections(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows in three tables, each biggest change first, with the length of each change's bar."""
    widest = max((abs(r["change_ms"]) for r in rows), default=0) or 1
    for r in rows:
        r["bar"] = round(100 * abs(r["change_ms"]) / widest, 1)
        r["above"] = " / ".join(r["path"][:-1])
    return {
        "missing": [r for r in rows if r["state"] == "missing"],
        "extra": [r for r in rows if r["state"] == "extra"],
        "matched": [r for r in rows if r["state"] == "matched"],
    }

"""One trace's page: its waterfall, drawn by static/console/trace.js."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from console.pages import TRACE_ID, page, page_context
from tracing.models import Span


@page()
def trace(request: HttpRequest, trace_id: str) -> HttpResponse:
    if not TRACE_ID.match(trace_id):
        return render(request, "console/error.html", page_context(request, message="a trace id is 32 lowercase hexadecimal characters"), status=400)
    count = Span.objects.filter(trace_id=trace_id).count()
    if not count:
        raise Http404(f"no spans stored for trace {trace_id}")
    return render(request, "console/trace.html", page_context(request, nav="traces", trace_id=trace_id, span_count=count))

"""The Traces page: finding traces."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from console.pages import page, page_context
from flows.operate.selectors import known_apps
from tracing.selectors import recent_traces, traces_for


@page()
def traces(request: HttpRequest) -> HttpResponse:
    """A search by message or conversation (within one app if one is chosen), or an app's latest traces."""
    q = {k: request.GET.get(k, "").strip() for k in ("trace_id", "message_id", "correlation_id", "app")}
    if q["trace_id"]:
        return redirect("trace", trace_id=q["trace_id"].lower())
    if q["message_id"] or q["correlation_id"]:
        results = traces_for(message_id=q["message_id"], correlation_id=q["correlation_id"], app=q["app"])
    elif q["app"]:
        results = recent_traces(app=q["app"], limit=50)
    else:
        results = []
    searched = bool(q["message_id"] or q["correlation_id"] or q["app"])
    return render(request, "console/traces.html", page_context(request, nav="traces", q=q, results=results, searched=searched, apps=known_apps()))

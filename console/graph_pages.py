"""The flow graph page: the live frame's graph, drawn by static/console/graph.js."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console import live
from console.pages import page, page_context
from flows.operate.selectors import OWN_FLOWS, known_apps


@page()
def graph(request: HttpRequest) -> HttpResponse:
    """Every app's edges come with each live frame; ?app= narrows what the page draws (the select
    lists apps the console knows and apps with edges in the frame)."""
    frame = live.snapshot()
    chosen = request.GET.get("app", "").strip()[:100]
    apps = sorted(set(known_apps()) | {n["app"] for n in frame["graph"]["nodes"] if n["app"]})
    return render(request, "console/graph.html", page_context(request, frame=frame, nav="graph", app=chosen, apps=apps, own_flows=OWN_FLOWS, graph_filter={"app": chosen, "own": OWN_FLOWS}))

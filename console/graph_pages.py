"""The flow graph page: the live frame's graph (or a longer window's), drawn by static/console/graph.js.

The whole view is in the query, so a pasted link opens the same graph: ?app= narrows it to one
app, ?window= picks the time window in minutes, ?group= groups nodes by app or by flow, and
?select= names the node or edge whose path is highlighted.
"""

from __future__ import annotations

from datetime import timedelta

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console import live
from console.pages import page, page_context
from flows.operate.selectors import OWN_FLOWS, known_apps
from tracing.selectors import flow_graph

WINDOWS = {5: "last 5 minutes", 60: "last hour", 24 * 60: "last 24 hours"}
LIVE_WINDOW = 5  # the window every live frame carries
GROUPINGS = {"app": "app", "flow": "flow", "none": "nothing"}


def _refused(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "console/error.html", page_context(request, message=message), status=400)


@page()
def graph(request: HttpRequest) -> HttpResponse:
    """Every app's edges come with each live frame; ?app= narrows what the page draws (the select
    lists apps the console knows and apps with edges in the frame). A window other than the live
    frame's is read here for the first paint and refreshed by the page."""
    chosen = request.GET.get("app", "").strip()[:100]
    window_text = request.GET.get("window", str(LIVE_WINDOW))
    window = int(window_text) if window_text.isdigit() else -1
    if window not in WINDOWS:
        return _refused(request, f"window must be one of {', '.join(map(str, WINDOWS))} (minutes), not {window_text[:20]!r}")
    group = request.GET.get("group", "app")
    if group not in GROUPINGS:
        return _refused(request, f"group must be one of {', '.join(GROUPINGS)}, not {group[:20]!r}")
    select = request.GET.get("select", "")[:1000]
    frame = live.snapshot()
    if window != LIVE_WINDOW:
        frame = {**frame, "graph": flow_graph(window=timedelta(minutes=window), app=live.graph_app(chosen))}
    apps = sorted(set(known_apps()) | {n["app"] for n in frame["graph"]["nodes"] if n["app"]})
    return render(
        request,
        "console/graph.html",
        page_context(
            request,
            frame=frame,
            nav="graph",
            app=chosen,
            apps=apps,
            own_flows=OWN_FLOWS,
            window=window,
            windows=list(WINDOWS.items()),
            group=group,
            groupings=list(GROUPINGS.items()),
            select=select,
            graph_filter={"app": chosen, "own": OWN_FLOWS},
            graph_view={"window": window, "group": group, "select": select},
        ),
    )

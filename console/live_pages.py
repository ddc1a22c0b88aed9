"""The workers and tasks pages of attached apps: rendered with the data of the moment, then kept
live by the console's socket (its frames carry the workers and a mark that moves when a task
changes; the tasks page re-fetches its filtered list from the API when the mark moves)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console import live
from console.pages import page, page_context
from flows.models import LiveTask
from flows.operate.live_selectors import TaskFilter, tasks_page, tasks_shown
from flows.operate.live_tasks import apps_known
from flows.operate.revokes import SIGNALS
from flows.operate.selectors import BadCursor


@page()
def workers(request: HttpRequest) -> HttpResponse:
    return render(request, "console/workers.html", page_context(request, nav="workers", frame=live.snapshot(), app=request.GET.get("app", "").strip()))


@page()
def tasks(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "").strip()
    filters = TaskFilter(
        app=request.GET.get("app", "").strip(),
        state=state if state in LiveTask.State.values else "",
        name=request.GET.get("name", "").strip(),
        worker=request.GET.get("worker", "").strip(),
    )
    cursor = request.GET.get("cursor", "")
    try:
        rows, next_cursor = tasks_page(filters, cursor=cursor, limit=50)
    except BadCursor as exc:
        return render(request, "console/error.html", page_context(request, message=str(exc)), status=400)
    query = request.GET.copy()
    query.pop("cursor", None)
    return render(
        request,
        "console/tasks.html",
        page_context(
            request,
            nav="tasks",
            filters=filters,
            states=LiveTask.State.values,
            apps=apps_known(),
            signals=SIGNALS,
            first_page=not cursor,
            next_cursor=next_cursor,
            query=query.urlencode(),
            initial={"items": tasks_shown(rows), "filters": {k: v for k, v in vars(filters).items() if v}, "first_page": not cursor},
        ),
    )

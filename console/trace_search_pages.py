"""The Traces page: the trace search, every filter, the order and the page in the URL, so a
pasted link opens the same view (filters submitted through a GET form)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from pydantic import ValidationError

from console.api.trace_search import TraceSearchQuery, trace_query
from console.pages import page, page_context
from flows.operate.selectors import OWN_FLOWS, known_apps
from tracing.search import BadSearch, search_traces

PAGE_SIZE = 50
SINGLE = [name for name in TraceSearchQuery.model_fields if name != "attr"]


def _params(get: QueryDict) -> dict[str, Any]:
    """The form's fields as the search takes them: an empty field is no filter."""
    values: dict[str, Any] = {name: get[name].strip() for name in SINGLE if get.get(name, "").strip()}
    values["attr"] = [a.strip() for a in get.getlist("attr") if a.strip()]
    return values


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "query"
    return f"{field}: {first['msg']}"


def _next_link(get: QueryDict, cursor: str) -> str:
    query = get.copy()
    query["cursor"] = cursor
    return "?" + query.urlencode()


@page()
def traces(request: HttpRequest) -> HttpResponse:
    """The latest traces, newest first, narrowed by any mix of the filters; a trace id opens
    that trace."""
    trace_id = request.GET.get("trace_id", "").strip()
    if trace_id:
        return redirect("trace", trace_id=trace_id.lower())
    values = _params(request.GET)
    context = {"nav": "traces", "q": {**dict.fromkeys(SINGLE, ""), **values}, "apps": known_apps(), "own_flows": OWN_FLOWS, "results": [], "next": "", "problem": ""}
    try:
        rows, cursor = search_traces(trace_query(TraceSearchQuery.model_validate(values)), cursor=request.GET.get("cursor", "").strip(), limit=PAGE_SIZE)
    except ValidationError as exc:
        context["problem"] = _problem(exc)
    except BadSearch as exc:
        context["problem"] = str(exc)
    else:
        context.update(results=[{**r, "bar": {k: round(v * 100, 1) for k, v in r["shares"].items()}} for r in rows], next=_next_link(request.GET, cursor) if cursor else "")
    return render(request, "console/traces.html", page_context(request, **context), status=400 if context["problem"] else 200)

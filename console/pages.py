"""The console's HTML pages. Each loads, checks the role, renders; actions go through the JSON API."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_safe

from console import live
from console.alerts.silences import group_silences
from console.models import AuditEntry, Role
from console.presenters import dead_letter_detail, dead_letter_summary, saga_detail, saga_summary
from console.roles import principal_for_user
from flows.models import DeadLetter, SagaInstance
from flows.operate.selectors import OWN_FLOWS, BadCursor, DeadLetterFilter, dead_letters_page, known_apps, sagas_page
from tracing.models import Span

View = Callable[..., HttpResponse]
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def page(role: str = Role.VIEWER) -> Callable[[View], View]:
    """Signed in, holding `role`, and reading: pages change nothing (actions go through the
    API), so any method but GET and HEAD is a 405."""

    def decorate(view: View) -> View:
        @require_safe
        @login_required
        @wraps(view)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            principal = principal_for_user(request.user)
            if not principal.can(role):
                return render(request, "console/forbidden.html", {"needed": role, "principal": principal}, status=403)
            request.principal = principal  # type: ignore[attr-defined]
            # Every page's filters come from its query: PostgreSQL's text holds no NUL, so such a
            # filter would fail inside the query as a 500. Refused here once for every page.
            named = next((name for name, values in request.GET.lists() if any("\x00" in v for v in [name, *values])), None)
            if named is not None:
                return render(request, "console/error.html", page_context(request, message=f"the query's {named!r} contains a NUL character, which no stored name, id or app holds"), status=400)
            return view(request, *args, **kwargs)

        return checked

    return decorate


def page_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    principal = request.principal  # type: ignore[attr-defined]
    return {"principal": principal, "can_operate": principal.can(Role.OPERATOR), **extra}


@page()
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "console/overview.html", page_context(request, frame=live.snapshot(), nav="overview"))


def _filters(request: HttpRequest) -> DeadLetterFilter:
    def when(name: str) -> Any:
        raw = request.GET.get(name, "").strip()
        return parse_datetime(raw) if raw else None

    state = request.GET.get("state", "dead")
    return DeadLetterFilter(
        since=when("since"),
        until=when("until"),
        message_type=request.GET.get("message_type", "").strip(),
        queue=request.GET.get("queue", "").strip(),
        consumer=request.GET.get("consumer", "").strip(),
        state=state if state in DeadLetter.State.values else "",
        fingerprint=request.GET.get("fingerprint", "").strip(),
        app=request.GET.get("app", "").strip()[:100],
    )


@page()
def dead_letters(request: HttpRequest) -> HttpResponse:
    filters = _filters(request)
    try:
        rows, next_cursor = dead_letters_page(filters, cursor=request.GET.get("cursor", ""), limit=50)
    except BadCursor as exc:
        return render(request, "console/error.html", page_context(request, message=str(exc)), status=400)
    query = request.GET.copy()
    query.pop("cursor", None)
    return render(
        request,
        "console/dead_letters.html",
        page_context(
            request,
            nav="dead",
            rows=[dead_letter_summary(d) for d in rows],
            filters=filters,
            states=DeadLetter.State.values,
            apps=known_apps(),
            own_flows=OWN_FLOWS,
            next_cursor=next_cursor,
            query=query.urlencode(),
            filter_dict=(
                {
                    k: v
                    for k, v in {
                        "since": filters.since.isoformat() if filters.since else None,
                        "until": filters.until.isoformat() if filters.until else None,
                        "message_type": filters.message_type,
                        "queue": filters.queue,
                        "consumer": filters.consumer,
                        "fingerprint": filters.fingerprint,
                        "state": filters.state,
                        "app": filters.app,
                    }.items()
                    if v
                }
            ),
        ),
    )


@page()
def dead_letter(request: HttpRequest, dead_letter_id: int) -> HttpResponse:
    detail = dead_letter_detail(get_object_or_404(DeadLetter, pk=dead_letter_id))
    return render(
        request,
        "console/dead_letter.html",
        page_context(
            request,
            nav="dead",
            d=detail,
            silence=group_silences([detail["fingerprint"]]).get(detail["fingerprint"]),
            payload_json=json.dumps(detail["envelope"].get("payload"), indent=2, sort_keys=True),
            envelope_json=json.dumps({k: v for k, v in detail["envelope"].items() if k != "payload"}, indent=2, sort_keys=True),
        ),
    )


@page()
def sagas(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    saga_type = request.GET.get("saga_type", "")
    rows = sagas_page(saga_type=saga_type, state=state if state in SagaInstance.State.values else "", limit=100)
    return render(request, "console/sagas.html", page_context(request, nav="sagas", rows=[saga_summary(s) for s in rows], states=SagaInstance.State.values, state=state, saga_type=saga_type))


@page()
def saga(request: HttpRequest, saga_id: uuid.UUID) -> HttpResponse:
    detail = saga_detail(get_object_or_404(SagaInstance, pk=saga_id))
    return render(request, "console/saga.html", page_context(request, nav="sagas", s=detail, data_json=json.dumps(detail["data"], indent=2, sort_keys=True)))


@page()
def search(request: HttpRequest) -> HttpResponse:
    """Any id to the page that shows it: trace, saga, dead letter, message or conversation."""
    q = request.GET.get("q", "").strip()
    if not q:
        return redirect("overview")
    if TRACE_ID.match(q.lower()) and Span.objects.filter(trace_id=q.lower()).exists():
        return redirect("trace", trace_id=q.lower())
    if q.isdigit() and DeadLetter.objects.filter(pk=int(q)).exists():
        return redirect("dead-letter", dead_letter_id=int(q))
    try:
        as_uuid = uuid.UUID(q)
    except ValueError:
        as_uuid = None
    if as_uuid is not None:
        if SagaInstance.objects.filter(pk=as_uuid).exists():
            return redirect("saga", saga_id=as_uuid)
        # A message: its page shows every handler's status for it, dead letters linked.
        if DeadLetter.objects.filter(message_id=as_uuid).exists() or Span.objects.filter(message_id=str(as_uuid)).exists():
            return redirect("message", message_id=str(as_uuid))
    if Span.objects.filter(correlation_id=q).exists() or SagaInstance.objects.filter(correlation_id=q).exists():
        return redirect(f"/traces/?correlation_id={q}")
    return render(request, "console/error.html", page_context(request, message=f"nothing known by {q!r}: no trace, saga, dead letter, message or conversation"), status=404)


@page()
def audit_log(request: HttpRequest) -> HttpResponse:
    entries = Paginator(AuditEntry.objects.all(), 100).get_page(request.GET.get("page"))
    return render(request, "console/audit.html", page_context(request, nav="audit", entries=entries))

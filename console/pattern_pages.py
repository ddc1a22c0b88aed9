"""Pages that know the patterns: a message (each subscriber's status), a queue (its competing
consumers and the spread of work) and a message type (schema versions in use, upcasts, and a
request type's responder timeouts and late replies). The window is in the query (?window=
minutes), so a pasted link opens the same view; the same reads answer /api/v1/messages/{id},
/api/v1/queues/{name} and /api/v1/types/{name}."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.api.patterns import DEFAULT_WINDOW, NAME, WINDOW_MINUTES
from console.pages import page, page_context
from flows.operate.pattern_selectors import message_view, queue_view, type_view

WINDOWS = {5: "last 5 minutes", 60: "last hour", 24 * 60: "last 24 hours", 7 * 24 * 60: "last 7 days"}


def _refused(request: HttpRequest, message: str, status: int = 400) -> HttpResponse:
    return render(request, "console/error.html", page_context(request, message=message), status=status)


def _window(request: HttpRequest) -> int | None:
    text = request.GET.get("window", str(DEFAULT_WINDOW))
    minutes = int(text) if text.isdigit() else -1
    return minutes if WINDOW_MINUTES[0] <= minutes <= WINDOW_MINUTES[1] else None


def _window_refused(request: HttpRequest) -> HttpResponse:
    shown = request.GET.get("window", "")[:20]
    return _refused(request, f"window must be a whole number of minutes from {WINDOW_MINUTES[0]} to {WINDOW_MINUTES[1]}, not {shown!r}")


def _windows(current: int) -> list[tuple[int, str]]:
    return sorted({**WINDOWS, current: WINDOWS.get(current, f"last {current} minutes")}.items())


@page()
def message(request: HttpRequest, message_id: str) -> HttpResponse:
    try:
        parsed = uuid.UUID(message_id)
    except ValueError:
        return _refused(request, f"message_id must be a UUID, not {message_id[:40]!r}")
    view = message_view(parsed)
    if view is None:
        return _refused(request, f"no span, dead letter or delivery status names message {parsed}", status=404)
    return render(request, "console/message.html", page_context(request, m=view))


@page()
def queue(request: HttpRequest, name: str) -> HttpResponse:
    if not NAME.match(name):
        return _refused(request, f"the queue name must be 1 to 200 letters, digits, '.', '_' or '-', not {name[:40]!r}")
    window = _window(request)
    if window is None:
        return _window_refused(request)
    view = queue_view(name, window=timedelta(minutes=window))
    if view is None:
        return _refused(request, f"no handler consumes queue {name!r} and no delivery from it in the last {window} minutes", status=404)
    return render(request, "console/queue.html", page_context(request, q=view, window=window, windows=_windows(window)))


@page()
def message_type(request: HttpRequest, name: str) -> HttpResponse:
    if not NAME.match(name):
        return _refused(request, f"the type name must be 1 to 200 letters, digits, '.', '_' or '-', not {name[:40]!r}")
    window = _window(request)
    if window is None:
        return _window_refused(request)
    view = type_view(name, window=timedelta(minutes=window))
    if view is None:
        return _refused(request, f"no message type {name!r} is declared or seen in the last {window} minutes", status=404)
    return render(request, "console/message_type.html", page_context(request, t=view, window=window, windows=_windows(window)))

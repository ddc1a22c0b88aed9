"""The Alerts page: rules with their state, the rule and channel forms, channels with a test
button, silences, and the alert history with each alert's deliveries. Drawn and kept fresh by
static/console/alerts.js from the alerts API; every change goes through that API."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.alerts.models import ChannelKind, RuleKind, Scope
from console.pages import page, page_context


@page()
def alerts(request: HttpRequest) -> HttpResponse:
    kinds = [{"value": k.value, "label": k.label} for k in RuleKind]
    return render(request, "console/alerts.html", page_context(request, nav="alerts", kinds=kinds, scopes=Scope.values, channel_kinds=ChannelKind.values))

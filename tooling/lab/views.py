"""The Lab page: the last `manage.py lab` run, in the console of an installation that has the lab."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.pages import page, page_context
from tooling.lab import report
from tooling.lab.models import LabRun


@page()
def lab(request: HttpRequest) -> HttpResponse:
    """The last `manage.py lab` run: its table and, per scenario, both styles over time."""
    run = LabRun.latest_run()
    extra: dict[str, Any] = {"run": run, "nav": "lab", "columns": report.TABLE_KEYS}
    if run is not None:
        extra.update(rows=report.table_rows(run), charts=report.chart_data(run), setup=run.figures.get("setup", {}), machine=run.figures.get("machine", {}))
    return render(request, "lab/lab.html", page_context(request, **extra))

"""The last lab run as the Lab page shows it: table rows and the data for its charts."""

from __future__ import annotations

from typing import Any

from tooling.lab.models import LabRun
from tooling.lab.scenarios import STYLES

TABLE_KEYS = (
    "completed_per_s",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "caller_p99_ms",
    "caller_failures",
    "sent",
    "completed",
    "failed",
    "lost",
    "partial",
    "duplicate_effects",
    "recovery_s",
    "backpressure_activations",
)


def table_rows(run: LabRun) -> list[dict[str, Any]]:
    rows = []
    for name, scenario in run.scenarios.items():
        for style in STYLES:
            figures = scenario.get(style) or {}
            rows.append({"scenario": name, "title": scenario.get("title", name), "style": style, "first": style == STYLES[0], "cells": [figures.get(k) for k in TABLE_KEYS]})
    return rows


def chart_data(run: LabRun) -> list[dict[str, Any]]:
    """Per scenario: its title, the fault window (seconds from the first order) and each style's series."""
    charts = []
    for name, scenario in run.scenarios.items():
        windows = [w for style in STYLES if (w := (scenario.get(style) or {}).get("fault_window_s"))]
        window = [min(w[0] for w in windows), max(w[1] for w in windows)] if windows else None
        charts.append(
            {
                "name": name,
                "title": scenario.get("title", name),
                "fault": window,
                "styles": {style: (scenario.get(style) or {}).get("series", {}) for style in STYLES},
            }
        )
    return charts

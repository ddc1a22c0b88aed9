"""Each lab run as measured: the per-scenario figures and the time series the Lab page draws."""

from __future__ import annotations

from typing import Any

from django.db import models


class LabRun(models.Model):
    started_at = models.DateTimeField()
    seconds = models.FloatField(help_text="how long the whole run took")
    quick = models.BooleanField(default=False)
    figures = models.JSONField(help_text="what `manage.py lab --json` writes: scenarios, styles, machine, commit")

    class Meta:
        ordering = ["-started_at"]
        get_latest_by = "started_at"

    def __str__(self) -> str:
        return f"lab run {self.started_at:%Y-%m-%d %H:%M} ({'quick' if self.quick else 'full'})"

    @classmethod
    def latest_run(cls) -> LabRun | None:
        return cls.objects.order_by("-started_at", "-pk").first()

    @property
    def scenarios(self) -> dict[str, Any]:
        return self.figures.get("scenarios", {})

"""Serve plotly.js from the installed plotly package (never a CDN), as static/vendor/plotly.min.js."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PLOTLY_DIR = Path(plotly.__file__).resolve().parent / "package_data"
FILES = {"vendor/plotly.min.js": "plotly.min.js"}


class PlotlyFinder(BaseFinder):
    storage = FileSystemStorage(location=str(PLOTLY_DIR))
    storage.prefix = "vendor"  # type: ignore[attr-defined]  # collectstatic places the files under it

    def check(self, **kwargs: Any) -> list[Any]:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:
        name = FILES.get(path)
        if name is None:
            return [] if find_all else ""
        full = str(PLOTLY_DIR / name)
        return [full] if find_all else full

    def list(self, ignore_patterns: Any) -> Any:
        for name in FILES.values():
            yield name, self.storage

"""Pages an installed app adds to the console, such as the pattern lab where it is installed.

An app's AppConfig names them: `console_urls` (a URLconf module, included at the root) and
`console_nav` (label, URL name and nav key of its link in the header). The console itself
imports none of them, so production, which installs no tooling, has none of them.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.http import HttpRequest
from django.urls import URLResolver, include, path


def urls() -> list[URLResolver]:
    return [path("", include(config.console_urls)) for config in apps.get_app_configs() if getattr(config, "console_urls", None)]


def nav(request: HttpRequest) -> dict[str, Any]:
    """Context processor: the header links of installed extensions."""
    items = [getattr(config, "console_nav", None) for config in apps.get_app_configs()]
    return {"extension_nav": [{"label": label, "url_name": url_name, "key": key} for label, url_name, key in filter(None, items)]}

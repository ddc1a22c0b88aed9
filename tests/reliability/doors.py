"""The doors of the console, found by enumeration: Django's URL resolver for pages and the rest,
the API's own OpenAPI description for its operations. A route added tomorrow is found tomorrow."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from django.http import HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.people import client_for

SAFE = {"GET", "HEAD", "OPTIONS"}
SAMPLE = {"int": "1", "uuid": str(uuid.UUID(int=1)), "str": "a" * 32, "path": "1", "slug": "x"}


def routes(patterns: list[Any] | None = None, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    """Every route of the URL resolver, as (its pattern text, the pattern)."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            yield from routes(entry.url_patterns, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def concrete(route: str) -> str:
    """A URL the route matches, with sample values for its parameters."""
    url = re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLE[m.group(1) or "str"], route)
    url = re.sub(r"\(\?P<\w+>([^)|]*)[^)]*\)", lambda m: m.group(1) if m.group(1) != ".*" else "anything", url)
    return "/" + url.replace("^", "").replace("$", "")


def console_routes() -> list[tuple[str, str]]:
    """Routes outside the JSON API (its operations come from its own description)."""
    return [(route, concrete(route)) for route, _ in routes() if not route.startswith("api/v1/") or route == "api/v1/"]


def api_operations() -> list[tuple[str, str, str]]:
    """(method, path template, concrete path) of every operation the OpenAPI description lists."""
    schema = client_for("viewer").get("/api/v1/openapi.json").json()
    operations = []
    for template, methods in schema["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE["uuid"] if "saga" in m.group(1) else "1", template)
        operations += [(method.upper(), template, path) for method in methods]
    return operations


def call(client: Client, method: str, url: str, body: Any = None, **headers: str) -> HttpResponse:
    data = json.dumps(body if body is not None else {}) if method not in SAFE else None
    return client.generic(method, url, data or "", content_type="application/json", headers=headers)

"""The one HTTP call both styles make to a downstream service, with a time-out."""

from __future__ import annotations

import http.client
import json
import os


class DownstreamError(RuntimeError):
    """The service answered an error, timed out or was not there."""


def parse_addresses(text: str) -> dict[str, tuple[str, int]]:
    """'billing=127.0.0.1:8101,...' -> {"billing": ("127.0.0.1", 8101), ...}"""
    addresses = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, where = part.partition("=")
        host, _, port = where.rpartition(":")
        addresses[name] = (host, int(port))
    return addresses


ADDRESSES_ENV = "FLOWSCOPE_LAB_SERVICES"
TIMEOUT_ENV = "FLOWSCOPE_LAB_TIMEOUT"


def services_from_env() -> tuple[dict[str, tuple[str, int]], float]:
    """Where the lab's services listen and the time-out, as the lab handed them to its workers."""
    text = os.environ.get(ADDRESSES_ENV, "")
    if not text:
        raise DownstreamError(f"{ADDRESSES_ENV} is not set: lab handlers run only in workers that `manage.py lab` starts")
    return parse_addresses(text), float(os.environ.get(TIMEOUT_ENV, "1.0"))


def call(address: tuple[str, int], service: str, *, run: str, order_id: str, timeout: float) -> None:
    """POST the order to the service; return on 200, raise DownstreamError otherwise."""
    # A fresh connection per call: simple, and an outage shows as a refused connection.
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request("POST", "/work", body=json.dumps({"run": run, "order_id": order_id}), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise DownstreamError(f"{service}: {type(exc).__name__}: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise DownstreamError(f"{service} answered {response.status}")

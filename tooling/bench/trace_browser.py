"""The trace page in a real browser: Debian's Chromium, driven by Playwright, against daphne,
loading a stored trace until its rows are on screen.

The page itself says when (static/console/trace.js writes on #waterfall, once the first rows are
drawn): `sinceNavigationMs` from the navigation's start (HTML, scripts, the tree's answer, the
rows), `apiMs` the tree's answer alone as the page waited for it. The first load warms the
caches and is left out."""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.test import Client

from tooling.bench import processes
from tooling.devredis import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOT_INSTALLED = f"Playwright or {CHROMIUM} is missing (pip install -e '.[test]'; scripts/ensure-chromium)"


def installed() -> bool:
    try:
        import playwright  # noqa: F401  (an optional dependency: only asked whether it is there)
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


def trace_page_in_browser_ms(trace_id: str, signed_in: Client, progress: Callable[[str], None], runs: int = 5) -> dict[str, float]:
    from playwright.sync_api import sync_playwright  # optional: imported only when measured

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as logs:
        web = processes.start_daphne(port, log_dir=Path(logs))
        try:
            processes.wait_http(f"{base}/healthz", web)
            session = signed_in.cookies[settings.SESSION_COOKIE_NAME].value
            loads = []
            # Playwright's sync API runs an event loop in this thread; Django is not called meanwhile.
            previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
            try:
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    context = browser.new_context(viewport={"width": 1400, "height": 900})
                    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": base}])
                    tab = context.new_page()
                    for run in range(runs + 1):
                        tab.goto(f"{base}/traces/{trace_id}/")
                        tab.wait_for_selector("#waterfall[aria-busy=false]", timeout=120_000)
                        loads.append(tab.evaluate("({...document.querySelector('#waterfall').dataset})"))
                        progress(f"trace page in the browser: load {run + 1}/{runs + 1}")
                    browser.close()
            finally:
                if previous is None:
                    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
                else:
                    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous
        finally:
            processes.stop(web)
    measured = loads[1:]
    return {
        "p5_trace_20k_browser_ms": round(statistics.median(float(m["sinceNavigationMs"]) for m in measured), 1),
        "p5_trace_20k_browser_api_ms": round(statistics.median(float(m["apiMs"]) for m in measured), 1),
    }

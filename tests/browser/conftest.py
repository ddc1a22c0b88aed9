"""Browser tests: Debian's chromium driven by Playwright, against the real ASGI server (daphne,
so the live websocket works), a real worker and the collector with its broadcaster."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO
from tests.support.workers import ManagedProcess
from tooling.devredis import free_port

SCREENSHOTS = REPO / "var" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
# Flags for a sandboxed CI machine with no network: no sandbox (root), no GPU, no phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def web(django_db_setup: Any) -> Iterator[str]:
    port = free_port()
    process = ManagedProcess(
        "web",
        ["-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
        ready_marker="Listening on TCP address",
        command=[sys.executable, "-m", "daphne"],
    ).start()
    yield f"http://127.0.0.1:{port}"
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run scripts/ensure-chromium (make test does)")
    # Playwright's sync API keeps an event loop in this thread while it runs; the tests' own
    # database calls are still plain synchronous ones, made between its calls.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    yield tab
    context.close()


def sign_in(page: Any, web: str, username: str, password: str = "a-long-test-password") -> None:
    page.goto(f"{web}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{web}/")


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

"""The tasks and workers pages of attached apps in a real browser: rows arrive live over the
console's socket, and an operator's terminate becomes a revoke order for the app's agent."""

from __future__ import annotations

import time

import pytest

from flows.models import RevokeOrder
from flows.operate.live_tasks import record_tasks, record_workers
from tests.browser.conftest import screenshot, sign_in
from tests.people import person

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_task_change_shows_up_live_and_an_operator_terminates_a_running_task(page, web, collector):
    record_workers("shop", [{"hostname": "w1@shop", "at": time.time(), "online": True, "pool": "prefork", "concurrency": 4, "active": 1, "processed": 7}])
    record_tasks("shop", [{"id": "b-1", "state": "started", "at": time.time(), "name": "shop.work", "args": "('ann@example.com',)", "worker": "w1@shop"}])
    person("operator", "otto")
    sign_in(page, web, "otto")
    page.goto(f"{web}/workers/")
    page.wait_for_selector("#live-workers tr[data-worker='w1@shop']")
    assert "online" in page.inner_text("#live-workers tr[data-worker='w1@shop']")
    page.goto(f"{web}/tasks/")
    page.wait_for_selector("#live-status.live")
    row = page.locator("#live-tasks tr[data-task='b-1']")
    assert "[redacted]" in row.inner_text() and "ann@example.com" not in page.content()
    # A change stored after the page loaded arrives without a reload.
    record_tasks("shop", [{"id": "b-2", "state": "failed", "at": time.time(), "name": "shop.ship", "exception": "LookupError: no carrier"}])
    page.wait_for_selector("#live-tasks tr[data-task='b-2'][data-state='failed']", timeout=20_000)
    assert page.locator("#live-tasks tr[data-task='b-2'] button.terminate").count() == 0  # finished: nothing to stop
    page.select_option("#revoke-signal", "SIGKILL")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.terminate").click()
    page.wait_for_function("document.querySelector('#revoke-status').textContent.includes('waits for shop')")
    order = RevokeOrder.objects.get(task_id="b-1")
    assert (order.app, order.terminate, order.signal, order.requested_by) == ("shop", True, "SIGKILL", "otto")
    screenshot(page, "tasks")

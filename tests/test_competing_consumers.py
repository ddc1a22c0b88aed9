import pytest

import flows
from flows.core import deliveries
from tests.flows_under_test import recorded
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_messages_on_one_queue_spread_over_several_worker_processes_each_handled_once(start_worker):
    start_worker("alpha", ["t.work"], concurrency=1)
    start_worker("beta", ["t.work"], concurrency=1)
    sent = [flows.send("test.work", {"key": f"w{i}", "sleep": 0.05}) for i in range(40)]

    wait_for(lambda: len(recorded("t_work")) >= 40, what="all 40 messages")
    handled_keys = [entry.split("|")[0] for entry in recorded("t_work")]
    assert sorted(handled_keys) == sorted(f"w{i}" for i in range(40)), "each message handled exactly once"

    nodes = set()
    for envelope in sent:
        status = deliveries.statuses(str(envelope.message_id))["t_work"]
        assert status["status"] == deliveries.SUCCEEDED
        nodes.add(status["worker"].split("@")[0])
    assert nodes == {"alpha", "beta"}

    spread = deliveries.spread("t.work")
    assert sum(spread.values()) == 40
    assert len(spread) == 2 and min(spread.values()) >= 5, f"both consumers took a fair share: {spread}"

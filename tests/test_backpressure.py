import threading
import time

import pytest

import flows
from flows.core.errors import QueueFull
from flows.produce.backpressure import BackPressure, backpressure, queue_depth, queue_statuses
from tests.support.brokers import fill, on_rabbitmq, take
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_below_the_high_watermark_producers_are_admitted_and_messages_queue_up():
    for i in range(4):
        flows.send("test.bulk", {"n": i})  # t.backlog.raise, high=5: no worker consumes it
    assert queue_depth("t.backlog.raise") == 4


def test_at_the_high_watermark_a_raise_mode_producer_is_refused_with_a_clear_error():
    fill("t.backlog.raise", 5)
    with pytest.raises(QueueFull, match=r"queue 't.backlog.raise' holds 5 messages, at or above its high watermark 5"):
        flows.send("test.bulk", {"n": 1})
    assert queue_depth("t.backlog.raise") == 5, "the refused message was not sent"


def test_a_throttled_queue_reopens_only_at_its_low_watermark(settings):
    settings.FLOWS_BACKPRESSURE_REFRESH_SECONDS = 0  # every check reads the broker
    gate = BackPressure()
    fill("t.backlog.raise", 5)
    with pytest.raises(QueueFull):
        gate.admit("t.backlog.raise")
    take("t.backlog.raise", 2)  # depth 3: below high, above low
    with pytest.raises(QueueFull):
        gate.admit("t.backlog.raise")
    take("t.backlog.raise", 1)  # depth 2 = low
    gate.admit("t.backlog.raise")


def test_a_block_mode_producer_waits_until_the_queue_drains_to_its_low_watermark():
    gate = BackPressure()
    fill("t.backlog.block", 6)

    def drain() -> None:
        time.sleep(0.4)
        take("t.backlog.block", 4)

    threading.Thread(target=drain).start()
    started = time.monotonic()
    gate.admit("t.backlog.block")
    waited = time.monotonic() - started
    assert 0.3 < waited < 1.0, f"blocked {waited:.2f}s, until the consumers caught up"


def test_a_block_mode_producer_gives_up_after_its_timeout():
    gate = BackPressure()
    fill("t.backlog.block", 6)
    started = time.monotonic()
    with pytest.raises(QueueFull, match="after waiting 1.0s"):
        gate.admit("t.backlog.block")
    assert time.monotonic() - started >= 1.0


def test_the_console_reads_depth_watermarks_state_and_activations_per_queue():
    fill("t.backlog.raise", 7)
    with pytest.raises(QueueFull):
        BackPressure().admit("t.backlog.raise")

    statuses = {s.name: s for s in queue_statuses()}
    backlog = statuses["t.backlog.raise"]
    assert (backlog.depth, backlog.high, backlog.low, backlog.mode, backlog.state, backlog.activations) == (7, 5, 2, "raise", "throttled", 1)
    assert statuses["t.commands"].state == "unlimited"
    assert statuses["t.backlog.block"].state == "open"


def test_watermarks_can_be_overridden_from_settings(settings):
    settings.FLOWS_BACKPRESSURE = {"t.backlog.raise": {"high": 100, "low": 10}}
    fill("t.backlog.raise", 7)
    BackPressure().admit("t.backlog.raise")  # 7 < 100


def test_a_backed_up_queue_drains_once_a_worker_consumes_it(start_worker):
    for i in range(5):
        flows.send("test.bulk", {"n": i})
    backpressure.forget()  # a producer reads depth at most every 0.25s; do not wait for it
    with pytest.raises(QueueFull):
        flows.send("test.bulk", {"n": 99})
    start_worker("drainer", ["t.backlog.raise"], concurrency=1)
    wait_for(lambda: queue_depth("t.backlog.raise") == 0, what="the backlog to drain")
    backpressure.forget()
    flows.send("test.bulk", {"n": 100})


def test_queue_statuses_count_what_waits_and_on_rabbitmq_who_consumes(worker):
    fill("t.backlog.raise", 3)
    statuses = {s.name: s for s in queue_statuses()}
    assert statuses["t.backlog.raise"].depth == 3 and statuses["t.commands"].depth == 0
    if on_rabbitmq():
        # The session worker consumes t.commands (one consumer a node), nobody t.backlog.raise.
        assert (statuses["t.commands"].consumers, statuses["t.backlog.raise"].consumers) == (1, 0)
        assert statuses["t.later"].consumers == 1
    else:
        assert {s.consumers for s in statuses.values()} == {None}, "Redis does not say who consumes"

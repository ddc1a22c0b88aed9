import pytest

import flows
from flows.consume import runtime
from tests.flows_under_test import recorded
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_command_is_processed_once_by_its_handler(worker):
    envelope = flows.send("test.command", {"key": "hello"})

    entries = wait_for(lambda: [e for e in recorded("t_command") if e.startswith("hello|")], what="the command to be handled")
    assert len(entries) == 1
    key, attempt, worker_id = entries[0].split("|")
    assert attempt == "1"
    assert worker_id.startswith("session@")
    assert envelope.correlation_id == str(envelope.message_id)


def test_a_failing_command_is_retried_with_its_attempt_number_until_it_succeeds(worker):
    flows.send("test.command", {"key": "flaky", "fail_times": 2})

    entries = wait_for(lambda: [e for e in recorded("t_command") if e.startswith("flaky|")], what="the third attempt")
    assert [e.split("|")[1] for e in entries] == ["3"]


def test_a_message_published_inside_a_rolled_back_transaction_is_never_delivered(worker):
    from django.db import transaction

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        flows.send("test.command", {"key": "rolled-back"})
        raise Abort()
    flows.send("test.command", {"key": "after-rollback"})

    wait_for(lambda: any(e.startswith("after-rollback|") for e in recorded("t_command")), what="the later command")
    assert not any(e.startswith("rolled-back|") for e in recorded("t_command"))


def test_the_runtime_reports_each_outcome(worker):
    # The same delivery function the Celery task calls, run here to see its return value.
    envelope = flows.send("test.command", {"key": "direct"})
    wait_for(lambda: any(e.startswith("direct|") for e in recorded("t_command")))
    assert runtime.deliver(envelope.to_dict(), "t_command", worker="test") == runtime.OK


def test_a_pool_process_keeps_its_start_up_objects_out_of_full_collections(worker):
    # gc.freeze at worker_process_init: full collections walk only what the hops made since.
    flows.send("test.gc_probe", {})

    (frozen,) = wait_for(lambda: recorded("t_gc_probe"), what="the probe to be handled")
    assert int(frozen) > 10_000

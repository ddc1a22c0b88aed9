import pytest

from examples.demo.models import LedgerEntry
from flows.consume.idempotency import duplicate_counts
from flows.core.registry import catalog
from flows.models import InboxEntry
from flows.produce.publishing import build_envelope, publish_to
from tests.support.waiting import wait_for
from tracing.redis import get_redis, key

pytestmark = pytest.mark.django_db(transaction=True)


def deliveries_of(envelope) -> int:
    return int(get_redis().get(key("test", "attempts", "t_credit", str(envelope.message_id))) or 0)


def test_a_redelivered_idempotent_message_has_its_effect_once_and_the_duplicate_is_counted(worker):
    handler = catalog.handler("t_credit")
    envelope = build_envelope("test.credit", {"key": "pay-1"})
    publish_to(handler, envelope)
    wait_for(lambda: LedgerEntry.objects.filter(reference="pay-1").exists(), what="the first delivery's effect")

    publish_to(handler, envelope)  # the broker hands the same message over again

    wait_for(lambda: duplicate_counts().get("t_credit") == 1, what="the duplicate to be counted")
    assert LedgerEntry.objects.filter(reference="pay-1").count() == 1
    assert InboxEntry.objects.filter(consumer="t_credit", message_id=envelope.message_id).count() == 1


def test_two_copies_in_flight_at_once_still_have_one_effect(worker):
    # Both pool processes take a copy; the handler sleeps so the two transactions overlap.
    handler = catalog.handler("t_credit")
    envelope = build_envelope("test.credit", {"key": "pay-2", "sleep": 0.3})
    publish_to(handler, envelope)
    publish_to(handler, envelope)

    wait_for(lambda: duplicate_counts().get("t_credit", 0) + LedgerEntry.objects.filter(reference="pay-2").count() >= 2, what="both copies to finish")
    assert LedgerEntry.objects.filter(reference="pay-2").count() == 1
    assert duplicate_counts()["t_credit"] == 1


def test_a_failed_attempt_rolls_back_its_effect_and_its_inbox_row_so_the_retry_applies_once(worker):
    envelope = build_envelope("test.credit", {"key": "pay-3", "fail_times": 2})
    publish_to(catalog.handler("t_credit"), envelope)

    wait_for(lambda: deliveries_of(envelope) == 3 and InboxEntry.objects.filter(message_id=envelope.message_id).exists(), what="the third attempt to commit")
    assert LedgerEntry.objects.filter(reference="pay-3").count() == 1
    assert "t_credit" not in duplicate_counts()

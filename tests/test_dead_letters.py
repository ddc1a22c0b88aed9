import pytest

import flows
from flows.core.registry import catalog
from flows.models import DeadLetter
from flows.operate import dead_letters as deadletters
from flows.tasks import deliver
from tests.flows_under_test import fix, recorded
from tests.support.brokers import on_rabbitmq, push_raw, waiting
from tests.support.waiting import wait_for
from tracing.redis import get_redis, key

pytestmark = pytest.mark.django_db(transaction=True)


def dead_letter_of(envelope, consumer="t_command") -> DeadLetter | None:
    return DeadLetter.objects.filter(message_id=envelope.message_id, consumer=consumer).first()


def attempts_made(envelope, consumer="t_command") -> int:
    return int(get_redis().get(key("test", "attempts", consumer, str(envelope.message_id))) or 0)


def test_a_message_that_always_fails_is_dead_lettered_after_exactly_max_attempts(worker):
    envelope = flows.send("test.command", {"key": "doomed", "bug": "doomed-bug"})

    dead = wait_for(lambda: dead_letter_of(envelope), what="the dead letter")
    assert dead.attempts == catalog.handler("t_command").max_attempts == 3
    assert attempts_made(envelope) == 3
    assert dead.state == DeadLetter.State.DEAD
    assert dead.error_type == "builtins.ValueError"
    assert "a bug in the handler" in dead.error_message
    assert "_run_job" in dead.traceback
    assert dead.queue == "t.commands" and dead.message_type == "test.command"
    assert dead.envelope["payload"]["key"] == "doomed"
    assert "attempt" not in dead.envelope["headers"], "the stored envelope is the original, not the last attempt's"
    assert len(dead.fingerprint) == 16 and not dead.poison


def test_failures_from_the_same_bug_share_a_fingerprint_and_other_bugs_do_not(worker):
    first = flows.send("test.command", {"key": "a", "bug": "same"})
    second = flows.send("test.command", {"key": "b", "bug": "same"})
    other = flows.send("test.command", {"key": "c", "poison": True})

    a, b, c = (wait_for(lambda e=e: dead_letter_of(e), what="three dead letters") for e in (first, second, other))
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_a_poison_message_is_dead_lettered_at_once_without_retries(worker):
    envelope = flows.send("test.command", {"key": "poison", "poison": True})

    dead = wait_for(lambda: dead_letter_of(envelope), what="the dead letter")
    assert dead.poison and dead.attempts == 1
    assert attempts_made(envelope) == 1
    assert "rejects this payload" in dead.error_message


def test_requeue_republishes_the_original_and_the_fixed_message_then_succeeds(worker):
    envelope = flows.send("test.command", {"key": "fixme", "bug": "fixme-bug"})
    dead = wait_for(lambda: dead_letter_of(envelope), what="the dead letter")

    fix("fixme-bug")
    assert deadletters.dead_letter_requeue(dead_letter_id=dead.pk, actor="alice") is True

    entries = wait_for(lambda: [e for e in recorded("t_command") if e.startswith("fixme|")], what="the requeued message to succeed")
    assert entries[0].split("|")[1] == "1", "a requeue starts a fresh series of attempts"
    dead = wait_for(lambda: DeadLetter.objects.filter(pk=dead.pk, state=DeadLetter.State.RESOLVED).first(), what="the dead letter to resolve")
    assert dead.requeued_by == "alice" and dead.series == 1 and dead.resolved_at is not None


def test_a_requeued_message_that_fails_again_is_dead_again_not_duplicated(worker):
    envelope = flows.send("test.command", {"key": "still-broken", "bug": "never-fixed"})
    dead = wait_for(lambda: dead_letter_of(envelope), what="the dead letter")

    assert deadletters.dead_letter_requeue(dead_letter_id=dead.pk, actor="bob")
    dead = wait_for(lambda: DeadLetter.objects.filter(pk=dead.pk, state=DeadLetter.State.DEAD, times_dead=2).first(), what="the second death")
    assert DeadLetter.objects.filter(message_id=envelope.message_id).count() == 1
    assert attempts_made(envelope) == 6


def test_only_a_dead_letter_can_be_requeued_or_discarded(worker):
    envelope = flows.send("test.command", {"key": "discard-me", "poison": True})
    dead = wait_for(lambda: dead_letter_of(envelope), what="the dead letter")

    with pytest.raises(ValueError, match="needs a reason"):
        deadletters.dead_letter_discard(dead_letter_id=dead.pk, actor="carol", reason="  ")
    assert deadletters.dead_letter_discard(dead_letter_id=dead.pk, actor="carol", reason="customer cancelled") is True
    assert deadletters.dead_letter_discard(dead_letter_id=dead.pk, actor="carol", reason="again") is False
    assert deadletters.dead_letter_requeue(dead_letter_id=dead.pk, actor="carol") is False
    assert deadletters.dead_letter_requeue(dead_letter_id=dead.pk, actor="carol", payload={"key": "edited"}) is False
    dead.refresh_from_db()
    assert (dead.state, dead.discarded_by, dead.discard_reason) == ("discarded", "carol", "customer cancelled")
    assert deadletters.dead_letter_requeue(dead_letter_id=10**9, actor="carol") is False


@pytest.mark.parametrize(
    "args, reason",
    [
        (({"type": "test.command"}, "t_command"), "missing 'payload'"),
        (({"type": "test.command", "payload": [1, 2]}, "t_command"), "payload must be a JSON object"),
        (({"type": "test.command", "payload": {}, "message_id": "nope"}, "t_command"), "is not a UUID"),
        (({"type": "test.command", "payload": {}, "surprise": 1}, "t_command"), "unknown fields: surprise"),
        (({"type": "test.command", "payload": {"key": "k"}}, "nobody_home"), "no handler is registered as consumer 'nobody_home'"),
        (("not even a dict", "t_command"), "envelope must be a JSON object"),
        (({"type": "no.such.type", "payload": {}}, "t_command"), "handles 'test.command', not 'no.such.type'"),
        (({"type": "test.command", "payload": {"key": 7}}, "t_command"), "payload does not match schema 'test.command' v1: key: Input should be a valid string"),
    ],
)
def test_a_malformed_delivery_becomes_a_poison_dead_letter_with_its_reason(worker, args, reason):
    deliver.apply_async(args=list(args), queue="t.commands")

    dead = wait_for(lambda: DeadLetter.objects.filter(error_message__contains=reason).first(), what=f"a dead letter saying {reason!r}")
    assert dead.poison and dead.attempts == 1


def test_an_item_that_is_no_celery_message_is_a_poison_dead_letter_and_the_worker_goes_on(worker):
    # On Redis the channel reads the list item before Celery does; on RabbitMQ it arrives as an
    # AMQP message without a task header, and Celery's consumer hands it to on_unknown_message.
    reason = "message is not a Celery task: it names no task" if on_rabbitmq() else "queue item is not JSON"
    push_raw("t.commands", b"\x00 not a celery message")

    dead = wait_for(lambda: DeadLetter.objects.filter(queue="t.commands", poison=True, consumer="").first(), what="the item's dead letter")
    assert reason in dead.error_message and "not a celery message" in dead.envelope["unparsed"]
    assert (dead.attempts, dead.state) == (1, DeadLetter.State.DEAD)
    envelope = flows.send("test.command", {"key": "after-the-poison"})
    wait_for(lambda: any(entry.startswith("after-the-poison|") for entry in recorded("t_command")), what="the next message to run")
    assert waiting("t.commands") == 0, "the poison is not back in the queue"
    assert DeadLetter.objects.filter(queue="t.commands", poison=True).count() == 1
    assert dead_letter_of(envelope) is None


def test_an_item_with_nul_characters_is_kept_as_a_dead_letter_on_every_database():
    """PostgreSQL keeps no NUL in text or JSON: the dead letter writes it out (a raw AMQP body did
    not store on PostgreSQL and was lost to the log)."""
    from flows.consume.broker import record_garbage

    record_garbage("\x00\x01 raw", "t.commands", "message is not a Celery task: it names no task")
    dead = DeadLetter.objects.get(queue="t.commands", poison=True)
    assert dead.envelope == {"unparsed": "\\x00\x01 raw"} and dead.error_message == "message is not a Celery task: it names no task"


def test_a_payload_with_nul_characters_still_makes_a_dead_letter(worker):
    """Else, on PostgreSQL, the dead letter could not be stored and the delivery would go back to
    its queue for ever."""
    flows.send("test.command", {"key": "nul\x00key", "poison": True})
    dead = wait_for(lambda: DeadLetter.objects.filter(message_type="test.command", envelope__payload__key="nul\\x00key").first(), timeout=60, what="the dead letter")
    assert dead.poison and dead.error_message == "the downstream service rejects this payload"

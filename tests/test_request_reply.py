import pytest

import flows
from flows.core.errors import ReplyTimeout, RequestFailed
from flows.models import DeadLetter, LateReply
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_caller_gets_the_reply(worker):
    assert flows.request("test.ask", {"text": "ping"}, timeout=10) == {"echo": "PING"}


def test_many_requests_in_flight_each_get_their_own_reply(worker):
    pending = [flows.request_async("test.ask", {"text": f"q{i}"}, timeout=15) for i in range(10)]
    assert [p.result() for p in pending] == [{"echo": f"Q{i}"} for i in range(10)]


def test_a_reply_after_the_timeout_is_a_timeout_error_for_the_caller_and_is_kept_as_late(worker):
    with pytest.raises(ReplyTimeout, match="within 0.5s") as raised:
        flows.request("test.ask", {"text": "slowpoke", "sleep": 1.5}, timeout=0.5)

    late = wait_for(lambda: LateReply.objects.filter(request_id=raised.value.message_id).first(), what="the late reply")
    assert late.reply["payload"] == {"echo": "SLOWPOKE"}
    assert late.reply["causation_id"] == raised.value.message_id
    assert late.consumer == "t_answer" and late.deadline < late.arrived_at


def test_a_request_the_responder_gives_up_on_fails_fast_and_is_dead_lettered(worker):
    with pytest.raises(RequestFailed, match="LookupError: no answer to that") as raised:
        flows.request("test.ask", {"text": "?", "fail": True}, timeout=20)

    dead = DeadLetter.objects.get(message_id=raised.value.message_id)
    assert dead.attempts == 2 and dead.consumer == "t_answer"


def test_request_reply_types_are_not_sent_with_send_and_others_not_requested():
    from flows.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="use flows.request"):
        flows.send("test.ask", {"text": "x"})
    with pytest.raises(ConfigurationError, match="not request_reply"):
        flows.request("test.command", {"key": "x"}, timeout=1)
    with pytest.raises(ValueError, match="timeout must be positive"):
        flows.request("test.ask", {"text": "x"}, timeout=0)

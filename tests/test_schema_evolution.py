import pytest

import flows
from flows.core.registry import catalog
from flows.models import DeadLetter
from flows.produce.publishing import publish_to
from tests.flows_under_test import recorded
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_older_schema_version_is_upcast_for_a_consumer_of_the_newer_one(worker):
    flows.send("test.person", {"name": "Ada Lovelace"}, schema_version=1)
    flows.send("test.person", {"first": "Grace", "last": "Hopper"}, schema_version=2)

    seen = wait_for(lambda: len(recorded("t_person")) == 2 and recorded("t_person"), what="both people")
    assert sorted(seen) == ["Ada|Lovelace|v1", "Grace|Hopper|v2"]


def test_a_version_the_consumer_cannot_read_is_dead_lettered_as_unknown_schema_version(worker):
    # v3 is declared, but this consumer reads v2 and there is no way down from v3.
    envelope = flows.send("test.person", {"full_name": "Alan Turing"}, schema_version=3)

    dead = wait_for(lambda: DeadLetter.objects.filter(message_id=envelope.message_id).first(), what="the dead letter")
    assert dead.poison and dead.attempts == 1
    assert "unknown schema version 3 of 'test.person'" in dead.error_message
    assert "accepts [1, 2]" in dead.error_message


def test_a_version_nobody_declared_is_dead_lettered_with_the_same_reason(worker):
    envelope = flows.Envelope(type="test.person", payload={"name": "X"}, schema_version=9)
    publish_to(catalog.handler("t_person"), envelope)

    dead = wait_for(lambda: DeadLetter.objects.filter(message_id=envelope.message_id).first(), what="the dead letter")
    assert "unknown schema version 9" in dead.error_message
    assert dead.schema_version == 9


def test_a_payload_that_does_not_match_its_declared_version_is_refused_at_publish():
    from flows.core.errors import PayloadInvalid

    with pytest.raises(PayloadInvalid, match="first: Field required"):
        flows.send("test.person", {"last": "Hopper"}, schema_version=2)

import uuid

import pytest

from flows.core.envelope import Envelope
from flows.core.errors import EnvelopeError, PayloadTooLarge


def test_an_envelope_survives_a_round_trip_through_its_dict():
    envelope = Envelope(type="order.placed", payload={"id": 1}, schema_version=2, correlation_id="order-7", headers={"attempt": 2})
    again = Envelope.from_dict(envelope.to_dict())
    assert again == envelope
    assert again.attempt == 2


def test_a_new_conversation_correlates_with_its_own_message_id_and_a_child_joins_it():
    parent = Envelope(type="a", payload={})
    child = parent.child("b", {"x": 1}, reply_to=None, pattern="saga")
    assert parent.correlation_id == str(parent.message_id)
    assert child.correlation_id == parent.correlation_id
    assert child.causation_id == str(parent.message_id)
    assert child.headers == {"pattern": "saga"}


@pytest.mark.parametrize(
    "data, error",
    [
        ([], "envelope must be a JSON object, got list"),
        ({"payload": {}}, "missing 'type'"),
        ({"type": "a"}, "missing 'payload'"),
        ({"type": "", "payload": {}}, "type must be a non-empty string"),
        ({"type": "has space", "payload": {}}, "may hold only letters"),
        ({"type": "a", "payload": "text"}, "payload must be a JSON object, got str"),
        ({"type": "a", "payload": {}, "schema_version": 0}, "schema_version must be a positive integer"),
        ({"type": "a", "payload": {}, "schema_version": True}, "schema_version must be a positive integer"),
        ({"type": "a", "payload": {}, "message_id": "42"}, "message_id '42' is not a UUID"),
        ({"type": "a", "payload": {}, "created_at": "yesterday"}, "is not an ISO 8601 time"),
        ({"type": "a", "payload": {}, "created_at": "2026-01-01T00:00:00"}, "has no time zone"),
        ({"type": "a", "payload": {}, "correlation_id": 5}, "correlation_id must be a string"),
        ({"type": "a", "payload": {}, "correlation_id": "x" * 129}, "at most 128 characters"),
        ({"type": "a", "payload": {}, "headers": {"attempt": 0}}, "header 'attempt' must be a positive integer"),
        ({"type": "a", "payload": {}, "headers": []}, "headers must be an object"),
        ({"type": "a", "payload": {}, "extra": 1}, "unknown fields: extra"),
    ],
)
def test_a_malformed_envelope_is_refused_naming_what_is_wrong(data, error):
    with pytest.raises(EnvelopeError, match=error.replace("(", r"\(").replace(")", r"\)")):
        Envelope.from_dict(data)


def test_a_payload_over_the_limit_is_refused_with_its_size_and_the_limit(settings):
    settings.FLOWS_MAX_PAYLOAD_BYTES = 1024
    Envelope(type="a", payload={"blob": "x" * 1000}).check_size()
    with pytest.raises(PayloadTooLarge, match=r"payload is 2011 bytes, over the limit of 1024 bytes \(FLOWS_MAX_PAYLOAD_BYTES\)"):
        Envelope(type="a", payload={"blob": "x" * 2000}).check_size()


def test_the_default_payload_limit_is_256_kib():
    Envelope(type="a", payload={"blob": "x" * (256 * 1024 - 20)}).check_size()
    with pytest.raises(PayloadTooLarge):
        Envelope(type="a", payload={"blob": "x" * (256 * 1024)}).check_size()


def test_a_payload_that_is_not_json_is_refused():
    with pytest.raises(EnvelopeError, match="not JSON-serialisable"):
        Envelope(type="a", payload={"when": uuid.uuid4()}).check_size()
    with pytest.raises(EnvelopeError, match="not JSON-serialisable"):
        Envelope(type="a", payload={"x": float("nan")}).check_size()

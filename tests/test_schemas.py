import pytest
from pydantic import BaseModel

from flows.core.errors import ConfigurationError, PayloadInvalid, UnknownSchemaVersion
from flows.core.schemas import MessageType


class V1(BaseModel):
    amount_cents: int


class V2(BaseModel):
    amount: float


class V3(BaseModel):
    amount: float
    currency: str


MONEY = MessageType(
    name="money",
    pattern="fire_and_forget",
    schemas={1: V1, 2: V2, 3: V3},
    upcasters={1: lambda p: {"amount": p["amount_cents"] / 100}, 2: lambda p: {**p, "currency": "EUR"}},
)


def test_a_payload_is_upcast_step_by_step_to_the_version_the_consumer_reads():
    assert MONEY.read(1, {"amount_cents": 250}, target=3) == {"amount": 2.5, "currency": "EUR"}
    assert MONEY.read(2, {"amount": 1.0}, target=3) == {"amount": 1.0, "currency": "EUR"}
    assert MONEY.read(1, {"amount_cents": 250}, target=2) == {"amount": 2.5}


def test_a_consumer_accepts_its_version_and_those_with_an_upcaster_chain_to_it():
    assert MONEY.accepted_by(3) == [1, 2, 3]
    assert MONEY.accepted_by(1) == [1]
    with pytest.raises(UnknownSchemaVersion, match=r"unknown schema version 3 of 'money' \(this consumer accepts \[1, 2\]\)"):
        MONEY.read(3, {"amount": 1, "currency": "EUR"}, target=2)
    with pytest.raises(UnknownSchemaVersion, match="unknown schema version 4"):
        MONEY.read(4, {}, target=3)


def test_an_invalid_payload_names_the_field_and_the_problem():
    with pytest.raises(PayloadInvalid, match="amount_cents: Input should be a valid integer"):
        MONEY.validate(1, {"amount_cents": "lots"})
    with pytest.raises(PayloadInvalid, match="amount_cents: Field required"):
        MONEY.read(1, {}, target=3)


def test_an_upcaster_that_produces_an_invalid_payload_is_caught_too():
    broken = MessageType(name="b", pattern="fire_and_forget", schemas={1: V1, 2: V3}, upcasters={1: lambda p: {"amount": 1}})
    with pytest.raises(PayloadInvalid, match="'b' v2: currency: Field required"):
        broken.read(1, {"amount_cents": 1}, target=2)


def test_a_type_without_schemas_takes_any_object_at_version_one_only():
    free = MessageType(name="free", pattern="fire_and_forget")
    assert free.read(1, {"anything": [1, 2]}, target=1) == {"anything": [1, 2]}
    with pytest.raises(UnknownSchemaVersion):
        free.validate(2, {})


def test_an_upcaster_needs_both_of_its_versions_declared():
    with pytest.raises(ConfigurationError, match="upcaster from v2 needs schemas for v2 and v3"):
        MessageType(name="x", pattern="fire_and_forget", schemas={1: V1, 2: V2}, upcasters={2: lambda p: p})

"""Request bodies of the JSON API, validated by django-ninja (422 with the field and problem)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from ninja import Schema
from pydantic import AfterValidator, ConfigDict, Field, field_validator

from flows.models import DeadLetter
from flows.operate.selectors import DeadLetterFilter


def _without_nul(value: str) -> str:
    if "\x00" in value:  # PostgreSQL's text holds none: the query would fail as a 500
        raise ValueError("contains a NUL character, which no stored name, id or app holds")
    return value


# A name, id or app a list is filtered by, as a query parameter: no NUL character.
QueryText = Annotated[str, AfterValidator(_without_nul)]
# A row id as the database can hold it (BigAutoField): a larger number is a 422, not an overflow.
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]
# In a JSON body numbers are numbers: strict, so `false` is not taken for 0 nor `"5"` for 5.
BodyRowId = Annotated[int, Field(ge=1, le=2**63 - 1, strict=True)]


class DiscardIn(Schema):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422 naming it, not silently ignored
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S", description="for the audit trail: not blank")


class EditRequeueIn(Schema):
    model_config = ConfigDict(extra="forbid")
    payload: dict[str, Any]


def _a_number(text: str) -> bool:
    """Any text float() reads: "-1.5e-44" and "nan" too, which a digits-only test let through (the fuzzer found it)."""
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


class FilterQuery(Schema):
    """The dead-letter filter, as query parameters or in a body."""

    since: datetime | None = None
    until: datetime | None = None
    message_type: QueryText = ""
    queue: QueryText = ""
    consumer: QueryText = ""
    state: DeadLetter.State | None = None
    fingerprint: QueryText = ""
    app: QueryText = Field("", max_length=100, description="an attached Celery app's name; \"(flowscope)\" for Flowscope's own flows; empty for all")

    @field_validator("since", "until", mode="before")
    @classmethod
    def iso_8601_only(cls, value: Any) -> Any:
        """pydantic would read "0.65" as seconds after 1970: surely a mistake, so refuse it."""
        if isinstance(value, int | float) or (isinstance(value, str) and _a_number(value)):
            raise ValueError("give an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z, not a number")
        return value

    @field_validator("since", "until")
    @classmethod
    def in_utc(cls, value: datetime | None) -> datetime | None:
        """ISO 8601 allows offsets PostgreSQL refuses (beyond 15:59): compare in UTC instead."""
        if value is None or value.tzinfo is None:
            return value
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("date-time out of range once converted to UTC") from None

    def to_filter(self) -> DeadLetterFilter:
        values = self.model_dump(include=set(FilterQuery.model_fields))
        values["state"] = self.state.value if self.state else ""
        return DeadLetterFilter(**values)


class RequeueJobIn(FilterQuery):
    """A selection (`ids`) or the filter; only dead letters in state "dead" are ever requeued."""

    model_config = ConfigDict(extra="forbid")

    ids: list[BodyRowId] | None = Field(default=None, max_length=100_000, description="a selection; or give filters")
    rate_per_s: float | None = Field(default=None, gt=0, le=100_000, strict=True, description="leave out for no limit")
    canary_size: int = Field(default=10, ge=0, le=10_000, strict=True, description="requeued first, their outcomes awaited before the rest; 0: no canary")
    max_failure_share: float = Field(default=0.2, ge=0, le=1, strict=True, description="pause when more than this share (0 to 1) of the canary, or of the newest outcomes, failed again")
    canary_timeout_s: float = Field(default=60, gt=0, le=3600, strict=True, description="how long to await the canary's outcomes; one still pending then is not counted")
    dry_run: bool = Field(default=False, strict=True)  # `0` or "no" must not start a real run


class MessageIn(Schema):
    model_config = ConfigDict(extra="forbid")  # "schema_verison" must not quietly send the latest version
    type: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any]
    schema_version: int | None = Field(default=None, ge=1, strict=True)
    correlation_id: str | None = Field(default=None, max_length=128)

"""Message types and their versioned schemas, with upcasters from each version to the next.

A consumer written against version N accepts every older version for which a chain of
upcasters leads to N; anything else is poison ("unknown schema version").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pydantic

from flows.core.errors import ConfigurationError, PayloadInvalid, UnknownSchemaVersion

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass
class MessageType:
    name: str
    pattern: str
    schemas: dict[int, type[pydantic.BaseModel]] = dataclasses.field(default_factory=dict)
    upcasters: dict[int, Upcaster] = dataclasses.field(default_factory=dict)  # v -> v + 1

    def __post_init__(self) -> None:
        if any(not isinstance(v, int) or v < 1 for v in self.schemas):
            raise ConfigurationError(f"{self.name}: schema versions must be positive integers")
        for version in self.upcasters:
            if version not in self.schemas or version + 1 not in self.schemas:
                raise ConfigurationError(f"{self.name}: upcaster from v{version} needs schemas for v{version} and v{version + 1}")

    @property
    def versions(self) -> list[int]:
        return sorted(self.schemas) or [1]

    @property
    def latest(self) -> int:
        return self.versions[-1]

    def accepted_by(self, target: int) -> list[int]:
        """The versions a consumer of `target` can read: target and those that upcast to it."""
        accepted = [target]
        version = target - 1
        while version in self.upcasters and version in self.schemas:
            accepted.append(version)
            version -= 1
        return sorted(accepted)

    def validate(self, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        """Check a payload against one version's schema and return it normalised."""
        if not self.schemas:
            if version != 1:
                raise UnknownSchemaVersion(self.name, version, [1])
            return payload
        model = self.schemas.get(version)
        if model is None:
            raise UnknownSchemaVersion(self.name, version, self.versions)
        try:
            return model.model_validate(payload).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            raise PayloadInvalid(self.name, version, _describe(exc)) from None

    def read(self, version: int, payload: dict[str, Any], *, target: int) -> dict[str, Any]:
        """What a consumer of `target` sees: the payload validated, then upcast step by step."""
        if version not in self.accepted_by(target):
            raise UnknownSchemaVersion(self.name, version, self.accepted_by(target))
        data = self.validate(version, payload)
        while version < target:
            data = self.validate(version + 1, self.upcasters[version](data))
            version += 1
        return data


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(payload)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")

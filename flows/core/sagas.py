"""Saga declarations: a saga is a named list of steps, each an action with an optional compensation.

    payment = flows.saga("payment", [
        flows.step("reserve_stock", action="inventory.reserve", compensation="inventory.release"),
        flows.step("charge_card", action="billing.charge", compensation="billing.refund"),
    ])

How a declared saga runs (every transition persisted, compensation in reverse order) is
`flows.patterns.saga_state`.
"""

from __future__ import annotations

import dataclasses

from django.conf import settings

from flows.core.errors import ConfigurationError
from flows.core.registry import Catalog, catalog
from flows.core.schemas import MessageType
from flows.models import SagaInstance, SagaStep

ACTION = SagaStep.Phase.ACTION.value
COMPENSATION = SagaStep.Phase.COMPENSATION.value
State = SagaInstance.State


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    action: str
    compensation: str | None = None  # None: the step has nothing to undo


@dataclasses.dataclass(frozen=True)
class SagaDefinition:
    name: str
    steps: tuple[Step, ...]

    def check(self, cat: Catalog) -> None:
        for step in self.steps:
            for message_type in filter(None, (step.action, step.compensation)):
                if cat.types[message_type].pattern != "saga":
                    raise ConfigurationError(f"saga {self.name!r} step {step.name!r}: type {message_type!r} must be declared with pattern='saga'")
                for handler in cat.handlers_for(message_type):
                    if handler.backoff.maximum >= settings.FLOWS_SAGA_STALL_SECONDS:
                        raise ConfigurationError(
                            f"saga {self.name!r}: handler {handler.consumer!r} may back off {handler.backoff.maximum:g}s, "
                            f"not less than FLOWS_SAGA_STALL_SECONDS ({settings.FLOWS_SAGA_STALL_SECONDS}s); the sweeper would resume it mid-retry"
                        )

    def message_type(self, index: int, phase: str) -> str | None:
        step = self.steps[index]
        return step.action if phase == ACTION else step.compensation

    def previous_compensable(self, index: int) -> int | None:
        """The nearest step at or before `index` that has a compensation."""
        while index >= 0:
            if self.steps[index].compensation:
                return index
            index -= 1
        return None


def step(name: str, *, action: str, compensation: str | None = None) -> Step:
    return Step(name=name, action=action, compensation=compensation)


def saga(name: str, steps: list[Step]) -> SagaDefinition:
    if not steps:
        raise ConfigurationError(f"saga {name!r} needs at least one step")
    if len({s.name for s in steps}) != len(steps):
        raise ConfigurationError(f"saga {name!r}: step names must be unique")
    for s in steps:
        for message_type in filter(None, (s.action, s.compensation)):
            if message_type not in catalog.types:
                catalog.declare_type(MessageType(name=message_type, pattern="saga"))
    return catalog.add_saga(SagaDefinition(name=name, steps=tuple(steps)))


def definition_of(instance: SagaInstance) -> SagaDefinition:
    try:
        return catalog.sagas[instance.saga_type]
    except KeyError:
        raise ConfigurationError(f"saga type {instance.saga_type!r} of saga {instance.pk} is not declared") from None

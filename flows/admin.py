"""Django's admin site, read-only over the engine's rows. Payloads, saga data, replies and errors
are shown redacted, as on the console's pages: the rows keep the originals (a requeue sends
them), an admin's screen does not need them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import Model
from django.utils.html import format_html

from flows.models import DeadLetter, LateReply, SagaInstance, SagaStep
from tracing.redaction import redact, redact_text


def _shown(value: Any) -> str:
    text = json.dumps(redact(value), indent=2, sort_keys=True, default=str) if not isinstance(value, str) else redact_text(value)
    return format_html("<pre>{}</pre>", text)


def shown_redacted(field: str) -> Callable[[Any, Model], str]:
    """A read-only admin column showing `field` through redaction."""

    @admin.display(description=f"{field} (redacted)")
    def show(self: Any, obj: Model) -> str:
        return _shown(getattr(obj, field))

    return show


def read_only(model: type[Model], hidden: tuple[str, ...]) -> list[str]:
    return [f.name for f in model._meta.fields if f.name not in hidden] + [f"{name}_redacted" for name in hidden]


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    exclude = ("envelope", "error_message", "traceback", "discard_reason")
    readonly_fields = read_only(DeadLetter, exclude)
    envelope_redacted = shown_redacted("envelope")
    error_message_redacted = shown_redacted("error_message")
    traceback_redacted = shown_redacted("traceback")
    discard_reason_redacted = shown_redacted("discard_reason")
    list_display = ("id", "message_type", "consumer", "state", "error_type", "attempts", "dead_at")
    list_filter = ("state", "message_type", "consumer", "poison")
    search_fields = ("message_id", "correlation_id", "fingerprint")


class SagaStepInline(admin.TabularInline):
    model = SagaStep
    extra = 0
    can_delete = False
    readonly_fields = ("index", "name", "phase", "outcome", "attempts", "worker", "started_at", "finished_at", "error_redacted")
    fields = readonly_fields

    @admin.display(description="error (redacted)")
    def error_redacted(self, step: SagaStep) -> str:
        return _shown(step.error)


@admin.register(SagaInstance)
class SagaInstanceAdmin(admin.ModelAdmin):
    exclude = ("data", "error")
    readonly_fields = read_only(SagaInstance, exclude)
    data_redacted = shown_redacted("data")
    error_redacted = shown_redacted("error")
    list_display = ("id", "saga_type", "state", "current_step", "started_at", "updated_at")
    list_filter = ("state", "saga_type")
    search_fields = ("id", "correlation_id")
    inlines = [SagaStepInline]


@admin.register(LateReply)
class LateReplyAdmin(admin.ModelAdmin):
    exclude = ("reply",)
    readonly_fields = read_only(LateReply, exclude)
    reply_redacted = shown_redacted("reply")
    list_display = ("request_id", "request_type", "consumer", "deadline", "arrived_at")

from django.contrib import admin

from flows.models import DeadLetter, LateReply, SagaInstance, SagaStep


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ("id", "message_type", "consumer", "state", "error_type", "attempts", "dead_at")
    list_filter = ("state", "message_type", "consumer", "poison")
    search_fields = ("message_id", "correlation_id", "fingerprint")
    readonly_fields = [f.name for f in DeadLetter._meta.fields]


class SagaStepInline(admin.TabularInline):
    model = SagaStep
    extra = 0
    can_delete = False
    readonly_fields = ("index", "name", "phase", "outcome", "attempts", "worker", "started_at", "finished_at", "error")
    fields = readonly_fields


@admin.register(SagaInstance)
class SagaInstanceAdmin(admin.ModelAdmin):
    list_display = ("id", "saga_type", "state", "current_step", "started_at", "updated_at")
    list_filter = ("state", "saga_type")
    search_fields = ("id", "correlation_id")
    readonly_fields = [f.name for f in SagaInstance._meta.fields]
    inlines = [SagaStepInline]


@admin.register(LateReply)
class LateReplyAdmin(admin.ModelAdmin):
    list_display = ("request_id", "request_type", "consumer", "deadline", "arrived_at")
    readonly_fields = [f.name for f in LateReply._meta.fields]

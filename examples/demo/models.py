"""The demo services' own state: a ledger the handlers write their effects to."""

from django.db import models


class LedgerEntry(models.Model):
    service = models.CharField(max_length=50)
    kind = models.CharField(max_length=50)
    reference = models.CharField(max_length=128)
    amount_cents = models.BigIntegerField(default=0)
    message_id = models.UUIDField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["service", "kind"], name="ledger_service_kind"), models.Index(fields=["reference"], name="ledger_reference")]

    def __str__(self) -> str:
        return f"{self.service} {self.kind} {self.reference} {self.amount_cents}"

"""Who may do what (roles, API tokens) and what they did (the audit log)."""

from __future__ import annotations

import hashlib
import re
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    AGENT = "agent"  # a flowscope-agent's token: may send spans to /v1/traces, nothing else


# Rank 0: the agent role reaches none of the others, so every page and API operation refuses it.
RANK = {Role.AGENT: 0, Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
TOKEN_PREFIX = "fs_"
APP_NAME = re.compile(r"[\w.:@-]{1,100}")  # an attached app's name, as agents report it


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    """A token for scripts. Only its hash is stored; the token itself is shown once."""

    name = models.CharField(max_length=100)
    role = models.CharField(max_length=10, choices=Role.choices)
    app = models.CharField(max_length=100, blank=True, default="", db_default="", help_text="agent tokens: the one attached app it may report and lease for; empty: any app")
    token_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=12, help_text="the token's first characters, to tell tokens apart")
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.role}, {self.hint}...)"

    @classmethod
    def issue(cls, *, name: str, role: str, created_by: str, app: str = "") -> tuple[ApiToken, str]:
        """A new token and its secret, which is not kept anywhere. `app` ties an agent token to
        one attached app."""
        if role not in Role.values:
            raise ValueError(f"role must be one of {', '.join(Role.values)}, got {role!r}")
        if not name.strip():
            raise ValueError("a token needs a name, to know later what it is for")
        if app and role != Role.AGENT:
            raise ValueError(f"only an agent token is tied to an app; a {role} token sees every app")
        if app and not APP_NAME.fullmatch(app):
            raise ValueError(f"app {app!r} is not an app name: 1 to 100 letters, digits or . : @ - _")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(name=name.strip()[:100], role=role, app=app, token_hash=hash_token(secret), hint=secret[:10], created_by=created_by[:150])
        return token, secret

    @classmethod
    def active(cls, secret: str) -> ApiToken | None:
        """The unrevoked token with this secret, its last use noted (at most a write a minute)."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        row = cls.objects.filter(token_hash=hash_token(secret), revoked_at__isnull=True).first()
        if row is None:
            return None
        now = timezone.now()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            cls.objects.filter(pk=row.pk).update(last_used_at=now)
        return row


class AuditEntry(models.Model):
    """One operator action: who, what, on which messages, when, and the state before and after."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=150)
    via = models.CharField(max_length=20, help_text="web, api, token or command")
    action = models.CharField(max_length=50)
    object_type = models.CharField(max_length=50, blank=True)
    object_ids = models.JSONField(default=list)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type} {self.object_ids}"


class UserRole(models.Model):
    """A user's role in the console. Superusers are admins whatever this says."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="console_role")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)

    def __str__(self) -> str:
        return f"{self.user} is {self.role}"


# Alerting's models live with its code (console/alerts/); imported here so Django finds them.
from console.alerts.models import Alert, AlertRule, Channel, Delivery, Silence  # noqa: E402

__all__ = ["Alert", "AlertRule", "ApiToken", "AuditEntry", "Channel", "Delivery", "Role", "Silence", "UserRole"]

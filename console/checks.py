"""Deploy checks of the console's own (`manage.py check --deploy`), beside Django's."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning


def otlp_receiver_open(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """POST /v1/traces open to anyone: fine on a laptop, not on a server anyone can reach."""
    if settings.TRACING_OTLP_OPEN and not settings.TRACING_OTLP_TOKEN:
        return [
            Warning(
                "POST /v1/traces takes spans from anyone: TRACING_OTLP_OPEN is on and TRACING_OTLP_TOKEN is unset.",
                hint="Unset TRACING_OTLP_OPEN and give senders an agent token (manage.py create_token --name N --role agent), or set TRACING_OTLP_TOKEN.",
                id="console.W001",
            )
        ]
    return []

"""How a notice reaches a channel: a signed webhook or an e-mail. Each transport raises
DeliveryFailed with a reason an operator can act on; the delivery task retries and records it.

A webhook's body is signed with the channel's secret: `X-Flowscope-Signature: sha256=<hex>`, the
HMAC-SHA256 of the raw body, and `X-Flowscope-Timestamp` (Unix seconds, also in the body as
`sent_at`) so a receiver can refuse old replays. The secret is never logged: reasons name the
URL's host and the status, never headers.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request
from typing import Any

import orjson
from django.conf import settings
from django.core.mail import send_mail

from console.alerts.models import Channel, ChannelKind

SIGNATURE_HEADER = "X-Flowscope-Signature"
TIMESTAMP_HEADER = "X-Flowscope-Timestamp"
WEBHOOK_TIMEOUT_SECONDS = 5


class DeliveryFailed(Exception):
    """The channel did not take the notice; str() says why."""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def slack_body(notice: dict[str, Any]) -> dict[str, Any]:
    """What Slack's (and Mattermost's, Rocket.Chat's) incoming webhooks take."""
    icon = {"fired": ":rotating_light:", "resolved": ":white_check_mark:", "test": ":wave:"}.get(notice["event"], "")
    return {"text": f"{icon} [{notice['event']}] {notice['summary']}".strip()}


def send_webhook(channel: Channel, notice: dict[str, Any]) -> None:
    body = orjson.dumps(slack_body(notice) if channel.slack else notice)
    headers = {"Content-Type": "application/json", "User-Agent": "Flowscope-Alerts/1", TIMESTAMP_HEADER: str(notice["sent_at"])}
    if channel.secret:
        headers[SIGNATURE_HEADER] = sign(channel.secret, body)
    request = urllib.request.Request(channel.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310 - an operator's chosen http(s) URL
            response.read(1024)
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"{channel.url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryFailed(f"{channel.url} unreachable: {reason}") from None


def send_email(channel: Channel, notice: dict[str, Any]) -> None:
    subject = f"[Flowscope {notice['event']}] {notice['summary']}"[:200]
    text = orjson.dumps(notice, option=orjson.OPT_INDENT_2).decode()
    try:
        send_mail(subject, text, settings.DEFAULT_FROM_EMAIL, channel.emails, fail_silently=False)
    except Exception as exc:  # noqa: BLE001 - any backend's failure is the delivery's reason
        raise DeliveryFailed(f"e-mail to {', '.join(channel.emails)} failed: {type(exc).__name__}: {exc}") from None


TRANSPORTS = {ChannelKind.WEBHOOK: send_webhook, ChannelKind.EMAIL: send_email}


def send(channel: Channel, notice: dict[str, Any]) -> None:
    TRANSPORTS[ChannelKind(channel.kind)](channel, notice)

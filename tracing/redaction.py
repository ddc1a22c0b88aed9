"""Redaction of sensitive values wherever a payload or an error is shown or exported.

Two nets: values under configured field names (FLOWSCOPE_REDACT_FIELDS, matched without regard
to case, `-` or `_`, and as the start or end of a longer name: `access_token`, `customerEmail`,
`password_hash`), and values that look like an e-mail address or a card number anywhere in
a string (a 13 to 19 digit run that passes the Luhn check).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from django.conf import settings

MASK = "[redacted]"
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_DIGITS = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _sensitive_names() -> frozenset[str]:
    return _normed(tuple(settings.FLOWSCOPE_REDACT_FIELDS))


@functools.lru_cache(maxsize=8)
def _normed(names: tuple[str, ...]) -> frozenset[str]:
    """Keyed by the setting's value, so a changed setting (a test's override) is read afresh."""
    return frozenset(_norm(n) for n in names)


@functools.lru_cache(maxsize=4096)
def _sensitive(name: str, names: frozenset[str]) -> bool:
    """Cached: the same few dozen keys (span attributes, payload fields) come again and again, and
    matching each against every configured name was most of an OTLP request's decoding."""
    norm = _norm(name)
    return any(norm == n or norm.startswith(n) or norm.endswith(n) for n in names)


def mentions_sensitive_field(text: str) -> bool:
    """Whether any configured field name occurs anywhere in `text`, matched as keys are (without
    regard to case, `-` or `_`): where none does, no key in it can be sensitive."""
    flat = _norm(text)
    return any(name in flat for name in _sensitive_names())


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def redact_text(text: str) -> str:
    if "@" in text:  # no address without one: most strings skip the scan
        text = _EMAIL.sub(MASK, text)

    def card(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        return MASK if _luhn(digits) else match.group()

    return _DIGITS.sub(card, text)


def redact(value: Any, *, _names: frozenset[str] | None = None) -> Any:
    """A copy of `value` (JSON-like) with sensitive fields and values masked."""
    names = _sensitive_names() if _names is None else _names
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _sensitive(k, names) else redact(v, _names=names)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, _names=names) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value

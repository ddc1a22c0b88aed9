"""What a bench or lab run could leave in the user's stores, to compare before and after.

Only what such a run writes is compared (its message types, queues, consumers, span service and
keys): the session's own worker and collector keep writing heartbeats and spans meanwhile.
"""

from __future__ import annotations

from django.db.models import Q

from flows.models import DeadLetter, InboxEntry, SagaInstance
from tooling.bench import spans
from tracing.models import Span
from tracing.redis import get_redis

RUN_PREFIXES = ("bench", "lab")


def run_rows() -> dict[str, int]:
    def starts(field: str) -> Q:
        q = Q()
        for prefix in RUN_PREFIXES:
            q |= Q(**{f"{field}__startswith": prefix})
        return q

    return {
        "DeadLetter": DeadLetter.objects.filter(starts("message_type") | starts("queue")).count(),
        "Span": Span.objects.filter(Q(service=spans.SERVICE) | Q(name__contains=" bench.") | Q(name__contains=" lab.")).count(),
        "SagaInstance": SagaInstance.objects.filter(starts("saga_type")).count(),
        "InboxEntry": InboxEntry.objects.filter(starts("consumer")).count(),
    }


def run_keys() -> dict[bytes, bytes | None]:
    """The keys of the configured Redis a run could write, with their values."""
    r = get_redis()
    mine = [spans.STREAM.encode()] + [name for name in r.scan_iter(count=1000) if any(p.encode() in name for p in RUN_PREFIXES)]
    return {name: r.dump(name) for name in mine}

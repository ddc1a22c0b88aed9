"""Check 10: schemathesis fuzzes every operation of /api/v1/openapi.json, driving the Django app
through WSGI with an admin token (so no operation stops at the role check).

Valid and invalid inputs are generated from the description itself, so a new operation is fuzzed
the day it appears. Every answer must be below 500; every invalid input must be refused with a
4xx (schemathesis's negative_data_rejection); every 4xx must carry a `detail` that says what is
wrong: a sentence, or django-ninja's list of where and what.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection

from console.models import ApiToken, hash_token
from tests.people import token_for
from tests.reliability.conftest import sized
from tracing.redis import get_redis

# Not the broker's concern: CI runs it on Redis only (marker in pyproject.toml).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.portable]

EXAMPLES = sized(100, 12)  # per operation and generation mode
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def says_what_is_wrong(body: Any) -> bool:
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        return bool(detail) and all(isinstance(item, dict) and item.get("loc") and item.get("msg") for item in detail)
    return isinstance(detail, str) and len(detail.strip()) > 3


@pytest.mark.timeout(sized(3000, 600))
def test_fuzzing_every_operation_finds_no_server_error_and_no_unexplained_refusal(figure):
    secret = token_for("admin")
    auth = {"Authorization": f"Bearer {secret}"}
    own_token = ApiToken.objects.filter(token_hash=hash_token(secret))
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application(), headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []

    for operation in operations:
        for mode in MODES:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def fuzz(case: schemathesis.Case) -> None:
                response = case.call(headers=auth)
                own_token.update(revoked_at=None)  # the fuzzer may revoke its own token; fuzzing goes on
                statuses[response.status_code] += 1
                problem = ""
                try:
                    case.validate_response(response, checks=[not_a_server_error, negative_data_rejection], headers=auth)
                except (Exception, BaseExceptionGroup) as exc:  # schemathesis's failures (a group), one line each
                    problem = " ".join(str(exc).split())[:300]
                if not problem and 400 <= response.status_code < 500:
                    try:
                        body = response.json()
                    except ValueError:
                        body = None
                    if not says_what_is_wrong(body):
                        problem = f"{response.status_code} without a detail saying what is wrong: {response.content[:200]!r}"
                if problem and len(failures) < 30:
                    failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {problem}\n    {case.as_curl_command(headers=auth)[:400]}")

            fuzz()

    get_redis().delete("flows.control")  # bulk requeue jobs the fuzzer may have started
    total = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    assert not failures, f"{len(failures)} problem(s):\n" + "\n".join(failures)
    assert server_errors == 0 and total >= len(operations) * len(MODES)
    refused = sum(n for status, n in statuses.items() if 400 <= status < 500)
    figure(
        f"{len(operations)} operations, {total} requests ({EXAMPLES} examples per operation and mode): 0 server errors, "
        f"{refused} refused with a 4xx and a reason, {total - refused} accepted; statuses {dict(sorted(statuses.items()))}"
    )

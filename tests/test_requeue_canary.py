"""A bulk requeue tests the water: a canary first, its outcomes awaited, then a ramp to the rate,
and a pause of its own when the requeued messages fail again; operators resume or cancel.

The session's real worker runs the job (on flows.control) and the handlers (t_command, which
fails until its payload's bug is fixed: tests/flows_under_test.py), so every outcome the job
judges is a real one.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.utils import timezone

from console.models import AuditEntry
from flows.models import DeadLetter, RequeueJob
from flows.produce.publishing import build_envelope
from tests.flows_under_test import fix
from tests.people import client_for
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def dead_letters(prefix: str, n: int, *, bug: str) -> list[DeadLetter]:
    """Dead letters of t_command as the runtime records them; each requeued copy fails until
    fix(bug), three quick attempts, and dies again."""
    now = timezone.now()
    rows = []
    for i in range(n):
        envelope = build_envelope("test.command", {"key": f"{prefix}-{i}", "bug": bug}).to_dict()
        rows.append(
            DeadLetter(
                message_id=envelope["message_id"],
                message_type="test.command",
                queue="t.commands",
                consumer="t_command",
                envelope=envelope,
                error_type="builtins.ValueError",
                error_message="a bug in the handler, until fixed",
                fingerprint=f"fp-{prefix}"[:40],
                attempts=3,
                first_dead_at=now,
                dead_at=now,
            )
        )
    return DeadLetter.objects.bulk_create(rows)


def post(client: Client, url: str, body: dict | None = None):
    return client.post(url, json.dumps(body or {}), content_type="application/json")


def job_when(client: Client, job_id: int, *states: str, timeout: float = 30) -> dict:
    return wait_for(lambda: (j := client.get(f"/api/v1/requeue-jobs/{job_id}").json())["state"] in states and j, timeout=timeout, what=f"job {job_id} to be {' or '.join(states)}")


def unsent(rows: list[DeadLetter]) -> int:
    return DeadLetter.objects.filter(pk__in=[d.pk for d in rows], state=DeadLetter.State.DEAD, series=0).count()


def test_a_canary_whose_messages_fail_again_pauses_the_job_with_the_rest_unsent_and_operators_resume_or_cancel(worker):
    dead = dead_letters("canary-bad", 40, bug="canary-bad-bug")
    operator, viewer = client_for("operator"), client_for("viewer")

    job = post(operator, "/api/v1/requeue-jobs", {"fingerprint": "fp-canary-bad", "rate_per_s": 100, "canary_size": 5}).json()
    assert (job["state"], job["total"], job["canary"]["size"]) == ("canary", 40, 5)
    paused = job_when(operator, job["id"], "paused")

    assert paused["paused_reason"].startswith("canary: 5 of 5 (100 %) failed again, over the 20 % allowed"), paused["paused_reason"]
    canary = paused["canary"]
    assert (canary["sent"], canary["succeeded"], canary["failed_again"], canary["pending"]) == (5, 0, 5, 0)
    assert canary["seconds"] > 0 and paused["done"] == 5 and paused["outcomes"] == {"succeeded": 0, "failed_again": 5, "pending": 0}
    assert unsent(dead) == 35, "only the canary went out"
    assert set(DeadLetter.objects.filter(pk__in=[d.pk for d in dead[:5]]).values_list("state", "times_dead")) == {("dead", 2)}

    # A viewer can neither resume nor cancel; an operator can, each audited.
    for action in ("resume", "cancel"):
        refused = post(viewer, f"/api/v1/requeue-jobs/{job['id']}/{action}")
        assert refused.status_code == 403 and "needs the operator role" in refused.json()["detail"]
    fix("canary-bad-bug")  # the operator fixed the cause, and resumes
    resumed = post(operator, f"/api/v1/requeue-jobs/{job['id']}/resume")
    assert resumed.status_code == 200 and (resumed.json()["state"], resumed.json()["paused_reason"]) == ("running", "")
    assert post(operator, f"/api/v1/requeue-jobs/{job['id']}/resume").status_code == 409  # not paused any more
    done = job_when(operator, job["id"], "done")
    assert (done["done"], done["skipped"]) == (40, 0) and unsent(dead) == 0
    wait_for(lambda: DeadLetter.objects.filter(pk__in=[d.pk for d in dead[5:]], state="resolved").count() == 35, what="the 35 sent after the resume to succeed")
    assert post(operator, f"/api/v1/requeue-jobs/{job['id']}/cancel").status_code == 409
    assert list(AuditEntry.objects.filter(object_type="requeue_job").order_by("id").values_list("action", flat=True)) == ["bulk_requeue", "resume_bulk_requeue"]


def test_a_paused_job_cancelled_sends_nothing_more(worker):
    dead = dead_letters("canary-cancel", 12, bug="canary-cancel-bug")
    operator = client_for("operator")
    job = post(operator, "/api/v1/requeue-jobs", {"ids": [d.pk for d in dead], "canary_size": 2, "max_failure_share": 0.5}).json()
    paused = job_when(operator, job["id"], "paused")
    assert paused["canary"]["failed_again"] == 2 and unsent(dead) == 10

    cancelled = post(operator, f"/api/v1/requeue-jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert post(operator, f"/api/v1/requeue-jobs/{job['id']}/resume").status_code == 409
    assert RequeueJob.objects.get(pk=job["id"]).done == 2 and unsent(dead) == 10
    assert AuditEntry.objects.filter(action="cancel_bulk_requeue", object_ids=[job["id"]], before__state="paused").exists()


def test_a_canary_that_succeeds_lets_the_group_through_to_done(worker):
    dead = dead_letters("canary-good", 30, bug="canary-good-bug")
    fix("canary-good-bug")
    operator = client_for("operator")

    job = post(operator, "/api/v1/requeue-jobs", {"fingerprint": "fp-canary-good", "rate_per_s": 200}).json()
    done = job_when(operator, job["id"], "done")

    assert (done["done"], done["skipped"], done["paused_reason"]) == (30, 0, "")
    assert (done["canary"]["sent"], done["canary"]["succeeded"], done["canary"]["failed_again"]) == (10, 10, 0)
    wait_for(lambda: DeadLetter.objects.filter(pk__in=[d.pk for d in dead], state="resolved").count() == 30, what="all 30 to succeed")
    assert operator.get(f"/api/v1/requeue-jobs/{job['id']}").json()["outcomes"] == {"succeeded": 30, "failed_again": 0, "pending": 0}


def test_a_job_whose_requeues_start_failing_again_mid_ramp_pauses_itself(worker):
    # Sent in id order: 15 that now succeed, then 80 whose cause is still there.
    good = dead_letters("ramp-good", 15, bug="ramp-good-bug")
    bad = dead_letters("ramp-bad", 80, bug="ramp-bad-bug")
    fix("ramp-good-bug")
    operator = client_for("operator")

    job = post(operator, "/api/v1/requeue-jobs", {"ids": [d.pk for d in good + bad], "rate_per_s": 10, "canary_size": 5}).json()
    paused = job_when(operator, job["id"], "paused", timeout=60)

    assert paused["paused_reason"].startswith("failing again: "), paused["paused_reason"]
    assert (paused["canary"]["sent"], paused["canary"]["succeeded"]) == (5, 5)
    stopped = RequeueJob.objects.get(pk=job["id"])
    assert stopped.ramp_from is not None and stopped.canary_ended_at is not None
    assert 15 < stopped.done < 95 and unsent(bad) == 95 - stopped.done, "paused before the end, the rest left dead and unsent"
    wait_for(lambda: DeadLetter.objects.filter(pk__in=[d.pk for d in good], state="resolved").count() == 15, what="the good ones to succeed")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_failure_share": 1.5}, "max_failure_share"),
        ({"max_failure_share": -0.1}, "max_failure_share"),
        ({"canary_size": -1}, "canary_size"),
        ({"canary_size": 2.5}, "canary_size"),
        ({"canary_timeout_s": 0}, "canary_timeout_s"),
    ],
)
def test_a_bad_canary_setting_is_a_422_naming_its_field(body, field):
    answer = post(client_for("operator"), "/api/v1/requeue-jobs", {"fingerprint": "whatever", **body})
    assert answer.status_code == 422
    assert [e["loc"][-1] for e in answer.json()["detail"]] == [field], answer.json()
    assert not RequeueJob.objects.exists()


def test_a_page_refreshes_its_own_rows_by_id_and_bad_ids_are_a_422_naming_them():
    first, _, third = dead_letters("by-id", 3, bug="by-id-bug")
    viewer = client_for("viewer")
    items = viewer.get(f"/api/v1/deadletters?ids={first.pk},{third.pk}&state=dead").json()["items"]
    assert sorted(d["id"] for d in items) == [first.pk, third.pk]
    for wrong in ("abc", "1,,2", "0", ",".join(["1"] * 501), "9999999999999999999"):
        answer = viewer.get(f"/api/v1/deadletters?ids={wrong}")
        assert answer.status_code == 422 and "ids" in json.dumps(answer.json()["detail"]), (wrong, answer.content[:200])
    assert viewer.get("/api/v1/deadletters?since=-1.5e-44").status_code == 422  # a number, not a date-time

"""Check: a bulk requeue of a group whose handler still fails stops after its canary; a group whose
cause was fixed goes through. The figures: how many were sent before the pause, and how long the
canary took (from its first send to its verdict), on the session's real worker."""

import pytest

from flows.models import DeadLetter, RequeueJob
from tests.flows_under_test import fix
from tests.people import client_for
from tests.reliability.conftest import sized
from tests.support.waiting import wait_for
from tests.test_requeue_canary import dead_letters, job_when, post, unsent

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_canary_stops_the_requeue_of_a_group_that_still_fails_and_lets_a_fixed_one_through(worker, figure):
    n = sized(200, 60)
    operator = client_for("operator")
    failing = dead_letters("figure-bad", n, bug="figure-bad-bug")
    job = post(operator, "/api/v1/requeue-jobs", {"fingerprint": "fp-figure-bad", "rate_per_s": 100}).json()
    paused = job_when(operator, job["id"], "paused", timeout=90)
    assert paused["done"] == 10 and paused["canary"]["failed_again"] == 10 and unsent(failing) == n - 10
    stopped = RequeueJob.objects.get(pk=job["id"])
    figure(
        f"still failing: {paused['done']} of {n} sent before the pause (canary {paused['canary']['sent']}: "
        f"{paused['canary']['failed_again']} failed again), canary judged after {paused['canary']['seconds']:.1f} s, "
        f"paused {(stopped.canary_ended_at - stopped.created_at).total_seconds():.1f} s after the job was created "
        f"(its first slice began after {(stopped.canary_started_at - stopped.created_at).total_seconds():.1f} s); "
        f"reason: {paused['paused_reason']}"
    )
    post(operator, f"/api/v1/requeue-jobs/{job['id']}/cancel")

    fixed = dead_letters("figure-good", n, bug="figure-good-bug")
    fix("figure-good-bug")
    job = post(operator, "/api/v1/requeue-jobs", {"fingerprint": "fp-figure-good", "rate_per_s": 100}).json()
    done = job_when(operator, job["id"], "done", timeout=90)
    wait_for(lambda: DeadLetter.objects.filter(pk__in=[d.pk for d in fixed], state="resolved").count() == n, timeout=60, what=f"all {n} to succeed")
    ramp = RequeueJob.objects.get(pk=job["id"])
    figure(
        f"fixed: {done['done']} of {n} sent, canary {done['canary']['sent']} all succeeded in {done['canary']['seconds']:.1f} s, "
        f"then ramped from 10/s doubling to 100/s: done {(ramp.finished_at - ramp.created_at).total_seconds():.1f} s after the job was created "
        f"(first slice after {(ramp.canary_started_at - ramp.created_at).total_seconds():.1f} s, "
        f"{(ramp.finished_at - ramp.canary_ended_at).total_seconds():.1f} s after the canary's verdict)"
    )

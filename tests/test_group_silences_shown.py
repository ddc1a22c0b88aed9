"""A failure group muted through the API says so wherever the group appears: the groups of the
dead-letter list, the overview's live frame and the dead letter's own page."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from console import live
from tests.people import client_for
from tests.test_pages import stored_dead_letter

pytestmark = pytest.mark.django_db


def test_a_muted_group_shows_who_muted_it_until_when_and_why_on_every_page_it_appears_on():
    muted = stored_dead_letter(fingerprint="a1" * 8)
    loud = stored_dead_letter(fingerprint="b2" * 8, message_id="6f1c2c1e-2222-4a4a-9b9b-0123456789ab")
    operator = client_for("operator")
    until = (timezone.now() + timedelta(hours=2)).isoformat()
    answer = operator.post("/api/v1/alerts/silences", json.dumps({"fingerprint": muted.fingerprint, "until": until, "reason": "fix deploying"}), content_type="application/json")
    assert answer.status_code == 200, answer.content

    groups = {g["fingerprint"]: g for g in operator.get("/api/v1/deadletters/groups?state=dead").json()}
    assert groups[muted.fingerprint]["silence"]["why"] == "fix deploying"
    assert "muted until" in groups[muted.fingerprint]["silence"]["text"] and "fix deploying" in groups[muted.fingerprint]["silence"]["text"]
    assert groups[loud.fingerprint]["silence"] is None

    live._cache.clear()  # the frame's dead-letter part is kept a few seconds; an earlier test's must not answer
    frame_groups = {g["fingerprint"]: g for g in live.snapshot()["dead_letters"]["groups"]}
    assert frame_groups[muted.fingerprint]["silence"]["text"] == groups[muted.fingerprint]["silence"]["text"]
    assert frame_groups[loud.fingerprint]["silence"] is None

    page = operator.get(f"/deadletters/{muted.pk}/").content.decode()
    assert "muted until" in page and "fix deploying" in page
    assert "muted until" not in operator.get(f"/deadletters/{loud.pk}/").content.decode()

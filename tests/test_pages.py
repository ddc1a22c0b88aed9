import re

import pytest
from django.test import Client
from django.utils import timezone

import flows
from flows.models import DeadLetter, SagaInstance
from tests.people import client_for
from tests.support.waiting import wait_for
from tracing.models import Span

pytestmark = pytest.mark.django_db(transaction=True)
PAGES = ["/", "/graph/", "/deadletters/", "/sagas/", "/traces/", "/audit/"]


def stored_dead_letter(**overrides) -> DeadLetter:
    now = timezone.now()
    fields = {
        "message_id": "6f1c2c1e-1111-4a4a-9b9b-0123456789ab",
        "message_type": "test.command",
        "queue": "t.commands",
        "consumer": "t_command",
        "envelope": {"type": "test.command", "payload": {"key": "k", "email": "ada@example.com", "card": "4111 1111 1111 1111"}, "headers": {}},
        "error_type": "builtins.ValueError",
        "error_message": "boom for ada@example.com",
        "fingerprint": "f" * 16,
        "attempts": 3,
        "first_dead_at": now,
        "dead_at": now,
        "trace_id": "a" * 32,
    }
    fields.update(overrides)
    return DeadLetter.objects.create(**fields)


@pytest.mark.parametrize("url", PAGES)
def test_anonymous_visitors_are_sent_to_sign_in(url):
    response = Client().get(url)
    assert response.status_code == 302 and response.url.startswith("/login/?next=")


@pytest.mark.parametrize("url", PAGES)
def test_every_page_renders_for_a_viewer(url):
    response = client_for("viewer").get(url)
    assert response.status_code == 200
    assert "/static/vendor/plotly.min.js" in response.content.decode()


def test_plotly_is_served_from_the_installed_package_not_a_cdn():
    response = Client().get("/static/vendor/plotly.min.js")
    assert response.status_code == 200
    assert b"plotly.js" in b"".join(response.streaming_content)[:2000]
    page = client_for("viewer").get("/").content.decode()
    assert not re.search(r"https?://(cdn|unpkg|cdnjs)", page)


def test_a_viewer_sees_no_requeue_buttons_and_an_operator_does():
    dead = stored_dead_letter()
    viewer_page = client_for("viewer").get(f"/deadletters/{dead.pk}/").content.decode()
    assert 'id="requeue-one"' not in viewer_page and "Discard" not in viewer_page
    operator = Client()
    from tests.people import person

    operator.force_login(person("operator", "op2"))
    operator_page = operator.get(f"/deadletters/{dead.pk}/").content.decode()
    assert 'id="requeue-one"' in operator_page and 'id="edit-requeue"' in operator_page
    assert 'id="requeue-selected"' in operator.get("/deadletters/").content.decode()
    assert 'id="requeue-selected"' not in client_for("viewer").get("/deadletters/").content.decode()


def test_the_dead_letter_page_redacts_the_payload_and_links_its_trace():
    dead = stored_dead_letter()
    page = client_for("viewer").get(f"/deadletters/{dead.pk}/").content.decode()
    assert "ada@example.com" not in page and "4111" not in page
    assert "[redacted]" in page
    assert f'href="/traces/{"a" * 32}/"' in page


def test_hostile_text_in_a_dead_letter_is_escaped_everywhere_it_is_shown():
    stored_dead_letter(error_message='</script><script>alert("x")</script>', error_type="<img src=x onerror=alert(1)>")
    viewer = client_for("viewer")
    for url in ("/", "/deadletters/"):
        page = viewer.get(url).content.decode()
        assert "<script>alert" not in page and "<img src=x" not in page


def test_search_lands_on_the_page_for_any_id(worker):
    dead = stored_dead_letter()
    saga = flows.start_saga("test.trip", {"trip": "search-me"}, correlation_id="order-search")
    wait_for(lambda: SagaInstance.objects.filter(pk=saga.pk, state="completed").exists())
    Span.objects.create(trace_id="b" * 32, span_id="c" * 16, name="x", start_time=timezone.now(), duration_us=1, message_id="11111111-2222-4333-8444-555555555555", correlation_id="order-search")
    viewer = client_for("viewer")
    assert viewer.get(f"/search/?q={'b' * 32}").url == f"/traces/{'b' * 32}/"
    assert viewer.get(f"/search/?q={dead.pk}").url == f"/deadletters/{dead.pk}/"
    assert viewer.get(f"/search/?q={dead.message_id}").url == f"/messages/{dead.message_id}/"
    assert viewer.get(f"/search/?q={saga.pk}").url == f"/sagas/{saga.pk}/"
    assert viewer.get("/search/?q=11111111-2222-4333-8444-555555555555").url == "/messages/11111111-2222-4333-8444-555555555555/"
    assert viewer.get("/search/?q=order-search").url == "/traces/?correlation_id=order-search"
    missing = viewer.get("/search/?q=nothing-at-all")
    assert missing.status_code == 404 and "nothing known by" in missing.content.decode()


def test_a_compensated_saga_shows_its_plan_against_what_ran(worker):
    saga = flows.start_saga("test.trip", {"trip": "page-trip", "fail_at": "charge"})
    wait_for(lambda: SagaInstance.objects.filter(pk=saga.pk, state="compensated").exists())
    page = client_for("viewer").get(f"/sagas/{saga.pk}/").content.decode()
    cells = re.findall(r'<td class="step ([a-z-]+)"><b>', page)
    assert cells == ["succeeded", "succeeded", "succeeded", "succeeded", "failed", "not-needed"]
    assert "charge is sold out" in page


def test_trace_pages_check_the_id():
    viewer = client_for("viewer")
    assert viewer.get("/traces/not-hex/").status_code == 400
    assert viewer.get(f"/traces/{'d' * 32}/").status_code == 404
    Span.objects.create(trace_id="e" * 32, span_id="f" * 16, name="x", start_time=timezone.now(), duration_us=1)
    assert viewer.get(f"/traces/{'e' * 32}/").status_code == 200


def test_a_bad_cursor_on_the_dead_letter_list_is_a_400():
    assert client_for("viewer").get("/deadletters/?cursor=garbage").status_code == 400


@pytest.mark.parametrize("path", ["/deadletters/?app=shop%00", "/deadletters/?message_type=a%00", "/tasks/?name=t%00", "/graph/?app=%00"])
def test_a_nul_character_in_a_page_filter_is_a_400_naming_it_not_a_database_error(path):
    response = client_for("viewer").get(path)
    assert response.status_code == 400 and b"contains a NUL character" in response.content, (path, response.status_code)

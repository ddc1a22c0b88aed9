import pytest
from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db


def test_health_reports_redis_and_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"redis": "ok", "database": "ok"}}


def test_health_is_503_naming_the_part_that_is_down(client, settings):
    from flows.devredis import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error: ")


def test_the_status_page_needs_a_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response.url.startswith("/admin/login/")


def test_the_status_page_shows_queues_dead_letters_and_sagas(client):
    client.force_login(User.objects.create_user("viewer"))
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    for queue in ("t.backlog.raise", "invoices", "payments"):
        assert f"<td>{queue}</td>" in page
    assert "Dead letters" in page and "Sagas" in page

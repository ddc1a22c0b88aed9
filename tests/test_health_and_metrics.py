import re

import pytest
from django.test import Client

from tests.people import client_for, token_for
from tests.support.brokers import on_rabbitmq, rabbitmq_only

pytestmark = pytest.mark.django_db


def test_health_reports_redis_the_broker_and_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    # On Redis the engine's Redis check is the broker's too; RabbitMQ is checked on its own.
    broker = {"broker": "ok"} if on_rabbitmq() else {}
    assert response.json() == {"status": "ok", "checks": {"redis": "ok", **broker, "database": "ok"}}


@rabbitmq_only
def test_health_is_503_when_rabbitmq_does_not_answer(client, monkeypatch):
    from celery import current_app

    from tooling.devredis import free_port

    monkeypatch.setattr(current_app.conf, "broker_write_url", f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and (body["checks"]["redis"], body["checks"]["database"]) == ("ok", "ok")
    assert body["checks"]["broker"].startswith("error: ")


def test_health_is_503_naming_the_part_that_is_down(client, settings):
    from tooling.devredis import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error: ")


def test_metrics_need_a_session_or_a_token_and_speak_prometheus():
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", headers={"Authorization": "Bearer fs_wrong"}).status_code == 401
    by_token = Client().get("/metrics", headers={"Authorization": f"Bearer {token_for('viewer')}"})
    assert by_token.status_code == 200 and by_token["Content-Type"].startswith("text/plain; version=0.0.4")
    text = client_for("viewer").get("/metrics").content.decode()
    for name in (
        "flowscope_deliveries_total",
        "flowscope_dead_letters",
        "flowscope_requeues_total",
        "flowscope_sagas",
        "flowscope_queue_depth",
        "flowscope_span_ingest_pending",
        "flowscope_workers_online",
    ):
        assert f"# TYPE {name} " in text
    assert 'flowscope_queue_depth{queue="t.commands"} 0' in text
    # Consumers only where the broker counts them (RabbitMQ); Redis does not say.
    if on_rabbitmq():
        assert re.search(r'^flowscope_queue_consumers\{queue="t.commands"\} \d+$', text, re.MULTILINE), text
    else:
        assert "flowscope_queue_consumers{" not in text

import io
import json

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from console.models import ApiToken, AuditEntry, hash_token
from tests.people import client_for, person

pytestmark = pytest.mark.django_db


def post(client: Client, url: str, body: dict | None = None, **headers: str):
    return client.post(url, json.dumps(body or {}), content_type="application/json", headers=headers)


def test_create_token_prints_the_token_once_and_keeps_only_its_hash():
    out, err = io.StringIO(), io.StringIO()
    call_command("create_token", "--name", "nightly export", "--role", "viewer", stdout=out, stderr=err)
    secret = out.getvalue().strip()
    token = ApiToken.objects.get()
    assert secret.startswith("fs_") and token.token_hash == hash_token(secret) and secret not in str(token.__dict__)
    assert "not shown again" in err.getvalue()
    assert Client().get("/api/v1/queues", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert AuditEntry.objects.get().action == "create_token"
    with pytest.raises(CommandError):
        call_command("create_token", "--name", "x", "--role", "god")
    with pytest.raises(CommandError, match="needs a name"):
        call_command("create_token", "--name", "  ", "--role", "viewer")


def test_set_role_changes_a_users_role_and_opens_the_admin_site_to_admins():
    user = person(None, "newcomer")
    call_command("set_role", "newcomer", "admin", stdout=io.StringIO())
    user.refresh_from_db()
    assert user.is_staff and user.console_role.role == "admin"
    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("set_role", "ghost", "viewer")


def test_only_admins_manage_tokens_and_retention_and_a_revoked_token_stops_working():
    operator = client_for("operator")
    assert operator.get("/api/v1/admin/tokens").status_code == 403
    assert post(operator, "/api/v1/admin/tokens", {"name": "x", "role": "viewer"}).status_code == 403
    assert post(operator, "/api/v1/admin/retention/prune", {"days": 1}).status_code == 403
    admin = client_for("admin")
    created = post(admin, "/api/v1/admin/tokens", {"name": "grafana", "role": "viewer"}).json()
    secret = created["token"]
    assert Client().get("/api/v1/queues", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert "token" not in admin.get("/api/v1/admin/tokens").json()[0]
    assert post(admin, f"/api/v1/admin/tokens/{created['id']}/revoke").json()["revoked"] is True
    assert post(admin, f"/api/v1/admin/tokens/{created['id']}/revoke").status_code == 409
    assert Client().get("/api/v1/queues", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert post(admin, "/api/v1/admin/tokens", {"name": "x", "role": "emperor"}).status_code == 422
    assert post(admin, "/api/v1/admin/retention/prune", {"days": 30}).json() == {
        "spans": 0,
        "links": 0,
        "edge_stats": 0,
        "edge_hours": 0,
        "trace_summaries": 0,
        "span_days_dropped": 0,
        "link_days_dropped": 0,
    }
    assert [e.action for e in AuditEntry.objects.order_by("id")] == ["create_token", "revoke_token", "prune_spans"]


def test_a_superuser_is_an_admin_and_a_user_without_a_role_may_only_look():
    root = User.objects.create_superuser("root", password="a-long-test-password")
    client = Client()
    client.force_login(root)
    assert client.get("/api/v1/admin/tokens").status_code == 200
    plain = Client()
    plain.force_login(person(None, "plain"))
    assert plain.get("/api/v1/queues").status_code == 200
    assert post(plain, "/api/v1/messages", {"type": "test.command", "payload": {"key": "x"}}).status_code == 403

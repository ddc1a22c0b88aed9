"""Check 9, access: every door is found by enumeration, not by a list kept by hand.

Routes come from Django's URL resolver (pages, admin, metrics, the OTLP receiver) and operations
from the API's own OpenAPI description, so a route added tomorrow is tried tomorrow. Anonymous
callers are refused everywhere but the few public doors named below; a viewer, by session and by
token, gets 403 from every state-changing operation; a session write without the CSRF token is
refused; the websocket refuses anonymous and foreign-origin sockets; every allowed action leaves
an audit row.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone

from console.models import AlertRule, ApiToken, AuditEntry, Channel, Silence
from flows.models import DeadLetter, LiveSource, LiveWorker, RequeueJob, RevokeOrder
from flows.produce.backpressure import backpressure
from tests.people import client_for, token_for
from tests.reliability.doors import SAFE, api_operations, call, console_routes
from tests.support.brokers import purge

# Not the broker's concern: CI runs it on Redis only (marker in pyproject.toml).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.portable]
QUEUE = "t.backlog.raise"

# The doors an anonymous caller may open, each for a reason. Everything else must refuse.
PUBLIC = {
    "login/": "the sign-in form",
    "logout/": "signing out is harmless to anyone",
    "admin/login/": "the admin site's sign-in form",
    "admin/logout/": "signing out again: a redirect to the admin index, which asks to sign in",
    "healthz": "load balancers probe it; it shows only ok/degraded",
    "v1/traces": "the OTLP receiver: open unless TRACING_OTLP_TOKEN is set (tried below with one)",
    "api/v1/": "django-ninja's root: a 404 naming no data",
}


def refused(response: HttpResponse) -> bool:
    """Nothing served: asked to sign in, forbidden, or not a method the route answers."""
    if response.status_code == 302:
        return "login/" in response["Location"]
    return response.status_code in (401, 403, 405)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """An async body on a loop and thread of its own (this thread may hold Playwright's loop)."""
    failures: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(body())
        except BaseException as exc:  # handed back below
            failures.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if failures:
        raise failures[0]
    assert not thread.is_alive(), "the websocket body did not finish within 60s"


def test_anonymous_callers_are_refused_by_every_page_and_api_operation(figure, settings):
    settings.TRACING_OTLP_TOKEN = "otlp-secret"  # the receiver is then closed to strangers too
    anonymous = Client(enforce_csrf_checks=True)  # as a script or a browser would be checked
    tried, let_in = 0, []
    for route, url in console_routes():
        for method in ("GET", "POST"):
            response = call(anonymous, method, url)
            tried += 1
            public = route in PUBLIC and route != "v1/traces"
            if not public and not refused(response):
                let_in.append(f"{method} {url} -> {response.status_code}")
    api = api_operations()
    for method, _, path in api:
        response = call(anonymous, method, path)
        tried += 1
        if response.status_code != 401:
            let_in.append(f"{method} {path} -> {response.status_code}")
    revoked = ApiToken.issue(name="revoked", role="admin", created_by="tests")
    ApiToken.objects.filter(pk=revoked[0].pk).update(revoked_at=timezone.now())
    for header in ("Bearer fs_not-a-token", "Bearer " + "x" * 40, "Basic YWRtaW46YWRtaW4=", f"Bearer {revoked[1]}"):
        for method, _, path in api:
            tried += 1
            if (status := call(anonymous, method, path, Authorization=header).status_code) != 401:  # 401, never a CSRF 403
                let_in.append(f"{method} {path} with {header[:12]}... -> {status}")
    schema = anonymous.get("/api/v1/openapi.json")
    tried += 1
    if schema.status_code != 401:
        let_in.append(f"GET /api/v1/openapi.json -> {schema.status_code}")
    assert not let_in, "anonymous callers let in:\n" + "\n".join(let_in)
    assert len(api) >= 20 and tried > 150  # the enumeration found the doors
    figure(f"{len(console_routes())} routes + {len(api)} API operations, {tried} anonymous requests: {tried} refused")


def test_the_openapi_description_opens_to_a_session_or_a_token_of_any_role():
    assert client_for("viewer").get("/api/v1/openapi.json").status_code == 200
    token = token_for("viewer")
    assert Client().get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    refusal = Client().get("/api/v1/openapi.json")
    assert refusal.status_code == 401 and "Authorization: Bearer" in refusal.json()["detail"]


# A valid body for each state-changing operation: a viewer must meet the role check, not a 422.
# A new operation without an entry here fails test_the_state_changing_operations_are_all_known.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/deadletters/{dead_letter_id}/requeue"): {},
    ("POST", "/api/v1/deadletters/{dead_letter_id}/discard"): {"reason": "access check"},
    ("POST", "/api/v1/deadletters/{dead_letter_id}/edit-requeue"): {"payload": {"key": "edited"}},
    ("POST", "/api/v1/requeue-jobs"): {"fingerprint": "f" * 16},
    ("POST", "/api/v1/requeue-jobs/{job_id}/cancel"): {},
    ("POST", "/api/v1/requeue-jobs/{job_id}/resume"): {},
    ("POST", "/api/v1/messages"): {"type": "test.bulk", "payload": {"key": "access"}},
    ("POST", "/api/v1/admin/tokens"): {"name": "access check", "role": "viewer"},
    ("POST", "/api/v1/admin/tokens/{token_id}/revoke"): {},
    ("POST", "/api/v1/admin/retention/prune"): {"days": 30},
    ("POST", "/api/v1/agent/reports"): {"app": "access-check", "dead": [], "resolved": []},
    ("POST", "/api/v1/agent/requeues/ack"): {"app": "access-check", "ids": []},
    ("POST", "/api/v1/agent/live"): {"app": "access-check", "tasks": [], "workers": []},
    ("POST", "/api/v1/agent/revokes/ack"): {"app": "access-check", "ids": []},
    ("POST", "/api/v1/tasks/{task_id}/revoke"): {"app": "access-check"},
    ("POST", "/api/v1/alerts/rules"): {"name": "access check", "kind": "spans"},
    ("PUT", "/api/v1/alerts/rules/{rule_id}"): {"name": "access check", "kind": "spans", "threshold": 5},
    ("DELETE", "/api/v1/alerts/rules/{rule_id}"): {},
    ("POST", "/api/v1/alerts/channels"): {"name": "access check", "kind": "email", "emails": ["ops@example.com"]},
    ("PUT", "/api/v1/alerts/channels/{channel_id}"): {"name": "access check", "kind": "email", "emails": ["lead@example.com"]},
    ("DELETE", "/api/v1/alerts/channels/{channel_id}"): {},
    ("POST", "/api/v1/alerts/channels/{channel_id}/test"): {},
    ("POST", "/api/v1/alerts/silences"): {"fingerprint": "f" * 16, "until": (timezone.now() + timedelta(days=30)).isoformat(), "reason": "access check"},
    ("DELETE", "/api/v1/alerts/silences/{silence_id}"): {},
}
# An attached app's agent reports its deaths and acknowledges its orders with a token of the
# agent role, and nothing else may: every other role, admin included, is refused. What it sends
# is ingest, like spans on /v1/traces: stored as the app's dead letters, not an operator's action
# for the audit log.
AGENT_ONLY = "/api/v1/agent/"


def state_changing() -> list[tuple[str, str, str]]:
    return [op for op in api_operations() if op[0] not in SAFE]


def test_the_state_changing_operations_are_all_known():
    listed = {(method, template) for method, template, _ in state_changing()}
    assert listed == set(BODIES), f"give these a valid body in BODIES: {sorted(listed - set(BODIES))}; gone: {sorted(set(BODIES) - listed)}"


class World:
    """One of each object the state-changing operations act on, with its real id."""

    def __init__(self) -> None:
        self.dead = self.fresh_dead()
        self.job = self.fresh_job()
        self.token = ApiToken.issue(name="to revoke", role="viewer", created_by="tests")[0]
        # A task revoke needs an agent of its app reporting: a worker of the access check's app.
        now = timezone.now()
        LiveWorker.objects.get_or_create(app="access-check", hostname="celery@access", defaults={"source": LiveSource.AGENT, "heartbeat_at": now, "first_seen_at": now})
        self.task_id = str(uuid.uuid4())
        self.fresh_alerting()

    def fresh_alerting(self) -> None:
        """An alert rule, an e-mail channel (a test notice to it fails harmlessly) and a silence."""
        self.rule = AlertRule.objects.create(name="access check", kind="spans", created_by="tests")
        self.channel = Channel.objects.create(name="access check", kind="email", emails=["ops@example.com"], created_by="tests")
        self.silence = Silence.objects.create(rule=self.rule, until=timezone.now() + timedelta(hours=1), created_by="tests", reason="access check")

    @staticmethod
    def fresh_dead() -> DeadLetter:
        now = timezone.now()
        message_id = uuid.uuid4()
        return DeadLetter.objects.create(
            # test.bulk's queue is one no worker of the run consumes, emptied as each test starts:
            # what these checks requeue stays out of other tests' way.
            message_id=message_id,
            message_type="test.bulk",
            queue="t.backlog.raise",
            consumer="t_bulk",
            envelope={"type": "test.bulk", "schema_version": 1, "payload": {"key": "access"}, "headers": {}, "message_id": str(message_id)},
            error_type="builtins.ValueError",
            error_message="boom",
            fingerprint="f" * 16,
            attempts=3,
            first_dead_at=now,
            dead_at=now,
        )

    @staticmethod
    def fresh_job() -> RequeueJob:
        return RequeueJob.objects.create(created_by="tests", max_id=0, total=5)

    def url(self, template: str) -> str:
        ids = {"dead_letter_id": self.dead.pk, "job_id": self.job.pk, "token_id": self.token.pk, "task_id": self.task_id}
        ids |= {"rule_id": self.rule.pk, "channel_id": self.channel.pk, "silence_id": self.silence.pk}
        return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), template)

    def unchanged(self) -> bool:
        return (
            all(d.state == "dead" for d in DeadLetter.objects.all())
            and RequeueJob.objects.get(pk=self.job.pk).state == "running"
            and ApiToken.objects.get(pk=self.token.pk).revoked_at is None
            and not RevokeOrder.objects.exists()
            and AlertRule.objects.filter(pk=self.rule.pk, threshold=0).exists()
            and Channel.objects.filter(pk=self.channel.pk, emails=["ops@example.com"]).exists()
            and Silence.objects.filter(pk=self.silence.pk).exists()
        )


def forget_published() -> None:
    """Messages and jobs the checks published stay out of the next test's way, and the queue's
    watermark (five) out of this one's."""
    purge(QUEUE, "flows.control")
    backpressure.forget()


def test_a_viewer_gets_403_from_every_state_changing_operation_by_session_and_by_token(figure):
    world = World()
    tokens_before = ApiToken.objects.count()
    viewer_session = client_for("viewer")
    viewer_token = {"Authorization": f"Bearer {token_for('viewer')}"}
    operator_session = client_for("operator")
    operator_token = {"Authorization": f"Bearer {token_for('operator')}"}
    admin_session = client_for("admin")
    admin_token = {"Authorization": f"Bearer {token_for('admin')}"}
    refusals, wrong = 0, []
    for method, template, _ in state_changing():
        url, body = world.url(template), BODIES[(method, template)]
        callers = [("viewer session", viewer_session, {}), ("viewer token", Client(), viewer_token)]
        if template.startswith(("/api/v1/admin/", AGENT_ONLY)):
            callers += [("operator session", operator_session, {}), ("operator token", Client(), operator_token)]
        if template.startswith(AGENT_ONLY):
            callers += [("admin session", admin_session, {}), ("admin token", Client(), admin_token)]
        for who, client, headers in callers:
            response = call(client, method, url, body, **headers)
            refusals += 1
            if response.status_code != 403 or "role" not in response.json().get("detail", ""):
                wrong.append(f"{who}: {method} {url} -> {response.status_code} {response.content[:200]!r}")
    assert not wrong, "\n".join(wrong)
    assert world.unchanged() and ApiToken.objects.count() == tokens_before + 3
    assert not AuditEntry.objects.exists()
    figure(f"{len(state_changing())} state-changing operations x viewer (session, token) + admin ones x operator + agent ones x operator and admin: {refusals} answered 403, nothing changed")


def test_a_viewer_is_refused_every_write_on_the_console_pages(figure):
    viewer = client_for("viewer")
    tried, wrong = 0, []
    for route, url in console_routes():
        if route in ("login/", "logout/", "admin/login/", "admin/logout/", "v1/traces"):
            continue  # the public doors and the OTLP receiver (spans, not console state)
        for method in ("POST", "PUT", "DELETE"):
            response = call(viewer, method, url)
            tried += 1
            if not refused(response) and not (route == "api/v1/" and response.status_code == 404):
                wrong.append(f"{method} {url} -> {response.status_code}")
    assert not wrong, "pages a viewer could write to:\n" + "\n".join(wrong)
    figure(f"{tried} page writes by a viewer: {tried} refused")


def test_session_writes_without_the_csrf_token_are_refused_everywhere(figure):
    world = World()
    admin = client_for("admin", csrf=True)  # the strongest role: only the CSRF check may refuse
    wrong = []
    operations = state_changing()
    for method, template, _ in operations:
        response = call(admin, method, world.url(template), BODIES[(method, template)])
        if response.status_code != 403 or "CSRF" not in response.content.decode():
            wrong.append(f"{method} {template} -> {response.status_code}")
    pages = [url for route, url in console_routes() if route not in ("v1/traces", "api/v1/")]
    for url in pages:
        response = admin.post(url, {})
        if response.status_code != 403:
            wrong.append(f"POST {url} -> {response.status_code}")
    assert not wrong, "writes let through without a CSRF token:\n" + "\n".join(wrong)
    assert world.unchanged() and not AuditEntry.objects.exists()
    # With the token from the cookie the same session goes through: the refusals were CSRF's.
    admin.get("/deadletters/")
    csrf = admin.cookies["csrftoken"].value
    response = call(admin, "POST", world.url("/api/v1/deadletters/{dead_letter_id}/discard"), {"reason": "with the token"}, **{"X-CSRFToken": csrf})
    assert response.status_code == 200
    figure(f"{len(operations)} API writes + {len(pages)} page POSTs without a CSRF token: {len(operations) + len(pages)} refused")


def test_every_allowed_state_changing_action_leaves_an_audit_row(figure):
    world = World()
    done = []
    try:
        for method, template, _ in state_changing():
            if template.startswith(AGENT_ONLY):
                continue
            role = "admin" if template.startswith("/api/v1/admin/") else "operator"
            for via, client, headers in (("web", client_for(role), {}), ("token", Client(), {"Authorization": f"Bearer {token_for(role)}"})):
                # Each call acts on objects of its own, so the second is not a 409.
                world.dead, world.job = World.fresh_dead(), World.fresh_job()
                world.token = ApiToken.issue(name="to revoke", role="viewer", created_by="tests")[0]
                world.fresh_alerting()
                body = BODIES[(method, template)]
                if template == "/api/v1/requeue-jobs":
                    body = {"ids": [World.fresh_dead().pk]}
                if template.endswith("/resume"):  # only a paused job resumes
                    RequeueJob.objects.filter(pk=world.job.pk).update(state=RequeueJob.State.PAUSED, paused_reason="access check")
                forget_published()
                before = AuditEntry.objects.count()
                response = call(client, method, world.url(template), body, **headers)
                assert response.status_code in (200, 202), f"{via} {role}: {method} {template} -> {response.status_code} {response.content[:300]!r}"
                rows = list(AuditEntry.objects.order_by("-id")[: AuditEntry.objects.count() - before])
                assert len(rows) == 1, f"{method} {template} by {via} left {len(rows)} audit rows"
                assert rows[0].via == via and rows[0].actor and rows[0].action, rows[0]
                done.append((method, template, via))
    finally:
        forget_published()
    figure(f"{len(done)} allowed actions ({len(done) // 2} operations, by session and by token): {len(done)} audit rows (the agent's reports and acknowledgements are ingest, not audited)")


def test_the_websocket_refuses_anonymous_and_foreign_origins_and_admits_a_signed_in_browser(figure):
    from console.asgi import application
    from console.routing import websocket_urlpatterns

    signed_in = client_for("viewer")
    cookie = f"sessionid={signed_in.cookies['sessionid'].value}".encode()
    sockets = ["/" + str(p.pattern) for p in websocket_urlpatterns if not isinstance(p, URLRouter)]
    assert sockets
    outcomes: dict[str, list[bool]] = {"anonymous": [], "foreign origin": [], "no origin": [], "signed in": []}

    async def attempt(path: str, headers: list[tuple[bytes, bytes]]) -> bool:
        communicator = WebsocketCommunicator(application, path, headers=[(b"host", b"localhost"), *headers])
        connected, _ = await communicator.connect(timeout=10)
        if connected:
            await communicator.disconnect()
        return connected

    async def go() -> None:
        for path in sockets:
            outcomes["anonymous"].append(await attempt(path, [(b"origin", b"http://localhost")]))
            outcomes["foreign origin"].append(await attempt(path, [(b"origin", b"http://evil.example"), (b"cookie", cookie)]))
            outcomes["no origin"].append(await attempt(path, [(b"cookie", cookie)]))
            outcomes["signed in"].append(await attempt(path, [(b"origin", b"http://localhost"), (b"cookie", cookie)]))

    run(go)
    assert outcomes["signed in"] == [True] * len(sockets), "the signed-in browser is the control: it must get in"
    for kind in ("anonymous", "foreign origin", "no origin"):
        assert not any(outcomes[kind]), f"{kind} socket let in: {outcomes[kind]}"
    figure(f"{len(sockets)} websocket route(s): anonymous, foreign Origin and no Origin refused; a signed-in browser admitted")

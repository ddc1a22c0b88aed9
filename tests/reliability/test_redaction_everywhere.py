"""Check 12, redaction: an e-mail address, a card number and a token seeded in message payloads
appear nowhere an operator or a log reader could see them.

The messages go through a real worker (payload capture on, the most exposed setting), fail with
the secrets in their error messages, retry, die, are requeued with an edited payload, arrive
malformed, come in through the API and, as foreign spans, through the OTLP receiver. Then every
page (found by the URL resolver, each filled with the real ids), every GET of the API (found in
its OpenAPI description), the live socket's snapshot, the logs of the worker, the collector and
this web process, and every stored span's attributes and events are searched for the secrets.
Only the dead letters' own rows keep them: a requeue must send the original.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

import flows
from console import live
from flows.core.registry import catalog
from flows.models import DeadLetter
from flows.tasks import deliver
from tests.people import token_for
from tests.reliability.doors import api_operations, routes
from tests.support.waiting import wait_for
from tests.support.workers import TEST_MODULES
from tests.tracing_helpers import flush_here
from tracing.models import Span

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "ada.seeded-secret@example.com"
CARD = "4111 1111 1111 1111"
TOKEN = "tok_seeded_9f8e7d6c5b4a3210fedc"
SECRETS = (EMAIL, CARD, CARD.replace(" ", ""), TOKEN)
EDITED_EMAIL = "grace.seeded-secret@example.org"
SECRET_FLOWS = "tests.reliability.secret_flows"


def payload(outcome: str, **extra: Any) -> dict[str, Any]:
    return {"customer_email": EMAIL, "card_number": CARD, "access_token": TOKEN, "note": f"call {EMAIL}, card {CARD}", "outcome": outcome, **extra}


def leaks(text: str) -> list[str]:
    return [secret for secret in (*SECRETS, EDITED_EMAIL) if secret in text]


@pytest.fixture
def secrets_worker(start_worker: Any) -> Iterator[Any]:
    """A worker of its own on the secrets queue, with payloads captured into spans.

    The flow is declared in this process for the test's length only: a session worker started
    later must not find a queue its own modules do not declare.
    """
    before = catalog.snapshot()
    if SECRET_FLOWS in sys.modules:
        importlib.reload(sys.modules[SECRET_FLOWS])  # declared again after an earlier restore
    else:
        importlib.import_module(SECRET_FLOWS)
    try:
        yield start_worker("secrets", ["t.secrets"], extra_env={"TRACING_CAPTURE_PAYLOAD": "1", "FLOWS_MODULES": f"{TEST_MODULES},{SECRET_FLOWS}"})
    finally:
        catalog.restore(before)


def otlp_span_with_secrets(trace_id: str) -> bytes:
    attributes = [
        {"key": "user.email", "value": {"stringValue": EMAIL}},
        {"key": "http.request.header.authorization", "value": {"stringValue": f"Bearer {TOKEN}"}},
        {"key": "note", "value": {"stringValue": f"paid with {CARD}"}},
    ]
    event = {"name": "exception", "timeUnixNano": "1700000000050000000", "attributes": [{"key": "exception.message", "value": {"stringValue": f"card {CARD} of {EMAIL} declined"}}]}
    span = {
        "traceId": trace_id,
        "spanId": uuid.uuid4().hex[:16],
        "name": "POST /signup",
        "kind": 2,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000100000000",
        "attributes": attributes,
        "events": [event],
        "status": {"code": 2, "message": f"declined for {EMAIL}"},
    }
    return json.dumps({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "signup-edge"}}]}, "scopeSpans": [{"spans": [span]}]}]}).encode()


def seed(operator: Client, auth: dict[str, str]) -> dict[str, Any]:
    """Secrets down every path a message takes; returns the ids to look them up by."""
    failing = [flows.send("secret.signup", payload("fail")) for _ in range(2)]
    poison = flows.send("secret.signup", payload("poison"))
    ok = flows.send("secret.signup", payload("ok"))
    response = Client().post("/api/v1/messages", {"type": "secret.signup", "payload": payload("fail")}, content_type="application/json", headers=auth)
    assert response.status_code == 202, response.content
    by_api = uuid.UUID(response.json()["message_id"])
    malformed = {"type": "secret.signup", "payload": payload("ok"), "contact": EMAIL, "message_id": str(uuid.uuid4())}
    deliver.apply_async(args=[malformed, "t_secret_signup"], queue="t.secrets")
    foreign_trace = uuid.uuid4().hex
    assert Client().post("/v1/traces", otlp_span_with_secrets(foreign_trace), content_type="application/json").status_code == 200

    message_ids = [e.message_id for e in (*failing, poison)] + [by_api]
    dead = wait_for(lambda: len(rows := list(DeadLetter.objects.filter(message_id__in=message_ids))) == 4 and rows, timeout=60, what="four dead letters")
    doa = wait_for(lambda: DeadLetter.objects.filter(message_id=malformed["message_id"]).first(), what="the malformed delivery's dead letter")
    # Edit one and requeue it with a new e-mail address: it fails again (the handler still says "fail").
    edited = dead[0]
    response = operator.post(f"/api/v1/deadletters/{edited.pk}/edit-requeue", {"payload": payload("fail", customer_email=EDITED_EMAIL)}, content_type="application/json")
    assert response.status_code == 200, response.content
    wait_for(lambda: DeadLetter.objects.filter(pk=edited.pk, state="dead", series=1).exists(), timeout=60, what="the edited message to die again")
    flush_here()
    traces = {d.trace_id for d in DeadLetter.objects.all() if d.trace_id} | {foreign_trace}
    wait_for(lambda: Span.objects.filter(message_id=str(ok.message_id), attributes__has_key="flowscope.outcome").exists(), timeout=60, what="the worker's spans")
    wait_for(lambda: Span.objects.filter(trace_id=foreign_trace).exists(), what="the foreign span")
    return {"dead": [*DeadLetter.objects.filter(pk__in=[d.pk for d in dead] + [doa.pk])], "traces": sorted(traces), "messages": [*map(str, message_ids), str(ok.message_id)]}


def page_urls(seeded: dict[str, Any]) -> list[str]:
    """Every page of the resolver, once per real id its parameter can take."""
    dead_ids = [str(d.pk) for d in seeded["dead"]]
    urls: list[str] = []
    for route, _ in routes():
        if route.startswith(("api/v1/", "v1/", "login/", "logout/", "admin/logout/")) or route in ("healthz",):
            continue
        parameters = re.findall(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>", route)
        if not parameters:
            urls.append("/" + route.replace("^", "").replace("$", ""))
        elif "deadletter" in route and len(parameters) == 1:
            urls += ["/" + re.sub(r"<[^>]+>", d, route) for d in dead_ids]
        elif route.startswith("traces/"):
            urls += ["/" + re.sub(r"<[^>]+>", t, route) for t in seeded["traces"]]
    for state in DeadLetter.State.values:
        urls.append(f"/deadletters/?state={state}")
    urls += [f"/traces/?message_id={m}" for m in seeded["messages"]] + [f"/search/?q={m}" for m in seeded["messages"]]
    urls += ["/admin/flows/deadletter/?q=", "/audit/"]
    urls += [f"/traces/compare/?a={a}&b={b}" for a, b in zip(seeded["traces"], seeded["traces"][1:])]
    return urls


def api_urls(seeded: dict[str, Any]) -> list[str]:
    urls: list[str] = []
    for method, template, path in api_operations():
        if method != "GET":
            continue
        if template.startswith("/api/v1/agent/"):
            # An attached app's requeue orders: leased (a GET that hands each to one agent) by an
            # agent token only, and each carries the exact call by design, as a requeue sends the
            # original payload: the app's worker runs it.
            continue
        if "{dead_letter_id}" in template:
            urls += [template.replace("{dead_letter_id}", str(d.pk)) for d in seeded["dead"]]
        elif "{span_id}" in template:  # every span of the seeded traces, in full
            urls += [template.replace("{trace_id}", t).replace("{span_id}", s) for t, s in Span.objects.filter(trace_id__in=seeded["traces"]).values_list("trace_id", "span_id")]
        elif "{trace_id}" in template:
            urls += [template.replace("{trace_id}", t) for t in seeded["traces"]]
        elif "{" not in template and template not in ("/api/v1/traces", "/api/v1/traces/compare"):  # those need ids: given below
            urls.append(path)
    urls += ["/api/v1/deadletters?state=dead", "/api/v1/deadletters?state=requeued", "/api/v1/openapi.json"]
    urls += [f"/api/v1/traces?message_id={m}" for m in seeded["messages"]]
    urls += [f"/api/v1/traces/compare?a={a}&b={b}" for a, b in zip(seeded["traces"], seeded["traces"][1:])]
    return urls


@pytest.fixture
def web_log() -> Iterator[io.StringIO]:
    """Everything this process (the web side: API, pages, OTLP receiver) logs, at any level."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield text
    root.removeHandler(handler)
    root.setLevel(level)


def test_seeded_secrets_appear_in_no_page_api_answer_log_or_stored_span(figure, secrets_worker, collector, web_log):
    root = User.objects.create_superuser("root-redaction", password="a-long-test-password")  # sees the admin site too
    admin = Client()
    admin.force_login(root)
    auth = {"Authorization": f"Bearer {token_for('admin')}"}
    seeded = seed(admin, auth)
    assert all(leaks(json.dumps(d.envelope)) for d in seeded["dead"]), "the dead letters keep the original payload (a requeue sends it)"

    found: list[str] = []
    pages = page_urls(seeded)
    for url in pages:
        response = admin.get(url, follow=True)
        assert response.status_code < 500, f"{url} -> {response.status_code}"
        found += [f"page {url}: {s}" for s in leaks(response.content.decode())]
    answers = api_urls(seeded)
    for url in answers:
        response = Client().get(url, headers=auth)
        assert response.status_code == 200, f"{url} -> {response.status_code} {response.content[:200]!r}"
        found += [f"API {url}: {s}" for s in leaks(response.content.decode())]
    found += [f"live snapshot: {s}" for s in leaks(json.dumps(live.snapshot(), default=str))]
    logs = {"worker log": secrets_worker.log_text(), "collector log": collector.log_text(), "web process log": web_log.getvalue()}
    for name, text in logs.items():
        found += [f"{name}: {s}" for s in leaks(text)]
    spans = list(Span.objects.filter(trace_id__in=seeded["traces"]))
    for span in spans:
        text = json.dumps([span.name, span.status_message, span.attributes, span.events, span.links], default=str)
        found += [f"span {span.trace_id[:8]}/{span.span_id} {span.name!r}: {s}" for s in leaks(text)]

    assert len(spans) >= 10 and any("flowscope.payload" in s.attributes for s in spans), "payload capture was on: the check must see payloads in spans"
    assert "gave up" in logs["worker log"] and "[redacted]" in logs["worker log"], "the worker logged the failures, masked"
    assert "[redacted]" in admin.get(f"/deadletters/{seeded['dead'][0].pk}/").content.decode()
    assert not found, f"{len(found)} leak(s):\n" + "\n".join(sorted(set(found)))
    figure(
        f"an e-mail address, a card number (2 spellings), a token and an edited-in e-mail address in {len(seeded['dead'])} dead letters and {len(spans)} spans: 0 found in {len(pages)} pages, "
        f"{len(answers)} API answers, the live snapshot, {len(logs)} process logs and {len(spans)} stored spans"
    )

"""A flow graph of sixty nodes in a real browser: laid out without one label over another, a click
highlights a path end to end (a hop joined by a span link too), and the view survives a reload."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from itertools import count
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.conftest import screenshot, sign_in
from tests.people import person
from tracing import collector

pytestmark = pytest.mark.django_db(transaction=True)

APP = "atlas"
FLOWS = 8
_ids = count(1)


def span(kind: int, queue: str, *, trace: str, parent: str = "", consumer: str = "", producer: str = "", error: bool = False, links: list[Any] | None = None) -> dict[str, Any]:
    """A span as the collector gets it from an attached app's agent."""
    end = int(datetime.now(UTC).timestamp() * 1e9)
    attributes = {"messaging.destination.name": queue, "flowscope.app": APP}
    if consumer:
        attributes["flowscope.consumer"] = consumer
    if producer:
        attributes["flowscope.producer"] = producer
    if kind == 4:
        attributes["flowscope.queue_wait_ms"] = 4.0
    return {"t": trace, "s": f"{next(_ids):016x}", "p": parent, "n": "x", "k": kind, "sv": APP, "st": end - 3_000_000, "en": end, "sc": 2 if error else 1, "a": attributes, "l": links or []}


def workload() -> list[dict[str, Any]]:
    """Eight flows of seven nodes (web -> in -> start -> work -> step1 -> out -> step2, audit),
    the even ones feeding the next, and one requeue of a message that died in f0.step2:
    60 nodes, 62 edges."""
    spans, trace = [], "a" * 32
    for f in range(FLOWS):
        start, step1, step2 = f"handler:f{f}.start", f"handler:f{f}.step1", f"handler:f{f}.step2"
        spans += [span(3, f"f{f}.in", trace=trace, producer=f"service:web{f % 3}") for _ in range(2 + f)]
        spans.append(span(4, f"f{f}.in", trace=trace, consumer=f"f{f}.start"))
        spans.append(span(3, f"f{f}.work", trace=trace, producer=start))
        spans.append(span(4, f"f{f}.work", trace=trace, consumer=f"f{f}.step1", producer=start))
        spans.append(span(3, f"f{f}.out", trace=trace, producer=step1))
        spans.append(span(4, f"f{f}.out", trace=trace, consumer=f"f{f}.step2", error=f == 5))
        spans.append(span(4, f"f{f}.out", trace=trace, consumer=f"f{f}.audit"))
        if f % 2 == 0:
            spans.append(span(3, f"f{f + 1}.in", trace=trace, producer=step2))
    died = span(4, "f0.out", trace="b" * 32, consumer="f0.step2", error=True)
    requeue = span(3, "f0.out", trace="c" * 32, producer="service:flowscope", links=[["b" * 32, died["s"], {"flowscope.link": "requeue-of"}]])
    return [*spans, died, requeue]


OVERLAPS = """() => {
  const boxes = [...document.querySelectorAll('#flow-graph g.annotation')].map((a) => ({text: a.textContent, r: a.getBoundingClientRect()}));
  const hits = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i].r, b = boxes[j].r;
    if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) hits.push([boxes[i].text, boxes[j].text]);
  }
  return {labels: boxes.length, hits};
}"""
PATH = "JSON.parse(document.querySelector('#flow-graph').dataset.path || '[]')"


def node(name: str) -> str:
    return f"{APP}|{name}"


def click_label(page: Any, text: str) -> None:
    page.locator("#flow-graph g.annotation", has_text=re.compile(rf"^{re.escape(text)}$")).click()


def test_sixty_nodes_read_without_overlap_and_a_clicked_path_survives_a_reload(page, web):
    collector.store(workload())
    person("viewer", "gwen")
    sign_in(page, web, "gwen")
    page.goto(f"{web}/graph/?app={APP}&group=flow")
    page.wait_for_function("Number(document.querySelector('#flow-graph').dataset.nodes) >= 60 && document.querySelectorAll('#flow-graph g.annotation').length > 100", timeout=30_000)
    assert int(page.get_attribute("#flow-graph", "data-edges")) >= 60
    seen = page.evaluate(OVERLAPS)
    assert seen["labels"] > 120 and seen["hits"] == [], seen  # 60 nodes, 61 edge labels, 8 flows
    tops = [page.locator("#flow-graph g.annotation", has_text=re.compile(rf"^{re.escape(name)}$")).bounding_box()["y"] for name in ("f3.in", "f3.start", "f3.step1")]
    assert tops == sorted(tops), tops  # in layers, messages flow downwards

    click_label(page, "f3.step1")
    page.wait_for_function(f"{PATH}.length > 0")
    path = set(page.evaluate(PATH))
    # Upstream through the queue it was sent through and into flow 2, which feeds flow 3; downstream to both consumers of f3.out.
    assert {node("handler:f3.start"), node("queue:f3.in"), node("handler:f2.step2"), node("service:web0"), node("handler:f3.step2"), node("handler:f3.audit")} <= path, path
    assert node("handler:f2.audit") not in path and node("handler:f4.start") not in path, path
    assert parse_qs(urlparse(page.url).query)["select"] == [node("handler:f3.step1")]

    # The hop joined by the requeue's span link: f0.audit is downstream of f0.step2 only through it.
    click_label(page, "f0.step2")
    page.wait_for_function(f"{PATH}.includes({json.dumps(node('handler:f0.audit'))})")
    assert node("handler:f1.start") in page.evaluate(PATH)

    page.select_option("#window-filter", "60")
    page.wait_for_function("new URLSearchParams(location.search).get('window') === '60'")
    page.reload()
    page.wait_for_function(f"{PATH}.includes({json.dumps(node('handler:f0.audit'))})", timeout=30_000)
    assert page.input_value("#window-filter") == "60" and page.input_value("#group-filter") == "flow"
    assert node("handler:f0.step2") in page.inner_text("#graph-detail h3")
    assert page.evaluate(OVERLAPS)["hits"] == []
    screenshot(page, "flow-graph-sixty-nodes")

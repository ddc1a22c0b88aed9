"""A Celery app written with nothing but Celery whose work is canvases: a chain, a group and a chord.

Started twice by tests/test_attached_graph.py as two apps (CANVAS_APP names each) with the same
task names and the same queue name, each on a broker of its own (CANVAS_BROKER_URL), with a Redis
result backend (CANVAS_RESULT_URL; a chord needs one, and Redis joins chords natively, so the last
header task's worker sends the callback).
"""

import os

from celery import Celery

app = Celery(os.environ.get("CANVAS_APP", "canvas"))
app.conf.update(
    broker_url=os.environ.get("CANVAS_BROKER_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("CANVAS_RESULT_URL", "redis://127.0.0.1:6379/0"),
    task_default_queue="parcels",
    worker_prefetch_multiplier=1,
)


@app.task(name="canvas.reserve")
def reserve(order: str) -> str:
    return order


@app.task(name="canvas.pack")
def pack(order: str) -> str:
    """Fails for an order marked bad: the chain stops here, its last step is never sent."""
    if order.startswith("bad"):
        raise ValueError(f"nothing to pack for {order}")
    return order


@app.task(name="canvas.ship")
def ship(order: str) -> str:
    return order


@app.task(name="canvas.weigh")
def weigh(parcel: int) -> int:
    return parcel


@app.task(name="canvas.total")
def total(weights: list[int]) -> int:
    return sum(weights)


@app.task(name="canvas.label", bind=True, max_retries=1, default_retry_delay=0)
def label(self, order: str) -> str:
    """Asks for one retry, then succeeds: both attempts count on the edge from its first sender."""
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError(f"label printer busy for {order}"))
    return order

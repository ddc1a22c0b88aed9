"""A Celery app written with nothing but Celery, for p8: the no-op task the agent is measured on.

It imports no Django and nothing of Flowscope's, so `celery -A tooling.bench.plain_app worker`
and the same through `flowscope-agent` differ by the agent alone. PLAIN_BROKER_URL is the run's
broker, PLAIN_QUEUE its queue, PLAIN_REDIS_URL the Redis the task counts itself done in (the bench's counting keys,
handed to it with each message).

    python -m tooling.bench.plain_app N BACKLOG DONE_KEY FIRST_KEY LAST_KEY

sends N no-op tasks, holding at most BACKLOG sent but not done (BACKLOG 0: no bound), so a long
run keeps the broker small; the bench starts it through the agent for the attached side.
"""

from __future__ import annotations

import os
import sys
import time

import redis
from celery import Celery

from tooling.bench.done import DONE_SCRIPT

app = Celery("bench_plain", broker=os.environ.get("PLAIN_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_default_queue=os.environ.get("PLAIN_QUEUE", "bench.plain"), task_ignore_result=True)
_redis: redis.Redis | None = None  # made on first use in each pool process, never before the fork


def _counter() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ.get("PLAIN_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return _redis


@app.task(name="bench_plain.noop")
def noop(keys: list[str]) -> None:
    _counter().eval(DONE_SCRIPT, 3, *keys, repr(time.time()))


def send(n: int, backlog: int, keys: list[str]) -> None:
    def done() -> int:
        return int(_counter().get(keys[0]) or 0)

    before = done()  # a run sent in parts counts on from where the last part left it
    with app.producer_or_acquire() as producer:
        for i in range(n):
            # Every few hundred sends, wait while too many are waiting: the worker catches up.
            while backlog and i % 200 == 0 and i - (done() - before) > backlog:
                time.sleep(0.05)
            noop.apply_async(args=[keys], producer=producer)


if __name__ == "__main__":
    count, bound, *done_keys = sys.argv[1:]
    send(int(count), int(bound), done_keys)

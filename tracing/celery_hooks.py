"""Fork-safe tracing under Celery: a fresh provider in each pool child, flushed as it exits."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from tracing import setup


@worker_process_init.connect
def _new_provider_in_child(**_: Any) -> None:
    setup.set_default_service("flowscope-worker")
    setup.provider()


@worker_process_shutdown.connect
def _flush_child(**_: Any) -> None:
    # Sent inside the pool child before it exits, also when worker_max_tasks_per_child recycles
    # it: without this the spans of its last tasks die with it (opentelemetry-python-contrib #4916).
    setup.flush()
    setup.shutdown()


@worker_shutdown.connect
def _flush_main(**_: Any) -> None:
    setup.flush()  # solo and threads pools run tasks in the main process

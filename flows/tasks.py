"""Every Celery task of the engine, for Celery's autodiscovery (`flows.tasks`)."""

from flows.consume.tasks import deliver
from flows.operate.tasks import recover_requeues, run_requeue_job, sweep_stalled_sagas

__all__ = ["deliver", "recover_requeues", "run_requeue_job", "sweep_stalled_sagas"]

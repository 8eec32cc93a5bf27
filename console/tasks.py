"""Celery tasks: push a generation to an instance's nodes, and reconcile periodically."""

from __future__ import annotations

from celery import Task, shared_task

from console import pipeline
from console.celery import BrokerOutage, is_broker_down

MAX_RETRIES = 6


class PushTask(Task):
    """Queueing a push is a fast path only: with the broker away the change is already saved,
    and reconcile delivers it once the broker is back. So a failed publish is not an error for
    the caller (a web request must not answer 500), and it is logged once per outage, not once
    per save."""

    outage = BrokerOutage(
        "queueing a push", "changes are saved and reconcile delivers them once it is back"
    )

    def apply_async(self, *args, **kwargs):
        try:
            result = super().apply_async(*args, **kwargs)
        except Exception as error:
            if not is_broker_down(error):
                raise
            self.outage.lost(error)
            return None
        self.outage.back()
        return result


@shared_task(
    base=PushTask,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
    ignore_result=True,
)
def push_instance(self, *, instance_id: str, generation: int) -> str:
    """Idempotent: re-reads the instance and skips nodes that already run ``generation``."""
    outcome = pipeline.push(instance_id, generation)
    if outcome.retry and self.request.retries < MAX_RETRIES:
        # Bounded exponential backoff; reconcile keeps trying after the last retry.
        raise self.retry(countdown=min(0.5 * 2**self.request.retries, 15))
    return outcome.summary


@shared_task(acks_late=True, ignore_result=True)
def reconcile() -> list[str]:
    return pipeline.reconcile()

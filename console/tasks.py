"""Celery tasks: push a generation to an instance's nodes, and reconcile periodically."""

from __future__ import annotations

from celery import shared_task

from console import pipeline

MAX_RETRIES = 6


@shared_task(
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

"""Celery tasks for certificates: ACME attempts, beat's upkeep, webhook deliveries."""

from __future__ import annotations

from celery import shared_task

from certificates import alerts, renewal

WEBHOOK_RETRIES = 5


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_acme_attempt(*, attempt_id: int) -> str:
    """Idempotent: an attempt that is no longer queued (a redelivery) is left alone."""
    return renewal.run_attempt(attempt_id)


@shared_task(ignore_result=True)
def certificate_upkeep() -> dict[str, list[int]]:
    """Beat: queue due renewals and retries, and the expiry warnings."""
    return {
        "renewals": renewal.queue_due_renewals(),
        "expiry_warnings": alerts.queue_expiry_warnings(),
    }


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=WEBHOOK_RETRIES)
def deliver_alert(self, *, alert_id: int) -> str:
    try:
        return alerts.deliver(alert_id)
    except alerts.DeliveryFailed as failed:
        if self.request.retries >= WEBHOOK_RETRIES:
            alerts.give_up(alert_id)
            return f"gave up: {failed}"
        # Bounded exponential backoff: 30 s, 1, 2, 4, 8 min.
        raise self.retry(countdown=30 * 2**self.request.retries) from failed

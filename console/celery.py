"""The Celery app. Tasks live in console/tasks.py; settings come from Django's CELERY_* names.

Besides the app, this module holds how the pipeline lives with its broker: a worker reconnects at a
short fixed interval and runs reconcile as soon as it is connected (so a change saved while the
broker was away converges about a second after it returns, not at the end of Celery's growing
backoff), and the worker, beat and the console each log one line when the broker goes away and one
when it is back, instead of an error per attempt, per save or per beat tick.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import Celery, bootsteps
from celery.beat import PersistentScheduler, SchedulingError
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import maybe_shutdown
from kombu.exceptions import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

log = logging.getLogger(__name__)

# Seconds between two attempts to reach a broker that is away. Fixed, not growing: an attempt
# is one refused TCP connection, and the time to converge after the broker returns is at most
# this plus one reconcile.
RECONNECT_INTERVAL = 0.5

RECONCILE_SEND = {"max_retries": 2, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.2}

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The graphs' sampling task (console/sampling.py).
app.autodiscover_tasks(related_name="sampling")
# Fetching revocation lists from their distribution points (certificates/revocation.py).
app.autodiscover_tasks(related_name="revocation")


@app.on_after_finalize.connect
def schedule_reconcile(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    interval = settings.RECONCILE_INTERVAL
    # A reconcile message older than one interval is useless: the next one is already due.
    sender.add_periodic_task(
        interval,
        sender.signature("console.tasks.reconcile"),
        name="reconcile",
        options={"expires": interval},
    )


@app.on_after_finalize.connect
def schedule_sampling(sender: Celery, **kwargs: object) -> None:
    from console.sampling import interval

    every = interval()
    # A sample that waited longer than an interval is stale: the next one is already due.
    sender.add_periodic_task(
        every,
        sender.signature("console.sampling.sample_traffic"),
        name="sample traffic",
        options={"expires": every},
    )


@app.on_after_finalize.connect
def schedule_certificate_upkeep(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    # Due ACME renewals and retries, and expiry warnings (certificates/tasks.py).
    interval = settings.CERTIFICATE_UPKEEP_INTERVAL
    sender.add_periodic_task(
        interval,
        sender.signature("certificates.tasks.certificate_upkeep"),
        name="certificate upkeep",
        options={"expires": interval},
    )


@app.on_after_finalize.connect
def schedule_crl_refresh(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    # Revocation lists fetched from their distribution point URLs (certificates/revocation.py).
    interval = settings.CRL_REFRESH_INTERVAL
    sender.add_periodic_task(
        interval,
        sender.signature("certificates.revocation.refresh_crls"),
        name="refresh revocation lists",
        options={"expires": interval},
    )


class BrokerOutage:
    """One log line when the broker goes away and one when it is back, per process."""

    # A connection that fails again this soon after the broker answered is a stale one from
    # before the outage (a pooled socket the broker closed when it restarted): the same outage.
    SETTLING = 2.0

    def __init__(self, who: str, meanwhile: str) -> None:
        self.who = who
        self.meanwhile = meanwhile
        self.since: float | None = None
        self.back_at: float | None = None
        self.relapse = False
        self._lock = threading.Lock()

    def lost(self, error: object) -> None:
        now = time.monotonic()
        with self._lock:
            if self.since is not None:
                return
            self.since = now
            self.relapse = self.back_at is not None and now - self.back_at < self.SETTLING
        if not self.relapse:
            log.warning("%s: broker unreachable (%s); %s", self.who, error, self.meanwhile)

    def back(self) -> bool:
        """Note that the broker answers; True when that ends an outage."""
        now = time.monotonic()
        with self._lock:
            since, self.since = self.since, None
            if since is None:
                return False
            self.back_at = now
        if not self.relapse:
            log.info("%s: broker reachable again after %.1f s", self.who, now - since)
        return True


def is_broker_down(error: BaseException) -> bool:
    """The error, or what it wraps, says the broker could not be reached."""
    # The transport's own errors (redis-py's ConnectionError is no OSError), and kombu's
    # OperationalError, which is what publishing raises once its retries are spent.
    with app.connection_for_write() as connection:
        down = (OperationalError, OSError, *connection.connection_errors)
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, down):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def open_broker_connection() -> None:
    """Connect to the broker and declare the task queue before the first publish needs them.

    Celery does both lazily, so the first change saved in a web process would pay for them
    (about 0.3 s with Redis). A broker that is away changes nothing: the first publish tries
    again, and reconcile covers a change it cannot queue.
    """
    try:
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            producer.maybe_declare(app.amqp.queues[app.conf.task_default_queue])
    except Exception as error:
        if not is_broker_down(error):
            raise


class Consumer(CeleryConsumer):
    """The worker's consumer: reconnects every RECONNECT_INTERVAL, logs once per outage."""

    outage = BrokerOutage("worker", f"retrying every {RECONNECT_INTERVAL:g} s")

    def ensure_connected(self, conn):
        conn.ensure_connection(
            lambda error, interval: self.outage.lost(error),
            None,  # retry for as long as it takes
            interval_start=RECONNECT_INTERVAL,
            interval_step=0,
            interval_max=RECONNECT_INTERVAL,
            callback=maybe_shutdown,
        )
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        return conn

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        self.outage.lost(exc)
        if self.pool and self.pool.flush:
            self.pool.flush()

    def on_connection_error_before_connected(self, exc: BaseException) -> None:
        self.outage.lost(exc)


class AckDuringOutage(logging.Filter):
    """Turns "Couldn't ack" (a task done as the broker went away) into the outage's one line.

    Kombu logs it as CRITICAL with a traceback. Nothing is lost: the message stays unacked, the
    broker hands it out again once it is back, and a push is idempotent (the node takes a
    generation once).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = str(record.msg)
        if error is None or not message.startswith(("Couldn't ack", "Couldn't reject")):
            return True
        if not is_broker_down(error):
            return True
        Consumer.outage.lost(error)
        return False


# The logger kombu's Message.ack_log_error is given by the worker's request.
logging.getLogger("celery.worker.request").addFilter(AckDuringOutage())


class ReconcileOnConnect(bootsteps.StartStopStep):
    """Queue a reconcile each time the worker (re)connects to the broker.

    Whatever happened while this worker could not consume (a broker outage, the worker's own
    restart) is caught up at once, instead of at beat's next tick, which beat may not even have
    been able to send.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c) -> None:
        Consumer.outage.back()
        try:
            # A retry replaces a pooled connection that went stale during an outage.
            c.app.send_task("console.tasks.reconcile", retry=True, retry_policy=RECONCILE_SEND)
        except Exception as error:
            if not is_broker_down(error):
                raise
            # Gone again already: the next connection queues it.


app.steps["consumer"].add(ReconcileOnConnect)


class Scheduler(PersistentScheduler):
    """Beat's scheduler: a tick that cannot reach the broker is one line per outage."""

    outage = BrokerOutage("beat", f"retrying every {RECONNECT_INTERVAL:g} s")

    def _ensure_connected(self):
        # Celery's beat reconnects with a growing backoff (2, 4, 6 ... 30 s) and logs an error
        # per attempt; this is the one place it does so.
        return self.connection.ensure_connection(
            lambda error, interval: self.outage.lost(error),
            None,
            interval_start=RECONNECT_INTERVAL,
            interval_step=0,
            interval_max=RECONNECT_INTERVAL,
        )

    def apply_entry(self, entry, producer=None) -> None:
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except SchedulingError as error:
            if not is_broker_down(error):
                log.error("beat: %s", error, exc_info=True)
                return
            self.outage.lost(error.__cause__ or error.__context__ or error)
        else:
            self.outage.back()

"""The Celery app. Tasks live in console/tasks.py; settings come from Django's CELERY_* names."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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

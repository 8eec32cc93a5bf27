"""The Django project: settings, URLs, the Celery app, instances, nodes and roles."""

from console.celery import app as celery_app

__all__ = ["celery_app"]

"""The dashboard's Django project. The Celery app is exported so `@shared_task` binds to it."""

from .celery import app as celery_app

__all__ = ["celery_app"]

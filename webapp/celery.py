"""The Celery app. Settings come from Django's settings under the CELERY_ namespace."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Imported by every worker's main process before its pool forks: worker registration and the
# shutdown flag that training children read (see webapp/experiments/workers.py).
app.conf.imports = ["webapp.experiments.workers"]

# The periodic tasks go to the `default` queue, never behind a training run: `make run` starts
# a small worker for it (production: one worker with `-Q default`). A tick that waited longer
# than its interval is dropped (expires), the next one does the same work.
_EVERY = 15.0
app.conf.beat_schedule = {
    "dispatch-pending-runs": {
        "task": "webapp.experiments.tasks.dispatch_pending",
        "schedule": _EVERY,
        "options": {"queue": "default", "expires": _EVERY},
    },
    "supervise-datasets": {
        "task": "webapp.datasets.tasks.supervise_datasets",
        "schedule": 60.0,
        "options": {"queue": "default", "expires": 60.0},
    },
    "supervise-runs": {
        "task": "webapp.experiments.tasks.supervise_runs",
        "schedule": _EVERY,
        "options": {"queue": "default", "expires": _EVERY},
    },
}

"""`manage.py run_worker`: a training worker for this machine (what a GPU box or a container
runs): the `gpu,any` queues when torch sees CUDA, else `cpu,any`; one run at a time, fetching
only when idle. The process becomes the Celery worker (exec), so signals reach it directly."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand

from webapp.experiments.workers import training_worker_argv, worker_queues


class Command(BaseCommand):
    help = "Start a Celery training worker on this machine's queues (gpu,any or cpu,any)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--queues", help="comma-separated queues instead of the detected ones")
        parser.add_argument("--name", default="train@%h", help="Celery node name")
        parser.add_argument("--loglevel", default="info")

    def handle(self, *args, **options) -> None:
        queues = options["queues"].split(",") if options["queues"] else worker_queues()
        argv = training_worker_argv(queues, name=options["name"], loglevel=options["loglevel"])
        self.stdout.write(f"exec: {' '.join(argv)}")
        self.stdout.flush()
        os.execv(argv[0], argv)

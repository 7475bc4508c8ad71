"""Experiments, their runs (one per seed), metric points, evaluations and attempts.

The database is the single source of truth for what exists and in which state it is; Redis
only carries "run N is ready".
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse


class Queue(models.TextChoices):
    GPU = "gpu", "GPU"
    CPU = "cpu", "CPU"
    ANY = "any", "Any (CPU or GPU)"


class Experiment(models.Model):
    """What a researcher defined in the form: a metatrain config (without its seed) and the
    seeds to run it with. Immutable once its runs exist; "edit" means clone."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="experiments"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, max_length=5000)
    preset = models.CharField(max_length=64, blank=True)
    config = models.JSONField(help_text="metatrain Config as JSON, seed excluded")
    seeds = models.JSONField(default=list)
    queue = models.CharField(max_length=8, choices=Queue.choices, default=Queue.ANY)
    cloned_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="clones"
    )
    # An uploaded dataset the runs train on (dataset="imagefolder"); its folder is put into
    # every run's config as data_dir. PROTECT: a dataset cannot vanish under its experiments.
    user_dataset = models.ForeignKey(
        "datasets.UserDataset",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="experiments",
        help_text="the uploaded dataset the runs train on (dataset imagefolder), if any",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"

    def get_absolute_url(self) -> str:
        return reverse("experiment-detail", args=[self.pk])


class Run(models.Model):
    """One training run of an experiment with one seed, kept current by the worker.

    State machine (DESIGN.md)::

        queued ──claim──▶ running ──▶ succeeded
          ▲                 │  ├────▶ failed      (an exception; error text kept)
          │                 │  └────▶ cancelled   (cancel flag polled by the loop)
          │                 ▼
          └──── resume ─── lost     (heartbeat older than RUN_LOST_AFTER_SECONDS)

    A queued run may be cancelled directly. Only a conditional UPDATE moves a run from queued to
    running (see `webapp.experiments.lifecycle.claim_run`), so one run never has two runners.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        LOST = "lost", "Lost"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
    FINAL_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    seed = models.IntegerField()
    config = models.JSONField(help_text="the full metatrain Config, seed included")
    config_hash = models.CharField(max_length=64, db_index=True)
    queue = models.CharField(max_length=8, choices=Queue.choices, default=Queue.ANY)

    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    status_reason = models.TextField(blank=True, help_text="why it failed, was lost or cancelled")
    cancel_requested = models.BooleanField(default=False)

    # Denormalised from the config so the runs table and leaderboards filter on indexes.
    dataset = models.CharField(max_length=32, db_index=True)
    split = models.CharField(max_length=16, blank=True)
    algorithm = models.CharField(max_length=16, db_index=True)
    ways = models.IntegerField(null=True)
    shots = models.IntegerField(null=True)
    transductive = models.BooleanField(default=False)

    # Progress, written by the worker.
    iteration = models.IntegerField(default=0)
    total_iterations = models.IntegerField(default=0)
    checkpoint_iteration = models.IntegerField(default=0)
    seconds_per_iteration = models.FloatField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    device = models.CharField(max_length=255, blank=True)
    attempts = models.IntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="when a message for this run was last sent (outbox)"
    )
    dispatch_count = models.IntegerField(
        default=0, help_text="messages sent since the run was last queued (resends back off)"
    )

    # Final test evaluation (the leaderboard's summary: never recomputed from points).
    test_accuracy = models.FloatField(null=True, blank=True)
    test_ci95 = models.FloatField(null=True, blank=True)
    test_tasks = models.IntegerField(null=True, blank=True)

    # Files, through the storage API (names carry the attempt that wrote them, so a worker
    # that lost the run can never replace the current ones).
    initialization = models.FileField(upload_to="runs/", blank=True, max_length=255)
    config_file = models.FileField(upload_to="runs/", blank=True, max_length=255)
    checkpoint_file = models.FileField(
        upload_to="runs/",
        blank=True,
        max_length=255,
        help_text="the last checkpoint in storage (at checkpoint_iteration): where any host resumes",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["dataset", "split", "ways", "shots", "transductive", "status"]),
            models.Index(fields=["status", "heartbeat_at"]),
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} of {self.experiment.name} (seed {self.seed}, {self.status})"

    def get_absolute_url(self) -> str:
        return reverse("run-detail", args=[self.pk])

    @property
    def owner(self):
        return self.experiment.owner

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def progress(self) -> float:
        if not self.total_iterations:
            return 0.0
        return min(1.0, self.iteration / self.total_iterations)


class RunAttempt(models.Model):
    """One try at a run by one worker; a run resumed after loss has several."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.IntegerField()
    worker = models.CharField(max_length=255, blank=True)
    device = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    start_iteration = models.IntegerField(default=0)
    outcome = models.CharField(max_length=12, blank=True)
    reason = models.TextField(blank=True)
    # The worker process that trains this attempt, and when it returned from it: a process
    # still on an attempt that was declared lost is stuck and gets recycled by its worker.
    pid = models.IntegerField(null=True, blank=True)
    process_done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="unique_attempt_number")
        ]


class MetricPoint(models.Model):
    """One value of one series at one meta-iteration. Keyed by (run, name, step) so a resumed
    attempt overwrites instead of duplicating."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_points")
    name = models.CharField(max_length=64)
    step = models.IntegerField()
    value = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "name", "step"], name="unique_metric_point")
        ]


class Evaluation(models.Model):
    """A few-shot evaluation of a run's weights (validation during training, or the final test).

    Keyed like metric points by (run, kind, split, iteration): an attempt that resumes and
    repeats a validation replaces the row instead of adding a second one.
    """

    class Kind(models.TextChoices):
        VALIDATION = "validation", "Validation during training"
        FINAL = "final", "Final test evaluation"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="evaluations")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.VALIDATION)
    split = models.CharField(max_length=16)
    iteration = models.IntegerField(default=0)
    accuracy = models.FloatField(null=True, blank=True)
    ci95 = models.FloatField(null=True, blank=True)
    tasks = models.IntegerField()
    ways = models.IntegerField(null=True, blank=True)
    shots = models.IntegerField(null=True, blank=True)
    queries = models.IntegerField(null=True, blank=True)
    transductive = models.BooleanField(default=False)
    ci_method = models.CharField(max_length=200, blank=True)
    extra = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "iteration", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "kind", "split", "iteration"], name="unique_evaluation"
            )
        ]

    @classmethod
    def fields_from_result(cls, result, *, extra: dict) -> dict:
        """The columns of a metatrain EvalResult (all but the key)."""
        return {
            "accuracy": result.accuracy,
            "ci95": result.ci95,
            "tasks": result.tasks,
            "ways": result.ways,
            "shots": result.shots,
            "queries": result.queries,
            "transductive": bool(result.transductive),
            "ci_method": result.ci_method or "",
            "extra": extra,
        }

    @classmethod
    def create_from_result(
        cls, run: Run, result, *, iteration: int, split: str, extra: dict, kind: str = "validation"
    ) -> Evaluation:
        """Store a metatrain EvalResult, replacing the row of the same key if there is one."""
        evaluation, _ = cls.objects.update_or_create(
            run=run,
            kind=kind,
            split=split,
            iteration=iteration,
            defaults=cls.fields_from_result(result, extra=extra),
        )
        return evaluation


class Worker(models.Model):
    """A Celery worker process as it last reported itself (written by worker signals)."""

    hostname = models.CharField(max_length=255, unique=True)
    device = models.CharField(max_length=255, blank=True)
    queues = models.CharField(max_length=255, blank=True)
    gpu_index = models.IntegerField(
        null=True, blank=True, help_text="the GPU this worker is pinned to (run_worker --gpu)"
    )
    concurrency = models.IntegerField(default=1, help_text="runs it may hold at once")
    # What the device looks like now, refreshed with last_seen: for a GPU, name, memory used
    # and total, utilisation; for a CPU worker, cores and load.
    stats = models.JSONField(default=dict, blank=True)
    current_run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["hostname"]


class SeriesSummary(models.Model):
    """A finished run's bucketed series, kept so a chart does not re-read 100,000 points.

    Written by `series_summaries` the first time a stopped run's whole series is asked for at
    a given resolution. Stamped with the run's attempt: a summary is served only while the run
    is stopped at that same attempt, and a resumed attempt deletes the run's summaries in the
    fenced transaction that deletes the steps it will rewrite.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="series_summaries")
    attempt = models.IntegerField(help_text="the run's attempt whose points it summarises")
    name = models.CharField(max_length=64)
    max_points = models.IntegerField()
    # JSON text rather than a JSON column: the API sends it as it is, without decoding it.
    body = models.TextField(help_text="the series as JSON, values at presentation's precision")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "name", "max_points"], name="unique_series_summary"
            )
        ]

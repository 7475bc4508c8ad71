"""Experiments, their runs (one per seed), metric points, evaluations and attempts.

The database is the single source of truth for what exists and in which state it is; Redis
only carries "run N is ready".
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Queue(models.TextChoices):
    GPU = "gpu", "GPU"
    CPU = "cpu", "CPU"
    ANY = "any", "Any (CPU or GPU)"


def normalize_tags(raw: str | list[str]) -> str:
    """Tags as stored: lowercase words, each wrapped in commas (",sine,baseline,"), so one
    `tags__contains=",word,"` lookup filters by a tag on every database."""
    items = raw.split(",") if isinstance(raw, str) else raw
    tags: list[str] = []
    for item in items:
        tag = " ".join(str(item).split()).lower()
        if tag and tag not in tags:
            tags.append(tag)
    return f",{','.join(tags)}," if tags else ""


class Tagged(models.Model):
    """Editable labels for finding things again: notes and tags (see `normalize_tags`)."""

    notes = models.TextField(blank=True, max_length=10000)
    tags = models.CharField(max_length=500, blank=True, db_index=True)

    class Meta:
        abstract = True

    @property
    def tag_list(self) -> list[str]:
        return [t for t in self.tags.split(",") if t]


class Experiment(Tagged):
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
    # A configuration of a sweep: the sweep, and the values its search chose for the varied
    # fields (the rest of the config is the sweep's base).
    sweep = models.ForeignKey(
        "Sweep", null=True, blank=True, on_delete=models.CASCADE, related_name="experiments"
    )
    sweep_params = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(Tagged.Meta):
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"

    def get_absolute_url(self) -> str:
        return reverse("experiment-detail", args=[self.pk])


class Sweep(models.Model):
    """A search over configurations: a base config, the fields to vary (`space`) and how to
    pick their values (grid, random, or adaptive with Optuna's TPE), times a list of seeds.

    Each configuration it tries is an Experiment (one run per seed) made through the same
    service as the form's; an adaptive sweep proposes its next configurations as earlier ones
    finish, its search state rebuilt from those experiments each time (nothing in memory).

    `space` maps a Config field to {"values": [...]} (a list: grid, or a choice for the
    searches) or {"low", "high", "log", "type": "int" | "float"} (a range: searches only).
    """

    class Method(models.TextChoices):
        GRID = "grid", "Grid (every combination)"
        RANDOM = "random", "Random search"
        TPE = "tpe", "Adaptive search (Optuna TPE)"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        CANCELLED = "cancelled", "Cancelled"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sweeps"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, max_length=5000)
    preset = models.CharField(max_length=64, blank=True)
    base_config = models.JSONField(default=dict, help_text="the user's overrides of the preset")
    space = models.JSONField(help_text="the varied fields and their values or ranges")
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.GRID)
    trials = models.IntegerField(default=0, help_text="configurations to try (random, tpe)")
    parallel = models.IntegerField(
        default=4, help_text="adaptive: configurations in flight at once"
    )
    sampler_seed = models.IntegerField(default=0)
    seeds = models.JSONField(default=list)
    queue = models.CharField(max_length=8, choices=Queue.choices, default=Queue.ANY)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.TextField(blank=True)
    cloned_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="clones"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"sweep {self.name} (#{self.pk})"

    def get_absolute_url(self) -> str:
        return reverse("sweep-detail", args=[self.pk])


class Run(Tagged):
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

    class Phase(models.TextChoices):
        TRAINING = "training", "Training"
        EVALUATING = "evaluating", "Final evaluation"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
    FINAL_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    seed = models.IntegerField()
    config = models.JSONField(help_text="the full metatrain Config, seed included")
    config_hash = models.CharField(max_length=64, db_index=True)
    # The configuration without its seed (webapp.experiments.grouping): the seeds of one
    # configuration share it, so the leaderboard groups on it in SQL.
    group_hash = models.CharField(max_length=64, db_index=True, blank=True)
    queue = models.CharField(max_length=8, choices=Queue.choices, default=Queue.ANY)

    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    status_reason = models.TextField(blank=True, help_text="why it failed, was lost or cancelled")
    cancel_requested = models.BooleanField(default=False)
    # A name the owner gives the run (the experiment's name and seed otherwise).
    name = models.CharField(max_length=200, blank=True)
    # "Evaluate now" on a cancelled or failed run with a checkpoint: the next attempt skips
    # the remaining training and runs only the final evaluation of the checkpoint's weights.
    evaluate_only = models.BooleanField(default=False)

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
    # The final evaluation's progress (phase "evaluating"), written with the heartbeat.
    phase = models.CharField(max_length=12, choices=Phase.choices, default=Phase.TRAINING)
    eval_tasks_done = models.IntegerField(default=0)
    eval_tasks_total = models.IntegerField(default=0)
    eval_tasks_per_second = models.FloatField(null=True, blank=True)

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
    # Sine regression has no accuracy: its final test loss before and after adaptation.
    test_loss_before = models.FloatField(null=True, blank=True)
    test_loss_after = models.FloatField(null=True, blank=True)

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

    class Meta(Tagged.Meta):
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["dataset", "split", "ways", "shots", "transductive", "status"]),
            models.Index(fields=["status", "heartbeat_at"]),
            # The runs list's orders (filtering.SORTS): with them a page of 25 is read in
            # order from the index instead of sorting every matching run (40 ms at 10,000).
            # The best-accuracy order's index is PostgreSQL's only (migration 0008): SQLite
            # refuses NULLS LAST in an index.
            models.Index(fields=["-created_at", "-id"], name="run_newest_first"),
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
    def display_name(self) -> str:
        return self.name or f"{self.experiment.name}, seed {self.seed}"

    @property
    def duration_seconds(self) -> float | None:
        """Wall time from the first claim to the end (or now, while it runs)."""
        if self.started_at is None:
            return None
        end = self.finished_at or (timezone.now() if self.status == self.Status.RUNNING else None)
        return None if end is None else max(0.0, (end - self.started_at).total_seconds())

    @property
    def iterations_per_second(self) -> float | None:
        if not self.seconds_per_iteration:
            return None
        return 1.0 / self.seconds_per_iteration

    @property
    def eval_eta_seconds(self) -> float | None:
        """Remaining final-evaluation time from the measured tasks per second."""
        if self.phase != self.Phase.EVALUATING or not self.eval_tasks_per_second:
            return None
        remaining = max(0, self.eval_tasks_total - self.eval_tasks_done)
        return remaining / self.eval_tasks_per_second

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

"""`manage.py seed_load`: a database with a research group's volume, to measure the dashboard.

Creates the user `loadtest` and `--runs` succeeded runs (default 1,000) in experiments of
`--seeds` seeds each, spread over the paper's benchmarks and both algorithms, each with
validation and test evaluations and 5 metric series of `--points` points; plus `--long-runs`
runs whose series have `--long-points` points each (a full 100,000-iteration run).

Metric points are generated inside the database (one INSERT ... SELECT over a generated
sequence per batch of runs) rather than sent row by row: 10 million points take seconds on
PostgreSQL, not the minutes of a row-per-statement insert.

Idempotent: when the loadtest user's data already has the requested shape nothing is done;
otherwise that user's experiments (and only theirs) are deleted and created again.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from metatrain import preset
from webapp.experiments.models import Evaluation, Experiment, MetricPoint, Run

LOAD_USERNAME = "loadtest"
SERIES = ("inner_loss", "inner_accuracy", "meta_step_size", "seconds", "validation_accuracy")
# (preset, typical test accuracy): the paper's figures, so the leaderboard looks like a real one.
BENCHMARKS = (
    ("omniglot-5way-1shot", 0.95),
    ("omniglot-5way-5shot", 0.99),
    ("omniglot-20way-1shot", 0.88),
    ("omniglot-20way-5shot", 0.96),
    ("miniimagenet-5way-1shot", 0.47),
    ("miniimagenet-5way-5shot", 0.63),
    ("sine", None),
)
ALGORITHMS = ("reptile", "fomaml")
RUNS_PER_BATCH = 200  # runs whose points one INSERT ... SELECT writes
VALIDATIONS = 4  # validation evaluations per run, plus one test evaluation


def _shape(options: dict) -> str:
    """The description every seeded experiment carries: what a re-run compares against."""
    keys = ("runs", "seeds", "points", "long_runs", "long_points")
    return "seed_load " + " ".join(f"{k}={options[k]}" for k in keys)


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise CommandError(f"--{name.replace('_', '-')} must be at least {minimum} (got {value}).")


class Command(BaseCommand):
    help = "Fill the database with a team's volume of finished runs (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=1000, help="runs (default 1,000)")
        parser.add_argument("--seeds", type=int, default=20, help="runs per experiment")
        parser.add_argument("--points", type=int, default=2000, help="points per series")
        parser.add_argument("--long-runs", type=int, default=1, help="runs of --long-points")
        parser.add_argument("--long-points", type=int, default=100_000)

    def handle(self, *args, **options) -> None:
        for name in ("runs", "seeds", "points", "long_points"):
            _positive(name, options[name])
        _positive("long_runs", options["long_runs"], minimum=0)
        started = time.perf_counter()
        user, _ = get_user_model().objects.get_or_create(username=LOAD_USERNAME)
        shape = _shape(options)
        existing = Experiment.objects.filter(owner=user)
        expected_runs = options["runs"] + options["long_runs"]
        if (
            existing.exists()
            and not existing.exclude(description=shape).exists()
            and Run.objects.filter(experiment__owner=user).count() == expected_runs
        ):
            self.stdout.write(f"{expected_runs} runs already seeded ({shape}): nothing to do.")
            return
        with transaction.atomic():
            deleted = existing.delete()[0]
            if deleted:
                self.stdout.write(f"Deleted {deleted} rows of an earlier seed_load.")
            runs = self._create_runs(user, options, shape)
            self._create_evaluations(runs)
            _skip_foreign_key_checks()
            points = self._create_points(runs, options)
        if connection.vendor == "postgresql":
            # What autovacuum does soon after a bulk load, done now so that what is measured
            # is the steady state: fresh statistics for the planner, and the visibility map
            # without which every index-only scan (counts, distinct values) reads the table.
            # (VACUUM cannot run inside a transaction: a caller's, such as a test's, gets ANALYZE.)
            command = "ANALYZE" if connection.in_atomic_block else "VACUUM ANALYZE"
            with connection.cursor() as cursor:
                for model in (Run, Experiment, Evaluation, MetricPoint):
                    cursor.execute(f"{command} {model._meta.db_table}")
        self.stdout.write(
            f"Seeded {len(runs)} runs and {points:,} metric points for user {LOAD_USERNAME!r} "
            f"in {time.perf_counter() - started:.1f} s."
        )

    def _create_runs(self, user, options: dict, shape: str) -> list[tuple[Run, int]]:
        """The experiments and their succeeded runs, with each run's points per series."""
        rng = random.Random(0)
        now = timezone.now()
        plan: list[tuple[int, int, int]] = []  # (experiment index, seed, points)
        for i in range(options["runs"]):
            plan.append((i // options["seeds"], i % options["seeds"], options["points"]))
        long_experiment = (options["runs"] - 1) // options["seeds"] + 1
        for seed in range(options["long_runs"]):
            plan.append((long_experiment, seed, options["long_points"]))

        experiments: dict[int, Experiment] = {}
        configs: dict[int, tuple[dict, float | None]] = {}
        for index in sorted({e for e, _, _ in plan}):
            name, accuracy = BENCHMARKS[index % len(BENCHMARKS)]
            algorithm = ALGORITHMS[(index // len(BENCHMARKS)) % len(ALGORITHMS)]
            config = preset(name, algorithm=algorithm).to_dict()
            config.pop("seed")
            configs[index] = (config, accuracy)
            label = "long run" if index == long_experiment else f"{index:04d}"
            experiments[index] = Experiment(
                owner=user,
                name=f"load {label}: {name} {algorithm}",
                description=shape,
                preset=name,
                config=config,
                seeds=sorted({s for e, s, _ in plan if e == index}),
            )
        Experiment.objects.bulk_create(list(experiments.values()), batch_size=500)

        runs: list[tuple[Run, int]] = []
        for index, seed, points in plan:
            config, accuracy = configs[index]
            cfg = preset(experiments[index].preset, algorithm=config["algorithm"], seed=seed)
            finished = now - timedelta(minutes=len(plan) - len(runs))
            run = Run(
                experiment=experiments[index],
                seed=seed,
                config={**config, "seed": seed},
                config_hash=cfg.config_hash(),
                dataset=config["dataset"],
                split=config.get("split", "") if config["dataset"] == "omniglot" else "",
                algorithm=config["algorithm"],
                ways=None if config["dataset"] == "sine" else config["ways"],
                shots=config["sine_points"] if config["dataset"] == "sine" else config["shots"],
                transductive=config["transductive"],
                status=Run.Status.SUCCEEDED,
                iteration=config["meta_iters"],
                total_iterations=config["meta_iters"],
                checkpoint_iteration=config["meta_iters"],
                seconds_per_iteration=0.05,
                attempts=1,
                worker="loadtest",
                device="cpu",
                started_at=finished - timedelta(hours=2),
                finished_at=finished,
                heartbeat_at=finished,
                test_accuracy=None if accuracy is None else accuracy + rng.gauss(0, 0.01),
                test_ci95=None if accuracy is None else 0.002 + rng.random() * 0.002,
                test_tasks=None if accuracy is None else 10_000,
            )
            runs.append((run, points))
        Run.objects.bulk_create([run for run, _ in runs], batch_size=1000)
        return runs

    def _create_evaluations(self, runs: list[tuple[Run, int]]) -> None:
        evaluations = []
        for run, _ in runs:
            if run.test_accuracy is None:
                continue  # sine: a regression, no accuracy
            common = dict(
                run=run,
                tasks=100,
                ways=run.ways,
                shots=run.shots,
                queries=1,
                transductive=run.transductive,
                ci_method="normal",
            )
            for k in range(1, VALIDATIONS + 1):
                evaluations.append(
                    Evaluation(
                        kind=Evaluation.Kind.VALIDATION,
                        split="validation",
                        iteration=run.total_iterations * k // VALIDATIONS,
                        accuracy=run.test_accuracy * (0.7 + 0.3 * k / VALIDATIONS),
                        ci95=0.02,
                        **common,
                    )
                )
            evaluations.append(
                Evaluation(
                    kind=Evaluation.Kind.FINAL,
                    split="test",
                    iteration=run.total_iterations,
                    accuracy=run.test_accuracy,
                    ci95=run.test_ci95,
                    **{**common, "tasks": run.test_tasks},
                )
            )
        Evaluation.objects.bulk_create(evaluations, batch_size=2000)

    def _create_points(self, runs: list[tuple[Run, int]], options: dict) -> int:
        """Every run's series, generated by the database: the `points` steps are spread evenly
        over the run's iterations; values follow a learning curve with noise."""
        by_count: dict[int, list[Run]] = {}
        for run, points in runs:
            by_count.setdefault(points, []).append(run)
        total = 0
        for points, group in by_count.items():
            for start in range(0, len(group), RUNS_PER_BATCH):
                batch = group[start : start + RUNS_PER_BATCH]
                stride = max(1, batch[0].total_iterations // points)
                _insert_points([run.pk for run in batch], points, stride)
                total += len(batch) * points * len(SERIES)
        return total


def _skip_foreign_key_checks() -> None:
    """On PostgreSQL, when the user may (a superuser, as on a throwaway benchmark database),
    skip the foreign key triggers for the rest of the transaction: every generated point names
    a run just created, and checking 10 million of them at commit takes minutes. Otherwise the
    checks run as usual."""
    if connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
    except DatabaseError:
        pass  # not a superuser: slower, same result


def _insert_points(run_ids: list[int], points: int, stride: int) -> None:
    """One INSERT ... SELECT writing `points` points of each series of each run."""
    table = MetricPoint._meta.db_table
    names = " UNION ALL ".join(f"SELECT '{name}' AS name" for name in SERIES)
    if connection.vendor == "postgresql":
        sequence = "generate_series(1, %s) AS seq(i)"
        noise = "random()"
        params: list = [points]
    else:  # SQLite has no generate_series built in: a recursive sequence
        sequence = "seq"
        noise = "(abs(random()) %% 1000000) / 1000000.0"  # %% : a literal % in a query
        params = [points]
    placeholders = ", ".join(["%s"] * len(run_ids))
    curve = f"1.0 / (1.0 + seq.i * 0.01) + 0.05 * {noise}"
    value = f"""CASE n.name
        WHEN 'inner_loss' THEN {curve}
        WHEN 'meta_step_size' THEN 1.0 - seq.i * 1.0 / {points}
        WHEN 'seconds' THEN 0.04 + 0.02 * {noise}
        ELSE 1.0 - {curve} END"""
    select = f"""
        SELECT r.id, n.name, seq.i * {stride}, {value}
        FROM {Run._meta.db_table} r
        CROSS JOIN ({names}) AS n
        CROSS JOIN {sequence}
        WHERE r.id IN ({placeholders})
    """
    if connection.vendor == "postgresql":
        sql = f"INSERT INTO {table} (run_id, name, step, value) {select}"
    else:
        sql = f"""
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < %s)
            INSERT INTO {table} (run_id, name, step, value) {select}
        """
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *run_ids])

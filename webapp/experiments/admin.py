"""Admin for experiments, runs and what hangs off them: for staff to inspect and repair.

Runs are the worker's to change: their progress fields are read-only here, and the one state
change offered (cancel) goes through the same service as the button on the run page.
"""

from __future__ import annotations

from django.contrib import admin, messages

from . import services
from .models import Evaluation, Experiment, MetricPoint, Run, RunAttempt, Worker


class RunInline(admin.TabularInline):
    model = Run
    extra = 0
    fields = ("seed", "status", "iteration", "total_iterations", "test_accuracy", "worker")
    readonly_fields = fields
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "preset", "queue", "created_at")
    list_filter = ("queue", "preset")
    search_fields = ("name", "description", "owner__username")
    raw_id_fields = ("owner", "cloned_from")
    readonly_fields = ("created_at",)
    inlines = [RunInline]


class RunAttemptInline(admin.TabularInline):
    model = RunAttempt
    extra = 0
    readonly_fields = (
        "number",
        "worker",
        "device",
        "started_at",
        "ended_at",
        "start_iteration",
        "outcome",
        "reason",
    )
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class EvaluationInline(admin.TabularInline):
    model = Evaluation
    extra = 0
    fields = ("split", "iteration", "accuracy", "ci95", "tasks", "transductive")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "experiment",
        "seed",
        "status",
        "dataset",
        "algorithm",
        "ways",
        "shots",
        "iteration",
        "test_accuracy",
        "worker",
        "created_at",
    )
    list_filter = ("status", "dataset", "algorithm", "queue", "transductive")
    search_fields = ("experiment__name", "worker", "config_hash")
    raw_id_fields = ("experiment",)
    readonly_fields = (
        "config",
        "config_hash",
        "iteration",
        "total_iterations",
        "checkpoint_iteration",
        "seconds_per_iteration",
        "worker",
        "device",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "dispatched_at",
        "test_accuracy",
        "test_ci95",
        "test_tasks",
    )
    inlines = [RunAttemptInline, EvaluationInline]
    actions = ["cancel_runs"]

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request, queryset) -> None:
        count = 0
        for run in queryset.filter(status__in=[*Run.ACTIVE_STATUSES, Run.Status.LOST]):
            services.request_cancel(run)
            count += 1
        self.message_user(request, f"Cancel requested for {count} run(s).", messages.SUCCESS)


@admin.register(RunAttempt)
class RunAttemptAdmin(admin.ModelAdmin):
    list_display = ("run", "number", "worker", "device", "started_at", "ended_at", "outcome")
    list_filter = ("outcome",)
    raw_id_fields = ("run",)


@admin.register(MetricPoint)
class MetricPointAdmin(admin.ModelAdmin):
    list_display = ("run", "name", "step", "value")
    list_filter = ("name",)
    raw_id_fields = ("run",)
    show_full_result_count = False  # millions of rows: no COUNT(*) on every page


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ("run", "split", "iteration", "accuracy", "ci95", "tasks", "transductive")
    list_filter = ("split", "transductive")
    raw_id_fields = ("run",)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("hostname", "device", "queues", "current_run", "last_seen")
    raw_id_fields = ("current_run",)
    readonly_fields = ("started_at",)

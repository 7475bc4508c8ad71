"""Browser pages for experiments, runs, comparisons, the leaderboard and workers."""

from django.urls import path

from .views import compare, experiments, leaderboard, runs, sweeps, workers

urlpatterns = [
    path("", runs.run_list, name="run-list"),
    path("runs/live.json", runs.run_list_live, name="run-list-live"),
    path("experiments/", experiments.experiment_list, name="experiment-list"),
    path("experiments/<int:pk>/labels/", experiments.experiment_labels, name="experiment-labels"),
    path("experiments/new/", experiments.experiment_new, name="experiment-new"),
    path("experiments/<int:pk>/", experiments.experiment_detail, name="experiment-detail"),
    path("experiments/<int:pk>/clone/", experiments.experiment_clone, name="experiment-clone"),
    path("experiments/<int:pk>/delete/", experiments.experiment_delete, name="experiment-delete"),
    path("sweeps/", sweeps.sweep_list, name="sweep-list"),
    path("sweeps/new/", sweeps.sweep_new, name="sweep-new"),
    path("sweeps/from-experiment/", sweeps.sweep_from_experiment, name="sweep-from-experiment"),
    path("sweeps/<int:pk>/", sweeps.sweep_detail, name="sweep-detail"),
    path("sweeps/<int:pk>/clone/", sweeps.sweep_clone, name="sweep-clone"),
    path("sweeps/<int:pk>/cancel/", sweeps.sweep_cancel, name="sweep-cancel"),
    path("runs/<int:pk>/", runs.run_detail, name="run-detail"),
    path("runs/<int:pk>/cancel/", runs.run_cancel, name="run-cancel"),
    path("runs/<int:pk>/evaluate/", runs.run_evaluate, name="run-evaluate"),
    path("runs/<int:pk>/labels/", runs.run_labels, name="run-labels"),
    path("runs/<int:pk>/metrics.json", runs.run_metrics, name="run-metrics"),
    path(
        "runs/<int:pk>/download/<str:artifact>",
        runs.run_download,
        name="run-download",
    ),
    path("compare/", compare.compare, name="compare"),
    path("leaderboard/", leaderboard.leaderboard, name="leaderboard"),
    path(
        "leaderboard/<slug:key>/seeds/<str:group>/",
        leaderboard.leaderboard_seeds,
        name="leaderboard-seeds",
    ),
    path("workers/", workers.worker_list, name="worker-list"),
]

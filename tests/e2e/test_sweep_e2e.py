"""An adaptive sweep end to end: a real worker trains tiny sine runs, and each finished run's
hook (in the worker process, after its commit) has the sweep propose the next configuration
with TPE rebuilt from the database, until its budget is spent. No eager mode, no mocks."""

from __future__ import annotations

import pytest

import metatrain
from webapp.experiments.models import Run
from webapp.experiments.sweeps import service

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_an_adaptive_sweep_proposes_its_next_trials_as_runs_finish(owner, celery_worker, wait_for):
    base = metatrain.preset(
        "sine", meta_iters=6, checkpoint_interval=6, validation_interval=0, final_eval_tasks=2
    ).to_dict()
    base.pop("seed")
    sweep = service.create_sweep(
        owner,
        name="e2e tpe",
        config=base,
        space={"inner_lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        method="tpe",
        trials=3,
        parallel=1,
        seeds=[0],
    )
    assert sweep.experiments.count() == 1  # one in flight: the rest come from the hook

    def done() -> bool:
        runs = Run.objects.filter(experiment__sweep=sweep)
        return runs.count() == 3 and not runs.exclude(status=Run.Status.SUCCEEDED).exists()

    wait_for(done, 60, "three trials proposed one after another and trained", worker=celery_worker)
    proposals = [e.sweep_params["inner_lr"] for e in sweep.experiments.order_by("id")]
    assert len(set(proposals)) == 3 and all(1e-3 <= lr <= 1e-1 for lr in proposals)
    assert len(set(Run.objects.filter(experiment__sweep=sweep).values_list("group_hash"))) == 3

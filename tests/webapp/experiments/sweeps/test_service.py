"""Creating, topping up and cancelling sweeps through the real services (SQLite)."""

from __future__ import annotations

import pytest

from webapp.experiments.errors import QuotaExceeded, ValidationFailed
from webapp.experiments.models import Run, Sweep
from webapp.experiments.sweeps import service

from ...conftest import SMALL_CONFIG

pytestmark = pytest.mark.django_db


def _spec(**changes):
    spec = {
        "name": "lr sweep",
        "config": dict(SMALL_CONFIG),
        "space": {"inner_lr": {"values": [0.001, 0.01]}, "inner_iters": {"values": [1, 2]}},
        "method": "grid",
        "seeds": [0, 1],
        "parallel": 3,
    }
    spec.update(changes)
    return spec


def _finish(run: Run, accuracy: float | None) -> None:
    status = Run.Status.SUCCEEDED if accuracy is not None else Run.Status.FAILED
    Run.objects.filter(pk=run.pk).update(status=status, test_accuracy=accuracy)


def test_a_grid_queues_parallel_configurations_then_more_as_they_finish(owner):
    sweep = service.create_sweep(owner, **_spec())
    assert sweep.trials == 4
    experiments = list(sweep.experiments.order_by("id"))
    assert [e.sweep_params for e in experiments] == [
        {"inner_lr": 0.001, "inner_iters": 1},
        {"inner_lr": 0.001, "inner_iters": 2},
        {"inner_lr": 0.01, "inner_iters": 1},
    ]
    assert experiments[0].config["inner_lr"] == 0.001
    assert Run.objects.filter(experiment__sweep=sweep).count() == 6
    # Nothing finished: a second top-up adds nothing (idempotent).
    assert service.top_up(sweep.pk) == []
    for run in experiments[0].runs.all():
        _finish(run, 0.5)
    service.run_finished(experiments[0].runs.first().pk)
    assert sweep.experiments.count() == 4
    assert service.top_up(sweep.pk) == []  # the grid is spent


def test_the_seeds_of_one_configuration_share_a_group_hash_and_others_do_not(owner):
    sweep = service.create_sweep(owner, **_spec())
    a, b = sweep.experiments.order_by("id")[:2]
    hashes_a = set(a.runs.values_list("group_hash", flat=True))
    assert len(hashes_a) == 1 and "" not in hashes_a
    assert hashes_a.isdisjoint(b.runs.values_list("group_hash", flat=True))
    assert len(set(a.runs.values_list("config_hash", flat=True))) == 2


def test_it_refuses_more_runs_than_the_limit(owner, settings):
    settings.SWEEP_MAX_RUNS = 7
    with pytest.raises(ValidationFailed) as err:
        service.create_sweep(owner, **_spec())
    assert "4 configurations × 2 seeds = 8 runs" in str(err.value)
    assert "SWEEP_MAX_RUNS" in str(err.value)
    assert not Sweep.objects.exists()


def test_an_invalid_grid_point_is_refused_naming_its_field_and_value(owner):
    spec = _spec(space={"inner_lr": {"values": [0.01, -1.0]}, "ways": {"values": [5]}})
    with pytest.raises(ValidationFailed) as err:
        service.create_sweep(owner, **spec)
    field, message = err.value.errors[0]
    assert field == "space.inner_lr"
    assert "inner_lr = -1.0" in message and "positive" in message
    assert not Sweep.objects.exists() and not Run.objects.exists()


def test_an_invalid_range_end_is_refused_before_anything_is_saved(owner):
    spec = _spec(
        method="random", trials=5, space={"inner_iters": {"low": 0, "high": 5, "type": "int"}}
    )
    with pytest.raises(ValidationFailed) as err:
        service.create_sweep(owner, **spec)
    assert err.value.errors[0][0] == "space.inner_iters"
    assert "inner_iters = 0" in err.value.errors[0][1]
    assert not Sweep.objects.exists()


def test_a_sweep_with_no_room_in_the_quota_is_refused_whole(owner, settings):
    settings.QUOTA_MAX_QUEUED_RUNS = 1
    with pytest.raises(QuotaExceeded):
        service.create_sweep(owner, **_spec())
    assert not Sweep.objects.exists()


def test_an_adaptive_sweep_proposes_after_finished_trials_from_the_database(owner):
    spec = _spec(
        method="tpe",
        trials=5,
        parallel=2,
        seeds=[0],
        space={"inner_lr": {"low": 1e-4, "high": 1e-1, "log": True}},
    )
    sweep = service.create_sweep(owner, **spec)
    assert sweep.experiments.count() == 2
    first = sweep.experiments.order_by("id").first()
    _finish(first.runs.get(), 0.8)
    added = service.top_up(sweep.pk)
    assert len(added) == 1
    trials, in_flight = service.history(sweep)
    assert trials[0].value == pytest.approx(0.8) and in_flight == 2
    # Every proposal lies in the range, and each configuration was validated and hashed.
    for e in sweep.experiments.all():
        assert 1e-4 <= e.sweep_params["inner_lr"] <= 1e-1
        assert e.config["inner_lr"] == e.sweep_params["inner_lr"]
    # The same database state gives the same proposal (state is rebuilt, not remembered).
    again_a = service.search.propose(
        "tpe", service.parse_space(sweep.space, "tpe")[0], trials, 1, seed=0, trials=5
    )
    again_b = service.search.propose(
        "tpe", service.parse_space(sweep.space, "tpe")[0], trials, 1, seed=0, trials=5
    )
    assert again_a == again_b


def test_cancelling_a_sweep_cancels_queued_runs_and_asks_running_ones_to_stop(owner):
    sweep = service.create_sweep(owner, **_spec())
    runs = list(Run.objects.filter(experiment__sweep=sweep).order_by("id"))
    Run.objects.filter(pk=runs[0].pk).update(status=Run.Status.RUNNING)
    _finish(runs[1], 0.5)
    counts = service.cancel_sweep(sweep)
    assert counts == {"cancelled": 4, "stopping": 1}
    statuses = dict(Run.objects.filter(experiment__sweep=sweep).values_list("pk", "status"))
    assert statuses[runs[0].pk] == Run.Status.RUNNING
    assert Run.objects.get(pk=runs[0].pk).cancel_requested
    assert statuses[runs[1].pk] == Run.Status.SUCCEEDED
    assert sum(s == Run.Status.CANCELLED for s in statuses.values()) == 4
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.CANCELLED
    assert service.top_up(sweep.pk) == []  # a cancelled sweep proposes nothing more


def test_the_periodic_pass_tops_up_a_sweep_whose_hook_was_missed(owner):
    sweep = service.create_sweep(owner, **_spec(parallel=1))
    for run in Run.objects.filter(experiment__sweep=sweep):
        _finish(run, 0.4)  # finished without the hook
    assert service.top_up_active() == 1
    assert sweep.experiments.count() == 2


def test_the_periodic_pass_skips_a_sweep_whose_plan_is_spent(owner, django_assert_max_num_queries):
    sweep = service.create_sweep(owner, **_spec(parallel=4))  # the whole grid at once
    assert sweep.experiments.count() == 4
    with django_assert_max_num_queries(1):
        assert service.top_up_active() == 0

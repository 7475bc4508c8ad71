"""Chart series: bucketed on the server for long runs, raw tails for live pages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from webapp.experiments.metrics_series import live_tail, metric_names, series
from webapp.experiments.models import MetricPoint


def add_points(run, name, steps, values):
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(run=run, name=name, step=int(s), value=float(v))
            for s, v in zip(steps, values, strict=True)
        ],
        batch_size=2000,
    )


@pytest.fixture
def run(owner, make_run):
    return make_run(owner, status="running")


def expected_buckets(steps, values, max_points):
    """The documented bucketing, computed independently with numpy."""
    steps, values = np.asarray(steps), np.asarray(values)
    first, last = int(steps.min()), int(steps.max())
    width = max(1, math.ceil((last - first + 1) / (max_points - 1)))
    bucket = (steps - first) // width
    out_steps, out_last, out_min, out_max = [], [], [], []
    for b in np.unique(bucket):
        mask = bucket == b
        idx = np.flatnonzero(mask)[np.argmax(steps[mask])]
        out_steps.append(int(steps[idx]))
        out_last.append(float(values[idx]))
        out_min.append(float(values[mask].min()))
        out_max.append(float(values[mask].max()))
    return out_steps, out_last, out_min, out_max


def test_it_returns_a_short_series_raw(run):
    add_points(run, "loss", [1, 2, 3], [0.5, 0.25, 0.125])

    result = series(run)

    assert result == {
        "loss": {
            "steps": [1, 2, 3],
            "values": [0.5, 0.25, 0.125],
            "min": [0.5, 0.25, 0.125],
            "max": [0.5, 0.25, 0.125],
            "last_step": 3,
            "downsampled": False,
        }
    }


def test_it_buckets_10000_points_with_min_max_and_last_matching_numpy(run):
    rng = np.random.default_rng(0)
    steps = np.arange(1, 10_001)
    values = rng.normal(size=steps.size)
    add_points(run, "inner_loss", steps, values)

    s = series(run, ["inner_loss"], max_points=500)["inner_loss"]

    assert s["downsampled"] is True
    assert len(s["steps"]) <= 500
    exp_steps, exp_last, exp_min, exp_max = expected_buckets(steps, values, 500)
    # The first point is kept on its own, ahead of the first bucket.
    assert s["steps"][0] == 1 and s["values"][0] == pytest.approx(values[0])
    assert s["steps"][1:] == exp_steps
    np.testing.assert_allclose(s["values"][1:], exp_last)
    np.testing.assert_allclose(s["min"][1:], exp_min)
    np.testing.assert_allclose(s["max"][1:], exp_max)
    # The extremes of the whole series survive downsampling.
    assert min(s["min"]) == pytest.approx(values.min())
    assert max(s["max"]) == pytest.approx(values.max())


def test_it_keeps_the_first_and_last_points_when_steps_have_gaps(run):
    steps = np.arange(7, 7 + 3 * 4000, 3)  # 4,000 points, every third step
    values = np.linspace(10.0, -10.0, steps.size)
    add_points(run, "acc", steps, values)

    s = series(run, ["acc"], max_points=100)["acc"]

    assert s["downsampled"] is True
    assert len(s["steps"]) <= 100
    assert s["steps"][0] == 7 and s["values"][0] == pytest.approx(10.0)
    assert s["steps"][-1] == int(steps[-1]) and s["values"][-1] == pytest.approx(-10.0)
    assert s["last_step"] == int(steps[-1])
    assert s["steps"] == sorted(s["steps"])
    exp_steps, exp_last, exp_min, exp_max = expected_buckets(steps, values, 100)
    assert s["steps"][1:] == exp_steps
    np.testing.assert_allclose(s["min"][1:], exp_min)
    np.testing.assert_allclose(s["max"][1:], exp_max)


def test_it_downsamples_in_a_bounded_number_of_queries(run, django_assert_max_num_queries):
    add_points(run, "a", range(5000), range(5000))
    add_points(run, "b", range(5000), range(5000))

    with django_assert_max_num_queries(6):
        result = series(run, ["a", "b"], max_points=50)

    assert all(len(s["steps"]) <= 50 for s in result.values())


def test_the_tail_returns_only_points_after_the_given_step(run):
    add_points(run, "loss", range(1, 101), [float(i) for i in range(1, 101)])

    s = series(run, ["loss"], after_step=90)["loss"]

    assert s["steps"] == list(range(91, 101))
    assert s["values"] == [float(i) for i in range(91, 101)]
    assert s["last_step"] == 100
    assert s["downsampled"] is False


def test_the_tail_is_capped_and_resumable_from_its_last_step(run):
    add_points(run, "loss", range(1, 101), range(1, 101))

    first = series(run, ["loss"], after_step=0, max_points=30)["loss"]
    second = series(run, ["loss"], after_step=first["last_step"], max_points=30)["loss"]

    assert first["steps"] == list(range(1, 31))
    assert second["steps"] == list(range(31, 61))


def test_the_tail_is_empty_when_nothing_is_new(run):
    add_points(run, "loss", [1, 2], [1.0, 2.0])

    s = series(run, ["loss"], after_step=2)["loss"]

    assert s["steps"] == [] and s["last_step"] is None


def test_an_unknown_name_gives_an_empty_series(run):
    add_points(run, "loss", [1], [1.0])

    result = series(run, ["nope"])

    assert result["nope"]["steps"] == [] and result["nope"]["last_step"] is None


def test_non_finite_values_come_back_as_none(run):
    add_points(run, "loss", [1, 2, 3], [1.0, math.inf, -math.inf])

    s = series(run, ["loss"])["loss"]

    assert s["values"] == [1.0, None, None]


def test_all_series_are_returned_when_no_names_are_given(run, owner, make_run):
    add_points(run, "b", [1], [1.0])
    add_points(run, "a", [1, 2], [1.0, 2.0])
    add_points(make_run(owner, name="other"), "c", [1], [1.0])

    assert metric_names(run) == ["a", "b"]
    assert sorted(series(run)) == ["a", "b"]


def test_it_rejects_max_points_below_two(run):
    with pytest.raises(ValueError):
        series(run, max_points=1)


def test_a_step_window_is_bucketed_on_its_own_range(run):
    # A zoomed chart asks for steps 2,001..3,000 of 10,000: the buckets cover only that range,
    # so it gets finer data than the whole-series view, with the window's own extremes.
    rng = np.random.default_rng(1)
    steps = np.arange(1, 10_001)
    values = rng.normal(size=steps.size)
    add_points(run, "inner_loss", steps, values)

    s = series(run, ["inner_loss"], max_points=200, from_step=2001, to_step=3000)["inner_loss"]

    window = (steps >= 2001) & (steps <= 3000)
    assert s["downsampled"] is True
    assert s["steps"][0] == 2001 and s["steps"][-1] == 3000
    exp_steps, exp_last, exp_min, exp_max = expected_buckets(steps[window], values[window], 200)
    assert s["steps"][1:] == exp_steps
    np.testing.assert_allclose(s["min"][1:], exp_min)
    np.testing.assert_allclose(s["max"][1:], exp_max)


def test_a_small_step_window_comes_back_raw(run):
    add_points(run, "acc", range(1, 1001), [s / 1000 for s in range(1, 1001)])

    s = series(run, ["acc"], max_points=100, from_step=500, to_step=549)["acc"]

    assert s["downsampled"] is False
    assert s["steps"] == list(range(500, 550))
    assert s["values"][0] == pytest.approx(0.5)


def test_the_live_tail_gives_every_name_and_the_same_points_as_series(run, owner, make_run):
    add_points(run, "loss", range(1, 401), [1 / s for s in range(1, 401)])
    add_points(run, "accuracy", range(1, 401, 2), [s / 1000 for s in range(1, 401, 2)])
    add_points(run, "stale", [1, 2], [0.0, 1.0])  # nothing new after step 390
    add_points(make_run(owner), "loss", range(1, 500), [9.0] * 499)  # another run's points

    names, tails = live_tail(run.pk, after_step=390, max_points=5)

    assert names == metric_names(run) == ["accuracy", "loss", "stale"]
    assert tails == series(run, names, after_step=390, max_points=5)
    assert tails["loss"]["steps"] == [391, 392, 393, 394, 395]  # capped, oldest first
    assert tails["stale"] == {**tails["stale"], "steps": [], "last_step": None}


def test_the_live_tail_keeps_to_a_step_window(run):
    add_points(run, "loss", range(1, 101), [float(s) for s in range(1, 101)])

    _, tails = live_tail(run.pk, after_step=10, from_step=5, to_step=14)

    assert tails["loss"]["steps"] == [11, 12, 13, 14]
    assert tails == series(run, ["loss"], after_step=10, from_step=5, to_step=14)


def test_the_live_tail_of_a_run_without_points_is_empty(run):
    assert live_tail(run.pk, after_step=0) == ([], {})


def test_the_live_tail_of_no_run_is_none(run):
    assert live_tail(run.pk + 1000, after_step=0) is None


def test_the_live_tail_is_one_query_on_postgresql(run, django_assert_max_num_queries):
    from django.db import connection

    for name in ("a", "b", "c", "d", "e"):
        add_points(run, name, range(1, 50), [0.5] * 49)
    with django_assert_max_num_queries(1 if connection.vendor == "postgresql" else 7):
        _, tails = live_tail(run.pk, after_step=40)
    assert [len(t["steps"]) for t in tails.values()] == [9] * 5


def test_a_tail_of_every_series_is_one_query_on_postgresql(run, django_assert_max_num_queries):
    """The run page's own poll (series without names) takes the live tail's single statement."""
    from django.db import connection

    for name in ("a", "b", "c"):
        add_points(run, name, range(1, 30), [0.25] * 29)
    with django_assert_max_num_queries(1 if connection.vendor == "postgresql" else 4):
        tails = series(run, after_step=25)
    assert [t["steps"] for t in tails.values()] == [[26, 27, 28, 29]] * 3
    assert tails == live_tail(run.pk, after_step=25)[1]

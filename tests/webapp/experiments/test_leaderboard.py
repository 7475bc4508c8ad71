"""Leaderboards: configurations (seeds grouped) ranked by mean test accuracy, ties by interval
overlap, the paper's reference rows."""

from __future__ import annotations

import itertools
import math

import pytest

from webapp.experiments.leaderboard import (
    PAPER_RESULTS,
    REFERENCE_PM,
    SINGLE_SEED,
    Benchmark,
    BoardNotFound,
    algorithm_label,
    board,
    boards,
)

OMNI_5_1_T = Benchmark("omniglot", "paper", 5, 1, True)


_distinct = itertools.count(1)


def finished(make_run, owner, acc, ci=0.01, config=None, **kw):
    """A succeeded run; each call its own configuration unless `config` names one."""
    config = {"inner_iters": next(_distinct)} if config is None else config
    kw.setdefault("iteration", 400)
    return make_run(owner, test_accuracy=acc, test_ci95=ci, test_tasks=1000, config=config, **kw)


def seeds_of(make_run, owner, accuracies, config, **kw):
    return [
        finished(make_run, owner, acc, config=config, seed=seed, **kw)
        for seed, acc in enumerate(accuracies)
    ]


def test_it_ranks_runs_by_test_accuracy_descending(owner, make_run):
    low = finished(make_run, owner, 0.90)
    high = finished(make_run, owner, 0.99)
    mid = finished(make_run, owner, 0.96)

    rows = [r for r in board(OMNI_5_1_T.key).rows if not r.is_reference]

    assert [r.first_run_id for r in rows] == [high.pk, mid.pk, low.pk]
    assert [r.accuracy for r in rows] == [0.99, 0.96, 0.90]


def test_the_paper_row_is_ranked_among_the_runs(owner, make_run):
    finished(make_run, owner, 0.99, ci=0.001)
    finished(make_run, owner, 0.50, ci=0.001)

    rows = board(OMNI_5_1_T.key).rows

    assert [r.is_reference for r in rows] == [False, True, False]
    assert [r.rank for r in rows] == [1, 2, 3]
    paper = rows[1]
    assert paper.runs == []
    assert paper.accuracy == pytest.approx(0.9768)
    assert paper.ci95 == pytest.approx(0.0004)
    assert paper.accuracy_percent == pytest.approx(97.68)


def test_rows_whose_interval_overlaps_the_leaders_are_tied(owner, make_run):
    # Two seeds each: t(0.975, 1) * s / sqrt(2) = 12.706 * |a - b| / 2.
    seeds_of(make_run, owner, [0.80, 0.80], {"inner_iters": 1}, split="lake")  # no spread
    seeds_of(make_run, owner, [0.78, 0.79], {"inner_iters": 2}, split="lake")  # ±0.0635
    seeds_of(make_run, owner, [0.70, 0.70], {"inner_iters": 3}, split="lake")  # apart
    b = board(Benchmark("omniglot", "lake", 5, 1, True))

    flags = {round(r.accuracy, 3): r.tied_with_leader for r in b.rows}

    assert flags == {0.80: False, 0.785: True, 0.70: False}


def test_a_run_matching_the_paper_within_its_interval_is_tied_with_it(owner, make_run):
    finished(make_run, owner, 0.9535, ci=0.001, transductive=False)

    rows = board(Benchmark("omniglot", "paper", 5, 1, False)).rows

    assert rows[0].is_reference and rows[1].tied_with_leader


def test_equal_accuracies_share_a_rank(owner, make_run):
    finished(make_run, owner, 0.5, split="lake")
    finished(make_run, owner, 0.5, split="lake")
    finished(make_run, owner, 0.4, split="lake")

    rows = board("omniglot-lake-5way-1shot-transductive").rows

    assert [r.rank for r in rows] == [1, 1, 3]
    assert not any(r.is_reference for r in rows)  # the paper did not use Lake's split


def test_runs_are_grouped_by_benchmark(owner, make_run):
    finished(make_run, owner, 0.9, transductive=True)
    finished(make_run, owner, 0.9, transductive=False)
    finished(make_run, owner, 0.9, config={"ways": 20, "shots": 5})
    finished(make_run, owner, 0.6, dataset="imagefolder", config={"shots": 5})

    keys = [b.key for b in boards()]

    assert keys == [
        "omniglot-paper-5way-1shot-non-transductive",
        "omniglot-paper-5way-1shot-transductive",
        "omniglot-paper-20way-5shot-transductive",
        "imagefolder-miniimagenet-5way-5shot-transductive",
    ]
    assert all(b.runs_count == 1 for b in boards())
    assert boards()[3].title == "Mini-ImageNet, 5-way 5-shot, transductive"


def test_only_succeeded_runs_with_a_test_accuracy_are_ranked(owner, make_run):
    finished(make_run, owner, 0.9, status="failed")
    finished(make_run, owner, 0.9, status="running")
    make_run(owner, test_accuracy=None)
    make_run(owner, dataset="sine", ways=None, shots=10, test_accuracy=None)

    assert boards() == []


def test_a_custom_image_folder_is_not_ranked_against_mini_imagenet(owner, make_run):
    finished(make_run, owner, 0.9, dataset="imagefolder", config={"data_dir": "/data/birds"})

    (b,) = boards()

    assert b.key == "imagefolder-custom-5way-1shot-transductive"
    assert not any(r.is_reference for r in b.rows)


def test_every_paper_number_is_a_reference_row_of_its_board(db):
    assert len(PAPER_RESULTS) == 12
    all_boards = boards(include_reference_only=True)

    assert len(all_boards) == 12
    for b in all_boards:
        (row,) = b.rows
        assert row.is_reference and row.rank == 1
        assert (row.accuracy, row.ci95) == PAPER_RESULTS[b.benchmark]
    mini = board("imagefolder-miniimagenet-5way-5shot-non-transductive").rows[0]
    assert (mini.accuracy, mini.ci95) == (pytest.approx(0.6274), pytest.approx(0.0037))


def test_it_rejects_unknown_or_malformed_keys(db):
    with pytest.raises(BoardNotFound):
        board("omniglot-paper-7way-3shot-transductive")
    with pytest.raises(BoardNotFound):
        board("not a key")


def test_keys_round_trip(db):
    for benchmark in PAPER_RESULTS:
        assert Benchmark.from_key(benchmark.key) == benchmark


def test_a_rows_label_names_the_algorithm_as_metatrain_does(owner, make_run):
    finished(make_run, owner, 0.97, name="first-order", seed=3, algorithm="fomaml")
    (row,) = [r for r in board(OMNI_5_1_T.key).rows if not r.is_reference]
    assert row.label == "first-order (FOMAML)"
    assert algorithm_label("reptile") == "Reptile"
    assert algorithm_label("retired-variant") == "retired-variant"  # an old run's stored name


def test_the_seeds_of_a_configuration_make_one_row_with_a_students_t_interval(owner, make_run):
    runs = seeds_of(make_run, owner, [0.90, 0.92, 0.97], {"inner_iters": 7})
    finished(make_run, owner, 0.91)  # another configuration

    b = board(OMNI_5_1_T.key)
    (row,) = [r for r in b.rows if not r.is_reference and r.seeds == 3]

    mean = (0.90 + 0.92 + 0.97) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in (0.90, 0.92, 0.97)) / 2)
    assert row.accuracy == pytest.approx(mean)
    assert row.std == pytest.approx(std)
    assert row.ci95 == pytest.approx(4.3027 * std / math.sqrt(3))
    assert [r.pk for r in row.runs] == [r.pk for r in runs]
    assert (b.configurations, b.runs_count) == (2, 4)


def test_a_single_seed_has_no_interval_and_says_so(owner, make_run):
    finished(make_run, owner, 0.9)
    (row,) = [r for r in board(OMNI_5_1_T.key).rows if not r.is_reference]
    assert row.ci95 is None and row.seeds == 1 and row.ci_method == SINGLE_SEED


def test_a_configuration_trained_less_than_the_paper_is_marked_partial(owner, make_run):
    finished(make_run, owner, 0.9)  # 400 meta-iterations; the paper trained 100,000
    finished(make_run, owner, 0.8, config={"meta_iters": 100_000}, iteration=100_000)
    rows = {r.iterations: r for r in board(OMNI_5_1_T.key).rows if not r.is_reference}
    assert rows[400].partial and rows[400].paper_iterations == 100_000
    assert not rows[100_000].partial


def test_the_paper_row_does_not_call_its_plus_minus_a_95_percent_ci(db):
    (row,) = board(OMNI_5_1_T.key).rows
    assert row.ci_method == REFERENCE_PM and "95% CI over" in REFERENCE_PM
    assert "cannot be" in REFERENCE_PM


def test_a_board_shows_its_best_configurations_and_counts_the_rest(owner, make_run):
    for acc in (0.5, 0.6, 0.7):
        finished(make_run, owner, acc, split="lake")
    b = board("omniglot-lake-5way-1shot-transductive", limit=2)
    assert [r.accuracy for r in b.rows] == [0.7, 0.6]
    assert (b.configurations, b.hidden) == (3, 1)

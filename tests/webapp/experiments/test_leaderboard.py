"""Leaderboards: ranking by test accuracy, ties by CI overlap, the paper's reference rows."""

from __future__ import annotations

import pytest

from webapp.experiments.leaderboard import (
    PAPER_RESULTS,
    Benchmark,
    BoardNotFound,
    algorithm_label,
    board,
    boards,
)

OMNI_5_1_T = Benchmark("omniglot", "paper", 5, 1, True)


def finished(make_run, owner, acc, ci=0.01, **kw):
    return make_run(owner, test_accuracy=acc, test_ci95=ci, test_tasks=1000, **kw)


def test_it_ranks_runs_by_test_accuracy_descending(owner, make_run):
    low = finished(make_run, owner, 0.90)
    high = finished(make_run, owner, 0.99)
    mid = finished(make_run, owner, 0.96)

    rows = [r for r in board(OMNI_5_1_T.key).rows if not r.is_reference]

    assert [r.run.pk for r in rows] == [high.pk, mid.pk, low.pk]
    assert [r.accuracy for r in rows] == [0.99, 0.96, 0.90]


def test_the_paper_row_is_ranked_among_the_runs(owner, make_run):
    finished(make_run, owner, 0.99, ci=0.001)
    finished(make_run, owner, 0.50, ci=0.001)

    rows = board(OMNI_5_1_T.key).rows

    assert [r.is_reference for r in rows] == [False, True, False]
    assert [r.rank for r in rows] == [1, 2, 3]
    paper = rows[1]
    assert paper.run is None
    assert paper.accuracy == pytest.approx(0.9768)
    assert paper.ci95 == pytest.approx(0.0004)
    assert paper.accuracy_percent == pytest.approx(97.68)


def test_rows_whose_interval_overlaps_the_leaders_are_tied(owner, make_run):
    finished(make_run, owner, 0.80, ci=0.02, split="lake")  # leader: [0.78, 0.82]
    finished(make_run, owner, 0.77, ci=0.015, split="lake")  # [0.755, 0.785]: overlaps
    finished(make_run, owner, 0.70, ci=0.05, split="lake")  # [0.65, 0.75]: apart
    b = board(Benchmark("omniglot", "lake", 5, 1, True))

    flags = {r.accuracy: r.tied_with_leader for r in b.rows}

    assert flags == {0.80: False, 0.77: True, 0.70: False}


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
    assert row.label == "first-order (seed 3, FOMAML)"
    assert algorithm_label("reptile") == "Reptile"
    assert algorithm_label("retired-variant") == "retired-variant"  # an old run's stored name

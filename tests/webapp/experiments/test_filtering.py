"""The runs page's filter menus: every dataset and every owner, each once, sorted."""

from __future__ import annotations

from webapp.experiments.filtering import dataset_names, owner_names


def test_the_dataset_menu_lists_each_dataset_once_sorted(owner, make_run):
    for dataset, seed in [("sine", 0), ("omniglot", 0), ("sine", 1), ("miniimagenet", 0)]:
        make_run(owner, dataset=dataset, seed=seed)

    assert dataset_names() == ["miniimagenet", "omniglot", "sine"]


def test_the_dataset_menu_is_empty_without_runs(db):
    assert dataset_names() == []


def test_the_owner_menu_lists_everyone_with_an_experiment_once(
    owner, stranger, make_user, make_run
):
    make_user("nobody-with-runs")
    make_run(stranger, seed=0)
    make_run(stranger, seed=1)
    make_run(owner)

    assert owner_names() == sorted([owner.username, stranger.username])

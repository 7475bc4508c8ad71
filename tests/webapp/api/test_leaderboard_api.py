"""GET /api/leaderboard and /api/presets."""

from __future__ import annotations

from metatrain import PRESETS


def test_the_leaderboard_gives_fractions_with_the_papers_reference_row(api, owner, make_run):
    run = make_run(owner, test_accuracy=0.99, test_ci95=0.002, test_tasks=1000)

    body = api.get("/api/leaderboard").json()

    assert body["units"] == "fraction"
    (board,) = body["boards"]
    assert board["key"] == "omniglot-paper-5way-1shot-transductive"
    assert (board["dataset"], board["ways"], board["shots"], board["transductive"]) == (
        "omniglot",
        5,
        1,
        True,
    )
    first, paper = board["rows"]
    assert (first["accuracy"], first["rank"], first["seeds"]) == (0.99, 1, 1)
    assert first["ci95"] is None  # one seed: no interval across seeds
    assert [r["run_id"] for r in first["runs"]] == [run.pk]
    assert first["runs"][0]["ci95"] == 0.002  # its own interval over test tasks
    assert first["owner"] == "owner" and first["is_reference"] is False
    assert paper["is_reference"] is True and paper["runs"] == []
    assert paper["accuracy"] == 0.9768 and paper["ci95"] == 0.0004
    assert "95% CI" not in paper["ci_method"].split("cannot be")[0]


def test_the_leaderboard_groups_seeds_of_one_configuration(api, owner, make_run):
    a = make_run(owner, test_accuracy=0.90, seed=0, iteration=100_000)
    b = make_run(owner, test_accuracy=0.94, seed=1, iteration=100_000, experiment=a.experiment)
    make_run(owner, test_accuracy=0.5, seed=0, config={"inner_iters": 2}, iteration=10)

    (board,) = api.get("/api/leaderboard", {"limit": 1}).json()["boards"]

    (row,) = [r for r in board["rows"] if not r["is_reference"]]
    assert (row["seeds"], row["accuracy"], row["partial"]) == (2, 0.92, False)
    assert row["ci95"] == round(12.7062 * 0.0282843 / 2**0.5, 6)
    assert sorted(r["run_id"] for r in row["runs"]) == [a.pk, b.pk]
    assert (board["configurations"], board["runs_count"], board["hidden"]) == (2, 3, 1)


def test_reference_only_boards_are_included_on_request(api):
    assert api.get("/api/leaderboard").json()["boards"] == []

    boards = api.get("/api/leaderboard", {"include_reference_only": "true"}).json()["boards"]

    assert len(boards) == 12


def test_one_board_by_key_and_unknown_keys_are_404(api):
    ok = api.get("/api/leaderboard/imagefolder-miniimagenet-5way-1shot-non-transductive")

    assert ok.status_code == 200 and ok.json()["rows"][0]["accuracy"] == 0.4707
    assert api.get("/api/leaderboard/omniglot-paper-3way-1shot-transductive").status_code == 404
    assert api.get("/api/leaderboard/garbage").status_code == 404


def test_presets_list_every_preset_with_field_help(api):
    body = api.get("/api/presets").json()

    assert [p["name"] for p in body["presets"]] == list(PRESETS)
    by_name = {p["name"]: p["config"] for p in body["presets"]}
    assert by_name["omniglot-20way-1shot"]["ways"] == 20
    assert "inner_lr" in body["field_help"]

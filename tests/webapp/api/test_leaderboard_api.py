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
    assert (first["run_id"], first["accuracy"], first["rank"]) == (run.pk, 0.99, 1)
    assert first["owner"] == "owner" and first["is_reference"] is False
    assert paper["is_reference"] is True and paper["run_id"] is None
    assert paper["accuracy"] == 0.9768 and paper["ci95"] == 0.0004


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

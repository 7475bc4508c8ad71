"""Proposals: grid order, seeded random points, TPE rebuilt from history (no database)."""

from __future__ import annotations

from webapp.experiments.sweeps.search import Trial, propose
from webapp.experiments.sweeps.space import parse_space, parse_space_text, space_text

SPACE = {
    "inner_lr": {"low": 1e-4, "high": 1e-1, "log": True, "type": "float"},
    "inner_iters": {"low": 1, "high": 10, "type": "int"},
    "algorithm": {"values": ["reptile", "fomaml"]},
}


def _dims(space=SPACE, method="tpe"):
    dims, errors = parse_space(space, method)
    assert not errors
    return dims


def test_it_expands_a_grid_in_order_and_stops_at_its_end():
    dims = _dims({"ways": {"values": [5, 20]}, "shots": {"values": [1, 5]}}, "grid")
    first = propose("grid", dims, [], 3, seed=0, trials=0)
    assert first == [
        {"ways": 5, "shots": 1},
        {"ways": 5, "shots": 5},
        {"ways": 20, "shots": 1},
    ]
    history = [Trial(p) for p in first]
    assert propose("grid", dims, history, 3, seed=0, trials=0) == [{"ways": 20, "shots": 5}]
    assert propose("grid", dims, [*history, Trial({})], 3, seed=0, trials=0) == []


def test_random_points_are_reproducible_and_inside_their_ranges():
    dims = _dims(method="random")
    a = propose("random", dims, [], 5, seed=7, trials=20)
    b = propose("random", dims, [], 5, seed=7, trials=20)
    assert a == b
    assert a != propose("random", dims, [], 5, seed=8, trials=20)
    # The n-th point does not depend on how the earlier ones were asked for.
    later = propose("random", dims, [Trial(p) for p in a[:3]], 2, seed=7, trials=20)
    assert later == a[3:]
    for point in a:
        assert 1e-4 <= point["inner_lr"] <= 1e-1
        assert isinstance(point["inner_iters"], int) and 1 <= point["inner_iters"] <= 10
        assert point["algorithm"] in ("reptile", "fomaml")


def _objective(params):
    # Best near inner_lr = 1e-2 with many inner iterations.
    import math

    return 1 - abs(math.log10(params["inner_lr"]) + 2) / 3 + params["inner_iters"] / 100


def test_tpe_proposes_the_same_next_trials_for_the_same_history():
    dims = _dims()
    history = [
        Trial(p, value=_objective(p)) for p in propose("random", dims, [], 6, seed=1, trials=6)
    ]
    a = propose("tpe", dims, history, 2, seed=3, trials=20)
    b = propose("tpe", dims, history, 2, seed=3, trials=20)
    assert a == b and len(a) == 2 and a[0] != a[1]
    for point in a:
        assert set(point) == set(SPACE)
        assert 1e-4 <= point["inner_lr"] <= 1e-1


def test_the_adaptive_loop_proposes_new_trials_as_earlier_ones_finish():
    """A fake objective stands in for training: two in flight at a time, each finished trial
    told back through the history, until the budget of 12 is spent."""
    dims = _dims()
    history: list[Trial] = []
    while True:
        running = [t for t in history if t.value is None]
        new = propose("tpe", dims, history, 2 - len(running), seed=5, trials=12)
        if not new and not running:
            break
        history += [Trial(p) for p in new]
        # The oldest running trial finishes.
        i = next(i for i, t in enumerate(history) if t.value is None)
        history[i] = Trial(history[i].params, value=_objective(history[i].params))
    assert len(history) == 12
    assert all(t.value is not None for t in history)
    # TPE after its random start does better than the start on average (seeded: stable).
    start = [t.value for t in history[:4]]
    modelled = [t.value for t in history[4:]]
    assert max(modelled) >= max(start)


def test_the_form_text_reads_lists_and_ranges_and_round_trips():
    space, problems = parse_space_text(
        "inner_lr = 1e-4 .. 1e-1 log\ninner_iters = 1 .. 10 int\nalgorithm = reptile, fomaml\n"
        "meta_step = 0.5, 1\n"
    )
    assert problems == []
    assert space == {
        "inner_lr": {"low": 1e-4, "high": 0.1, "log": True},
        "inner_iters": {"low": 1, "high": 10, "log": False, "type": "int"},
        "algorithm": {"values": ["reptile", "fomaml"]},
        "meta_step": {"values": [0.5, 1]},
    }
    again, problems = parse_space_text(space_text(space))
    assert problems == [] and _dims(again) == _dims(space)


def test_the_form_text_names_the_line_it_cannot_read():
    _, problems = parse_space_text("inner_lr\ninner_iters = 1 .. x")
    assert problems[0].startswith("Line 1") and problems[1].startswith("Line 2")


def test_a_grid_refuses_ranges_and_bad_fields_by_name():
    _, errors = parse_space(
        {"inner_lr": {"low": 0.1, "high": 1}, "seed": {"values": [1]}, "nope": {"values": [1]}},
        "grid",
    )
    fields = [f for f, _ in errors.errors]
    assert fields == ["space.inner_lr", "space.seed", "space.nope"]

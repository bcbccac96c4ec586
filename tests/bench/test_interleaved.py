"""bench._common.interleaved, the one timing loop of the comparisons in bench/: turn order,
warm-up rounds, per-call division, the budget rule and the clocks."""

import pytest

import bench._common as common


@pytest.fixture
def ticks(monkeypatch):
    """A fake clock that advances by one each time a job runs."""
    state = {"t": 0.0, "calls": []}
    monkeypatch.setitem(common.CLOCKS, "wall", lambda: state["t"])
    monkeypatch.setitem(common.CLOCKS, "cpu", lambda: 2 * state["t"])

    def job(name):
        def run(r):
            state["calls"].append((r, name))
            state["t"] += 1.0
        return run

    return state, {n: job(n) for n in "abc"}


def test_alternate_order_and_warmup(ticks):
    state, jobs = ticks
    out = common.interleaved(jobs, 2, warmup_rounds=1, clocks=("wall", "cpu"))
    assert [n for _, n in state["calls"]] == list("abc" "cba" "abc")
    assert out["wall"] == {n: [1.0, 1.0] for n in "abc"} and out["cpu"] == {n: [2.0, 2.0] for n in "abc"}


def test_rotate_order_and_reps(ticks):
    state, jobs = ticks
    out = common.interleaved(jobs, 3, order="rotate", reps={"a": 1, "b": 2, "c": 4})
    assert [n for _, n in state["calls"][:7]] == list("abbcccc")
    firsts = [state["calls"][i][1] for i in (0, 7, 14)]
    assert firsts == ["a", "b", "c"], "round r starts with job r"
    assert out["wall"] == {n: [1.0] * 3 for n in "abc"}, "a sample is divided by its reps"
    assert {r for r, _ in state["calls"]} == {0, 1, 2}


def test_budget_stops_after_min_rounds(ticks, monkeypatch):
    state, jobs = ticks
    now = iter(range(1000))
    monkeypatch.setattr(common.time, "perf_counter", lambda: float(next(now)))
    out = common.interleaved(jobs, 50, min_rounds=2, budget_s=0.5)
    assert all(len(v) == 2 for v in out["wall"].values())

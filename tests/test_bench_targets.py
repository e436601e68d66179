"""bench/targets.py: the bounds and the met / MISSED / MISSED (bounded) verdicts, from hand-made
timings (the benchmark's arithmetic, not its timing)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from targets import evaluate_targets, floor_bounds, summary_line, target_rows  # noqa: E402


def test_floor_bounds_by_hand():
    times = {"ours": {"median": 4.0}, "compile(shared)": {"median": 4.4},
             "skeleton": {"median": 1.0}, "MLP replay": {"median": 2.5},
             "compile(skeleton)": {"median": 1.2}}
    b = floor_bounds(times, floor_ms=3.0, stat="median")
    assert b["eager floor ms"] == pytest.approx(3.5)
    assert b["ours/floor"] == pytest.approx(3.5 / 3.0)
    assert b["compile(shared)/ours"] == pytest.approx(4.4 / 3.5)
    assert b["compile(ours)/ours"] == pytest.approx(1 + 0.2 / 4.0)


def test_floor_bounds_without_compiled_variants():
    times = {"ours": {"min": 4.0}, "skeleton": {"min": 1.0}, "MLP replay": {"min": 2.0}}
    assert set(floor_bounds(times, 2.0, "min")) == {"eager floor ms", "ours/floor"}


def _result(n, ratios, bounds):
    return {"n": n, "chain": "T", "shuffled_grad": False, "ratios": ratios,
            "ratios_min": ratios, "bounds": bounds}


def test_verdicts_met_missed_bounded():
    r64 = _result(64, {"shared/ours": 1.02, "compile(shared)/ours": 0.95,
                       "compile(ours)/ours": 1.08},
                  {"compile(shared)/ours": 1.10, "compile(ours)/ours": 1.03})
    r256 = _result(256, {"shared/ours": 0.99, "compile(shared)/ours": 1.01,
                         "compile(ours)/ours": 1.02, "ours/floor": 1.25},
                   {"compile(shared)/ours": 1.08, "compile(ours)/ours": 1.01,
                    "ours/floor": 1.22})
    r32 = _result(32, {"shared/ours": 0.5}, {})  # not a target size: left out
    status = {t["target"]: t["status"] for t in evaluate_targets([r64, r256, r32], None)}
    assert status == {
        "sg=False T N=64: plain eager shared / ours": "met",
        # 0.95 < 1.15 and the bound 1.10 < 1.15 too: out of reach
        "sg=False T N=64: compile(shared) / ours": "MISSED (bounded)",
        # 1.08 > 1.05 but the bound 1.03 would meet it: room left
        "sg=False T N=64: compile(ours) / ours": "MISSED",
        "sg=False T N=256: plain eager shared / ours": "MISSED",
        "sg=False T N=256: compile(shared) / ours": "met",
        "sg=False T N=256: compile(ours) / ours": "met",
        "sg=False T N=256: ours / FLOP floor": "MISSED (bounded)",
    }


def test_summary_counts_only_evaluated_targets():
    r = _result(64, {"shared/ours": 1.1}, {})  # compiled variants not run
    targets = evaluate_targets([r], {"n": 256, "ratios": {"two-call eager/ours": 1.2},
                                     "ratios_min": {}})
    assert [t["status"] for t in targets] == ["met", "-", "-", "MISSED", "-"]
    assert summary_line(targets).startswith("1 of 2 evaluated targets met; 1 missed")


def test_headroom_is_the_factor_by_which_the_bound_clears_the_goal():
    r64 = _result(64, {"compile(shared)/ours": 1.04, "compile(ours)/ours": 1.10},
                  {"compile(shared)/ours": 1.173, "compile(ours)/ours": 1.125})
    r256 = _result(256, {"ours/floor": 1.21}, {"ours/floor": 1.15})
    targets = {t["target"]: t for t in evaluate_targets([r64, r256], None)}
    # >= 1.15: 1.173 / 1.15 = 1.02, so ours may take at most 1.02x the eager floor
    assert targets["sg=False T N=64: compile(shared) / ours"]["headroom"] == pytest.approx(1.02)
    # <= 1.05 with a bound of 1.125: 1.05 / 1.125 < 1, out of reach
    assert targets["sg=False T N=64: compile(ours) / ours"]["headroom"] == pytest.approx(1.05 / 1.125)
    # <= 1.20 with a bound of 1.15: ours / eager floor may be up to 1.20 / 1.15
    assert targets["sg=False T N=256: ours / FLOP floor"]["headroom"] == pytest.approx(1.2 / 1.15)
    assert targets["sg=False T N=64: plain eager shared / ours"]["headroom"] is None
    headers, rows = target_rows(list(targets.values()))
    row = dict(zip(headers, rows[1]))
    assert (row["target"], row["headroom"], row["status"]) == (
        "sg=False T N=64: compile(shared) / ours", "1.020", "MISSED")

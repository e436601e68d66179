"""bench/bench_cpu.py runs end to end on its smallest configuration (eager variants, one round,
the Julia chain at N = 64, one train_step round) and writes the JSON the docs' tables are read
from: a run that breaks shows up here, not in the next benchmark session. Timing is not
asserted (bench/README.md: the targets are printed, never tested)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))


def test_the_cpu_benchmark_runs_and_writes_its_json(tmp_path, capsys):
    import bench_cpu

    out = tmp_path / "cpu.json"
    assert bench_cpu.main(["--chains", "T", "--sizes", "64", "--modes", "false", "--rounds", "1",
                           "--train-rounds", "1", "--no-memory", "--profile", "none",
                           "--no-compile", "--out", str(out)]) in (0, None)
    result = json.loads(out.read_text())
    (mi,) = result["mi_loss"]
    assert (mi["chain"], mi["n"], mi["shuffled_grad"]) == ("T", 64, False)
    assert set(mi["times_ms"]) == {"ours", "naive", "shared"}
    # ours and the references agreed before timing (the run stops otherwise)
    assert max(c["grad_rel_err"] for c in mi["check"].values()) < 1e-3
    for stats in mi["kernel_per_call"].values():
        assert stats["sys_ms"] >= 0 and stats["faults"] >= 0
    assert set(result["train_step"]["kernel_per_call"]) == set(result["train_step"]["variants"])
    assert "evaluated targets met" in capsys.readouterr().out



def test_the_run_records_the_allocators_settings(monkeypatch):
    import bench_cpu

    for name in bench_cpu.allocator_environment():
        monkeypatch.delenv(name)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=268435456")
    monkeypatch.setenv("MALLOC_CONF", "background_thread:true")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert bench_cpu.environment()["allocator"] == {
        "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=268435456",
        "MALLOC_CONF": "background_thread:true"}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

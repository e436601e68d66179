"""bench/common.py's interleaved timing: every function called once per round, and the
operating system's share of each call (kernel time, page faults) counted apart per function."""
from __future__ import annotations

import mmap
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import interleaved  # noqa: E402

PAGE = mmap.PAGESIZE
FRESH_BYTES = 8 * 2**20  # four 2 MiB huge pages at least, 2048 pages of 4 KiB


def touch_fresh_memory() -> None:
    """Maps FRESH_BYTES of new anonymous memory and writes one byte per page: each call faults
    in at least FRESH_BYTES / 2 MiB pages, whatever the page size."""
    with mmap.mmap(-1, FRESH_BYTES) as m:
        for offset in range(0, FRESH_BYTES, PAGE):
            m[offset] = 1


def test_interleaved_counts_each_functions_page_faults_apart():
    calls = {"fresh": 0, "nothing": 0}

    def fresh():
        calls["fresh"] += 1
        touch_fresh_memory()

    def nothing():
        calls["nothing"] += 1

    kernel: dict = {}
    samples = interleaved({"fresh": fresh, "nothing": nothing}, rounds=6, kernel=kernel)
    assert calls == {"fresh": 6, "nothing": 6}
    assert {k: len(v) for k, v in samples.items()} == {"fresh": 6, "nothing": 6}
    assert set(kernel) == {"fresh", "nothing"}
    assert kernel["fresh"]["faults"] >= FRESH_BYTES / 2**21
    assert kernel["nothing"]["faults"] < kernel["fresh"]["faults"]
    assert kernel["fresh"]["sys_ms"] >= 0 and kernel["nothing"]["sys_ms"] >= 0


def test_interleaved_without_the_kernel_dict_times_only():
    samples = interleaved({"a": lambda: None}, rounds=3)
    assert list(samples) == ["a"] and len(samples["a"]) == 3
    assert all(s >= 0 for s in samples["a"])

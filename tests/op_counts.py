"""How often ops run in a call, as torch.profiler records them on the calling thread (ops a
C++ op runs on another intra-op thread, such as the second of two products at once, are not
counted), for tests of which backend or thread runs each product."""
from __future__ import annotations

from typing import Any, Callable

PRODUCT_OPS = ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise")
"""The matrix-product ops the chain's C++ ops and modules call."""


def calling_thread_counts(fn: Callable[[], Any], names=PRODUCT_OPS) -> dict[str, int]:
    """{op name: calls on the calling thread} in ``fn()``, for the ops of ``names`` that ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()
    if not events:
        return {}
    caller = min(events, key=lambda e: e.time_range.start).thread  # fn starts on this thread
    counts: dict[str, int] = {}
    for e in events:
        if e.name in names and e.thread == caller:
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts

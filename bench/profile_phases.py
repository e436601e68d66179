#!/usr/bin/env python
"""Where one call of ours goes, timed in place: the forward and the backward of the chain node in
ordinary calls of the MI loss forward + backward (shuffled_grad=False), beside the replay of the
same GEMMs alone.

    .venv/bin/python bench/profile_phases.py                    # T:64, T:256, P:64, 2 threads
    .venv/bin/python bench/profile_phases.py --cases T:64 --rounds 200

torch.profiler (bench/profile_fixed_cost.py) adds its own cost to every op and cannot say what
a product costs inside the call. Here each part is timed by a wrapper around the Python call that
runs it (two ``perf_counter`` reads), in calls interleaved with the replays of
``common.make_replay`` (ours' own products, forward and backward apart, preallocated operands):

- ``forward (critic_chain_forward)``: the node's one forward op: for a chain whose ``data`` and
  ``latent`` are single Linear layers (T) their products too, then the first layer, the hidden
  layers, the head and the bound;
- ``backward (critic_chain_backward)``: the node's one backward op, every gradient;
- ``rest of the call``: the call less the parts: Python (the plan, the checks, the node's
  bookkeeping), ``Function.apply``, autograd's engine, the harness's ``autograd.grad``; for a
  chain whose data and latent networks run as modules (P: identity), their calls. Its first
  piece, from the call's start to the forward op's, is shown apart: the loss's own Python (the
  bound's checks, the plan, the node's arguments) and ``Function.apply`` up to the op, for P
  with the identity modules' calls. Beside them, the same two (``warm_rest``) with the node's
  ops replaced by stand-ins that return a real call's outputs at once: the same Python,
  ``Function.apply`` and engine, with no GEMMs between calls to evict them from the caches.

Each part's time against its replay is what the part adds beyond its GEMMs (pointwise passes, the
op's fixed cost, and the products running slower inside a call whose other work evicted their
operands from the caches). Medians per call over the rounds; the parts' medians need not add up to
the call's.

After the timed rounds, as many calls again count what each part spends in the kernel
(``common.kernel_usage``: ``getrusage``, all threads, as bench_cpu's "operating system's share"
table reads it per variant): the CPU time in system calls and page faults, and the minor page
faults. Means per call (the kernel's time is sampled at its clock ticks, so only a mean over
many calls means anything). Memory that the C library's allocator returns to the system when a
call frees it (``free`` trims the heap's top, or unmaps a large block) is faulted in page by page
when the next call writes it: a cost of the call's allocations, not of its arithmetic. (The four
``getrusage`` calls per part and call add about 1 us each to the rest's kernel time.) Prints a
markdown table per case.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

import infomax_ext.critic_chain_op as chain_op

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    N_DATA,
    N_LATENT,
    chain_layout,
    interleaved,
    kernel_usage,
    make_replay,
    ours_gemms,
    ours_loss,
    ours_schedule,
    percentile,
)
from profile_fixed_cost import case  # noqa: E402

FORWARD = "forward (critic_chain_forward)"
BACKWARD = "backward (critic_chain_backward)"
REST = "rest of the call"
BEFORE = "the rest up to the forward op"
CALL = "the call"
PARTS = (FORWARD, BACKWARD)
_PART_OF_OP = {"critic_chain_forward": FORWARD, "critic_chain_backward": BACKWARD}


def part_of_gemm(kind: str) -> str:
    """The part of a call that runs a product of ``common.Gemm.kind``."""
    return FORWARD if kind == "fwd" else BACKWARD


class _Clock:
    """Seconds spent in each part during the current call; with ``kernel``, also what each part
    spent in the kernel, summed over calls (``in_kernel[part]``: [seconds, page faults])."""

    def __init__(self, kernel: bool = False) -> None:
        self.spent: dict[str, float] = {}
        self.started: dict[str, float] = {}  # each part's first perf_counter in the current call
        self.in_kernel: dict[str, list] | None = {} if kernel else None

    def timed(self, part: str, fn: Callable) -> Callable:
        kernel = self.in_kernel

        def call(*args, **kwargs):
            before = kernel_usage() if kernel is not None else (0.0, 0)
            t0 = time.perf_counter()
            self.started.setdefault(part, t0)
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] = self.spent.get(part, 0.0) + time.perf_counter() - t0
                if kernel is not None:
                    after = kernel_usage()
                    total = kernel.setdefault(part, [0.0, 0])
                    total[0] += after[0] - before[0]
                    total[1] += after[1] - before[1]
        return call


class _TimedOps:
    """Stands for ``torch.ops.infomax_ext`` in critic_chain_op: each op's ``.default`` timed.
    With ``outputs`` each op's last result is kept there under its name; with ``replay`` the op
    does not run: its stand-in returns ``outputs[name]`` (what a real call returned) at once.
    The timed stand-in of an op is built on its first use and kept, so that a call's Python up to
    the forward op does not include building it."""

    def __init__(self, clock: _Clock, outputs: dict | None = None, replay: bool = False) -> None:
        self._clock, self._outputs, self._replay = clock, outputs, replay

    def __getattr__(self, name: str):
        op, outputs = getattr(torch.ops.infomax_ext, name).default, self._outputs
        if self._replay:
            assert outputs is not None  # replay=True comes with the outputs to return

            def run(*args, result=outputs[name]):
                return result
        elif outputs is not None:
            def run(*args):
                outputs[name] = result = op(*args)
                return result
        else:
            run = op
        overload = type("TimedOverload", (), {"default": staticmethod(
            self._clock.timed(_PART_OF_OP.get(name, REST), run))})
        setattr(self, name, overload)  # found as an attribute from now on: no __getattr__
        return overload


@contextlib.contextmanager
def timed_parts(clock: _Clock, outputs: dict | None = None,
                replay: bool = False) -> Iterator[None]:
    """Inside: critic_chain_op's op calls are timed into ``clock`` (its OPS restored after);
    ``outputs`` and ``replay`` as in :class:`_TimedOps`."""
    saved = chain_op.OPS
    chain_op.OPS = _TimedOps(clock, outputs, replay)
    try:
        yield
    finally:
        chain_op.OPS = saved


def _forward_start(clock: _Clock) -> float:
    """When the current call reached the forward op (``perf_counter``)."""
    if FORWARD not in clock.started:
        raise RuntimeError("the call never reached critic_chain_forward: this case does not run "
                           "the chain node, whose parts this script times")
    return clock.started[FORWARD]


def _one_call(clock: _Clock, mi, x, z, perm, wrt) -> tuple:
    """One call of ours (the MI loss forward + ``autograd.grad``) with ``clock`` reset for it:
    (the gradients, the call's seconds, the seconds from its start to the forward op)."""
    clock.spent.clear()
    clock.started.clear()
    t0 = time.perf_counter()
    grads = torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt)
    total = time.perf_counter() - t0
    return grads, total, _forward_start(clock) - t0


def measure(chain: str, n: int, rounds: int) -> dict:
    """Medians (ms per call) of ours, of each part inside it, and of each part's GEMM replay."""
    mi, x, z, perm, wrt = case(chain, n)
    clock = _Clock()
    per_call: dict[str, list[float]] = {part: [] for part in (*PARTS, REST, BEFORE)}

    def ours():
        grads, total, before = _one_call(clock, mi, x, z, perm, wrt)
        parts = {part: clock.spent.get(part, 0.0) for part in PARTS}
        for part, seconds in parts.items():
            per_call[part].append(seconds)
        per_call[REST].append(total - sum(parts.values()))
        per_call[BEFORE].append(before)
        return grads

    layout = chain_layout(mi, N_DATA, N_LATENT)
    groups: dict[str, list] = {}
    for gemm in ours_gemms(layout, n, False):
        groups.setdefault(part_of_gemm(gemm.kind), []).append(gemm)
    replays = {f"replay: {part}": make_replay(gemms, **ours_schedule(layout))
               for part, gemms in groups.items()}
    plain = torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt)
    with timed_parts(clock):
        timed = ours()
        if not all(torch.equal(a, b) for a, b in zip(plain, timed)):
            raise RuntimeError("the timed call's gradients differ from the plain call's")
        for _ in range(5):
            ours()
            for replay in replays.values():
                replay()
        for samples in per_call.values():
            samples.clear()
        times = interleaved({"ours": ours, **replays}, rounds)

    def median_ms(samples: list[float]) -> float:
        return 1e3 * percentile(samples, 50)

    return {"chain": chain, "n": n, "rounds": rounds,
            "ours_ms": median_ms(times["ours"]),
            "parts_ms": {part: median_ms(samples) for part, samples in per_call.items()},
            "replay_ms": {name.removeprefix("replay: "): median_ms(times[name])
                          for name in replays},
            "kernel": in_kernel(mi, x, z, perm, wrt, rounds),
            "warm_ms": warm_rest(mi, x, z, perm, wrt, 10 * rounds)}


def warm_rest(mi, x, z, perm, wrt, calls: int) -> dict:
    """The rest of a call and its piece up to the forward op (medians, ms) when the node's ops
    are stand-ins that return a real call's outputs at once: the same Python, ``Function.apply``
    and engine with nothing between two calls to evict them from the caches (``calls`` calls,
    after 50 more)."""
    outputs: dict = {}
    with timed_parts(_Clock(), outputs):
        real = torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt)
    clock = _Clock()
    rest: list[float] = []
    before: list[float] = []
    with timed_parts(clock, outputs, replay=True):
        grads = _one_call(clock, mi, x, z, perm, wrt)[0]
        if not all(torch.equal(a, b) for a, b in zip(real, grads)):
            raise RuntimeError("the stand-in ops do not give the real call's gradients")
        for i in range(calls + 50):
            _, total, to_forward = _one_call(clock, mi, x, z, perm, wrt)
            if i >= 50:
                rest.append(total - sum(clock.spent.values()))
                before.append(to_forward)
    return {REST: 1e3 * percentile(rest, 50), BEFORE: 1e3 * percentile(before, 50)}


def in_kernel(mi, x, z, perm, wrt, calls: int) -> dict:
    """{part, REST, CALL: (ms in the kernel, minor page faults)}, means per call over ``calls``
    ordinary calls of ours (after 3 more)."""
    clock = _Clock(kernel=True)
    with timed_parts(clock):
        for _ in range(3):
            torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt)
        assert clock.in_kernel is not None
        clock.in_kernel.clear()
        before = kernel_usage()
        for _ in range(calls):
            torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt)
        after = kernel_usage()
    whole = (after[0] - before[0], after[1] - before[1])
    missing = [part for part in PARTS if part not in clock.in_kernel]
    if missing:
        raise RuntimeError(f"the parts {missing} never ran in the timed calls: their kernel time "
                           "would count as the rest's")
    parts = {part: tuple(clock.in_kernel[part]) for part in PARTS}
    parts[REST] = (whole[0] - sum(v[0] for v in parts.values()),
                   whole[1] - sum(v[1] for v in parts.values()))
    parts[CALL] = whole
    return {part: (1e3 * seconds / calls, faults / calls) for part, (seconds, faults) in parts.items()}


def table(result: dict) -> list[str]:
    """Markdown rows: each part in ours, its replay, the difference, and what it spent in the
    kernel; the rest; the whole call."""
    kernel = result["kernel"]

    def in_kernel_cells(part: str) -> str:
        ms, faults = kernel[part]
        return f"{ms:.3f} | {faults:.0f}"

    rows = [f"{result['chain']} N = {result['n']} ({result['rounds']} interleaved rounds, "
            f"medians per call; the kernel's share: means over {result['rounds']} more calls)", "",
            "| part | in ours, ms | its GEMMs alone, ms | beyond the GEMMs, ms | in the kernel, ms "
            "| page faults |", "|---|---|---|---|---|---|"]
    replay_total = 0.0
    for part in PARTS:
        inside, alone = result["parts_ms"][part], result["replay_ms"].get(part)
        if alone is None and inside == 0.0:
            continue
        replay_total += alone or 0.0
        rows.append(f"| {part} | {inside:.3f} | {'-' if alone is None else f'{alone:.3f}'} | "
                    f"{inside - (alone or 0.0):.3f} | {in_kernel_cells(part)} |")
    rest = result["parts_ms"][REST]
    rows.append(f"| {REST} (Python, Function.apply, autograd's engine) | {rest:.3f} | - | "
                f"{rest:.3f} | {in_kernel_cells(REST)} |")
    before = result["parts_ms"][BEFORE]
    rows.append(f"| of which {BEFORE} (the loss's Python, Function.apply) | {before:.3f} | - | "
                f"{before:.3f} | - | - |")
    warm = result["warm_ms"]
    rows.append(f"| the same rest with stand-in ops returning a real call's outputs (warm caches) "
                f"| {warm[REST]:.3f} | - | {warm[REST]:.3f} | - | - |")
    rows.append(f"| of which {BEFORE}, warm | {warm[BEFORE]:.3f} | - | {warm[BEFORE]:.3f} | - | - |")
    rows.append(f"| {CALL} | {result['ours_ms']:.3f} | {replay_total:.3f} | "
                f"{result['ours_ms'] - replay_total:.3f} | {in_kernel_cells(CALL)} |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="T:64,T:256,P:64")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [measure(c.split(":")[0], int(c.split(":")[1]), args.rounds)
               for c in args.cases.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end\n")
    for result in results:
        print("\n".join(table(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

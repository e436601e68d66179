#!/usr/bin/env python
"""Where the time of one call of ours goes (MI loss forward + backward, shuffled_grad=False).

    .venv/bin/python bench/profile_fixed_cost.py                # T:64, P:64, P:256, 2 threads
    .venv/bin/python bench/profile_fixed_cost.py --cases T:64 --iters 50
    .venv/bin/python bench/profile_fixed_cost.py --bound --cases T:64,T:256,P:64 --iters 100

For each chain and N: the median time of one call without the profiler, the replay of its
GEMMs alone (bench/common.py), then torch.profiler's self CPU time per call grouped by kind
(GEMMs, copies, our kernels and C++ op bodies, autograd nodes and their Python, other aten ops,
Python outside any op = profiled wall time minus the time inside ops), and the Python pieces
of the call timed alone (plan lookup, argument checks). The profiler adds its own cost to every
op: read the groups as shares, the unprofiled median as the time. Prints a markdown table.

``--bound``: the best ratio compile(shared) / ours that any eager implementation of the shared
algorithm could reach. An eager call must run the chain's ``data`` and ``latent`` modules (eager,
with their own autograd nodes: ``data(x)``, ``latent(z)``, ``latent(z.detach())``; or, for
single Linear layers, their products inside the chain's node, as ours does), at least one
autograd node for the MLP from its first layer to the bound, taking hx, hz, the shuffled half
and every MLP parameter and returning a gradient for each, and the MLP's GEMMs. The skeleton
(``common.skeleton_loss``) times the first two: the modules (or the layers' products) and one
custom Function with those inputs, a trivial op forward and a view of the incoming gradient per
input backward (``torch.autograd.grad`` through all of them); the replay of ours' MLP GEMMs alone
(bench/common.py) the third. ``eager floor =
skeleton + MLP GEMM replay``; ``compile(shared) / eager floor`` bounds the ratio from above (the
floor leaves out every activation, bias and bound pass): where it is under a target, no eager
path meets it. Likewise ``eager floor / FLOP floor`` (the FLOP floor as bench_cpu.py's: ours'
GEMM FLOPs at the rate of ``torch.mm`` on the dominant shape) is the lowest ``ours / floor``
any eager implementation could reach. All timed interleaved; fastest calls and medians.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from infomax_ext import _ops, latent_permutation
from infomax_ext.mutual_info import fused_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CHAINS,
    N_DATA,
    N_LATENT,
    chain_layout,
    dominant_gemm,
    interleaved,
    make_mm,
    make_replay,
    ours_gemms,
    ours_schedule,
    ours_loss,
    shared_loss,
    skeleton_loss,
    summary_ms,
    total_flops,
)

GEMM_OPS = {"aten::mm", "aten::addmm", "mkldnn::_linear_pointwise", "aten::bmm"}
COPY_OPS = {"aten::copy_", "aten::clone", "aten::contiguous"}
PYTHON = "Python outside ops (wrappers, plan, checks)"


def group_of(name: str) -> str:
    if name in GEMM_OPS:
        return "GEMMs"
    if name in COPY_OPS:
        return "copies"
    if name.startswith("infomax_ext::"):
        return "our ops (kernels, C++ checks)"
    if name.startswith("aten::") or name.startswith("mkldnn::"):
        return "other aten ops"
    return "autograd nodes (Python + engine)"


def time_python(fn, iters: int = 2000) -> float:
    """Microseconds per call of ``fn`` (median of 5 batches)."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        runs.append((time.perf_counter() - t0) / iters * 1e6)
    return sorted(runs)[2]


def profile_groups(step, iters: int) -> tuple[dict, dict, float]:
    """Self CPU time (us) and op calls per call of ``step``, by group; the profiled wall time."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        wall_us = (time.perf_counter() - t0) / iters * 1e6
    groups: dict[str, float] = {}
    calls: dict[str, float] = {}
    for e in prof.key_averages():
        g = group_of(e.key)
        groups[g] = groups.get(g, 0.0) + e.self_cpu_time_total / iters
        calls[g] = calls.get(g, 0.0) + e.count / iters
    groups[PYTHON] = max(0.0, wall_us - sum(groups.values()))
    calls[PYTHON] = float("nan")
    return groups, calls, wall_us


def case(chain: str, n: int) -> tuple:
    """The chain (seed 0), x (N, 784), z (N, 10) needing gradient, the permutation and the
    tensors the gradient is taken of (every chain parameter and z)."""
    torch.manual_seed(0)
    mi = CHAINS[chain][1]()
    x = torch.rand(n, N_DATA)
    z = torch.randn(n, N_LATENT, requires_grad=True)
    return mi, x, z, latent_permutation(n, 1, 0), list(mi.parameters()) + [z]


def measure(chain: str, n: int, iters: int) -> dict:
    mi, x, z, perm, wrt = case(chain, n)

    def step_of(loss):
        return lambda: torch.autograd.grad(loss(mi, x, z, perm, False), wrt)

    step, shared = step_of(ours_loss), step_of(shared_loss)
    layout = chain_layout(mi, N_DATA, N_LATENT)
    replay = make_replay(ours_gemms(layout, n, False), **ours_schedule(layout))
    for _ in range(5):
        step(), shared(), replay()
    times = {k: summary_ms(v) for k, v in interleaved(
        {"ours": step, "shared": shared, "replay": replay}, iters).items()}
    groups, calls, wall_us = profile_groups(step, iters)
    shared_groups, shared_calls, shared_wall = profile_groups(shared, iters)
    plan = fused_plan(mi)
    first = plan.first if hasattr(plan, "first") else None
    pieces = {"fused_plan(mi)": time_python(lambda: fused_plan(mi))}
    if first is not None:
        pieces["_ops.kernels_apply (6 tensors)"] = time_python(
            lambda: _ops.kernels_apply(x, z, None, first.weight, first.bias, None))
    return {"chain": chain, "n": n, "times": times, "groups": groups, "calls": calls,
            "profiled_wall_us": wall_us, "pieces_us": pieces, "shared_groups": shared_groups,
            "shared_calls": shared_calls, "shared_wall_us": shared_wall}


def measure_bound(chain: str, n: int, iters: int) -> dict:
    """Fastest and median ms of ours, compile(shared), the skeleton and the MLP GEMM replay."""
    from bench_cpu import configure_dynamo

    configure_dynamo()
    mi, x, z, perm, wrt = case(chain, n)
    compiled = torch.compile(shared_loss, dynamic=False)
    layout = chain_layout(mi, N_DATA, N_LATENT)
    gemms, schedule = ours_gemms(layout, n, False), ours_schedule(layout)

    def skeleton():
        return torch.autograd.grad(skeleton_loss(mi, x, z, perm, False), wrt, allow_unused=True)

    fns = {
        "ours": lambda: torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt),
        "compile(shared)": lambda: torch.autograd.grad(compiled(mi, x, z, perm, False), wrt),
        "replay": make_replay(gemms, **schedule),
        "MLP replay": make_replay([g for g in gemms if g.layer.startswith("mlp")], **schedule),
        "skeleton": skeleton,
        "mm": make_mm(*dominant_gemm(gemms)),
    }
    for _ in range(5):
        for fn in fns.values():
            fn()
    times = {k: summary_ms(v) for k, v in interleaved(fns, iters).items()}
    dom = dominant_gemm(gemms)
    return {"chain": chain, "n": n, "times": times,
            "flops_per_mm": total_flops(gemms) / (2 * dom[0] * dom[1] * dom[2])}


def print_bound(results: list[dict], threads: int, iters: int) -> None:
    import os

    print(f"torch {torch.__version__}, {threads} threads, {iters} interleaved rounds, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end\n")
    print("| chain, N | ours ms | compile(shared) ms | GEMM replay ms | skeleton ms | "
          "MLP GEMM replay ms | eager floor ms | ours - replay ms | compile(shared) - replay ms "
          "| compile(shared) / ours | bound: compile(shared) / eager floor | ours / FLOP floor "
          "| bound: eager floor / FLOP floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for stat in ("min", "median"):
            t = {k: v[stat] for k, v in r["times"].items()}
            cs, ours, rep = t["compile(shared)"], t["ours"], t["replay"]
            floor = t["skeleton"] + t["MLP replay"]
            flop_floor = r["flops_per_mm"] * t["mm"]  # ours' FLOPs at the dominant GEMM's rate
            print(f"| {r['chain']} {r['n']} ({'fastest' if stat == 'min' else 'median'}) | "
                  f"{ours:.2f} | {cs:.2f} | {rep:.2f} | {t['skeleton']:.2f} | "
                  f"{t['MLP replay']:.2f} | {floor:.2f} | {ours - rep:.2f} | {cs - rep:.2f} | "
                  f"{cs / ours:.2f} | {cs / floor:.2f} | {ours / flop_floor:.2f} | "
                  f"{floor / flop_floor:.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="T:64,P:64,P:256")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bound", action="store_true",
                   help="the eager floor against compile(shared) (docstring)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.bound:
        print_bound([measure_bound(c.split(":")[0], int(c.split(":")[1]), args.iters)
                     for c in args.cases.split(",")], args.threads, args.iters)
        return 0
    results = [measure(c.split(":")[0], int(c.split(":")[1]), args.iters)
               for c in args.cases.split(",")]
    heads = [f"{r['chain']} N={r['n']} ours / shared" for r in results]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.iters} calls per case\n")
    print("| per call | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(results))
    print("| ours, median ms (no profiler) | "
          + " | ".join(f"{r['times']['ours']['median']:.2f}" for r in results) + " |")
    print("| plain eager shared, median ms | "
          + " | ".join(f"{r['times']['shared']['median']:.2f}" for r in results) + " |")
    print("| ours' GEMMs replayed alone, ms | "
          + " | ".join(f"{r['times']['replay']['median']:.2f}" for r in results) + " |")
    print("| fastest call: ours / shared / GEMM replay, ms | " + " | ".join(
        f"{r['times']['ours']['min']:.2f} / {r['times']['shared']['min']:.2f} / "
        f"{r['times']['replay']['min']:.2f}" for r in results) + " |")
    print("| not GEMM work, ms | " + " | ".join(
        f"{r['times']['ours']['median'] - r['times']['replay']['median']:.2f}" for r in results)
        + " |")
    print("| profiled wall, us | " + " | ".join(
        f"{r['profiled_wall_us']:.0f} / {r['shared_wall_us']:.0f}" for r in results) + " |")
    names = sorted({g for r in results for g in r["groups"]})
    for g in names:
        cells = []
        for r in results:
            us, c = r["groups"].get(g, 0.0), r["calls"].get(g, 0.0)
            su, sc = r["shared_groups"].get(g, 0.0), r["shared_calls"].get(g, 0.0)
            cells.append(f"{us:.0f}" + ("" if c != c else f" ({c:.0f})")
                         + f" / {su:.0f}" + ("" if sc != sc else f" ({sc:.0f})"))
        print(f"| {g}, us (op calls) | " + " | ".join(cells) + " |")
    for piece in results[0]["pieces_us"]:
        print(f"| {piece} alone, us | "
              + " | ".join(f"{r['pieces_us'].get(piece, float('nan')):.1f}" for r in results)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

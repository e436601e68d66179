#!/usr/bin/env python
"""CUDA benchmark of infomax_ext's MI loss (see docs/cuda.md).

    python bench/bench_cuda.py                          # N = 64 .. 16384, chains P and T
    python bench/bench_cuda.py --sizes 256,4096 --chains P --no-compile

Part 0, the two ceilings of the device: copy bandwidth (a large device-to-device copy, bytes read
plus written) and the float32 GEMM rate (torch.mm, 8192^3). Part 1, the MI loss forward+backward
(gradients to every MI-chain parameter and to z, as bench/bench_cpu.py) for the chains P (paper,
MLP 794-1000-400-100-1) and T (Julia default, Linear(784,784)+Linear(10,10), MLP 794-256-256-1)
at each N, variants:

    ours            -paired_mutual_info(...).bound, fused kernels, eager
    naive           two calls of the chain, eager
    compile(naive)  torch.compile(naive, dynamic=False)
    compile(shared) torch.compile(shared, dynamic=False): the shared algorithm in plain torch ops
    graph(naive)    a CUDA graph of one naive step, replayed
    graph(ours)     a CUDA graph of one ours step, replayed

each checked against naive first, then timed with CUDA events (warm-up, then rounds that call
every variant once, median/p10/p90). The FLOP floor of ours is its GEMM FLOPs over the measured
GEMM rate. Part 2, a roofline line per op of ours on the shapes of chain P: minimal bytes moved
over the measured bandwidth, FLOPs over the GEMM rate, against the op's measured time.

Part 3 (--autocast-sizes), mixed precision: the same float32 chain inside
``torch.autocast("cuda", dtype=torch.bfloat16)``: ours (the products in bfloat16, the kernels on
bfloat16 activations, the bound in float32), shared and compile(shared) under the same autocast,
beside float32 ours; each variant's disagreement with float32 naive is reported (bfloat16 has
8 bits of mantissa: about 1e-2 is expected), not asserted. Prints tables and writes JSON (--out).
Timings are reported, never asserted.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import infomax_ext
from infomax_ext import latent_permutation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CHAINS,
    N_DATA,
    N_LATENT,
    chain_layout,
    naive_gemms,
    naive_loss,
    ours_gemms,
    ours_loss,
    percentile,
    relative_errors,
    shared_loss,
    total_flops,
)

ops = torch.ops.infomax_ext


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def time_rounds(fns: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict:
    """Median/p10/p90 milliseconds per call of each function, by CUDA events: ``warmup`` calls
    each, then ``rounds`` rounds that call every function once (start rotating)."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    torch.cuda.synchronize()
    events = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[name]()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    out = {}
    for name, pairs in events.items():
        ms = [s.elapsed_time(e) for s, e in pairs]
        out[name] = {"median": percentile(ms, 50), "p10": percentile(ms, 10),
                     "p90": percentile(ms, 90), "rounds": len(ms)}
    return out


def graphed(step: Callable[[], tuple]) -> tuple[Callable[[], None], tuple]:
    """A CUDA graph of ``step`` (warmed up on a side stream, as PyTorch requires): returns
    (replay, static outputs of the captured call)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph.replay, outputs


# ----------------------------------------------------------------------------------------------
# Ceilings
# ----------------------------------------------------------------------------------------------


def measure_ceilings(rounds: int) -> dict:
    """Copy bandwidth (GB/s, bytes read + written) and float32 GEMM rate (TFLOP/s)."""
    src = torch.randn(256 * 2**20, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    k = 8192
    a, b = torch.randn(k, k, device="cuda"), torch.randn(k, k, device="cuda")
    t = time_rounds({"copy": lambda: dst.copy_(src), "mm": lambda: torch.mm(a, b)}, rounds, 3)
    bandwidth = 2 * src.numel() * 4 / (t["copy"]["median"] * 1e-3) / 1e9
    gemm = 2 * k**3 / (t["mm"]["median"] * 1e-3) / 1e12
    del src, dst, a, b
    torch.cuda.empty_cache()
    return {"copy_GBps": bandwidth, "gemm_fp32_TFLOPs": gemm,
            "tf32_allowed": torch.backends.cuda.matmul.allow_tf32, "times_ms": t}


# ----------------------------------------------------------------------------------------------
# Part 1: the MI loss
# ----------------------------------------------------------------------------------------------


def cuda_case(chain_key: str, n: int) -> tuple:
    """The chain (seed 0) on the GPU, x (N, 784), z (N, 10) needing gradient, the permutation
    and the tensors the gradient is taken of (z and every chain parameter)."""
    torch.manual_seed(0)
    mi = CHAINS[chain_key][1]().cuda()
    x = torch.rand(n, N_DATA, device="cuda")
    z = torch.randn(n, N_LATENT, device="cuda", requires_grad=True)
    perm = latent_permutation(n, 1, seed=1, device="cuda")
    return mi, x, z, perm, [z, *mi.parameters()]


def mi_loss_case(chain_key: str, n: int, args, ceilings: dict) -> dict:
    """Check and time every variant for one chain and batch size."""
    mi, x, z, perm, wrt = cuda_case(chain_key, n)
    sg = args.shuffled_grad

    def step(loss_fn):
        def run():
            loss = loss_fn(mi, x, z, perm, sg)
            return (loss.detach(), *torch.autograd.grad(loss, wrt))
        return run

    steps = {"ours": step(ours_loss), "naive": step(naive_loss)}
    compile_s = {}
    if args.compile:
        torch._dynamo.reset()
        for name, loss_fn in (("compile(naive)", naive_loss), ("compile(shared)", shared_loss)):
            steps[name] = step(torch.compile(loss_fn, dynamic=False))
            t0 = time.perf_counter()
            steps[name]()  # the first call compiles the forward and backward graphs
            torch.cuda.synchronize()
            compile_s[name] = time.perf_counter() - t0
    graph_outputs = {}
    if args.graphs:
        for name in ("naive", "ours"):
            steps[f"graph({name})"], graph_outputs[f"graph({name})"] = graphed(steps[name])

    # Agreement with naive (eager) before timing.
    reference = steps["naive"]()
    checks = {}
    for name, fn in steps.items():
        if name == "naive":
            continue
        result = fn()
        if name in graph_outputs:  # a replay refreshes the captured call's outputs
            result = graph_outputs[name]
        ref = (reference[0], list(reference[1:]))
        got = (result[0], list(result[1:]))
        loss_err, grad_err = relative_errors(ref, got)
        agrees = max(loss_err, grad_err) <= args.tol
        checks[name] = {"loss": loss_err, "grad": grad_err, "agrees": agrees}
        message = (f"{chain_key} N={n}: {name} disagrees with naive "
                   f"(loss {loss_err:.2e}, grad {grad_err:.2e} > {args.tol})")
        if not agrees and "ours" in name:
            raise SystemExit(message)  # our kernels must agree; the baselines are reported
        if not agrees:
            print("warning:", message, flush=True)

    times = time_rounds(steps, args.rounds, args.warmup)
    layout = chain_layout(mi, N_DATA, N_LATENT)
    flops = {"ours": total_flops(ours_gemms(layout, n, sg)),
             "naive": total_flops(naive_gemms(layout, n, sg))}
    floor_ms = flops["ours"] / (ceilings["gemm_fp32_TFLOPs"] * 1e12) * 1e3
    ours_ms = times["ours"]["median"]
    return {
        "chain": chain_key, "n": n, "times_ms": times, "check": checks, "flops": flops,
        "floor_ms": floor_ms, "compile_s": compile_s,
        "ratios": {name: t["median"] / ours_ms for name, t in times.items()},
        "ours_over_floor": ours_ms / floor_ms,
        "graph_ours_over_floor": (times["graph(ours)"]["median"] / floor_ms
                                  if "graph(ours)" in times else None),
    }


def autocast_case(chain_key: str, n: int, args) -> dict:
    """Part 3: bfloat16 autocast against float32 for one chain and batch size."""
    mi, x, z, perm, wrt = cuda_case(chain_key, n)
    sg = args.shuffled_grad

    def step(loss_fn, bf16: bool):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(mi, x, z, perm, sg)
            return (loss.detach().float(), *torch.autograd.grad(loss, wrt))
        return run

    steps = {"ours float32": step(ours_loss, False), "ours bf16": step(ours_loss, True),
             "shared bf16": step(shared_loss, True)}
    if args.compile:
        torch._dynamo.reset()
        steps["compile(shared) bf16"] = step(torch.compile(shared_loss, dynamic=False), True)
    reference = step(naive_loss, False)()
    errors = {}
    for name, fn in steps.items():
        result = fn()
        loss_err, grad_err = relative_errors((reference[0], list(reference[1:])),
                                             (result[0], list(result[1:])))
        errors[name] = {"loss": loss_err, "grad": grad_err}
    times = time_rounds(steps, args.rounds, args.warmup)
    base = times["ours bf16"]["median"]
    return {"chain": chain_key, "n": n, "times_ms": times, "errors_vs_float32_naive": errors,
            "ratios": {name: t["median"] / base for name, t in times.items()}}


# ----------------------------------------------------------------------------------------------
# Part 2: roofline per op
# ----------------------------------------------------------------------------------------------


def roofline_cases(n: int, h1: int, h_last: int) -> list[tuple[str, Callable[[], object], int, int]]:
    """(op, call, minimal bytes, FLOPs) of each op of ours on chain P's shapes at batch N:
    first layer of h1 units (shuffled source absent, as with shuffled_grad), head on h_last."""
    f = 4  # float32
    m, rows = n, 2 * n
    a, b = torch.randn(n, h1, device="cuda"), torch.randn(m, h1, device="cuda")
    bias = torch.randn(h1, device="cuda")
    perm = latent_permutation(n, 1, seed=1, device="cuda")
    inverse = ops.inverse_permutation.default(perm)
    grad_out = torch.randn(2 * m, h1, device="cuda")
    hidden = torch.randn(rows, h_last, device="cuda")
    w, hb = torch.randn(h_last, device="cuda") / h_last**0.5, torch.randn(1, device="cuda")
    _, scores, pre = ops.critic_head.default(hidden, w, hb, m, "identity", 0.0)
    one = torch.ones((), device="cuda")
    index = torch.arange(n, device="cuda")
    return [
        ("permutation_keys", lambda: ops.permutation_keys.default(index, 7), 2 * n * 8, 0),
        ("inverse_permutation", lambda: ops.inverse_permutation.default(perm), 3 * n * 8, 0),
        ("paired_first_layer", lambda: ops.paired_first_layer.default(a, b, None, bias, perm, "relu", 0.0),
         (n * h1 + m * h1 + h1 + 2 * m * h1) * f + m * 8, 2 * 2 * m * h1),
        ("paired_first_layer_backward",
         lambda: ops.paired_first_layer_backward.default(grad_out, a, b, None, bias, perm, inverse,
                                                         "relu", 0.0, [True, True, False, True]),
         (2 * m * h1 + n * h1 + m * h1 + h1 + n * h1 + m * h1 + h1) * f + 2 * m * 8, 8 * m * h1),
        ("critic_head", lambda: ops.critic_head.default(hidden, w, hb, m, "identity", 0.0),
         (rows * h_last + h_last + 1 + 2 * rows + 1) * f, 2 * rows * h_last),
        ("critic_head_backward",
         lambda: ops.critic_head_backward.default(one, None, hidden, w, scores, pre, m, "identity", 0.0,
                                               [True, True, True]),
         (rows * h_last + h_last + 2 * rows + rows * h_last + h_last + 1) * f, 4 * rows * h_last),
        ("nwj_bound", lambda: ops.nwj_bound.default(scores[:m], scores[m:]), (rows + 1) * f, 2 * rows),
        ("nwj_bound_backward", lambda: ops.nwj_bound_backward.default(one, scores[:m], scores[m:]),
         (1 + m + rows) * f, 3 * m),
    ]


def roofline(n: int, args, ceilings: dict) -> list[dict]:
    cases = roofline_cases(n, 1000, 100)
    times = time_rounds({name: fn for name, fn, _, _ in cases}, args.rounds, args.warmup)
    lines = []
    for name, _, nbytes, flops in cases:
        t = times[name]["median"]
        memory_ms = nbytes / (ceilings["copy_GBps"] * 1e9) * 1e3
        compute_ms = flops / (ceilings["gemm_fp32_TFLOPs"] * 1e12) * 1e3
        floor = max(memory_ms, compute_ms)
        lines.append({"op": name, "n": n, "median_ms": t, "bytes": nbytes, "flops": flops,
                      "memory_floor_ms": memory_ms, "compute_floor_ms": compute_ms,
                      "achieved_GBps": nbytes / (t * 1e-3) / 1e9, "time_over_floor": t / floor})
    return lines


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="64,256,1024,4096,16384", help="batch sizes N")
    p.add_argument("--chains", default="P,T", help="MI chains: P (paper), T (Julia default)")
    p.add_argument("--roofline-sizes", default="1024,16384", help="N of the per-op roofline")
    p.add_argument("--rounds", type=int, default=50, help="timed rounds per case")
    p.add_argument("--warmup", type=int, default=5, help="warm-up calls per variant")
    p.add_argument("--shuffled-grad", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient reaches z through the shuffled term too (default on; "
                        "bench_cpu.py runs both modes, False first)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="time torch.compile(naive) and torch.compile(shared)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="time CUDA-graph replays of naive and ours")
    p.add_argument("--autocast-sizes", default="1024,16384",
                   help="N of part 3, bfloat16 autocast ('' skips it)")
    p.add_argument("--tol", type=float, default=1e-3, help="largest relative disagreement with naive")
    p.add_argument("--out", default="bench/results/cuda.json", help="JSON output")
    return p.parse_args(argv)


def print_tables(result: dict) -> None:
    c = result["ceilings"]
    print(f"\n{result['environment']['device']}: copy {c['copy_GBps']:.0f} GB/s, "
          f"fp32 GEMM {c['gemm_fp32_TFLOPs']:.1f} TFLOP/s (TF32 {'on' if c['tf32_allowed'] else 'off'})")
    print("\nMI loss forward+backward, float32, median ms (ratio = variant / ours; > 1: ours faster)")
    variants = ["ours", "naive", "compile(naive)", "compile(shared)", "graph(naive)", "graph(ours)"]
    print(f"{'chain':>5} {'N':>6} " + " ".join(f"{v:>16}" for v in variants) + f" {'floor':>8} {'ours/floor':>10}")
    for case in result["mi_loss"]:
        cells = []
        for v in variants:
            t = case["times_ms"].get(v)
            cells.append(f"{t['median']:8.3f} ({case['ratios'][v]:4.2f})" if t else f"{'-':>16}")
        print(f"{case['chain']:>5} {case['n']:>6} " + " ".join(f"{s:>16}" for s in cells)
              + f" {case['floor_ms']:8.3f} {case['ours_over_floor']:10.2f}")
    print("\nRoofline per op (chain P shapes: first layer 1000 units, head 100), float32")
    print(f"{'op':>28} {'N':>6} {'ms':>8} {'MB':>8} {'GB/s':>7} {'mem floor':>9} {'flop floor':>10} {'t/floor':>7}")
    for line in result["roofline"]:
        print(f"{line['op']:>28} {line['n']:>6} {line['median_ms']:8.4f} {line['bytes'] / 1e6:8.2f} "
              f"{line['achieved_GBps']:7.0f} {line['memory_floor_ms']:9.4f} "
              f"{line['compute_floor_ms']:10.5f} {line['time_over_floor']:7.1f}")
    print("\nbfloat16 autocast, median ms (ratio = variant / ours bf16); error vs float32 naive (grad)")
    for case in result.get("autocast", []):
        print(f"{case['chain']:>5} {case['n']:>6} " + "  ".join(
            f"{name} {t['median']:.3f} ({case['ratios'][name]:.2f}, "
            f"{case['errors_vs_float32_naive'][name]['grad']:.1e})"
            for name, t in case["times_ms"].items()))


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs a CUDA device")
    if not infomax_ext._ops.has_kernel("paired_first_layer", "cuda"):
        raise SystemExit("infomax_ext has no CUDA kernels: build with INFOMAX_EXT_CUDA=ON")
    started = time.perf_counter()
    props = torch.cuda.get_device_properties(0)
    result = {
        "environment": {"device": props.name, "sms": props.multi_processor_count,
                        "torch": torch.__version__, "cuda": torch.version.cuda,
                        "date": datetime.datetime.now().isoformat(timespec="seconds")},
        "config": vars(args),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every case, so a run cut short still leaves its numbers
        result["wall_s"] = time.perf_counter() - started
        out.write_text(json.dumps(result, indent=1))

    result["ceilings"] = measure_ceilings(max(10, args.rounds // 5))
    result["roofline"] = [line for n in (int(s) for s in args.roofline_sizes.split(","))
                          for line in roofline(n, args, result["ceilings"])]
    result["mi_loss"] = []
    save()
    for chain in args.chains.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            case = mi_loss_case(chain, n, args, result["ceilings"])
            result["mi_loss"].append(case)
            save()
            print(f"{chain} N={n}: " + ", ".join(f"{name} {t['median']:.3f}"
                                                for name, t in case["times_ms"].items())
                  + f" ms; floor {case['floor_ms']:.3f} ms; "
                  f"compile {sum(case['compile_s'].values()):.0f} s",
                  flush=True)
    result["autocast"] = []
    for chain in args.chains.split(","):
        for n in (int(s) for s in args.autocast_sizes.split(",") if s):
            result["autocast"].append(autocast_case(chain, n, args))
            save()
            print(f"{chain} N={n} autocast: " + ", ".join(
                f"{name} {t['median']:.3f}" for name, t in result["autocast"][-1]["times_ms"].items())
                + " ms", flush=True)
    print_tables(result)
    print(f"\nwrote {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

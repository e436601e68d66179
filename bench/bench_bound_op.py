"""The compiled MI bound reduction ``mi_bound`` against the bounds' plain-PyTorch formulas on CPU.

One call: ``infomax_ext.BOUNDS[bound](t_joint, t_negatives)`` and ``backward()`` of its result
(gradients to both score vectors), with M = K = size scores, N(0, 4) distributed (scale 2:
SMILE's clip 5 cuts a few). "compiled" runs the op; "torch" runs the same call inside
``infomax_ext.use_reference_path()`` (the bound's own PyTorch formulas). The two variants of one
(dtype, size, bound) are timed round-robin (``common.interleaved``) in one run, so that the load
of a shared machine falls on both alike; the table gives the medians (and the ratio of medians).
The values of the two agree (checked before timing). Nothing here asserts on time.

    .venv/bin/python bench/bench_bound_op.py                  # 1 thread, every size and dtype
    .venv/bin/python bench/bench_bound_op.py --sizes 256,4096 --dtypes float32 --rounds 50
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

import infomax_ext as im

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, percentile  # noqa: E402

BOUNDS = ("nwj", "dv", "js", "smile")


def _call(bound: str, tj: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    tj.grad = tn.grad = None
    out = im.BOUNDS[bound](tj, tn)
    out.backward()
    return out


def _variants(bound: str, tj: torch.Tensor, tn: torch.Tensor) -> dict:
    def compiled() -> None:
        _call(bound, tj, tn)

    def reference() -> None:
        with im.use_reference_path():
            _call(bound, tj, tn)

    return {"compiled": compiled, "torch": reference}


def _check_agreement(bound: str, tj: torch.Tensor, tn: torch.Tensor) -> None:
    got = _call(bound, tj, tn).item()
    with im.use_reference_path():
        want = _call(bound, tj, tn).item()
    tol = 1e-4 if tj.dtype == torch.float32 else 1e-10
    if abs(got - want) > tol * (1 + abs(want)):
        raise SystemExit(f"{bound} {tj.dtype} {tj.numel()}: compiled {got} != torch {want}")


def _rounds_for(size: int, rounds: int) -> int:
    """Fewer rounds for the largest sizes: each round of 2^20 scores takes milliseconds."""
    return max(11, rounds if size <= 65536 else rounds // 4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,4096,65536,262144,1048576",
                        help="comma-separated M = K (default: %(default)s)")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--bounds", default=",".join(BOUNDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200,
                        help="timed rounds per case (a quarter above 65536; at least 11)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    bounds = args.bounds.split(",")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s), "
          f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {load:.2f} at start")
    print("| dtype | size | bound | compiled µs | torch µs | torch / compiled |")
    print("|---|---:|---|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    worst = float("inf")
    for dtype in dtypes:
        for size in sizes:
            tj = (2 * torch.randn(size, generator=g, dtype=torch.float64)).to(dtype)
            tn = (2 * torch.randn(size, generator=g, dtype=torch.float64)).to(dtype)
            tj.requires_grad_()
            tn.requires_grad_()
            for bound in bounds:
                _check_agreement(bound, tj, tn)
                fns = _variants(bound, tj, tn)
                for fn in fns.values():  # warm-up
                    fn()
                samples = interleaved(fns, _rounds_for(size, args.rounds))
                med = {k: 1e6 * percentile(v, 50) for k, v in samples.items()}
                ratio = med["torch"] / med["compiled"]
                worst = min(worst, ratio)
                print(f"| {str(dtype).removeprefix('torch.')} | {size} | {bound} | "
                      f"{med['compiled']:.0f} | {med['torch']:.0f} | {ratio:.2f} |", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# smallest torch / compiled ratio {worst:.2f}; load average {load:.2f} at the end")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The products of a Linear layer on the CPU, per backend: the measurement behind csrc/gemm.h.

For each Linear shape of the benchmark chains P and T (bench/common.py) at N = 64, 256, 1024,
times in one process, round-robin (medians in ms), the forms a layer y = x W^T + b can run its
three products in:

- forward x W^T: MKL (``torch.mm(x, W.t())``) and oneDNN's linear with the bias fused
  (``torch.ops.mkldnn._linear_pointwise``);
- input gradient g W: MKL (``torch.mm(g, W)``) and oneDNN (the linear of g with weight W^T);
- weight gradient g^T x: MKL as autograd runs it (``torch.mm(g.t(), x)``), MKL transposed with a
  copy into the weight's layout, and oneDNN.

Rows marked ``s`` take the weight as a column slice (the first layer's data columns, as
paired_linear does): oneDNN runs those hundreds of times slower, so its two forms there are timed
once, outside the rounds. Prints one line per shape with the fastest form of each product and the
backend ours runs the forward and input gradient on (csrc/gemm.h: oneDNN for a product of at
least 2^26 FLOPs with a contiguous weight). Nothing asserts on time.

Each timed call comes after an untimed product of the Julia chain's data Linear, (64 x 784) @
(784 x 784), so that the caches hold other work, as they do inside a chain call; ``--hot`` times
the calls back to back instead (the operands stay in cache, which hides oneDNN's per-call cost).

    .venv/bin/python bench/bench_gemm.py            # 15 rounds
    .venv/bin/python bench/bench_gemm.py --rounds 40 --sizes 256
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, summary_ms  # noqa: E402


def shapes(n: int) -> list:
    """(rows, n_in, n_out, weight width, chain layer) of the chains' Linear products at N = n."""
    return [
        (n, 784, 1000, 794, "P first layer, data columns"),
        (2 * n, 1000, 400, 1000, "P hidden 1000-400"),
        (2 * n, 400, 100, 400, "P hidden 400-100"),
        (n, 784, 784, 784, "T data Linear"),
        (n, 784, 256, 794, "T first layer, data columns"),
        (2 * n, 256, 256, 256, "T hidden 256-256"),
        (2 * n, 512, 512, 512, "a 512-512 layer (not in a chain): 2^26 FLOPs at 128 rows"),
    ]


def forms(rows, n_in, n_out, width, generator):
    linear = torch.ops.mkldnn._linear_pointwise
    x = torch.randn(rows, n_in, generator=generator)
    weight = torch.randn(n_out, width, generator=generator)[:, :n_in]
    bias = torch.randn(n_out, generator=generator)
    g = torch.randn(rows, n_out, generator=generator)
    out = torch.empty(n_out, n_in)
    return {
        "fwd mkl": lambda: torch.mm(x, weight.t()),
        "fwd onednn": lambda: linear(x, weight, bias, "none", [], ""),
        "igrad mkl": lambda: torch.mm(g, weight),
        "igrad onednn": lambda: linear(g, weight.t(), None, "none", [], ""),
        "wgrad mkl": lambda: torch.mm(g.t(), x),
        "wgrad mkl-T+copy": lambda: out.copy_(torch.mm(x.t(), g).t()),
        "wgrad onednn": lambda: linear(g.t(), x.t(), None, "none", [], ""),
    }


ONEDNN_MIN_FLOPS = 2 ** 26  # csrc/gemm.h, kOneDnnMinFlops


def ours_backend(rows: int, n_in: int, n_out: int, width: int, what: str) -> str:
    """The backend of ours' forward and input gradient for this layer (csrc/gemm.h); the T
    chain's data Linear is the user's module, run by torch (MKL's addmm)."""
    if what == "T data Linear":
        return "torch's, the user's module"
    return "onednn" if width == n_in and 2 * rows * n_in * n_out >= ONEDNN_MIN_FLOPS else "mkl"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,256,1024")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--hot", action="store_true",
                   help="no product between the timed calls (operands stay in cache)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    other_x, other_w = torch.randn(64, 784, generator=gen), torch.randn(784, 784, generator=gen)
    before = None if args.hot else (lambda: torch.mm(other_x, other_w.t()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms "
          "(s: the weight is a column slice); "
          + ("back to back" if args.hot else "each call after a (64 x 784) @ (784 x 784) product"))
    for n in (int(s) for s in args.sizes.split(",")):
        for rows, n_in, n_out, width, what in shapes(n):
            fns = forms(rows, n_in, n_out, width, gen)
            once = {}
            if width > n_in:  # oneDNN on a strided weight: timed once, it takes seconds at N = 1024
                for k in ("fwd onednn", "igrad onednn"):
                    start = time.perf_counter()
                    fns.pop(k)()
                    once[k] = (time.perf_counter() - start) * 1e3
            for f in fns.values():
                f()
            t = {k: summary_ms(v)["median"]
                 for k, v in interleaved(fns, args.rounds, before).items()}
            best = [min((k for k in t if k.startswith(kind)), key=t.get)
                    for kind in ("fwd", "igrad", "wgrad")]
            gflops = 2 * rows * n_in * n_out / 1e6 / min(t.values())
            print(f"({rows:5d} x {n_in:4d}) -> {n_out:4d}{'s' if width > n_in else ' '} "
                  + " ".join(f"{k} {v:.3f}" for k, v in t.items())
                  + "".join(f" {k} {v:.0f} (once)" for k, v in once.items())
                  + f" | fastest: {', '.join(best)} ({gflops:.0f} GFLOP/s); ours: "
                  + f"{ours_backend(rows, n_in, n_out, width, what)} [{what}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

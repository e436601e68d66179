"""The Bernoulli log-likelihood op ``bernoulli_loglik`` against the formula in torch ops, eager and
under torch.compile, on CPU.

One call: ``decoder_loglikelihood``'s Bernoulli term, ``sum_j x log pc + (1 - x) log(1 - pc)``
per row (``pc = clamp(p, eps, 1 - eps)``), its mean, and the gradient to p (``torch.autograd.grad``),
for p (S N, D) uniform in (0, 1) and x (N, D) uniform in [0, 1). Variants, timed in one process in
a drawn order each round (``common.interleaved``), each call after an untimed (N x D) @ (D x 512)
product (the caches hold other work, as inside a training step):

- ``op``: ``infomax_ext.bernoulli_op.bernoulli_loglik`` (the compiled op and its backward);
- ``eager``: ``infomax_ext.reference.bernoulli_loglik`` (the formula in torch ops);
- ``compile``: that formula under ``torch.compile(dynamic=False)``.

The floor is memory traffic: the bytes the op's two passes must move (forward: p, x, the rows'
sums; backward: p, x, the incoming gradient, grad_p) at the rate of ``torch.Tensor.copy_`` of a
p-sized tensor measured in the same run (one read and one write per entry). The values agree with
the float64 formula (checked before timing). Nothing here asserts on time.

    .venv/bin/python bench/bench_bernoulli.py                    # 2 threads, N = 64, 256, 1024
    .venv/bin/python bench/bench_bernoulli.py --sizes 256 --samples 1,4 --threads 1
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

from infomax_ext import bernoulli_op, reference

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, percentile  # noqa: E402

D = 784


def _step(fn, p: torch.Tensor, x: torch.Tensor):
    return lambda: torch.autograd.grad(fn(p, x).mean(), p)


def bench(n: int, s: int, rounds: int, compiled) -> dict:
    g = torch.Generator().manual_seed(n * 10 + s)
    p = torch.rand(s * n, D, generator=g).requires_grad_()
    x = torch.rand(n, D, generator=g)
    want = reference.bernoulli_loglik(p.detach().double(), x.double())
    for name, fn in (("op", bernoulli_op.bernoulli_loglik), ("compile", compiled)):
        got = fn(p, x).detach().double()
        err = ((got - want).abs() / want.abs()).max().item()
        if err > 1e-5:
            raise SystemExit(f"N={n} S={s}: {name} differs from the float64 formula ({err:.1e})")
    fns = {"op": _step(bernoulli_op.bernoulli_loglik, p, x),
           "eager": _step(reference.bernoulli_loglik, p, x),
           "compile": _step(compiled, p, x)}
    src, dst = torch.rand(s * n, D, generator=g), torch.empty(s * n, D)
    fns["copy"] = lambda: dst.copy_(src)
    for fn in fns.values():
        fn(), fn()
    a, b = torch.rand(n, D, generator=g), torch.rand(D, 512, generator=g)
    samples = interleaved(fns, rounds, before=lambda: torch.mm(a, b))
    med = {k: 1e3 * percentile(v, 50) for k, v in samples.items()}
    fast = {k: 1e3 * min(v) for k, v in samples.items()}
    m, item = s * n, p.element_size()
    bytes_moved = item * ((m * D + n * D + m) + (2 * m * D + n * D + m))
    rate = 2 * m * D * item / (med["copy"] * 1e-3)  # bytes per second of copy_
    return {"n": n, "s": s, "ms": med, "fastest_ms": fast,
            "floor_ms": 1e3 * bytes_moved / rate, "copy_gb_s": rate / 1e9}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,256,1024", help="N, comma-separated")
    ap.add_argument("--samples", default="1", help="S, comma-separated")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    compiled = torch.compile(reference.bernoulli_loglik, dynamic=False)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or 'cpu'}, "
          f"D = {D}, float32, {args.rounds} rounds; median ms (fastest)")
    print("| N | S | op | eager | compile | eager / op | compile / op | op / floor | floor ms "
          "(copy GB/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (int(v) for v in args.sizes.split(",")):
        for s in (int(v) for v in args.samples.split(",")):
            r = bench(n, s, args.rounds, compiled)
            ms, fast = r["ms"], r["fastest_ms"]
            print(f"| {n} | {s} | {ms['op']:.3f} ({fast['op']:.3f}) | {ms['eager']:.3f} "
                  f"({fast['eager']:.3f}) | {ms['compile']:.3f} ({fast['compile']:.3f}) | "
                  f"{ms['eager'] / ms['op']:.2f} | {ms['compile'] / ms['op']:.2f} | "
                  f"{ms['op'] / r['floor_ms']:.2f} | {r['floor_ms']:.3f} ({r['copy_gb_s']:.1f}) |",
                  flush=True)


if __name__ == "__main__":
    main()

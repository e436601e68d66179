"""All-pairs negatives: the chunked evaluation (a_i + b_j, row chunks recomputed in the backward
pass; infomax_ext.all_pairs) against the brute-force N x N tile of concatenated pairs.

One MI loss call (forward and backward, gradient to the chain and to z) of a bound on every pair
(x_i, z_j) of a batch of N, on the Julia default chain T (Linear(784,784) + Linear(10,10), MLP
794-256-256-1, float32, CPU): median time of ``--repeats`` calls and the peak memory the call
allocates (bench/common.peak_cpu_memory). The tile is skipped above ``--max-tile-n`` (its
N^2 x 794 input alone is 3.3 GB at N = 1024).

    python bench/bench_all_pairs.py [--n 256,512,1024,2048] [--max-tile-n 1024] [--bound nwj]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import infomax_ext as im
from infomax_ext.all_pairs import all_pairs_scores_tile
from infomax_ext.bounds import resolve_bound

from common import julia_default_chain, peak_cpu_memory


def inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g)
    z = torch.randn(n, 10, generator=g).requires_grad_()
    return x, z


def chunked_loss(mi, x, z, bound):
    return -im.mutual_info.shuffled_bound(mi, x, z, shuffled_grad=True, bound=bound,
                                          negatives="all").bound


def tile_loss(mi, x, z, bound):
    return -resolve_bound(bound).from_matrix(all_pairs_scores_tile(mi, x, z))


def one_call(loss_fn, mi, x, z, bound):
    def call():
        mi.zero_grad(set_to_none=True)
        z.grad = None
        loss_fn(mi, x, z, bound).backward()
    return call


def measure(call, repeats: int) -> dict:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = peak_cpu_memory(call)["peak_bytes"]
    return {"median_s": statistics.median(times), "peak_mib": peak / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="256,512,1024,2048")
    parser.add_argument("--max-tile-n", type=int, default=1024)
    parser.add_argument("--bound", default="nwj", choices=list(im.BOUNDS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    mi = julia_default_chain()
    rows = []
    print(f"bound {args.bound}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("|    N | chunked s | chunked peak MiB | tile s | tile peak MiB | speed-up | memory ratio |")
    print("|-----:|----------:|-----------------:|-------:|--------------:|---------:|-------------:|")
    for n in (int(v) for v in args.n.split(",")):
        x, z = inputs(n)
        with torch.no_grad():
            a = chunked_loss(mi, x, z, args.bound)
            if n <= args.max_tile_n:
                b = tile_loss(mi, x, z, args.bound)
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (float(a), float(b))
        ours = measure(one_call(chunked_loss, mi, x, z, args.bound), args.repeats)
        tile = (measure(one_call(tile_loss, mi, x, z, args.bound), max(1, args.repeats - 2))
                if n <= args.max_tile_n else None)
        row = {"n": n, "chunked": ours, "tile": tile}
        rows.append(row)
        if tile:
            print(f"| {n:4d} | {ours['median_s']:9.3f} | {ours['peak_mib']:16.1f} | "
                  f"{tile['median_s']:6.2f} | {tile['peak_mib']:13.1f} | "
                  f"{tile['median_s'] / ours['median_s']:7.1f}x | "
                  f"{ours['peak_mib'] / tile['peak_mib']:12.3f} |", flush=True)
        else:
            print(f"| {n:4d} | {ours['median_s']:9.3f} | {ours['peak_mib']:16.1f} | "
                  f"     - |             - |        - |            - |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

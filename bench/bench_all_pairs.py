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
    """Median wall time and process CPU time (all threads) per call, and the peak memory. On a
    shared machine the CPU time is the steadier measure: it leaves out time waiting for a core."""
    call()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = peak_cpu_memory(call)["peak_bytes"]
    return {"median_s": statistics.median(times), "cpu_s": statistics.median(cpu),
            "peak_mib": peak / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="256,512,1024,2048")
    parser.add_argument("--max-tile-n", type=int, default=1024)
    parser.add_argument("--bound", default="nwj", choices=list(im.BOUNDS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mi = julia_default_chain()
    rows = []
    print(f"bound {args.bound}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("|    N | chunked s (cpu s) | chunked peak MiB | tile s (cpu s) | tile peak MiB "
          "| speed-up wall (cpu) | memory ratio |")
    print("|-----:|------:|------:|------:|------:|------:|------:|")
    for n in (int(v) for v in args.n.split(",")):
        x, z = inputs(n)
        with torch.no_grad():
            a = chunked_loss(mi, x, z, args.bound)
            if n <= args.max_tile_n:
                b = tile_loss(mi, x, z, args.bound)
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (float(a), float(b))
        ours = measure(one_call(chunked_loss, mi, x, z, args.bound), args.repeats)
        tile = (measure(one_call(tile_loss, mi, x, z, args.bound), args.repeats)
                if n <= args.max_tile_n else None)
        rows.append({"n": n, "chunked": ours, "tile": tile})
        line = (f"| {n:4d} | {ours['median_s']:.2f} ({ours['cpu_s']:.2f}) | "
                f"{ours['peak_mib']:.1f} | ")
        if tile:
            line += (f"{tile['median_s']:.2f} ({tile['cpu_s']:.2f}) | {tile['peak_mib']:.1f} | "
                     f"{tile['median_s'] / ours['median_s']:.1f}x "
                     f"({tile['cpu_s'] / ours['cpu_s']:.1f}x) | "
                     f"{ours['peak_mib'] / tile['peak_mib']:.3f} |")
        else:
            line += "- | - | - | - |"
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

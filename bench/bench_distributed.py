#!/usr/bin/env python
"""Data-parallel throughput on this machine (README, "Several processes or machines").

    .venv/bin/python bench/bench_distributed.py                 # 3 rounds of 6 epochs
    .venv/bin/python bench/bench_distributed.py --rounds 1 --epochs 3

Part 1: ``infomax-ext train`` on the digits (the demo's model, batch 128) in one process with 1
and with 2 threads, and under ``torchrun --nproc-per-node 2`` (1 thread each), interleaved round
by round: samples/s of every epoch after the first, read from the progress lines; medians.
Part 2: two gloo processes on localhost time what one data-parallel train_step adds (averaging
both networks' gradients; the agreement exchange and all_gather of the codes, once per loss)
beside a whole step on each one's 64 rows; this process times a single-process step on 128 and
on 64 rows (1 thread). Medians of repeated calls, in ms. Prints tables; asserts nothing.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import infomax_ext as im
from infomax_ext import distributed
from infomax_ext.trainer import TrainConfig, build_model

BATCH = 128
LINE = re.compile(r"epoch (\d+)/\d+: .* (\d+) samples/s")


def train_command(variant: str, epochs: int, out: str) -> list[str]:
    options = ["--epochs", str(epochs), "--eval-mi-steps", "1", "--no-plots", "--log-interval",
               "0", "--out", out, "--batch-size", str(BATCH)]
    if variant == "torchrun 2 processes x 1 thread":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                "2", "-m", "infomax_ext", "train", "--threads", "1", *options]
    threads = variant.split()[2]
    return [sys.executable, "-m", "infomax_ext", "train", "--threads", threads, *options]


def throughput(variant: str, epochs: int) -> list[float]:
    """samples/s of each epoch after the first of one run."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(train_command(variant, epochs, f"{tmp}/run"), capture_output=True,
                              text=True, env=env, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{variant} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    rates = [(int(e), float(r)) for e, r in LINE.findall(done.stdout)]
    return [r for e, r in rates if e > 1]


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def step_timer(model, x, group=None):
    opt = {"vae": torch.optim.Adam(model.vae.parameters(), 5e-4),
           "mi": torch.optim.Adam(model.mi.parameters(), 5e-4)}
    return lambda: im.train_step(model, x, opt, infomaxloss_kwargs={"beta": 2.0, "alpha": 10.0},
                                 process_group=group)


def demo_model():
    torch.manual_seed(0)
    return build_model(TrainConfig(), (64,))


def _rank(rank: int, port: int, repeats: int, queue) -> None:
    torch.set_num_threads(1)
    distributed.import_before_init()  # else the group outlives destroy_process_group
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=120))
    group = dist.group.WORLD
    model = demo_model()
    x = torch.rand(BATCH // 2, 64)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    z = torch.randn(BATCH // 2, model.mi.latent.in_features)
    perm = im.latent_permutation(BATCH, 1, 0)

    def codes():
        agreed = distributed.agree_on_batch(group, BATCH // 2, z, 0)
        distributed.shuffled_codes(z, BATCH // 2, perm, agreed, group, False)

    timings = {
        "average both networks' gradients": median_ms(lambda: (
            distributed.average_gradients(list(model.vae.parameters()), group),
            distributed.average_gradients(list(model.mi.parameters()), group)), repeats),
        "agree + all_gather the codes, twice (VAE and MI losses)": median_ms(
            lambda: (codes(), codes()), repeats),
        "whole data-parallel train_step, 64 rows each": median_ms(
            step_timer(model, x, group), repeats),
    }
    if rank == 0:
        queue.put(timings)
    dist.destroy_process_group()


def collectives(repeats: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_rank, args=(port, repeats, queue), nprocs=2, start_method="spawn")
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=50, help="calls per collective timing")
    args = parser.parse_args()

    variants = ["1 process 1 thread", "1 process 2 threads", "torchrun 2 processes x 1 thread"]
    rates: dict[str, list[float]] = {v: [] for v in variants}
    per_round: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            got = throughput(v, args.epochs)
            rates[v] += got
            per_round[v].append(statistics.median(got))
        print(f"round {r + 1}: " + ", ".join(f"{v}: {per_round[v][-1]:.0f}" for v in variants),
              flush=True)
    model = demo_model()
    params = sum(p.numel() for p in model.parameters())
    d = model.mi.latent.in_features
    print(f"\ndigits, demo model ({params} parameters, d = {d}), batch {BATCH}, epochs 2-"
          f"{args.epochs} of {args.rounds} runs each; samples/s")
    print("| variant | median | per-run medians |\n|---|---|---|")
    for v in variants:
        runs = ", ".join(f"{m:.0f}" for m in per_round[v])
        print(f"| {v} | {statistics.median(rates[v]):.0f} | {runs} |")

    torch.set_num_threads(1)
    single = {f"single-process train_step, {n} rows": median_ms(
        step_timer(demo_model(), torch.rand(n, 64)), args.repeats) for n in (BATCH, BATCH // 2)}
    timings = {**single, **collectives(args.repeats)}
    print(f"\nper step, ms (medians of {args.repeats}; 1 thread per process)")
    print("| what | ms |\n|---|---|")
    for what, ms in timings.items():
        print(f"| {what} | {ms:.2f} |")
    print(f"\nbytes per step and process: gradients {4 * params} (all_reduce), codes "
          f"{4 * BATCH * d} gathered per loss (all_gather)")


if __name__ == "__main__":
    main()

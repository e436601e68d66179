"""bfloat16 against float32: the MI loss forward + backward of the Julia default chain (T,
bench/common.py) on this machine's CPU, four ways per batch size:

- ``float32``: the fused path in float32;
- ``autocast-bf16``: the same float32 chain inside ``torch.autocast("cpu", dtype=torch.bfloat16)``
  (the fused path: products in bfloat16, the rest in float32, bound float32);
- ``bf16-chain``: the chain and the data converted to bfloat16 (no casts per call);
- ``reference-bf16``: the plain-PyTorch path under the same autocast (what ran before the
  kernels took bfloat16).

Prints one row per (batch, variant): median and 10th/90th percentile wall milliseconds of
interleaved calls, the median CPU milliseconds of the process (all threads; steadier than wall
time on a shared machine), and the bound's difference from the float32 value. The CPU's
bfloat16 instructions (avx512_bf16, amx_bf16) are listed first: oneDNN uses them for bfloat16
products where present. Nothing asserts on time.

    python bench/bench_precision.py [--batches 128 512] [--reps 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infomax_ext as im  # noqa: E402
from common import N_DATA, N_LATENT, julia_default_chain  # noqa: E402


def loss_call(mi: torch.nn.Module, x: torch.Tensor, z: torch.Tensor, perm: torch.Tensor,
              autocast: bool, reference: bool) -> Callable[[], float]:
    """One forward + backward of the MI loss; returns the bound as a float."""
    params = list(mi.parameters())

    def call() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if reference:
                with im.use_path("reference"):
                    bound = im.paired_mutual_info(mi, x, z, perm).bound
            else:
                bound = im.paired_mutual_info(mi, x, z, perm).bound
        grads = torch.autograd.grad(-bound, params)
        del grads
        return float(bound.detach())

    return call


def bf16_flags() -> list[str]:
    """This CPU's bfloat16 instruction sets, from /proc/cpuinfo (empty elsewhere)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("bfloat16 instructions:", " ".join(bf16_flags()) or "none")
    print(f"{'batch':>5} {'variant':>15} {'median ms':>10} {'p10':>8} {'p90':>8} "
          f"{'cpu ms':>8} {'bound - fp32':>13}")
    for n in args.batches:
        torch.manual_seed(0)
        mi = julia_default_chain()
        mi16 = julia_default_chain().to(torch.bfloat16)
        mi16.load_state_dict({k: v.to(torch.bfloat16) for k, v in mi.state_dict().items()})
        x, z = torch.rand(n, N_DATA), torch.randn(n, N_LATENT)
        perm = torch.randperm(n)
        variants = {
            "float32": loss_call(mi, x, z, perm, autocast=False, reference=False),
            "autocast-bf16": loss_call(mi, x, z, perm, autocast=True, reference=False),
            "bf16-chain": loss_call(mi16, x.bfloat16(), z.bfloat16(), perm, autocast=False,
                                    reference=False),
            "reference-bf16": loss_call(mi, x, z, perm, autocast=True, reference=True),
        }
        values = {name: call() for name, call in variants.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.reps):
            for name, call in variants.items():  # interleaved: drift hits every variant alike
                start, start_cpu = time.perf_counter(), time.process_time()
                call()
                times[name].append(1e3 * (time.perf_counter() - start))
                cpu[name].append(1e3 * (time.process_time() - start_cpu))
        for name, ts in times.items():
            q = statistics.quantiles(ts, n=10, method="inclusive")
            print(f"{n:>5} {name:>15} {statistics.median(ts):>10.2f} {q[0]:>8.2f} {q[-1]:>8.2f} "
                  f"{statistics.median(cpu[name]):>8.2f} "
                  f"{values[name] - values['float32']:>13.2e}")


if __name__ == "__main__":
    main()

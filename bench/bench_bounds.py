"""Estimator benchmark of the MI bounds (the protocol of Song & Ermon, ICLR 2020).

Correlated Gaussians: x ~ N(0, I_d), y = rho x + sqrt(1 - rho^2) e with d = 20, so that
I(x; y) = -d/2 log(1 - rho^2); the true MI steps through 2, 4, 6, 8, 10 nats, ``--steps`` training
steps each. Every bound trains its own critic, all from the same initial weights, with the same
architecture (a MutualInfoChain: Linear(20,20) + Linear(20,20), MLP 40-H-H-1, ReLU), optimiser
(Adam, ``--lr``), batches (the same seed) and negatives (all pairs of the batch). The estimate
recorded at each step is the bound's value on that training batch. Per bound and MI level, over
the second half of the level's steps: bias (mean estimate - true MI), variance of the estimate,
and the mean time per step.

    python bench/bench_bounds.py            # about 3-4 minutes on 2 cores
    python bench/bench_bounds.py --quick    # about half a minute
Writes bench_bounds.png and bench_bounds.json (``--out``), prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import infomax_ext as im
from infomax_ext.mutual_info import shuffled_bound

D = 20
LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)
BOUND_NAMES = tuple(im.BOUNDS)  # every bound of the table


def rho_for(mi: float, d: int = D) -> float:
    """The per-coordinate correlation giving I(x; y) = mi nats for d coordinates."""
    return math.sqrt(1 - math.exp(-2 * mi / d))


def sample(n: int, mi: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), each (n, D), with I(x; y) = mi."""
    rho = rho_for(mi)
    x = torch.randn(n, D, generator=generator)
    e = torch.randn(n, D, generator=generator)
    return x, rho * x + math.sqrt(1 - rho ** 2) * e


def train_one(name: str, args) -> dict:
    """Train a fresh critic with bound ``name`` through the MI staircase; the estimates per
    step and the seconds per step."""
    torch.manual_seed(args.seed)
    critic = im.MutualInfoChain.from_sizes(D, D, [args.hidden, args.hidden],
                                           [torch.relu, torch.relu])
    opt = torch.optim.Adam(critic.parameters(), lr=args.lr)
    bound = im.bounds.resolve_bound(name, clip=args.smile_clip) if name == "smile" else name
    generator = torch.Generator().manual_seed(args.seed + 1)
    estimates, seconds = [], 0.0
    for mi in LEVELS:
        for _ in range(args.steps):
            x, y = sample(args.batch, mi, generator)
            start = time.perf_counter()
            value = shuffled_bound(critic, x, y, bound=bound, negatives="all").bound
            opt.zero_grad(set_to_none=True)
            (-value).backward()
            opt.step()
            seconds += time.perf_counter() - start
            estimates.append(float(value.detach()))
    return {"estimates": estimates, "seconds_per_step": seconds / len(estimates)}


def summarise(estimates: list, steps: int) -> list:
    """Per MI level, over the second half of its steps: bias and variance of the estimate."""
    rows = []
    for k, mi in enumerate(LEVELS):
        tail = torch.tensor(estimates[k * steps + steps // 2:(k + 1) * steps], dtype=torch.float64)
        rows.append({"true_mi": mi, "mean": float(tail.mean()), "bias": float(tail.mean() - mi),
                     "variance": float(tail.var())})
    return rows


def plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), sharey=True)
    truth = [mi for mi in LEVELS for _ in range(args.steps)]
    for ax, (name, r) in zip(axes, results.items()):
        ax.plot(r["estimates"], lw=0.6, label="estimate")
        ax.plot(truth, color="k", lw=1.2, label="true MI")
        ax.axhline(math.log(args.batch), color="gray", ls=":", lw=1, label="log N")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylim(-2, 14)
    axes[0].set_ylabel("nats")
    axes[0].legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Correlated Gaussians, d = {D}, batch {args.batch}, all-pairs negatives",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict) -> str:
    lines = ["| bound | " + " | ".join(f"bias @ {mi:g}" for mi in LEVELS) + " | "
             + " | ".join(f"var @ {mi:g}" for mi in LEVELS) + " | ms / step |",
             "|---|" + "---:|" * (2 * len(LEVELS) + 1)]
    for name, r in results.items():
        rows = r["levels"]
        lines.append(f"| {name} | " + " | ".join(f"{row['bias']:+.2f}" for row in rows) + " | "
                     + " | ".join(f"{row['variance']:.3f}" for row in rows)
                     + f" | {1e3 * r['seconds_per_step']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 steps per level, H = 64")
    parser.add_argument("--steps", type=int, default=None, help="steps per MI level (default 200)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=None, help="critic width H (default 128)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--smile-clip", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bounds", default=",".join(BOUND_NAMES))
    parser.add_argument("--out", default="bench", help="folder for bench_bounds.png and .json")
    args = parser.parse_args(argv)
    args.steps = args.steps or (60 if args.quick else 200)
    args.hidden = args.hidden or (64 if args.quick else 128)
    results = {}
    for name in args.bounds.split(","):
        r = train_one(name, args)
        r["levels"] = summarise(r["estimates"], args.steps)
        results[name] = r
        print(f"{name}: {1e3 * r['seconds_per_step']:.1f} ms/step, last-half means "
              + ", ".join(f"{row['mean']:.2f}" for row in r["levels"]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(results, args, out / "bench_bounds.png")
    settings = {k: getattr(args, k) for k in ("steps", "batch", "hidden", "lr", "smile_clip", "seed")}
    (out / "bench_bounds.json").write_text(json.dumps(
        {"settings": settings, "torch": torch.__version__, "threads": torch.get_num_threads(),
         "results": results}, indent=1))
    print(f"\nsettings: {settings}, log N = {math.log(args.batch):.2f}\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

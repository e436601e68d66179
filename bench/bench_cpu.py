#!/usr/bin/env python
"""CPU benchmark of infomax_ext's MI bound and training step (see bench/README.md).

    .venv/bin/python bench/bench_cpu.py            # full run (a few minutes on 2 cores)
    .venv/bin/python bench/bench_cpu.py --quick    # smoke run: few rounds

Part 1, MI loss forward+backward (gradients to every MI-chain parameter and to z) for the chains
P (paper) and T (Julia default) at each N, in both gradient modes (shuffled_grad=False, the API
default, first; then True): ours / naive / compile(naive) / shared / compile(shared) /
compile(ours) (a function calling ours, compiled with fullgraph=True), all checked
against naive first, then timed round-robin in one process together with a torch.mm of the
dominant GEMM shape (the GEMM rate of the FLOP floor), a replay of ours' GEMMs and the parts of
the targets' bounds (bench/targets.py: the skeleton, eager and compiled, and the replay of the
MLP's GEMMs); then the peak
memory of one call of each variant (torch.profiler's allocation events). Part 2, a whole
train_step of an MLP InfoMax VAE on the paper chain: ours vs the two-call eager path vs the
user's naive two-call step under torch.compile vs reuse_forward=True. Part 3, torch.profiler on
ours. Prints tables and writes JSON (--out). Timings are reported, never asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import infomax_ext
from infomax_ext import (
    VAE,
    BernoulliDecoder,
    InfoMaxVAE,
    JointGaussianLogEncoder,
    latent_permutation,
    train_step,
    use_path,
)
from infomax_ext.mutual_info import fused_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CHAINS,
    N_DATA,
    N_LATENT,
    chain_layout,
    counted_flops,
    dominant_gemm,
    interleaved,
    loss_and_grads,
    make_mm,
    make_replay,
    naive_gemms,
    naive_loss,
    ours_gemms,
    ours_schedule,
    ours_loss,
    peak_cpu_memory,
    relative_errors,
    shared_gemms,
    shared_loss,
    skeleton_loss,
    summary_ms,
    total_flops,
)
from targets import evaluate_targets, floor_bounds, summary_line, target_rows  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ["ours", "naive", "compile(naive)", "shared", "compile(shared)", "compile(ours)"]
TRAIN_VARIANTS = ["ours", "two-call eager", "compile(naive two-call)", "ours reuse_forward",
                  "two-call reuse_forward"]
MODE_LABELS = {False: "shuffled_grad=False (API default: shuffled codes are constants)",
               True: "shuffled_grad=True (gradient to z through the shuffled term too)"}


def parse_modes(text: str) -> list:
    """``"false,true"`` -> [False, True] (order kept, duplicates dropped)."""
    words = {"false": False, "f": False, "0": False, "true": True, "t": True, "1": True}
    modes = []
    for word in (w.strip().lower() for w in text.split(",")):
        if not word:
            continue
        if word not in words:
            raise ValueError(f"unknown mode {word!r}: give false, true or false,true")
        if words[word] not in modes:
            modes.append(words[word])
    if not modes:
        raise ValueError("no mode given")
    return modes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5 rounds (10 at N < 256), 5 train_step rounds")
    p.add_argument("--sizes", default="64,256,1024", help="batch sizes N, comma-separated")
    p.add_argument("--chains", default="P,T", help="chains to run, comma-separated (P, T)")
    p.add_argument("--rounds", type=int, default=None,
                   help="timing rounds per configuration (default 40, 5 with --quick; "
                        "doubled for N < 256)")
    p.add_argument("--train-rounds", type=int, default=None,
                   help="train_step rounds (default 40, 5 with --quick); 0 skips part 2")
    p.add_argument("--modes", default=None,
                   help="gradient modes of part 1, comma-separated, run in this order: false "
                        "(shuffled_grad=False, the API default: shuffled codes are constants), "
                        "true (gradient to z through the shuffled term too) (default: false,true)")
    p.add_argument("--shuffled-grad", action=argparse.BooleanOptionalAction, default=None,
                   help="only this mode: --shuffled-grad = --modes true, --no-shuffled-grad = "
                        "--modes false (kept for older command lines)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the peak memory of one MI loss call of each variant (default on)")
    p.add_argument("--profile", default="P:256",
                   help="CHAIN:N to profile ours on with torch.profiler, or 'none'")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: leave torch's default)")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="largest relative disagreement with naive accepted before timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu.json"),
                   help="JSON output path (default bench/results/cpu.json)")
    args = p.parse_args(argv)
    try:
        modes = parse_modes(args.modes) if args.modes is not None else None
    except ValueError as e:
        p.error(f"--modes: {e}")
    if args.shuffled_grad is not None:
        if modes is not None and modes != [args.shuffled_grad]:
            p.error(f"--{'' if args.shuffled_grad else 'no-'}shuffled-grad contradicts "
                    f"--modes {args.modes}; give one of them")
        modes = [args.shuffled_grad]
    args.modes = modes if modes is not None else [False, True]
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.chains = [c.strip() for c in args.chains.split(",") if c.strip()]
    for c in args.chains:
        if c not in CHAINS:
            p.error(f"unknown chain {c!r}; known: {', '.join(CHAINS)}")
    if any(n < 2 for n in args.sizes):
        p.error("batch sizes must be at least 2")
    if args.profile.lower() == "none":
        args.profile = None
    else:
        chain, _, size = args.profile.partition(":")
        if chain not in CHAINS or not size.isdigit() or int(size) < 2:
            p.error(f"--profile takes CHAIN:N (e.g. P:256) or 'none', got {args.profile!r}")
    if args.rounds is None:
        args.rounds = 5 if args.quick else 40
    if args.train_rounds is None:
        args.train_rounds = 5 if args.quick else 40
    return args


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


# The environment variables that change how the memory allocator takes memory from the system
# and gives it back (bench/fixed_cost_notes.md: the paper chain's page faults): glibc's tunables
# and MALLOC_* variables, a preloaded allocator, jemalloc's and tcmalloc's settings.
ALLOCATOR_VARIABLES = ("GLIBC_TUNABLES", "LD_PRELOAD")
ALLOCATOR_PREFIXES = ("MALLOC_", "TCMALLOC_", "JE_MALLOC_", "JEMALLOC_")


def allocator_environment() -> dict:
    """The allocator's environment variables that are set, by name."""
    return {k: v for k, v in sorted(os.environ.items())
            if k in ALLOCATOR_VARIABLES or k.startswith(ALLOCATOR_PREFIXES)}


def environment() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "infomax_ext": infomax_ext.__version__,
        "backend": infomax_ext.backend(),
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "mkl": torch.backends.mkl.is_available(),
        "python": platform.python_version(),
        "commit": commit,
        "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "allocator": allocator_environment(),
    }


def configure_dynamo():
    # Static shapes, one graph per (chain, N, variant): more than dynamo's default 8 per function.
    cfg = torch._dynamo.config
    for name, value in (("recompile_limit", 64), ("cache_size_limit", 64),
                        ("accumulated_recompile_limit", 1024),
                        ("accumulated_cache_size_limit", 1024)):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), value))


# ----------------------------------------------------------------------------------------------
# Part 1: MI loss forward + backward
# ----------------------------------------------------------------------------------------------


def mi_inputs(chain: str, n: int, seed: int):
    """The chain, x (n, 784), z (n, 10) requiring grad, the permutation, and the tensors to
    differentiate (every chain parameter and z), all from ``seed``."""
    torch.manual_seed(seed)
    mi = CHAINS[chain][1]()
    x = torch.rand(n, N_DATA)
    z = torch.randn(n, N_LATENT, requires_grad=True)
    return mi, x, z, latent_permutation(n, 1, seed), list(mi.parameters()) + [z]


def bench_mi(chain: str, n: int, args, compiled: dict, sg: bool) -> dict:
    """Part 1 for one chain, N and gradient mode ``sg`` (shuffled_grad)."""
    mi, x, z, perm, wrt = mi_inputs(chain, n, args.seed)
    if not fused_plan(mi):
        raise SystemExit(f"chain {chain}: paired_mutual_info would not take the shared path")

    fns = {"ours": ours_loss, "naive": naive_loss, "shared": shared_loss}
    if not args.no_compile:
        fns["compile(naive)"] = compiled["naive"]
        fns["compile(shared)"] = compiled["shared"]
        fns["compile(ours)"] = compiled["ours"]
    fns = {name: fns[name] for name in VARIANTS if name in fns}

    # Agreement with naive (float32), which is also the compile warm-up of this shape.
    ref = loss_and_grads(naive_loss, mi, x, z, perm, sg, wrt)
    check, compile_s = {}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        got = loss_and_grads(fn, mi, x, z, perm, sg, wrt)
        if name.startswith("compile"):
            compile_s[name] = time.perf_counter() - t0
        loss_err, grad_err = relative_errors(ref, got)
        check[name] = {"loss_rel_err": loss_err, "grad_rel_err": grad_err,
                       "ok": loss_err <= args.tol and grad_err <= args.tol}
        if not check[name]["ok"]:
            raise SystemExit(
                f"chain {chain} N={n}: {name} disagrees with naive (loss {loss_err:.2e}, "
                f"grads {grad_err:.2e} > tol {args.tol:g}); not timing wrong results")
        for _ in range(2):  # warm-up (a compiled backward is built on first use)
            loss_and_grads(fn, mi, x, z, perm, sg, wrt)

    # FLOP model and the GEMM rate of the dominant shape.
    layout = chain_layout(mi, N_DATA, N_LATENT)
    gemms = {"naive": naive_gemms(layout, n, sg), "shared": shared_gemms(layout, n, sg),
             "ours": ours_gemms(layout, n, sg)}
    flops = {name: total_flops(g) for name, g in gemms.items()}
    flops["compile(naive)"], flops["compile(shared)"] = flops["naive"], flops["shared"]
    flops["compile(ours)"] = flops["ours"]
    counted = {"naive": counted_flops(naive_loss, mi, x, z, perm, sg, wrt),
               "shared": counted_flops(shared_loss, mi, x, z, perm, sg, wrt),
               "ours": counted_flops(ours_loss, mi, x, z, perm, sg, wrt)}
    model_ok = counted["naive"] == flops["naive"] and counted["shared"] == flops["shared"]
    if not model_ok:
        print(f"  WARNING {chain} N={n}: analytic GEMM FLOPs {flops} differ from torch's "
              f"FlopCounterMode {counted}", file=sys.stderr)
    dom = dominant_gemm(gemms["ours"])
    gen = torch.Generator().manual_seed(args.seed)
    mm = make_mm(*dom, generator=gen)
    schedule = ours_schedule(layout)
    replay = make_replay(gemms["ours"], generator=gen, **schedule)
    mlp_replay = make_replay([g for g in gemms["ours"] if g.layer.startswith("mlp")],
                             generator=gen, **schedule)
    mm(), replay(), mlp_replay()

    def step(fn, allow_unused=False):
        return lambda: torch.autograd.grad(fn(mi, x, z, perm, sg), wrt, allow_unused=allow_unused)

    timed = {name: step(fn) for name, fn in fns.items()}
    timed["mm"] = mm
    timed["replay"] = replay
    # The parts of the bounds (bench/targets.py): the skeleton, eager and compiled, and the
    # replay of ours' MLP GEMMs.
    timed["skeleton"] = step(skeleton_loss, allow_unused=True)
    timed["MLP replay"] = mlp_replay
    if "skeleton" in compiled:
        timed["compile(skeleton)"] = step(compiled["skeleton"], allow_unused=True)
    for name in ("skeleton", "compile(skeleton)"):
        if name in timed:
            for _ in range(3):  # warm-up; the compiled one is built here
                timed[name]()
    rounds = args.rounds * (2 if n < 256 else 1)
    kernel: dict = {}
    samples = interleaved(timed, rounds, kernel=kernel)
    times = {name: summary_ms(s) for name, s in samples.items()}

    mm_flops = 2 * dom[0] * dom[1] * dom[2]
    rate = mm_flops / (times["mm"]["median"] * 1e-3)  # FLOP/s
    floor_ms = flops["ours"] / rate * 1e3
    ours_ms = times["ours"]["median"]
    ratios = {f"{name}/ours": times[name]["median"] / ours_ms for name in fns if name != "ours"}
    ratios["ours/floor"] = ours_ms / floor_ms
    ratios["ours/replay"] = ours_ms / times["replay"]["median"]
    not_gemm_ms = ours_ms - times["replay"]["median"]  # ours' time that is not GEMM work
    # The same from the fastest round of each: a view that survives other jobs on the cores
    # (their stalls inflate medians), reported next to the medians, never instead of them.
    ours_min = times["ours"]["min"]
    floor_min_ms = flops["ours"] / (mm_flops / (times["mm"]["min"] * 1e-3)) * 1e3
    ratios_min = {f"{name}/ours": times[name]["min"] / ours_min for name in fns if name != "ours"}
    ratios_min["ours/floor"] = ours_min / floor_min_ms
    ratios_min["ours/replay"] = ours_min / times["replay"]["min"]
    bounds = floor_bounds(times, floor_ms, "median")
    bounds_min = floor_bounds(times, floor_min_ms, "min")

    # Peak memory of one call of each variant, after (never inside) the timed rounds.
    memory = None
    if args.memory:
        peaks = {name: peak_cpu_memory(fn) for name, fn in timed.items()
                 if name in fns}
        mib = {name: p["peak_bytes"] / 2**20 for name, p in peaks.items()}
        memory = {"peak_mib": mib, "detail_bytes": peaks,
                  # the call's outputs (the gradients), held at the end of every variant's call
                  "gradients_mib": sum(t.numel() * t.element_size() for t in wrt) / 2**20,
                  "ratios": {f"ours/{name}": mib["ours"] / mib[name] for name in mib
                             if name != "ours" and mib[name] > 0}}
    return {
        "chain": chain, "n": n, "shuffled_grad": sg, "rounds": rounds,
        "times_ms": {k: v for k, v in times.items() if k in fns},
        "floor_parts_ms": {k: times[k] for k in ("skeleton", "MLP replay", "compile(skeleton)")
                           if k in times},
        "samples_ms": {k: [1e3 * s for s in v] for k, v in samples.items()},
        "kernel_per_call": kernel,
        "gemm_rate": {"shape": {"rows": dom[0], "n_in": dom[1], "n_out": dom[2]},
                      "desc": f"({dom[0]} x {dom[1]}) @ ({dom[1]} x {dom[2]})",
                      "mm_ms": times["mm"], "gflops": rate / 1e9},
        "flops": flops,
        "flops_counted": counted,
        "flop_model_matches_counter": model_ok,
        "gemms_ours": [dataclasses.asdict(g) for g in gemms["ours"]],
        "floor_ms": floor_ms,
        "replay_ms": times["replay"],
        "not_gemm_ms": not_gemm_ms,
        "ratios": ratios,
        "ratios_min": ratios_min,
        "bounds": bounds,
        "bounds_min": bounds_min,
        "floor_min_ms": floor_min_ms,
        "check": check,
        "compile_s": compile_s,
        "peak_memory": memory,
    }


# ----------------------------------------------------------------------------------------------
# Part 2: train_step
# ----------------------------------------------------------------------------------------------


def build_infomax_vae(seed: int) -> InfoMaxVAE:
    torch.manual_seed(seed)
    encoder = JointGaussianLogEncoder.from_sizes(N_DATA, N_LATENT, [512, 512],
                                                 [torch.relu, torch.relu])
    decoder = BernoulliDecoder.from_sizes(N_DATA, N_LATENT, [512, 512], [torch.relu, torch.relu])
    return InfoMaxVAE(VAE(encoder, decoder), CHAINS["P"][1]())


# The user's own InfoMax VAE step, written in plain PyTorch with two plain calls of the MI chain
# (the "compile(naive two-call)" variant). The two losses are plain functions of the model's
# parts, x, the reparametrisation noise and the permutation; torch.compile is applied to them,
# not to the optimizer steps. They compute what train_step(model, x, opt) computes with its
# default arguments (beta = alpha = 1, one latent sample, Bernoulli decoder, shuffled codes
# constants).

_EPS32 = torch.finfo(torch.float32).eps


def naive_vae_loss(vae, mi, x, noise, perm):
    """infomaxloss: -mean log p(x | z) + mean KL(q(z | x) || N(0, I)) - I(x; z), with z = mu +
    noise * exp(logsigma) and the NWJ bound from two plain calls of the chain; the shuffled codes
    z.detach()[perm] are constants (the API default)."""
    mu, logsigma = vae.encoder(x)
    z = mu + noise * torch.exp(logsigma)
    p = vae.decoder(z).p.clamp(_EPS32, 1 - _EPS32)
    loglik = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1).mean()
    kl = (0.5 * (torch.exp(2 * logsigma) + mu**2 - 1 - 2 * logsigma).sum(-1)).mean()
    bound = mi(x, z).mean() - torch.exp(mi(x, z.detach()[perm]) - 1).mean()
    return -loglik + kl - bound


def naive_mi_loss(vae, mi, x, noise, perm):
    """miloss: -I(x; z) on a sample of the (updated) encoder drawn without a graph, two plain
    calls of the chain."""
    with torch.no_grad():
        mu, logsigma = vae.encoder(x)
        z = mu + noise * torch.exp(logsigma)
    return -(mi(x, z).mean() - torch.exp(mi(x, z[perm]) - 1).mean())


def naive_train_step(model, x, opt, vae_loss_fn, mi_loss_fn, loss_return=False):
    """train_step's alternating scheme in user code: (1) the VAE loss with the MI chain frozen,
    its gradient for the VAE's parameters, the VAE step; (2) the MI loss on a fresh forward
    through the updated VAE, its gradient for the MI chain, the MI step.

    The random draws are those of train_step, in its order: the noise of the reparametrisation
    (``torch.randn_like(mu)`` = ``torch.randn(N, d)`` from the global generator), then the
    permutation's seed (``latent_permutation(N)`` draws it from the global generator), once per
    loss. They are drawn here, outside the compiled loss functions: random ops inside a compiled
    graph use inductor's own generator, a different stream, and the first step is checked
    against train_step's."""
    vae_params = [p for p in model.vae.parameters() if p.requires_grad]
    mi_params = [p for p in model.mi.parameters() if p.requires_grad]
    n = x.shape[0]

    noise = torch.randn(n, N_LATENT, dtype=x.dtype)
    perm = latent_permutation(n)
    for p in mi_params:  # no graph (nor gradient) for the MI chain's weights in the VAE loss
        p.requires_grad_(False)
    try:
        vae_loss = vae_loss_fn(model.vae, model.mi, x, noise, perm)
    finally:
        for p in mi_params:
            p.requires_grad_(True)
    for p, g in zip(vae_params, torch.autograd.grad(vae_loss, vae_params)):
        p.grad = g
    opt["vae"].step()

    noise = torch.randn(n, N_LATENT, dtype=x.dtype)
    perm = latent_permutation(n)
    mi_loss = mi_loss_fn(model.vae, model.mi, x, noise, perm)
    for p, g in zip(mi_params, torch.autograd.grad(mi_loss, mi_params)):
        p.grad = g
    opt["mi"].step()
    if loss_return:
        return float(vae_loss.detach()), float(mi_loss.detach())
    return None


def bench_train_step(args, n: int = 256) -> dict:
    template = build_infomax_vae(args.seed)
    x = torch.rand(n, N_DATA, generator=torch.Generator().manual_seed(args.seed))
    settings = {
        "ours": {"two_call": False, "reuse_forward": False},
        "two-call eager": {"two_call": True, "reuse_forward": False},
        "ours reuse_forward": {"two_call": False, "reuse_forward": True},
        "two-call reuse_forward": {"two_call": True, "reuse_forward": True},
    }
    variants = [v for v in TRAIN_VARIANTS
                if not (args.no_compile and v == "compile(naive two-call)")]
    compiled_losses = None
    if "compile(naive two-call)" in variants:
        compiled_losses = (torch.compile(naive_vae_loss, dynamic=False),
                           torch.compile(naive_mi_loss, dynamic=False))

    def make(variant):
        model = copy.deepcopy(template)
        # fused Adam, as infomax-ext train uses: the optimizer is common to every variant
        opt = {"vae": torch.optim.Adam(model.vae.parameters(), lr=1e-3, fused=True),
               "mi": torch.optim.Adam(model.mi.parameters(), lr=1e-3, fused=True)}
        if variant == "compile(naive two-call)":
            def naive_step(loss_return=False):
                return naive_train_step(model, x, opt, *compiled_losses, loss_return=loss_return)

            return naive_step
        s = settings[variant]

        def step(loss_return=False):
            with use_path("two_call" if s["two_call"] else "auto"):
                return train_step(model, x, opt, reuse_forward=s["reuse_forward"],
                                  loss_return=loss_return)

        return step

    # Agreement of the first step from the same weights and the same random state (this is also
    # the compilation of the naive step's two losses).
    first, compile_s = {}, None
    for variant in variants:
        step = make(variant)
        torch.manual_seed(args.seed + 1)
        t0 = time.perf_counter()
        first[variant] = step(loss_return=True)
        if variant == "compile(naive two-call)":
            compile_s = time.perf_counter() - t0
    ref = first["ours"]

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1.0)

    def both(variant):
        return {"vae_loss_rel_err": rel(first[variant][0], ref[0]),
                "mi_loss_rel_err": rel(first[variant][1], ref[1])}

    check = {
        "two-call eager": both("two-call eager"),
        # reuse_forward's MI step uses the pre-update codes: only the VAE loss is comparable.
        "ours reuse_forward": {"vae_loss_rel_err": rel(first["ours reuse_forward"][0], ref[0])},
        "two-call reuse_forward": {"vae_loss_rel_err": rel(first["two-call reuse_forward"][0], ref[0])},
    }
    if "compile(naive two-call)" in variants:
        # Same weights, same noise and permutations as ours: both losses must agree.
        check["compile(naive two-call)"] = both("compile(naive two-call)")
    for variant, errs in check.items():
        if max(errs.values()) > args.tol:
            raise SystemExit(f"train_step: {variant} disagrees with ours on the first step: {errs}")

    steps = {variant: make(variant) for variant in variants}
    for step in steps.values():
        for _ in range(2):
            step()
    kernel: dict = {}
    samples = interleaved(steps, args.train_rounds, kernel=kernel)
    times = {name: summary_ms(s) for name, s in samples.items()}
    ours_ms = times["ours"]["median"]
    return {
        "chain": "P", "n": n, "rounds": args.train_rounds,
        "shuffled_grad": False,  # train_step's default (infomaxloss's shuffled_grad=False)
        "model": "encoder 784-512-512 -> 10 (JointGaussianLogEncoder), BernoulliDecoder "
                 "10-512-512-784, MI chain P, fused Adam lr 1e-3 (both)",
        "variants": variants,
        "times_ms": times,
        "samples_ms": {k: [1e3 * s for s in v] for k, v in samples.items()},
        "kernel_per_call": kernel,
        "ratios": {f"{name}/ours": times[name]["median"] / ours_ms
                   for name in variants if name != "ours"},
        "ratios_min": {f"{name}/ours": times[name]["min"] / times["ours"]["min"]
                       for name in variants if name != "ours"},
        "check": check,
        "first_step_losses": {k: list(v) for k, v in first.items()},
        "compile_s": compile_s,
    }


# ----------------------------------------------------------------------------------------------
# Part 3: profile of ours
# ----------------------------------------------------------------------------------------------


def profile_ours(chain: str, n: int, args, iters: int, top: int = 15) -> dict:
    mi, x, z, perm, wrt = mi_inputs(chain, n, args.seed)
    sg = args.modes[0]

    def step():
        torch.autograd.grad(ours_loss(mi, x, z, perm, sg), wrt)

    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_self = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"op": e.key, "calls_per_iter": e.count / iters,
             "self_ms_per_iter": e.self_cpu_time_total / iters / 1e3,
             "self_pct": 100.0 * e.self_cpu_time_total / total_self} for e in events[:top]]
    return {"chain": chain, "n": n, "shuffled_grad": sg, "iters": iters,
            "total_self_ms_per_iter": total_self / iters / 1e3, "top_ops": rows}


# ----------------------------------------------------------------------------------------------
# Targets and printing
# ----------------------------------------------------------------------------------------------


def fmt_time(t: dict | None) -> str:
    if t is None:
        return "-"
    return f"{t['median']:.2f} [{t['p10']:.1f}-{t['p90']:.1f}]"


def print_table(headers: list, rows: list):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = " | ".join(str(h).rjust(w) for h, w in zip(headers, widths))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def report(result: dict):
    env = result["environment"]
    mi_results = result["mi_loss"]
    if mi_results:
        modes = list(dict.fromkeys(r["shuffled_grad"] for r in mi_results))
        for sg in modes:
            print(f"\nMI loss forward+backward, float32, {env['threads']} threads, "
                  f"{MODE_LABELS[sg]}: median ms [p10-p90]")
            headers = ["chain", "N", "rounds"] + VARIANTS + ["floor", "GEMM replay", "mm GFLOP/s"]
            rows = []
            for r in mi_results:
                if r["shuffled_grad"] != sg:
                    continue
                t = r["times_ms"]
                rows.append([r["chain"], r["n"], r["rounds"]]
                            + [fmt_time(t.get(v)) for v in VARIANTS]
                            + [f"{r['floor_ms']:.2f}", f"{r['replay_ms']['median']:.2f}",
                               f"{r['gemm_rate']['gflops']:.1f}"])
            print_table(headers, rows)

        mode_note = "shuffled_grad: False = the API default (shuffled codes constants), True = " \
                    "gradient to z through the shuffled term too"
        print("\nRatios (> 1: ours faster; ours/floor: how far ours is from the FLOP floor); "
              + mode_note)
        names = [f"{v}/ours" for v in VARIANTS[1:]] + ["ours/floor", "ours/replay"]
        rows = [[r["shuffled_grad"], r["chain"], r["n"]]
                + [f"{r['ratios'][k]:.2f}" if k in r["ratios"] else "-" for k in names]
                + [f"{r['not_gemm_ms']:.2f}"]
                for r in mi_results]
        print_table(["shuffled_grad", "chain", "N"] + names + ["ours - replay ms"], rows)
        print("\nThe same ratios from each variant's fastest round (floor from the fastest mm): "
              "less sensitive to other jobs on the cores")
        rows = [[r["shuffled_grad"], r["chain"], r["n"]]
                + [f"{r['ratios_min'][k]:.2f}" if k in r["ratios_min"] else "-" for k in names]
                for r in mi_results]
        print_table(["shuffled_grad", "chain", "N"] + names, rows)

        with_kernel = [r for r in mi_results if r.get("kernel_per_call")]
        if with_kernel:
            print("\nThe operating system's share of a call (getrusage, all threads, means over "
                  "the rounds): kernel CPU ms / minor page faults per call. Fresh memory costs "
                  "faults and zeroing, and each variant's allocations change what the next call "
                  "finds: a noise source at N = 64 (bench/README.md, \"Run-to-run spread\")")
            names = [v for v in VARIANTS if v in with_kernel[0]["kernel_per_call"]]
            names += [k for k in ("replay", "skeleton") if k in with_kernel[0]["kernel_per_call"]]
            rows = [[r["shuffled_grad"], r["chain"], r["n"]]
                    + [f"{r['kernel_per_call'][v]['sys_ms']:.2f} / "
                       f"{r['kernel_per_call'][v]['faults']:.0f}" for v in names]
                    for r in with_kernel]
            print_table(["shuffled_grad", "chain", "N"] + names, rows)

        with_memory = [r for r in mi_results if r.get("peak_memory")]
        if with_memory:
            print("\nPeak memory of one call (MiB allocated by torch on the CPU above the start of "
                  "the call, from torch.profiler's allocation events; outputs included)")
            mem_variants = [v for v in VARIANTS if v in with_memory[0]["peak_memory"]["peak_mib"]]
            rows = []
            for r in with_memory:
                m = r["peak_memory"]
                ratio = m["ratios"].get("ours/compile(shared)")
                rows.append([r["shuffled_grad"], r["chain"], r["n"]]
                            + [f"{m['peak_mib'][v]:.2f}" for v in mem_variants]
                            + ["-" if ratio is None else f"{ratio:.2f}",
                               f"{m['gradients_mib']:.2f}"])
            print_table(["shuffled_grad", "chain", "N"] + mem_variants
                        + ["ours/compile(shared)", "of which gradients"], rows)

        print("\nGEMM FLOPs (analytic, forward + the backward GEMMs autograd runs); "
              "floor = ours' FLOPs / mm rate")
        rows = []
        for r in mi_results:
            f = r["flops"]
            rows.append([r["shuffled_grad"], r["chain"], r["n"], f"{f['naive'] / 1e9:.3f}",
                         f"{f['shared'] / 1e9:.3f}", f"{f['ours'] / 1e9:.3f}",
                         f"{f['ours'] / f['naive']:.3f}", r["gemm_rate"]["desc"],
                         f"{r['gemm_rate']['gflops']:.1f}"])
        print_table(["shuffled_grad", "chain", "N", "naive GFLOP", "shared GFLOP", "ours GFLOP",
                     "ours/naive", "rate shape (torch.mm)", "GFLOP/s"], rows)
        if all(r["flop_model_matches_counter"] for r in mi_results):
            print("(naive and shared counts equal torch's FlopCounterMode exactly)")

        worst = max(max(c["loss_rel_err"], c["grad_rel_err"])
                    for r in mi_results for c in r["check"].values())
        print(f"\nAll variants agree with naive (largest relative error {worst:.1e}, "
              f"tol {result['config']['tol']:g}).")
        comp = [(r["chain"], r["n"], k, s) for r in mi_results for k, s in r["compile_s"].items()]
        if comp:
            print(f"torch.compile first calls: {sum(c[3] for c in comp):.1f} s in all "
                  f"(largest {max(c[3] for c in comp):.1f} s)")

    train = result.get("train_step")
    if train:
        print(f"\ntrain_step, chain P, N={train['n']}, fused Adam, shuffled_grad="
              f"{train['shuffled_grad']} (train_step's default): median ms [p10-p90] over "
              f"{train['rounds']} rounds")
        rows = [[v, fmt_time(train["times_ms"][v]), f"{train['times_ms'][v]['min']:.2f}",
                 "1.00" if v == "ours" else f"{train['ratios'][f'{v}/ours']:.2f}",
                 "1.00" if v == "ours" else f"{train['ratios_min'][f'{v}/ours']:.2f}"]
                for v in train["variants"]]
        print_table(["variant", "time", "min", "variant/ours", "(from minima)"], rows)
        errs = {v: max(c.values()) for v, c in train["check"].items()}
        print("First step against ours (relative error of the losses): "
              + ", ".join(f"{v} {e:.1e}" for v, e in errs.items())
              + (f"; compile(naive two-call) compiled in {train['compile_s']:.1f} s"
                 if train.get("compile_s") is not None else ""))

    prof = result.get("profile")
    if prof:
        print(f"\nProfile of ours, chain {prof['chain']} N={prof['n']} ({prof['iters']} iters, "
              f"{prof['total_self_ms_per_iter']:.2f} ms self CPU per iter): top ops by self CPU")
        rows = [[o["op"][:64], f"{o['calls_per_iter']:.0f}", f"{o['self_ms_per_iter']:.3f}",
                 f"{o['self_pct']:.1f}"] for o in prof["top_ops"]]
        print_table(["op", "calls/iter", "self ms/iter", "% self"], rows)

    if result["targets"]:
        print("\nTargets of issue 20 (medians of one interleaved run; timing is noisy on shared "
              "machines). Bound: the best any eager implementation could reach, measured in the "
              "same rounds (bench/targets.py)")
        print_table(*target_rows(result["targets"]))
        print(summary_line(result["targets"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    env = environment()
    if env["backend"] != "compiled":
        print(f"WARNING: infomax_ext backend is {env['backend']!r} ({infomax_ext.extension_error()}):"
              " 'ours' runs the pure-PyTorch reference ops", file=sys.stderr)
    print(f"infomax_ext {env['infomax_ext']} ({env['backend']}), torch {env['torch']}, "
          f"{env['threads']} threads, {env['cpu']}"
          + "".join(f", {k}={v}" for k, v in env["allocator"].items()))

    compiled = {}
    if not args.no_compile:
        configure_dynamo()
        compiled = {"naive": torch.compile(naive_loss, dynamic=False),
                    "shared": torch.compile(shared_loss, dynamic=False),
                    # a user's function that calls ours, traced whole (no graph break)
                    "ours": torch.compile(ours_loss, dynamic=False, fullgraph=True),
                    # the bound of compile(ours) / ours (bench/targets.py)
                    "skeleton": torch.compile(skeleton_loss, dynamic=False, fullgraph=True)}

    mi_results = []
    for sg in args.modes:
        for chain in args.chains:
            for n in args.sizes:
                t0 = time.perf_counter()
                r = bench_mi(chain, n, args, compiled, sg)
                mi_results.append(r)
                t = r["times_ms"]
                mem = r["peak_memory"]
                print(f"  shuffled_grad={sg} {chain} N={n}: ours {t['ours']['median']:.2f} ms, "
                      f"naive {t['naive']['median']:.2f} ms, floor {r['floor_ms']:.2f} ms"
                      + (f", ours peak {mem['peak_mib']['ours']:.1f} MiB" if mem else "")
                      + f" ({time.perf_counter() - t0:.0f} s)", flush=True)

    train = None
    if args.train_rounds > 0:
        t0 = time.perf_counter()
        train = bench_train_step(args)
        print(f"  train_step: ours {train['times_ms']['ours']['median']:.2f} ms "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    prof = None
    if args.profile:
        chain, n = args.profile.split(":")
        prof = profile_ours(chain, int(n), args, iters=5 if args.quick else 20)

    result = {
        "environment": env,
        "config": {k: v for k, v in vars(args).items()},
        "mi_loss": mi_results,
        "train_step": train,
        "profile": prof,
        "targets": evaluate_targets(mi_results, train),
    }
    result["wall_s"] = time.perf_counter() - t_start
    result["environment"]["load_avg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nWrote {out} (total {result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared pieces of the infomax_ext benchmarks.

- the two MI chains of the benchmark (``paper_chain``, ``julia_default_chain``);
- the loss variants (``ours_loss``, ``naive_loss``, ``shared_loss``), all returning the MI loss
  ``-(mean T(x, z) - mean exp(T(x, z[perm]) - 1))``, and the ``skeleton_loss`` of the eager
  floor (the part of a call no eager implementation avoids);
- the analytic GEMM FLOP model of each variant (``chain_layout``, ``naive_gemms``,
  ``shared_gemms``, ``ours_gemms``) and the GEMM replay used as a second floor;
- interleaved round-robin timing and percentile helpers;
- the peak CPU memory of one call (``peak_cpu_memory``, from torch.profiler's allocation events);
- agreement checks between variants.

Imported by ``bench/bench_cpu.py`` (the script's folder is on ``sys.path`` when it is run as
``python bench/bench_cpu.py``). Nothing here asserts on time.
"""
from __future__ import annotations

import gc
import math
import random
import resource
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

import infomax_ext
from infomax_ext import MutualInfoChain, paired_mutual_info
from infomax_ext.activations import ACTIVATIONS
from infomax_ext.chain_plan import fused_plan

# ----------------------------------------------------------------------------------------------
# Chains
# ----------------------------------------------------------------------------------------------

N_DATA, N_LATENT = 784, 10


def paper_chain() -> MutualInfoChain:
    """P: the paper's MNIST chain. data = identity on x (784), latent = identity on z (10),
    MLP 794-1000-400-100-1 with ReLU (PyTorch's default Linear init)."""
    mlp = nn.Sequential(
        nn.Linear(N_DATA + N_LATENT, 1000), nn.ReLU(),
        nn.Linear(1000, 400), nn.ReLU(),
        nn.Linear(400, 100), nn.ReLU(),
        nn.Linear(100, 1),
    )
    return MutualInfoChain(nn.Identity(), nn.Identity(), mlp)


def julia_default_chain() -> MutualInfoChain:
    """T: the Julia package's default builder: data Linear(784, 784), latent Linear(10, 10),
    MLP 794-256-256-1 with ReLU."""
    return MutualInfoChain.from_sizes(N_DATA, N_LATENT, [256, 256], [torch.relu, torch.relu])


CHAINS: dict[str, tuple[str, Callable[[], MutualInfoChain]]] = {
    "P": ("paper MNIST chain, MLP 794-1000-400-100-1", paper_chain),
    "T": ("Julia default chain, Linear(784,784)+Linear(10,10), MLP 794-256-256-1",
          julia_default_chain),
}

# ----------------------------------------------------------------------------------------------
# Loss variants. Each takes (mi, x, z, perm, shuffled_grad) and returns the 0-dim MI loss.
# ----------------------------------------------------------------------------------------------


def ours_loss(mi, x, z, perm, shuffled_grad: bool):
    """infomax_ext: ``paired_mutual_info`` (shared evaluation, fused kernels)."""
    return -paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad).bound


def naive_loss(mi, x, z, perm, shuffled_grad: bool):
    """Two calls of the chain, as the Julia and paper code do, in plain torch ops."""
    z_shuffle = (z if shuffled_grad else z.detach())[perm]
    return -(mi(x, z).mean() - torch.exp(mi(x, z_shuffle) - 1).mean())


def shared_loss(mi, x, z, perm, shuffled_grad: bool):
    """The shared-computation algorithm in plain PyTorch (torch ops only).

    data(x) and latent(z) once; the first Linear split into its data and latent halves; the data
    half (with the bias) computed once for both the joint and the shuffled rows; the shuffled
    latent half a row gather of the joint one (``shuffled_grad=True``) or of the latent half of
    ``z.detach()`` (``False``: shuffled codes are constants); the rest of the MLP on 2N rows.
    """
    n = x.shape[0]
    layers = list(mi.mlp)
    first = layers[0]
    hx = mi.data(x).reshape(n, -1)
    hz = mi.latent(z)
    dx = hx.shape[1]
    w_data, w_latent = first.weight[:, :dx], first.weight[:, dx:]
    if first.bias is not None:
        data_half = torch.addmm(first.bias, hx, w_data.t())
    else:
        data_half = torch.mm(hx, w_data.t())
    latent_half = torch.mm(hz, w_latent.t())
    if shuffled_grad:
        shuffled_half = latent_half[perm]
    else:
        shuffled_half = torch.mm(mi.latent(z.detach()), w_latent.t())[perm]
    h = (torch.stack([latent_half, shuffled_half]) + data_half).reshape(2 * n, -1)
    for layer in layers[1:]:
        h = layer(h)
    t = h.reshape(-1)
    return -(t[:n].mean() - torch.exp(t[n:] - 1).mean())


class TrivialNode(torch.autograd.Function):
    """The smallest autograd node standing for the MI chain's MLP: its inputs (``n_halves``
    halves: hx, hz and the shuffled half; then the MLP's parameters), one op forward (a 0-dim
    zero), backward each half itself as its gradient and a view of the incoming gradient per
    parameter. The halves' gradients are dense tensors, as an MLP's are: a broadcast view would
    make eager products copy it and let torch.compile reduce the products behind it to sums."""

    @staticmethod
    def forward(ctx, n_halves, *inputs):
        ctx.save_for_backward(*inputs[:n_halves])
        ctx.shapes = [t.shape for t in inputs[n_halves:]]
        return inputs[0].new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return (None, *ctx.saved_tensors, *(grad.expand(shape) for shape in ctx.shapes))


class TrivialEndsNode(torch.autograd.Function):
    """:class:`TrivialNode` for a chain whose ``data`` and ``latent`` are single Linear layers,
    which ours runs inside its node: the node also runs the two layers' products, forward
    (``F.linear``) and backward (the weight and bias gradients; z's input gradient). hx and hz
    stand in for their incoming gradients (dense tensors of the right shapes: a view of the
    0-dim gradient would make every product copy it first). Takes x, Wd, bd, z, Wl, bl, then
    the MLP's parameters."""

    @staticmethod
    def forward(ctx, x, data_w, data_b, z, latent_w, latent_b, *params):
        hx = torch.nn.functional.linear(x, data_w, data_b)
        hz = torch.nn.functional.linear(z, latent_w, latent_b)
        ctx.save_for_backward(x, z, latent_w, hx, hz)
        ctx.shapes = [p.shape for p in params]
        return hx.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        x, z, latent_w, g_hx, g_hz = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (None, g_hx.t().mm(x) if need[1] else None, g_hx.sum(0) if need[2] else None,
                g_hz.mm(latent_w) if need[3] else None, g_hz.t().mm(z) if need[4] else None,
                g_hz.sum(0) if need[5] else None, *(grad.expand(shape) for shape in ctx.shapes))


def skeleton_loss(mi, x, z, perm, shuffled_grad: bool):
    """What any eager implementation of the shared algorithm runs besides the MLP's GEMMs: the
    chain's ``data`` and ``latent`` modules as they are (their own autograd nodes: ``data(x)``,
    ``latent(z)`` and, when the shuffled codes are constants, ``latent(z.detach())``) and one
    autograd node taking hx, hz, the shuffled half and every MLP parameter (:class:`TrivialNode`;
    with ``shuffled_grad`` the shuffled half, a row gather of hz, is left out). Where ours runs
    single-Linear data and latent layers inside its node (``fused_plan(mi).ends``), so does the
    skeleton (:class:`TrivialEndsNode`: the layers' products, one node). Leaves out every
    activation, bias, head and bound pass; with the replay of ours' MLP GEMMs it makes the eager
    floor of ``bench/targets.py``. ``perm`` is not read."""
    n = x.shape[0]
    ends = getattr(fused_plan(mi), "ends", None)
    if ends is not None and x.dim() == 2 and ends.data.weight.requires_grad:
        return TrivialEndsNode.apply(x, ends.data.weight, ends.data.bias, z, ends.latent.weight,
                                     ends.latent.bias, *mi.mlp.parameters())
    hx = mi.data(x).reshape(n, -1)
    hz = mi.latent(z)
    halves = (hx, hz) if shuffled_grad else (hx, hz, mi.latent(z.detach()))
    return TrivialNode.apply(len(halves), *halves, *mi.mlp.parameters())


# ----------------------------------------------------------------------------------------------
# Analytic GEMM FLOP model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gemm:
    """One matrix product of a Linear layer (weight (n_out, n_in)) on ``rows`` rows.

    kind 'fwd': (rows x n_in) @ (n_in x n_out); 'wgrad': (n_out x rows) @ (rows x n_in);
    'igrad': (rows x n_out) @ (n_out x n_in). Each is 2 * rows * n_in * n_out FLOPs."""

    layer: str
    kind: str
    rows: int
    n_in: int
    n_out: int

    @property
    def flops(self) -> int:
        return 2 * self.rows * self.n_in * self.n_out


@dataclass(frozen=True)
class ChainLayout:
    """The Linear layers of a chain as (n_in, n_out): ``data``, ``latent``, ``mlp`` (the MLP's
    first layer takes ``dx + dz`` features)."""

    data: tuple
    latent: tuple
    mlp: tuple
    dx: int
    dz: int


_ELEMENTWISE = (nn.Flatten, infomax_ext.Activation, *(a.module for a in ACTIVATIONS.values()))


def _linears(module: nn.Module, what: str) -> list:
    mods = list(module) if isinstance(module, nn.Sequential) else [module]
    out = []
    for m in mods:
        if isinstance(m, nn.Linear):
            out.append((m.in_features, m.out_features))
        elif not isinstance(m, _ELEMENTWISE):
            raise ValueError(f"the FLOP model only knows Linear + elementwise layers; {what} has "
                             f"{type(m).__name__}")
    return out


def chain_layout(mi: MutualInfoChain, dx: int, dz: int) -> ChainLayout:
    """Layout of ``mi`` for inputs of ``dx`` data and ``dz`` latent features."""
    data, latent, mlp = _linears(mi.data, "data"), _linears(mi.latent, "latent"), _linears(mi.mlp, "mlp")
    dx_out = data[-1][1] if data else dx
    dz_out = latent[-1][1] if latent else dz
    if not mlp or mlp[0][0] != dx_out + dz_out:
        raise ValueError("the MLP's first layer must be a Linear on cat([data(x), latent(z)])")
    return ChainLayout(tuple(data), tuple(latent), tuple(mlp), dx_out, dz_out)


def _stack(name: str, rows: int, linears: Sequence, input_grad: bool, start: int = 0) -> list:
    """GEMMs of a run of Linear layers whose parameters all need gradient: forward and weight
    gradient of each, input gradient of each but the first unless its input needs gradient."""
    out = []
    for i, (n_in, n_out) in enumerate(linears):
        layer = f"{name}.{start + i}"
        out += [Gemm(layer, "fwd", rows, n_in, n_out), Gemm(layer, "wgrad", rows, n_in, n_out)]
        if i > 0 or input_grad:
            out.append(Gemm(layer, "igrad", rows, n_in, n_out))
    return out


def naive_gemms(layout: ChainLayout, n: int, shuffled_grad: bool) -> list:
    """Two calls of the chain on N rows. z needs gradient in the joint call (and in the shuffled
    call when ``shuffled_grad``); x never does. The MLP's first layer computes the gradient of the
    whole ``cat([data(x), latent(z)])`` whenever any part of it needs one."""
    gemms = []
    for call, z_grad in (("joint", True), ("shuffled", shuffled_grad)):
        gemms += _stack(f"{call}.data", n, layout.data, input_grad=False)
        gemms += _stack(f"{call}.latent", n, layout.latent, input_grad=z_grad)
        cat_grad = bool(layout.data) or bool(layout.latent) or z_grad
        gemms += _stack(f"{call}.mlp", n, layout.mlp, input_grad=cat_grad)
    return gemms


def shared_gemms(layout: ChainLayout, n: int, shuffled_grad: bool) -> list:
    """The shared algorithm: data(x), latent(z), the two halves of the first layer on N rows
    (plus, when the shuffled codes are constants, latent(z.detach()) and its half), then the rest
    of the MLP on 2N rows."""
    h1 = layout.mlp[0][1]
    gemms = _stack("data", n, layout.data, input_grad=False)
    gemms += _stack("latent", n, layout.latent, input_grad=True)
    gemms += _stack("mlp.0.data_half", n, [(layout.dx, h1)], input_grad=bool(layout.data))
    gemms += _stack("mlp.0.latent_half", n, [(layout.dz, h1)], input_grad=True)
    if not shuffled_grad:
        gemms += _stack("latent.detached", n, layout.latent, input_grad=False)
        gemms += _stack("mlp.0.shuffled_half", n, [(layout.dz, h1)], input_grad=bool(layout.latent))
    gemms += _stack("mlp", 2 * n, layout.mlp[1:], input_grad=True, start=1)
    return gemms


def ours_gemms(layout: ChainLayout, n: int, shuffled_grad: bool) -> list:
    """paired_mutual_info runs the GEMMs of the shared algorithm (its fused ops do no GEMM beyond
    the head's matrix-vector product, counted as the last layer's three products), but where the
    chain's data and latent networks are single Linear layers (the benchmark's T; ours runs
    them inside its node, ``critic_chain_op._LinearEndsChain``) and the shuffled codes are
    constants (with z needing gradient, as in the benchmark): there the shuffled codes' latent
    output is z's own (the same values), so neither ``latent(z.detach())`` (forward and weight
    gradient: the latent layer's weight gradient is one product of both sides' gradients) nor
    the shuffled half's forward product runs."""
    gemms = shared_gemms(layout, n, shuffled_grad)
    if len(layout.data) == 1 and len(layout.latent) == 1 and not shuffled_grad:
        gemms = [g for g in gemms if not g.layer.startswith("latent.detached.")
                 and not (g.layer == NARROW_LAYERS[1] and g.kind == "fwd")]
    return gemms


NARROW_LAYERS = ("mlp.0.latent_half.0", "mlp.0.shuffled_half.0")
"""The first layer's latent-column products in :func:`shared_gemms` (Dz = 10 wide)."""


def ours_schedule(layout: ChainLayout) -> dict:
    """How ours runs its products, as :func:`make_replay` takes it: ``paired``, the layers whose
    weight and input gradients ours computes in one ``linear_grads`` (csrc/gemm.h: at once where
    the intra-op pool has two threads): the first layer's data columns when data(x) needs
    gradient, and every hidden layer after the first (not the head, whose gradients a kernel
    computes); ``narrow``, the latent-column layers, whose products run as
    csrc/paired_linear.cpp runs them (``mm_pair``), each with the first layer's data width
    (their weight is a column slice of the first layer's, rows ``dx + dz`` apart)."""
    hidden = {f"mlp.{i}" for i in range(1, len(layout.mlp) - 1)}
    return {"paired": frozenset(hidden | ({"mlp.0.data_half.0"} if layout.data else set())),
            "narrow": {layer: layout.dx for layer in NARROW_LAYERS}}


def counted_flops(loss_fn, mi, x, z, perm, shuffled_grad, wrt) -> int:
    """Matrix-product FLOPs torch's FlopCounterMode sees in one forward+backward (a cross-check
    of the analytic model: it misses in-place ``addmm_`` and products inside custom kernels)."""
    from torch.utils.flop_counter import FlopCounterMode

    saved = [t.grad for t in wrt]
    with FlopCounterMode(display=False) as counter:
        loss_fn(mi, x, z, perm, shuffled_grad).backward()  # autograd.grad trips its module hooks
    for t, g in zip(wrt, saved):
        t.grad = g
    return int(counter.get_total_flops())


def total_flops(gemms: Sequence[Gemm]) -> int:
    return sum(g.flops for g in gemms)


def dominant_gemm(gemms: Sequence[Gemm]) -> tuple[int, int, int]:
    """(rows, n_in, n_out) of the layer with the most GEMM FLOPs (forward + backward)."""
    per_layer: dict[tuple, int] = {}
    for g in gemms:
        key = (g.rows, g.n_in, g.n_out)
        per_layer[key] = per_layer.get(key, 0) + g.flops
    return max(per_layer, key=per_layer.get)


def make_mm(rows: int, n_in: int, n_out: int, generator=None) -> Callable[[], torch.Tensor]:
    """``torch.mm`` of a Linear's forward: (rows x n_in) @ W.T with W (n_out x n_in)."""
    a = torch.randn(rows, n_in, generator=generator)
    w = torch.randn(n_out, n_in, generator=generator)
    return lambda: torch.mm(a, w.t())


def make_replay(gemms: Sequence[Gemm], generator=None, paired: frozenset = frozenset(),
                narrow: dict | None = None) -> Callable[[], None]:
    """Every GEMM of the list alone, in the operand layout autograd uses (preallocated operands,
    fresh outputs as in the real run); the weight and input gradients of a layer in ``paired``
    in one ``torch.ops.infomax_ext.linear_grads``, as ours runs them; a layer in ``narrow`` as
    csrc/paired_linear.cpp runs the latent columns' products (``narrow``: layer -> the data
    columns before them; the weight a column slice, as ours'): the forwards of two such layers
    in one ``torch.ops.infomax_ext.mm_pair``, each layer's input gradient ``(W^T g^T)^T`` and
    weight-gradient term ``x^T g`` in one ``mm_pair`` where it has both (:func:`ours_schedule`
    gives both sets)."""
    cache: dict[tuple, torch.Tensor] = {}

    def operand(*shape):
        if shape not in cache:
            cache[shape] = torch.randn(*shape, generator=generator)
        return cache[shape]

    ops = torch.ops.infomax_ext
    narrow = narrow or {}
    both = {g.layer for g in gemms if g.kind == "wgrad"} & {g.layer for g in gemms if g.kind == "igrad"}
    narrow_fwd = [g for g in gemms if g.layer in narrow and g.kind == "fwd"]
    calls = []
    for g in gemms:
        x, gy = operand(g.rows, g.n_in), operand(g.rows, g.n_out)
        if g.layer in narrow:  # the weight a column slice, rows dx + n_in apart
            w = operand(g.n_out, narrow[g.layer] + g.n_in)[:, narrow[g.layer]:]
        else:
            w = operand(g.n_out, g.n_in)
        if g.layer in narrow:
            if g.kind == "fwd" and len(narrow_fwd) == 2:
                if g is narrow_fwd[0]:  # the pair runs once, in the first forward's place
                    calls.append((ops.mm_pair, (x, w.t(), x, w.t())))
            elif g.kind == "fwd":
                calls.append((torch.mm, (x, w.t())))
            elif g.layer in both:
                if g.kind == "wgrad":  # the pair runs once, in the weight gradient's place
                    calls.append((ops.mm_pair, (w.t(), gy.t(), x.t(), gy)))
            elif g.kind == "wgrad":
                calls.append((torch.mm, (x.t(), gy)))
            else:
                calls.append((torch.mm, (w.t(), gy.t())))
        elif g.kind == "fwd":
            calls.append((torch.mm, (x, w.t())))
        elif g.layer in paired and g.layer in both:
            if g.kind == "wgrad":  # the pair runs once, in the weight gradient's place
                calls.append((ops.linear_grads, (gy, x, w)))
        elif g.kind == "wgrad":
            calls.append((torch.mm, (gy.t(), x)))
        else:
            calls.append((torch.mm, (gy, w)))

    def replay():
        for fn, args in calls:
            fn(*args)

    return replay


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def kernel_usage() -> tuple[float, int]:
    """(seconds of CPU time in the kernel, minor page faults) of this process so far, every
    thread (getrusage)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_stime, use.ru_minflt


def interleaved(fns: dict, rounds: int, before: Callable[[], object] | None = None,
                kernel: dict | None = None) -> dict:
    """Interleaved timing: each round calls every function once, in an order drawn afresh each
    round (seeded, so a run is repeatable); ``before``, when given, runs untimed before each
    call. Returns {name: [seconds per call]}. The garbage collector is off while timing.
    ``kernel``, when given (a dict), receives {name: {"sys_ms": kernel CPU time per call, all
    threads, "faults": minor page faults per call}}, means over the rounds from getrusage read
    outside the timed window: the operating system's share of a call (page faults of fresh
    memory, returning it), which other variants' allocations change from round to round.

    A call's time depends on the call before it (what the caches hold): ours at T N = 64, 2
    threads, took 3.84 ms (median) after itself, 4.02 after shared and 4.17 after bench_cpu's
    GEMM replay; shared 3.95, 4.07 and 4.28. A fixed order, even rotated, gives each function
    mostly one predecessor (bench_cpu's ours followed the replay in 7 rounds of 8) and so a bias
    of that size; with the order drawn, every function follows every other alike."""
    names = list(fns)
    samples = {name: [] for name in names}
    sys_s = dict.fromkeys(names, 0.0)
    faults = dict.fromkeys(names, 0)
    order = random.Random(0)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name in order.sample(names, len(names)):
                fn = fns[name]
                if before is not None:
                    before()
                if kernel is not None:
                    use0 = kernel_usage()
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
                if kernel is not None:
                    use1 = kernel_usage()
                    sys_s[name] += use1[0] - use0[0]
                    faults[name] += use1[1] - use0[1]
    finally:
        if was_enabled:
            gc.enable()
    if kernel is not None:
        for name in names:
            kernel[name] = {"sys_ms": 1e3 * sys_s[name] / max(rounds, 1),
                            "faults": faults[name] / max(rounds, 1)}
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between order statistics."""
    v = sorted(values)
    if not v:
        return math.nan
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summary_ms(values: Sequence[float]) -> dict:
    return {
        "median": 1e3 * percentile(values, 50),
        "p10": 1e3 * percentile(values, 10),
        "p90": 1e3 * percentile(values, 90),
        "min": 1e3 * min(values),
        "rounds": len(values),
    }


# ----------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------

# The device types whose allocation events torch.profiler counts as CPU memory.
_CPU_MEMORY_DEVICES = ("CPU", "MKLDNN", "IDEEP")


def peak_cpu_memory(fn: Callable[[], object]) -> dict:
    """Peak of the memory torch allocates on the CPU during one call of ``fn``, above what was
    allocated when the call started (CPU torch has no ``memory_allocated`` counter).

    The call runs under ``torch.profiler.profile(profile_memory=True)``, which receives an event
    from torch's CPU allocator for every allocation (+bytes) and every free (-bytes) of a block
    allocated while profiling, each with its time. The running sum of these events in time order
    is the memory held by the blocks the call allocated; its maximum is the peak. ``fn``'s return
    value is dropped inside the profiled region, so the outputs count at the peak and their frees
    end the sum. Blocks allocated before the call and freed during it are not reported by the
    allocator (it only knows the sizes of blocks allocated while profiling), so a call that frees
    older tensors reads as an upper bound; the benchmark's calls free none.

    Returns ``{"peak_bytes", "allocated_bytes" (sum of all allocations), "end_bytes" (still held
    when the call returned and its result was dropped), "allocations" (count)}``.
    """
    gc.collect()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError as e:  # the raw event list is reached through a private attribute
        raise RuntimeError(f"torch {torch.__version__}: no profiler events to measure memory "
                           f"from ({e})") from e
    records = [(e.start_ns(), i, e.nbytes()) for i, e in enumerate(events)
               if e.name() == "[memory]"
               and str(e.device_type()).split(".")[-1] in _CPU_MEMORY_DEVICES]
    records.sort()  # time order; ties keep the order the profiler recorded them in
    held = peak = allocated = count = 0
    for _, _, nbytes in records:
        held += nbytes
        peak = max(peak, held)
        if nbytes > 0:
            allocated += nbytes
            count += 1
    return {"peak_bytes": peak, "allocated_bytes": allocated, "end_bytes": held,
            "allocations": count}


# ----------------------------------------------------------------------------------------------
# Agreement
# ----------------------------------------------------------------------------------------------


def loss_and_grads(loss_fn, mi, x, z, perm, shuffled_grad, wrt):
    loss = loss_fn(mi, x, z, perm, shuffled_grad)
    grads = torch.autograd.grad(loss, wrt)
    return loss.detach(), [g.detach() for g in grads]


def relative_errors(ref, other) -> tuple[float, float]:
    """(|loss - loss_ref| / max(|loss_ref|, 1), max over tensors of
    max|g - g_ref| / max(max|g_ref|, 1e-12))."""
    (l_ref, g_ref), (l, g) = ref, other
    loss_err = abs(float(l) - float(l_ref)) / max(abs(float(l_ref)), 1.0)
    grad_err = 0.0
    for a, b in zip(g_ref, g):
        scale = max(float(a.abs().max()), 1e-12)
        grad_err = max(grad_err, float((a - b).abs().max()) / scale)
    return loss_err, grad_err

"""The mutual-information chain T(x, z) and the NWJ estimate of I(x; z).

``I(x; z) >= mean_i T(x_i, z_i) - mean_i exp(T(x_i, z_perm(i)) - 1)``.

The pair ``T(x, z)``, ``T(x, z[perm])`` is evaluated the shared way whenever the chain allows:
``data(x)`` and ``latent(z)`` once, the first MLP layer ``W [hx; hz] + b`` split into
``hx @ Wx.T`` (computed once for both halves) and ``hz @ Wz.T`` (gathered through ``perm`` for the
shuffled half), then the fused ops (the ``*_op`` modules). When no gradient can flow from the
shuffled scores, only the joint rows build a graph (the joint-graph evaluation). Chains that do not
allow the shared evaluation (first MLP layer not a Linear, an activation the kernels do not run,
batch-coupled layers) take the exact two-call path ``T(x, z)``, ``T(x, z_shuffle)``.
:func:`~infomax_ext.use_path` chooses among these paths; :class:`DataHalfCache` keeps the data half
for later evaluations on the same data and weights.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Sequence, cast

import torch
from torch import nn

from . import (_ops, critic_chain_op, critic_head_op, critic_mlp_op, distributed,
               distributed_bounds, nwj_bound_op, paired_linear_op, reference, widths)
from .all_pairs import all_pairs_bound
from .bounds import NWJ, Bound, resolve_bound
from ._builders import Built, builder_config, check_layers, check_size, head, linear, mlp, parse_size
from .activations import ActivationLike, apply_activation, identity
from .chain_plan import (CHAIN_FORWARDS, FusedPlan, LinearEnds, NoFusedPlan, fused_plan,
                         fused_plan_reasons)
from .validation import as_count, is_integer_scalar
from .vae import Init

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

NEGATIVES = ("shuffle", "all")
"""How the negatives of a bound are drawn: a seeded shuffle of the codes, or all pairs."""

__all__ = [
    "MutualInfoChain",
    "MIScores",
    "FusedPlan",
    "NoFusedPlan",
    "fused_plan",
    "fused_plan_reasons",
    "PairedBound",
    "shuffle_latent",
    "latent_permutation",
    "draw_seed",
    "paired_mutual_info",
    "DataHalfCache",
    "variational_mutual_info",
]


class MIScores(NamedTuple):
    """Scores of the MI chain: ``joint`` = T(x, z) and ``shuffled`` = T(x, z_shuffle), each (M,)."""

    joint: torch.Tensor
    shuffled: torch.Tensor


class PairedBound(NamedTuple):
    """The MI ``bound`` (0-dim; NWJ unless another was asked for) with the ``joint`` scores and
    the ``shuffled`` scores (the negatives) it came from."""

    bound: torch.Tensor
    joint: torch.Tensor
    shuffled: torch.Tensor


def check_batch(x: torch.Tensor, z: torch.Tensor | None = None, *,
                what: str = "the MI bound") -> int:
    """Batch size of ``x``; raises when it is under 2 or when ``z`` has a different batch size."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a tensor with a batch dimension, got {type(x).__name__}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(
            f"{what} needs a batch of at least 2 samples (the latent codes are shuffled across "
            f"the batch; 64 or more recommended), got a batch of {n}"
        )
    if z is not None:
        if z.dim() != 2:
            raise ValueError(f"z must be (N, d), got shape {tuple(z.shape)}")
        if z.shape[0] != n:
            raise ValueError(f"x and z batch sizes differ: x has {n} samples, z has {z.shape[0]}")
    return n


class MutualInfoChain(Built):
    """The critic T(x, z) of the InfoMax VAE.

    ``mi(x, z) = mlp(cat([data(x), latent(z)], dim=1)).squeeze(-1)``: x (N, *data_shape),
    z (N, d), scores (N,). ``data`` must flatten non-flat inputs; ``data`` and ``latent`` must act
    per sample; ``mlp`` ends with a single output unit. :meth:`from_sizes` builds the default
    chain and records its ``config``; ``from_config`` rebuilds it.
    """

    widths_through = (("data",), ("mlp",))  # see widths.py

    def __init__(self, data: nn.Module, latent: nn.Module, mlp: nn.Module):
        super().__init__()
        widths.check_chain(data, latent, mlp, "mi.")
        self.data, self.latent, self.mlp = data, latent, mlp

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_batch(x, z, what="MutualInfoChain")
        h = None
        try:
            h = torch.cat([self.data(x).reshape(x.shape[0], -1), self.latent(z)], dim=1)
            scores: torch.Tensor = self.mlp(h).squeeze(-1)
            return scores
        except RuntimeError as exc:
            widths.explain(exc, {"mi.data": (self.data, x), "mi.latent": (self.latent, z),
                                 "mi.mlp": (self.mlp, h)})
            raise

    @classmethod
    def from_sizes(
        cls,
        size_input: int | Sequence[int],
        n_latent: int,
        mlp_neurons: Sequence[int],
        mlp_activations: Sequence[ActivationLike],
        output_activation: ActivationLike = identity,
        *,
        init: Init = nn.init.xavier_uniform_,
    ) -> "MutualInfoChain":
        """The default chain of the Julia package.

        ``data`` = [Flatten] + Linear(n_in, n_in) (n_in = product of ``size_input`` when a
        shape), ``latent`` = Linear(n_latent, n_latent), ``mlp`` = Linear(n_in + n_latent, h1),
        act1, ..., Linear(h_k, 1), output_activation. Weights drawn by ``init`` (Glorot uniform
        by default), biases zero.
        """
        n_in, shape = parse_size("size_input", size_input)
        check_size("n_latent", n_latent)
        mlp_neurons = check_layers("mlp_neurons", mlp_neurons, "mlp_activations", mlp_activations)
        flatten = [nn.Flatten()] if shape is not None else []
        data = nn.Sequential(*flatten, linear(n_in, n_in, init))
        latent = linear(n_latent, n_latent, init)
        width = mlp_neurons[-1] if mlp_neurons else n_in + n_latent
        layers = [*mlp(n_in + n_latent, mlp_neurons, mlp_activations, init),
                  *head(width, 1, output_activation, init)]
        chain = cls(data, latent, nn.Sequential(*layers))
        chain.config = builder_config(
            cls.__name__, size_input=size_input, n_latent=n_latent, mlp_neurons=mlp_neurons,
            mlp_activations=list(mlp_activations), output_activation=output_activation,
        )
        return chain


# ----------------------------------------------------------------------------------------------
# Permutations
# ----------------------------------------------------------------------------------------------


# The shared evaluations compute MutualInfoChain's forward without calling it (a subclass with a
# forward of its own takes two calls).
CHAIN_FORWARDS.add(MutualInfoChain.forward)

def draw_seed() -> int:
    """A 63-bit seed drawn from torch's global generator (used when ``seed=None``)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def latent_permutation(n: int, n_samples: int = 1, seed: int | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Row permutation (S N,) for S = ``n_samples`` blocks of ``n`` codes.

    Block ``s`` is shuffled within itself by ``seeded_permutation(n, seed + s)``, so block 0 is
    exactly the permutation :func:`shuffle_latent` applies for the same seed. ``n_samples`` and
    ``seed`` may be Python, numpy or 0-dim torch integers.
    """
    n_samples = as_count("n_samples", n_samples)
    if seed is None and torch.compiler.is_compiling():
        return _traced_permutation(n, n_samples, device)
    if seed is None:
        seed = draw_seed()
    seed = _ops.seed_to_int64(seed)  # a TypeError naming the seed before seed + s, never 1.5 -> 1
    if n_samples == 1:
        return _ops.seeded_permutation(n, seed, device)
    return torch.cat([
        _ops.seeded_permutation(n, seed + s, device) + s * n for s in range(n_samples)
    ])


def _traced_permutation(n: int, n_samples: int, device: torch.device | str) -> torch.Tensor:
    """:func:`latent_permutation` for ``seed=None`` while torch.compile traces: each block a
    ``torch.randperm`` drawn from torch's global generator inside the graph (a drawn seed's value
    would be a data-dependent int, a graph break), uniform over the permutations of the block, as
    a seeded permutation for a seed drawn at random is."""
    blocks = [torch.randperm(n, device=device) + s * n for s in range(n_samples)]
    return blocks[0] if n_samples == 1 else torch.cat(blocks)


def shuffle_latent(z: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Rows of ``z`` (N, d) permuted across the batch (a row may stay in place).

    The same seed gives the same permutation on every call and every device; ``seed=None``
    draws a seed from torch's global generator."""
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be a (N, d) tensor, got {getattr(z, 'shape', type(z).__name__)}")
    return z[latent_permutation(z.shape[0], 1, seed, z.device)]


# ----------------------------------------------------------------------------------------------
# Paired evaluation
# ----------------------------------------------------------------------------------------------


class DataHalfCache:
    """The MI chain's data half ``data(x) @ Wx.T`` (the first layer's data columns), computed once
    and reused by the later evaluations of the bound on the same data and weights.

    Pass one as ``data_half_cache`` to :func:`paired_mutual_info` (or to ``infomaxloss``,
    ``miloss``). Its owner promises that, while it passes the cache, neither the data, the
    chain's ``data`` network nor its first-layer weight changes in place. ``train_step`` owns one per step: its VAE loss
    and its MI loss see the same x and the same MI weights (the MI loss comes before the MI
    update), so the MI loss skips one (N x Dx) @ (Dx x H) product when ``data(x)`` needs no
    gradient; the cache's last use comes before the MI update. An entry is found by the memory
    ``data(x)`` occupies (the same elements in the same layout: ``x`` itself, or a view of it for
    a chain whose ``data`` has no parameters) and by the weight tensor, each with its version
    counter (an in-place change of either, such as an optimizer step or ``load_state_dict``,
    makes the entry unreachable); it keeps both alive, so no other tensor can take that memory
    while the cache exists. Only data halves without gradient are kept (``data(x)`` needs none:
    no parameters of its own, or frozen, and x constant); while torch.compile traces, none is
    used.
    :meth:`clear` empties the cache (after an in-place change, for instance).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every data half."""
        self._entries.clear()

    def get(self, hx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """``hx @ weight[:, :Dx].T`` without gradient, kept or computed now and kept; None when
        ``hx`` needs gradient or while torch.compile traces."""
        if torch.compiler.is_compiling() or hx.requires_grad:
            return None
        # The version counters make an entry unreachable after an in-place change of the data or
        # the weight (an optimizer step, load_state_dict, an edit under torch.no_grad).
        key = (hx.data_ptr(), tuple(hx.shape), hx.stride(), hx.dtype, hx.device, hx._version,
               id(weight), weight._version)
        entry = self._entries.get(key)
        if entry is None:
            with torch.no_grad():
                entry = self._entries[key] = (hx, weight, _data_half(hx, weight))
        return entry[2]


def _data_half(hx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``hx @ Wx.T`` (N, H): the first layer's data columns applied to data(x)."""
    return torch.mm(hx, weight[:, :hx.shape[1]].t())


def _kept_data_half(cache: DataHalfCache | None, hx: torch.Tensor,
                    weight: torch.Tensor) -> torch.Tensor | None:
    return None if cache is None else cache.get(hx, weight)


def paired_mutual_info(
    mi: nn.Module,
    x: torch.Tensor,
    z: torch.Tensor,
    perm: torch.Tensor | None = None,
    *,
    z_shuffle: torch.Tensor | None = None,
    shuffled_grad: bool = False,
    data_half_cache: DataHalfCache | None = None,
    bound: str | Bound = "nwj",
) -> PairedBound:
    """The MI ``bound`` of ``mi`` on joint pairs (x, z) and shuffled pairs (x, z[perm]).

    Shapes: x (N, ...), z (M, d) with M = S N (sample block s pairs row s N + i with x[i]),
    perm (M,) int64. Instead of ``perm``, an explicit ``z_shuffle`` (M, d) may be given.
    ``shuffled_grad=False`` treats the shuffled codes as constants (the Julia code);
    ``True`` lets the gradient reach ``z`` through both terms (the paper's code). The chain's
    own parameters get gradient from both terms either way. ``data_half_cache``
    (:class:`DataHalfCache`) keeps the data half for later evaluations on the same data and
    weights. Which evaluation runs is chosen by :func:`~infomax_ext.use_path`. ``bound``: a name
    of :data:`~infomax_ext.bounds.BOUNDS` (not ``"infonce"``, which needs all pairs: see
    :func:`shuffled_bound`) or a :class:`~infomax_ext.bounds.Bound`; default ``"nwj"``.
    """
    n, m = _check_pairs(x, z, perm, z_shuffle)
    bound = _shuffled_pairs_bound(bound)
    path = _ops.current_path()
    plan = None if path == "two_call" else fused_plan(mi)
    if not isinstance(plan, FusedPlan):
        return _two_call_bound(mi, x, z, perm, z_shuffle, shuffled_grad, bound)
    if plan.ends is not None and perm is not None:
        folded = _linear_ends_bound(plan, plan.ends, x, z, perm, shuffled_grad, bound)
        if folded is not None:
            return folded
    try:
        hx = mi.data(x)  # type: ignore[operator]  # a chain's parts are modules
        hz = mi.latent(z)  # type: ignore[operator]
    except RuntimeError as exc:
        widths.explain(exc, {"mi.data": (mi.data, x), "mi.latent": (mi.latent, z)})
        raise
    if hx.dim() != 2 or hx.shape[0] != n:  # (N, Dx) as it is: no view, no ViewBackward node
        hx = hx.reshape(n, -1)
    weight = plan.first.weight
    dx = hx.shape[1]
    if dx + hz.shape[1] != weight.shape[1]:
        raise ValueError(
            f"the MI chain's first layer takes {weight.shape[1]} features but data(x) gives {dx} "
            f"and latent(z) gives {hz.shape[1]}"
        )
    # A first-layer weight that needs gradient is a parameter that does: the shuffled half needs
    # its graph, found without walking the chain's parameters.
    if path != "fused" and not weight.requires_grad and not _shuffled_half_needs_graph(
            mi, x, z if z_shuffle is None else z_shuffle, shuffled_grad):
        hz_shuffled = None if z_shuffle is None else cast(nn.Module, mi.latent)(z_shuffle.detach())
        return _joint_graph_bound(plan, hx, hz, perm, data_half_cache, hz_shuffled, bound)
    if z_shuffle is not None:
        source = mi.latent(z_shuffle if shuffled_grad else z_shuffle.detach())  # type: ignore[operator]
        perm = torch.arange(m, device=z.device)
    elif not shuffled_grad and z.requires_grad:
        source = mi.latent(z.detach())  # type: ignore[operator]
    else:
        source = None
    data_half = _kept_data_half(data_half_cache, hx, weight)
    value: torch.Tensor | None
    if plan.stack is not None:
        assert plan.head_act is not None and plan.stack_activations is not None  # with a stack
        _, first_bias, head_weight, head_bias, weights, biases = tensors = _chain_tensors(
            plan, weight)
        if _one_node(hx, perm, (hz, source, data_half, *tensors[:4], *weights, *biases)):
            assert perm is not None  # as _one_node found
            value, scores = critic_chain_op.critic_chain(
                hx, hz, source, weight, first_bias, perm, plan.first_act.name,
                plan.first_act.param, data_half, weights, biases, *plan.stack_activations,
                head_weight, head_bias, m, plan.head_act.name, plan.head_act.param)
            return _paired(bound, scores[:m], scores[m:], value)
    h = paired_linear_op.paired_linear(
        hx, hz, source, weight, plan.first.bias, perm,  # type: ignore[arg-type]
        plan.first_act.name, plan.first_act.param, data_half)
    if plan.stack is not None:
        assert plan.head is not None and plan.head_act is not None  # a stack is planned with a head
        assert plan.stack_activations is not None  # built with every stack
        value, scores = critic_mlp_op.critic_mlp(  # the tensors read above
            h, weights, biases, *plan.stack_activations, head_weight.reshape(-1), head_bias, m,
            plan.head_act.name, plan.head_act.param)
        return _paired(bound, scores[:m], scores[m:], value)
    for module in plan.middle:
        h = module(h)
    if plan.head is not None:
        assert plan.head_act is not None  # planned with every head
        value, scores = critic_head_op.critic_head(
            h, plan.head.weight.reshape(-1), plan.head.bias, m, plan.head_act.name,
            plan.head_act.param,
        )
    else:
        if h.dim() != 2 or h.shape[1] != 1:
            raise ValueError(f"the MI chain must end with one output unit, got shape {tuple(h.shape)}")
        scores = h.reshape(-1)
        value = None
    return _paired(bound, scores[:m], scores[m:], value)


def _check_pairs(x: torch.Tensor, z: torch.Tensor, perm: torch.Tensor | None,
                 z_shuffle: torch.Tensor | None) -> tuple[int, int]:
    """(N, M) of :func:`paired_mutual_info`'s arguments, or a ValueError naming the one that
    does not fit, before any work: x with a batch of N >= 2, z (M, d) with M = S N, and exactly
    one of perm ((M,) int64; its entries are checked where they are read) and z_shuffle (M, d)."""
    n = check_batch(x, what="paired_mutual_info")
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be (M, d) codes, got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    m = z.shape[0]
    if m < n or m % n:
        raise ValueError(f"z has {m} codes for x's {n} samples: M must be a multiple S N of the "
                         "batch (S codes per sample, sample block s pairing row s N + i with x[i])")
    if (perm is None) == (z_shuffle is None):
        raise ValueError("paired_mutual_info takes exactly one of perm (a permutation of the M "
                         "codes' rows) and z_shuffle (the shuffled codes)")
    if perm is not None:
        if (not isinstance(perm, torch.Tensor) or tuple(perm.shape) != (m,)
                or perm.dtype != torch.int64):
            got = (f"{perm.dtype} of shape {tuple(perm.shape)}" if isinstance(perm, torch.Tensor)
                   else type(perm).__name__)
            raise ValueError(f"perm must be an int64 tensor of shape ({m},), one entry per code, "
                             f"got {got}")
    elif not isinstance(z_shuffle, torch.Tensor) or z_shuffle.shape != z.shape:
        shape = (str(tuple(z_shuffle.shape)) if isinstance(z_shuffle, torch.Tensor)
                 else type(z_shuffle).__name__)
        raise ValueError(f"z_shuffle must have z's shape {tuple(z.shape)}, got {shape}")
    return n, m


def _chain_tensors(plan: FusedPlan, first_weight: torch.Tensor | None = None) -> tuple[Any, ...]:
    """The chain's tensors from its first layer to the head, each read once per call (a
    parametrized weight is computed on each read): (first weight, first bias, head weight, head
    bias, [stack weights], [stack biases]); the biases may be None; ``first_weight``: the first
    layer's weight where the caller has read it. For a plan with a stack (and so a head)."""
    assert plan.stack is not None and plan.head is not None
    first, head = plan.first, plan.head
    weights, biases = [], []
    for layer, _ in plan.stack:
        weights.append(layer.weight)
        biases.append(layer.bias)
    return (first.weight if first_weight is None else first_weight, first.bias, head.weight,
            head.bias, weights, biases)


def _one_node(hx: torch.Tensor, perm: torch.Tensor | None,
              tensors: Sequence[torch.Tensor | None]) -> bool:
    """Whether the chain from its first layer to the bound runs as one autograd node
    (critic_chain_op.critic_chain): eager mode, a gradient to compute, no torch.autocast on the device,
    every tensor (hx, perm and ``tensors``, where None entries are absent ones) on one device,
    every tensor but perm of one dtype, and the kernels apply to them. Otherwise paired_linear and
    critic_mlp run as two ops (as torch.compile's graphs hold them), whose wrappers cast under
    autocast and name any argument that does not fit."""
    if perm is None or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    device, dtype = hx.device, hx.dtype
    if perm.device != device or torch.is_autocast_enabled(device.type):
        return False
    grad = hx.requires_grad
    for t in tensors:
        if t is not None:
            if t.dtype != dtype or t.device != device:
                return False
            grad = grad or t.requires_grad
    # With every tensor of hx's device and dtype, the kernels apply to all when they apply to hx.
    return grad and _ops.kernels_apply(hx)


def _linear_ends_bound(plan: FusedPlan, ends: LinearEnds, x: torch.Tensor, z: torch.Tensor,
                       perm: torch.Tensor, shuffled_grad: bool,
                       bound: Bound) -> PairedBound | None:
    """The bound with the chain's data and latent Linear layers inside the chain node
    (critic_chain_op.critic_chain_with_linear_ends), or None where that does not apply: as for
    :func:`_one_node` (with x and z for hx and hz), and the modules would run their forward alone,
    x and z are plain tensors of the layers' widths, and data(x) needs gradient (so no data half
    is kept)."""
    if (type(x) is not torch.Tensor or type(z) is not torch.Tensor or z.dim() != 2
            or x.dim() < 2 or (x.dim() > 2 and not ends.flatten) or not ends.runs_as_modules()):
        return None
    data, latent = ends.data, ends.latent
    assert plan.stack_activations is not None and plan.head_act is not None  # a stack, a head
    x = x if x.dim() == 2 else x.flatten(1)
    if (x.shape[1] != data.in_features or z.shape[1] != latent.in_features
            or data.out_features + latent.out_features != plan.first.in_features):
        return None
    data_weight, data_bias, latent_weight, latent_bias = (
        data.weight, data.bias, latent.weight, latent.bias)
    if not (x.requires_grad or data_weight.requires_grad
            or (data_bias is not None and data_bias.requires_grad)):
        return None
    weight, bias, head_weight, head_bias, weights, biases = tensors = _chain_tensors(plan)
    if not _one_node(x, perm, (z, data_weight, data_bias, latent_weight, latent_bias,
                               *tensors[:4], *weights, *biases)):
        return None
    m = z.shape[0]
    value, scores = critic_chain_op.critic_chain_with_linear_ends(
        x, data_weight, data_bias, z, latent_weight, latent_bias,
        not shuffled_grad and z.requires_grad, weight, bias, perm,
        plan.first_act.name, plan.first_act.param, weights, biases, *plan.stack_activations,
        head_weight, head_bias, m, plan.head_act.name, plan.head_act.param)
    return _paired(bound, scores[:m], scores[m:], value)


def _shuffled_pairs_bound(bound: str | Bound) -> Bound:
    bound = resolve_bound(bound)
    if bound.needs_all_pairs:
        raise ValueError(f"bound {bound.name!r} needs every pair of the batch, not shuffled pairs: "
                         "use shuffled_bound(..., negatives='all') or variational_mutual_info")
    return bound


def _paired(bound: Bound, joint: torch.Tensor, shuffled: torch.Tensor,
            nwj_value: torch.Tensor | None = None) -> PairedBound:
    """The PairedBound of ``bound`` on the scores; ``nwj_value`` is the fused ops' NWJ value,
    used as is when the bound is NWJ (the other bounds reduce the scores the ops returned)."""
    if type(bound) is NWJ:
        value = nwj_value if nwj_value is not None else nwj_bound_op.nwj_bound(joint, shuffled)
    else:
        value = bound(joint, shuffled)
    return PairedBound(value, joint, shuffled)


def _shuffled_half_needs_graph(mi: nn.Module, x: torch.Tensor, z: torch.Tensor,
                               shuffled_grad: bool) -> bool:
    """Whether any gradient can flow from the shuffled scores: False when the chain is frozen,
    x needs no gradient and the shuffled codes are constants (the VAE step of train_step)."""
    if not torch.is_grad_enabled() or x.requires_grad or (shuffled_grad and z.requires_grad):
        return True
    return any(p.requires_grad for p in mi.parameters())


def _joint_graph_bound(plan: FusedPlan, hx: torch.Tensor, hz: torch.Tensor,
                       perm: torch.Tensor | None, cache: DataHalfCache | None,
                       hz_shuffled: torch.Tensor | None = None,
                       bound: Bound = NWJ()) -> PairedBound:
    """The shared evaluation when only the joint half needs a graph: the data half once, the
    joint rows with autograd, the shuffled rows (``hz[perm]``, or ``hz_shuffled`` = latent of the
    given shuffled codes) without, so the backward runs on M rows, not 2M."""
    weight, bias = plan.first.weight, plan.first.bias
    dx, m, n = hx.shape[1], hz.shape[0], hx.shape[0]
    data_half = _kept_data_half(cache, hx, weight)
    if data_half is None:
        data_half = _data_half(hx, weight)
    if bias is not None:
        data_half = data_half + bias
    latent_half = torch.mm(hz, weight[:, dx:].t())

    def first_layer(latent_rows: torch.Tensor) -> torch.Tensor:
        pre = (latent_rows.view(m // n, n, -1) + data_half).view(m, -1)
        return apply_activation(pre, plan.first_act.name, plan.first_act.param)

    def rest(h: torch.Tensor) -> torch.Tensor:
        for module in plan.middle:
            h = module(h)
        if plan.head is None:
            return h.reshape(-1)
        out = torch.nn.functional.linear(h, plan.head.weight, plan.head.bias)
        return apply_activation(out, plan.head_act.name,  # type: ignore[union-attr]  # set with head
                                plan.head_act.param).reshape(-1)  # type: ignore[union-attr]

    joint = rest(first_layer(latent_half))
    with torch.no_grad():
        # index_select, not latent_half[perm]: advanced indexing took 160 us on (256, 1000)
        # float32 rows on the CPU, index_select 28 us.
        if hz_shuffled is None:
            assert perm is not None  # the caller gives one of perm and the shuffled codes
            reference.check_perm_entries(perm, m)
            shuffled_half = latent_half.index_select(0, perm)
        else:
            shuffled_half = torch.mm(hz_shuffled, weight[:, dx:].t())
        shuffled = rest(first_layer(shuffled_half))
    return _paired(bound, joint, shuffled)


def _two_call_bound(mi: nn.Module, x: torch.Tensor, z: torch.Tensor, perm: torch.Tensor | None,
                    z_shuffle: torch.Tensor | None, shuffled_grad: bool,
                    bound: Bound = NWJ()) -> PairedBound:
    """The exact two-call evaluation ``T(x, z)``, ``T(x, z_shuffle)`` for any chain."""
    n, m = x.shape[0], z.shape[0]
    x_rep = x.repeat(m // n, *([1] * (x.dim() - 1))) if m != n else x
    if z_shuffle is None:
        assert perm is not None  # the caller gives one of perm and the shuffled codes
        reference.check_perm_entries(perm, m)  # z[perm] would wrap a negative entry around
        z_shuffle = (z if shuffled_grad else z.detach())[perm]
    elif not shuffled_grad:
        z_shuffle = z_shuffle.detach()
    joint, shuffled = mi(x_rep, z), mi(x_rep, z_shuffle)
    return _paired(bound, joint, shuffled)


def shuffled_bound(mi: nn.Module, x: torch.Tensor, z: torch.Tensor, n_samples: int = 1,
                   seed: int | None = None, *, shuffled_grad: bool = False,
                   process_group: ProcessGroup | None = None,
                   data_half_cache: DataHalfCache | None = None,
                   bound: str | Bound = "nwj", negatives: str = "shuffle") -> PairedBound:
    """:func:`paired_mutual_info` of ``mi`` on x (N, ...) and its codes z (S N, d), the shuffled
    pairs drawn by ``latent_permutation(N, S, seed)``.

    With a ``process_group`` (torch.distributed), each process passes its own rows and the
    shuffle runs over the whole batch, all processes' rows in rank order, with the permutation
    ``latent_permutation`` gives that batch for rank 0's seed: the shuffled codes of this process's
    codes are gathered (:func:`~infomax_ext.distributed.shuffled_codes`) and evaluated as the
    shuffled codes of the same fused path. The bound returned is the mean of its terms over this
    process's rows (:mod:`infomax_ext.distributed`). ``data_half_cache`` as in
    :func:`paired_mutual_info`.

    ``bound``: a name of :data:`~infomax_ext.bounds.BOUNDS` or a
    :class:`~infomax_ext.bounds.Bound` (default ``"nwj"``). ``negatives``: ``"shuffle"`` (the
    permuted codes above) or ``"all"`` (every x_i with every code z_j, j != i, of the whole
    batch: :func:`~infomax_ext.all_pairs.all_pairs_bound`, one sample block only); ``"infonce"``
    always takes all pairs. With a ``process_group``, the value averaged over the processes is
    the whole batch's bound for every bound (:mod:`infomax_ext.distributed_bounds`)."""
    n = x.shape[0]
    bound = resolve_bound(bound)
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(map(repr, NEGATIVES))}, got "
                         f"{negatives!r}")
    if negatives == "all" or bound.needs_all_pairs:
        if z.shape[0] != n:
            raise ValueError(f"all-pairs negatives take one code per sample (n_samples=1): x has "
                             f"{n} rows, z {z.shape[0]}")
        if process_group is not None:
            distributed.agree_on_batch(process_group, n, z, 0)
        value, joint, negs = all_pairs_bound(mi, x, z, bound, shuffled_grad=shuffled_grad,
                                             process_group=process_group)
        return PairedBound(value, joint, negs)
    if process_group is None:
        perm = latent_permutation(n, n_samples, seed, z.device)
        return paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad,
                                  data_half_cache=data_half_cache, bound=bound)
    agreed = distributed.agree_on_batch(process_group, n, z, draw_seed() if seed is None else seed,
                                        shuffled_grad)
    perm = latent_permutation(agreed.world_size * n, n_samples, agreed.seed, z.device)
    z_shuffled = distributed.shuffled_codes(z, n, perm, agreed, process_group, shuffled_grad)
    # A bound that keeps state (DV's moving average) takes in the whole batch once, in
    # bound_over_group below, never this process's pairs alone.
    paired = paired_mutual_info(mi, x, z, z_shuffle=z_shuffled, shuffled_grad=shuffled_grad,
                                data_half_cache=data_half_cache,
                                bound=bound.without_state_update())
    if bound.reduction == "mean":
        return paired
    value = distributed_bounds.bound_over_group(bound, paired.joint, paired.shuffled, process_group)
    return PairedBound(value, paired.joint, paired.shuffled)


def variational_mutual_info(model: nn.Module, x: torch.Tensor, z: torch.Tensor | None = None,
                            z_shuffle: torch.Tensor | int | None = None, *,
                            seed: int | None = None, shuffled_grad: bool = False,
                            process_group: ProcessGroup | None = None,
                            bound: str | Bound = "nwj", negatives: str = "shuffle") -> torch.Tensor:
    """Variational estimate of I(x; z) (NWJ by default), a 0-dim tensor.

    Forms (``model`` is a :class:`MutualInfoChain` or an ``InfoMaxVAE``):

    - ``variational_mutual_info(mi, x, z, z_shuffle)``: the chain on given codes and shuffled codes;
    - ``variational_mutual_info(model, x, z, z_shuffle)``: the same with ``model.mi``;
    - ``variational_mutual_info(model, x, seed=None)``: encodes x, samples z, shuffles, evaluates;
    - ``variational_mutual_info(mi, x, z, seed=None)``: shuffles ``z`` internally with the
      permutation ``shuffle_latent(z, seed)`` uses (the drop-in form for any encoder's codes).

    ``I = mean(T(x, z)) - mean(exp(T(x, z_shuffle) - 1))``. x (N, ...), z and z_shuffle (N, d).
    ``shuffled_grad`` (internal-shuffle forms) lets the gradient reach z through the shuffled
    term too; by default the shuffled codes are constants. ``process_group`` (internal-shuffle
    forms): each process passes its own rows and the codes are shuffled over all processes'
    rows; the value is the mean of the bound's terms over this process's rows (see
    :func:`shuffled_bound`). ``bound`` and ``negatives`` as in :func:`shuffled_bound`
    (``bound="infonce"`` or ``negatives="all"`` take no ``z_shuffle``).
    """
    if is_integer_scalar(z_shuffle):  # the seed given by position
        seed, z_shuffle = z_shuffle, None  # type: ignore[assignment]
    mi = model.mi if hasattr(model, "mi") and hasattr(model, "vae") else model
    if not isinstance(mi, nn.Module):
        raise TypeError(f"model must be a MutualInfoChain or an InfoMaxVAE, got {type(model).__name__}")
    if z is None:
        if mi is model:
            raise ValueError("variational_mutual_info(mi, x) needs the latent codes z")
        check_batch(x)
        z = model.vae.sample_latent(model.vae.encoder(x))  # type: ignore[union-attr,operator]
    check_batch(x, z)
    if z_shuffle is not None:
        if z_shuffle.shape != z.shape:  # type: ignore[union-attr]  # an int seed was taken above
            raise ValueError(f"z_shuffle has shape {tuple(z_shuffle.shape)} "  # type: ignore[union-attr]
                             f"but z has {tuple(z.shape)}")
        if process_group is not None:
            raise ValueError("process_group applies to the internal-shuffle forms; with z_shuffle "
                             "given, nothing is shuffled")
        if negatives != "shuffle":
            raise ValueError(f"negatives={negatives!r} pairs the codes itself; give no z_shuffle")
        return paired_mutual_info(mi, x, z, z_shuffle=cast(torch.Tensor, z_shuffle),
                                  shuffled_grad=True, bound=bound).bound
    return shuffled_bound(mi, x, z, seed=seed, shuffled_grad=shuffled_grad,
                          process_group=process_group, bound=bound, negatives=negatives).bound

"""The MI chain from its first Linear layer to the NWJ bound as one autograd node: what
``critic_mlp(paired_linear(hx, hz, ...), weights, ...)`` computes, for eager mode with a gradient
to compute.

:func:`critic_chain` takes paired_linear's arguments (``hx`` (N, Dx), ``hz`` (M, Dz),
``hz_shuffled`` (M, Dz) or None, ``weight`` (H_0, Dx + Dz), ``bias`` (H_0,) or None, ``perm``
(M,), ``data_half`` (N, H_0) or None) then critic_mlp's after its ``hidden`` (the hidden layers,
the head, ``n_joint`` = M), and returns ``(bound, scores)``: the 0-dim NWJ bound and the (2M,)
scores. Not an op of its own: the node runs ``paired_linear_forward`` and ``critic_mlp_forward``,
its backward ``critic_mlp_backward`` and ``paired_linear_backward``; under torch.compile the
callers use the two ops (:mod:`~infomax_ext.paired_linear_op`, :mod:`~infomax_ext.critic_mlp_op`).
:func:`critic_chain_with_linear_ends` is the same node with the chain's single-Linear ``data``
and ``latent`` layers inside (x (N, Dx_in) and z (M, Dz_in) in place of hx and hz).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from . import precision
from ._op_autograd import OPS, below_autograd, grad_if, refuse_double_backward
from .activations import OUTPUT_DERIVATIVE_ACTIVATIONS
from .critic_mlp_op import _critic_mlp_forward, _layer_lists
from .paired_linear_op import refuse_grad_of_data_half

__all__ = ["critic_chain", "critic_chain_with_linear_ends"]


def _chain_forward(ctx: Any, layout: tuple[Any, ...], hx: torch.Tensor, hz: torch.Tensor,
                   hz_shuffled: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
                   perm: torch.Tensor, data_half: torch.Tensor | None, head_weight: torch.Tensor,
                   head_bias: torch.Tensor | None, layer_tensors: tuple[torch.Tensor, ...],
                   extra: tuple[torch.Tensor, ...] = (),
                   source_is_hz: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain's forward below autograd, saving what :func:`_chain_backward` reads, then the
    ``extra`` tensors of the calling node (:func:`_chain_extra` returns them). With
    ``source_is_hz`` the shuffled rows' source codes are ``hz`` itself (the same values): the
    forward reads the shuffled half from the latent half (one product fewer) and the backward
    still returns the shuffled rows' gradient apart."""
    mlp_layout, activation, param = layout
    refuse_grad_of_data_half(data_half)
    with below_autograd():
        hidden, computed_data, latent, source = OPS.paired_linear_forward.default(
            hx, hz, None if source_is_hz else hz_shuffled, weight, bias, perm, activation, param,
            data_half)
    bound, scores, outputs, pres = _critic_mlp_forward(mlp_layout, hidden,
                                                       head_weight.reshape(-1), head_bias,
                                                       layer_tensors)
    ctx.set_materialize_grads(False)
    ctx.layout = layout
    ctx.n_outputs = len(outputs)
    ctx.n_extra = len(extra)
    ctx.from_output = activation in OUTPUT_DERIVATIVE_ACTIVATIONS
    halves = () if ctx.from_output else (
        computed_data if data_half is None else data_half, latent,
        None if hz_shuffled is None else (latent if source_is_hz else source))
    ctx.save_for_backward(hx, hz, hz_shuffled, weight, bias, perm, hidden, head_weight,
                          head_bias, scores, *outputs, *pres, *layer_tensors, *halves, *extra)
    return bound, scores


def _chain_extra(ctx: Any) -> tuple[torch.Tensor, ...]:
    """The ``extra`` tensors :func:`_chain_forward` saved."""
    saved = ctx.saved_tensors
    return tuple(saved[len(saved) - ctx.n_extra:])


def _chain_backward(ctx: Any, need: Sequence[bool], grad_bound: torch.Tensor | None,
                    grad_scores: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The gradients of _CriticChain.apply's arguments (None where ``need``, in that order, is
    False) from what :func:`_chain_forward` saved."""
    mlp_layout, activation, param = ctx.layout
    layers, has_bias, activations, params, n_joint, head_act, head_param = mlp_layout
    saved = ctx.saved_tensors
    saved = saved[:len(saved) - ctx.n_extra]
    hx, hz, hz_shuffled, weight, bias, perm, hidden, head_weight, head_bias, scores = saved[:10]
    k = 10 + ctx.n_outputs
    outputs, pres = list(saved[10:k]), list(saved[k:k + layers + 1])
    n_layer_tensors = layers + sum(has_bias)
    layer_tensors = saved[k + layers + 1:k + layers + 1 + n_layer_tensors]
    halves = saved[k + layers + 1 + n_layer_tensors:]
    weights, biases = _layer_lists(layers, has_bias, layer_tensors)
    refuse_double_backward("critic_chain", grad_bound, grad_scores, hx, hz, hz_shuffled, weight,
                           bias, head_weight, head_bias, *layer_tensors)
    head_shape, head_weight = head_weight.shape, head_weight.reshape(-1)
    # (layout, hx, hz, hz_shuffled, weight, bias, perm, data_half, head_weight, head_bias,
    #  *layer_tensors)
    first_need = [need[1], need[2], need[3], need[4], need[5]]
    need_w = list(need[10:10 + layers])
    need_b_present = iter(need[10 + layers:])
    need_b = [bool(next(need_b_present)) if present else False for present in has_bias]
    mask = [any(first_need), *need_w, *need_b, need[8], head_bias is not None and need[9]]
    none = (None,) * (10 + len(layer_tensors))
    if not any(mask) or (grad_bound is None and grad_scores is None):
        return none
    if grad_bound is None:
        grad_bound = hidden.new_zeros((), dtype=precision.bound_dtype(hidden.dtype))
    g_hidden, g_weights, g_biases, g_head_w, g_head_b = OPS.critic_mlp_backward.default(
        grad_bound, grad_scores, hidden, weights, biases, activations, params, head_weight,
        head_bias, scores, outputs, pres, n_joint, head_act, head_param, mask)
    first_grads: Sequence[torch.Tensor | None] = (None,) * 5
    if mask[0]:
        if ctx.from_output:
            # With out given the halves are not read: hidden stands in for them (no
            # placeholder to allocate).
            data, latent, source = hidden, hidden, (hidden if hz_shuffled is not None else None)
            out = hidden
        else:
            data, latent, source = halves
            out = None
        grads = OPS.paired_linear_backward.default(
            g_hidden, hx, hz, hz_shuffled, weight, data, latent, source, bias, perm,
            activation, param, first_need, out)
        first_grads = [grad_if(wanted, g) for wanted, g in zip(first_need, grads)]
    grads_b = [grad_if(wanted, g) for wanted, g, present in zip(need_b, g_biases, has_bias)
               if present]
    return (None, *first_grads, None, None,
            g_head_w.view(head_shape) if mask[-2] else None,
            grad_if(mask[-1], g_head_b),
            *[grad_if(w, g) for w, g in zip(need_w, g_weights)], *grads_b)


class _CriticChain(torch.autograd.Function):
    """paired_linear then critic_mlp as one node (the MI chain from its first Linear layer to the
    NWJ bound): the forward runs paired_linear_forward and critic_mlp_forward, the backward
    critic_mlp_backward and paired_linear_backward, so a call builds one node instead of two and
    the first layer's output, which both keep, is saved once. ``apply`` takes the tensors spread
    out: ``layout`` = (critic_mlp's layout as in _CriticMlp, the first layer's activation and param),
    then hx, hz, hz_shuffled, first weight, first bias, perm, data_half, head_weight, head_bias,
    the hidden layers' weights and their present biases. head_weight is (H,) or the head Linear's
    own (1, H) weight, flattened inside the node (no view node of its own); its gradient has its
    shape."""

    @staticmethod
    def forward(ctx: Any, layout: tuple[Any, ...], hx: torch.Tensor, hz: torch.Tensor,
                hz_shuffled: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
                perm: torch.Tensor, data_half: torch.Tensor | None, head_weight: torch.Tensor,
                head_bias: torch.Tensor | None, *layer_tensors: torch.Tensor) -> Any:
        return _chain_forward(ctx, layout, hx, hz, hz_shuffled, weight, bias, perm, data_half,
                              head_weight, head_bias, layer_tensors)

    @staticmethod
    def backward(ctx: Any, grad_bound: torch.Tensor | None,
                 grad_scores: torch.Tensor | None) -> Any:
        return _chain_backward(ctx, ctx.needs_input_grad, grad_bound, grad_scores)


class _LinearEndsChain(torch.autograd.Function):
    """The chain with its ``data`` and ``latent`` networks when each is one Linear layer (the
    chain of ``MutualInfoChain.from_sizes``) as one node: hx = x Wd^T + bd and hz = z Wl^T + bl
    (``F.linear``, the modules' own forward) then _CriticChain's forward; the backward returns
    the two layers' gradients too, so a call builds one node where the modules' calls build
    five more (two products with their transposes, and the shuffled codes' second latent call).
    ``apply`` takes ``layout`` (as _CriticChain), ``source_is_hz`` (the shuffled codes are z's
    own values, constants for z: shuffled_grad=False with z needing gradient), then x, Wd, bd, z,
    Wl, bl, and _CriticChain's arguments from the first weight on (without data_half)."""

    @staticmethod
    def forward(ctx: Any, layout: tuple[Any, ...], source_is_hz: bool, x: torch.Tensor,
                data_weight: torch.Tensor, data_bias: torch.Tensor | None, z: torch.Tensor,
                latent_weight: torch.Tensor, latent_bias: torch.Tensor | None,
                weight: torch.Tensor, bias: torch.Tensor | None, perm: torch.Tensor,
                head_weight: torch.Tensor, head_bias: torch.Tensor | None,
                *layer_tensors: torch.Tensor) -> Any:
        with below_autograd():
            hx = F.linear(x, data_weight, data_bias)
            hz = F.linear(z, latent_weight, latent_bias)
        ctx.source_is_hz = source_is_hz
        return _chain_forward(ctx, layout, hx, hz, hz if source_is_hz else None, weight, bias,
                              perm, None, head_weight, head_bias, layer_tensors,
                              extra=(x, z, data_weight, latent_weight), source_is_hz=source_is_hz)

    @staticmethod
    def backward(ctx: Any, grad_bound: torch.Tensor | None,
                 grad_scores: torch.Tensor | None) -> Any:
        # (layout, source_is_hz, x, Wd, bd, z, Wl, bl, weight, bias, perm, head_weight,
        #  head_bias, *layer_tensors)
        need = ctx.needs_input_grad
        x, z, data_weight, latent_weight = _chain_extra(ctx)
        refuse_double_backward("critic_chain", x, z, data_weight, latent_weight)
        need_source = ctx.source_is_hz and (need[6] or need[7])
        grads = _chain_backward(
            ctx, (False, need[2] or need[3] or need[4], need[5] or need[6] or need[7],
                  need_source, need[8], need[9], False, False, need[11], need[12], *need[13:]),
            grad_bound, grad_scores)
        g_hx, g_hz, g_source = grads[1], grads[2], grads[3]
        data_grads: list[torch.Tensor | None] = [None, None, None]
        latent_grads: list[torch.Tensor | None] = [None, None, None]
        if g_hx is not None:
            data_grads = [g_hx.mm(data_weight) if need[2] else None,
                          g_hx.t().mm(x) if need[3] else None,
                          g_hx.sum(0) if need[4] else None]
        if g_hz is not None:
            # The latent layer's parameters get both rows' gradients; z only the joint rows'.
            g_codes = g_hz if g_source is None else g_hz + g_source
            latent_grads = [g_hz.mm(latent_weight) if need[5] else None,
                            g_codes.t().mm(z) if need[6] else None,
                            g_codes.sum(0) if need[7] else None]
        return (None, None, *data_grads, *latent_grads, grads[4], grads[5], None, grads[8],
                grads[9], *grads[10:])


def critic_chain(hx: torch.Tensor, hz: torch.Tensor, hz_shuffled: torch.Tensor | None,
                 weight: torch.Tensor, bias: torch.Tensor | None, perm: torch.Tensor,
                 activation: str, param: float, data_half: torch.Tensor | None,
                 weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                 activations: list[str], params: list[float], head_weight: torch.Tensor,
                 head_bias: torch.Tensor | None, n_joint: int, head_activation: str,
                 head_param: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``critic_mlp(paired_linear(hx, hz, ...), weights, ...)`` in eager mode with a gradient to
    compute, as one autograd node (_CriticChain); the same values and gradients as the two ops.
    ``head_weight`` may also be the head Linear's (1, H) weight.
    The caller has checked that the kernels apply (``_ops.kernels_apply``)."""
    layout = ((len(weights), tuple(b is not None for b in biases), activations, params, n_joint,
               head_activation, float(head_param)), activation, float(param))
    result: tuple[torch.Tensor, torch.Tensor] = _CriticChain.apply(  # type: ignore[no-untyped-call]
        layout, hx, hz, hz_shuffled, weight, bias, perm, data_half, head_weight, head_bias,
        *weights, *[b for b in biases if b is not None])
    return result


def critic_chain_with_linear_ends(
        x: torch.Tensor, data_weight: torch.Tensor, data_bias: torch.Tensor | None,
        z: torch.Tensor, latent_weight: torch.Tensor, latent_bias: torch.Tensor | None,
        source_is_hz: bool, weight: torch.Tensor, bias: torch.Tensor | None, perm: torch.Tensor,
        activation: str, param: float, weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor | None], activations: list[str], params: list[float],
        head_weight: torch.Tensor, head_bias: torch.Tensor | None, n_joint: int,
        head_activation: str, head_param: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`critic_chain` on ``hx = F.linear(x, data_weight, data_bias)`` (x (N, Dx)) and
    ``hz = F.linear(z, latent_weight, latent_bias)`` (z (M, Dz)), with the shuffled codes'
    source ``hz`` itself when ``source_is_hz`` (else none: the shuffled rows read hz[perm] with
    the gradient to z), as one autograd node (_LinearEndsChain). The same values and gradients
    as calling the two Linear layers then critic_chain. The caller has checked the shapes, that
    every tensor has one device and dtype, and that the kernels apply."""
    layout = ((len(weights), tuple(b is not None for b in biases), activations, params, n_joint,
               head_activation, float(head_param)), activation, float(param))
    result: tuple[torch.Tensor, torch.Tensor] = _LinearEndsChain.apply(  # type: ignore[no-untyped-call]
        layout, source_is_hz, x, data_weight, data_bias, z, latent_weight, latent_bias, weight,
        bias, perm, head_weight, head_bias, *weights, *[b for b in biases if b is not None])
    return result

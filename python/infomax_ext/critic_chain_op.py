"""The MI chain from its first Linear layer to the NWJ bound as one autograd node: what
``critic_mlp(paired_linear(hx, hz, ...), weights, ...)`` computes, for eager mode with a gradient
to compute.

:func:`critic_chain` takes paired_linear's arguments (``hx`` (N, Dx), ``hz`` (M, Dz),
``hz_shuffled`` (M, Dz) or None, ``weight`` (H_0, Dx + Dz), ``bias`` (H_0,) or None, ``perm``
(M,), ``data_half`` (N, H_0) or None) then critic_mlp's after its ``hidden`` (the hidden layers,
the head, ``n_joint`` = M), and returns ``(bound, scores)``: the 0-dim NWJ bound and the (2M,)
scores. The node makes one op call each way: ``critic_chain_forward`` (paired_linear_forward then
critic_mlp_forward, in C++: csrc/critic_chain.cpp) and ``critic_chain_backward``
(critic_mlp_backward then paired_linear_backward); under torch.compile the callers use the two
ops paired_linear and critic_mlp (:mod:`~infomax_ext.paired_linear_op`,
:mod:`~infomax_ext.critic_mlp_op`).
:func:`critic_chain_with_linear_ends` is the same node with the chain's single-Linear ``data``
and ``latent`` layers inside (x (N, Dx_in) and z (M, Dz_in) in place of hx and hz).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ._op_autograd import OPS, below_autograd, refuse_double_backward
from .activations import OUTPUT_DERIVATIVE_ACTIVATIONS
from .critic_mlp_op import _layer_lists
from .paired_linear_op import refuse_grad_of_data_half

__all__ = ["critic_chain", "critic_chain_with_linear_ends"]


def _chain_forward(ctx: Any, layout: tuple[Any, ...], hx: torch.Tensor, hz: torch.Tensor,
                   hz_shuffled: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
                   perm: torch.Tensor, data_half: torch.Tensor | None, head_weight: torch.Tensor,
                   head_bias: torch.Tensor | None, layer_tensors: tuple[torch.Tensor, ...],
                   ends: tuple[Any, ...] = (),
                   source_is_hz: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain's forward below autograd (one ``critic_chain_forward`` call), saving what
    :func:`_chain_backward` reads. With ``ends`` (the data and latent layers' weight and
    bias: Wd, bd, Wl, bl) hx and hz are those layers' inputs x and z, and the op computes the
    layers' outputs, and x, z, Wd, Wl are saved last (the ends' gradients read them). With
    ``source_is_hz`` the shuffled rows' source codes are hz itself (the
    same values): the forward reads the shuffled half from the latent half (one product fewer)
    and the backward still returns the shuffled rows' gradient apart."""
    mlp_layout, activation, _ = layout
    layers, has_bias, activations, params, n_joint, head_act, head_param = mlp_layout
    weights, biases = _layer_lists(layers, has_bias, layer_tensors)
    refuse_grad_of_data_half(data_half)
    with below_autograd():
        bound, scores, kept = OPS.critic_chain_forward.default(
            hx, hz, None if source_is_hz else hz_shuffled, weight, bias, perm, activation,
            layout[2], data_half, weights, biases, activations, params, head_weight, head_bias,
            n_joint, head_act, head_param, *ends)
    extra = (hx, hz, ends[0], ends[2]) if ends else ()  # x, z, Wd, Wl
    if ends:
        hx, hz = kept[0], kept[1]
    if source_is_hz:
        hz_shuffled = hz
    hidden, computed_data, latent, source = kept[2:6]
    ctx.set_materialize_grads(False)
    ctx.layout = layout
    halves: tuple[torch.Tensor, ...] = ()
    if activation not in OUTPUT_DERIVATIVE_ACTIVATIONS:
        halves = (computed_data if data_half is None else data_half, latent)
        if hz_shuffled is not None:
            halves += (latent if source_is_hz else source,)
    ctx.save_for_backward(hx, hz, hz_shuffled, weight, bias, perm, hidden, head_weight,
                          head_bias, scores, *kept[6:], *layer_tensors, *halves, *extra)
    return bound, scores


def _chain_backward(ctx: Any, saved: tuple[Any, ...], mask: list[bool],
                    grad_bound: torch.Tensor | None, grad_scores: torch.Tensor | None,
                    ends: Sequence[torch.Tensor | None] = (None, None, None, None)
                    ) -> list[torch.Tensor | None]:
    """The gradients ``critic_chain_backward`` computes from what :func:`_chain_forward` saved
    (``saved``: ``ctx.saved_tensors`` without the linear ends' x, z, Wd, Wl), for ``mask`` in its order (see
    csrc/critic_chain.cpp), None where ``mask`` is False. ``ends``: (x, z, Wd, Wl) of a chain
    with linear ends."""
    mlp_layout, activation, param = ctx.layout
    layers, has_bias, activations, params, n_joint, head_act, head_param = mlp_layout
    hx, hz, hz_shuffled, weight, bias, perm, hidden, head_weight, head_bias, scores = saved[:10]
    k = 10 + layers
    outputs, pres = list(saved[10:k]), list(saved[k:k + layers + 1])
    k += layers + 1
    n_layer_tensors = layers + sum(has_bias)
    layer_tensors = saved[k:k + n_layer_tensors]
    weights, biases = _layer_lists(layers, has_bias, layer_tensors)
    refuse_double_backward("critic_chain", grad_bound, grad_scores, hx, hz, hz_shuffled, weight,
                           bias, head_weight, head_bias, *layer_tensors)
    grads = OPS.critic_chain_backward.default(
        grad_bound, grad_scores, hx, hz, hz_shuffled, weight, bias, perm, activation, param,
        hidden, list(saved[k + n_layer_tensors:]), weights, biases, activations, params,
        head_weight, head_bias, scores, outputs, pres, n_joint, head_act, head_param, *ends, mask)
    return [g if wanted else None for g, wanted in zip(grads, mask)]


class _CriticChain(torch.autograd.Function):
    """paired_linear then critic_mlp as one node (the MI chain from its first Linear layer to the
    NWJ bound): the forward is one critic_chain_forward, the backward one critic_chain_backward,
    so a call builds one node instead of two and the first layer's output, which both keep, is
    saved once. ``apply`` takes the tensors spread
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
        need = ctx.needs_input_grad
        # critic_chain_backward's order: hx, hz, hz_shuffled, weight, bias, head_weight,
        # head_bias, the layers' tensors (perm and data_half have none).
        mask = [*need[1:6], *need[8:]]
        if not any(mask) or (grad_bound is None and grad_scores is None):
            return (None,) * len(need)
        grads = _chain_backward(ctx, ctx.saved_tensors, mask, grad_bound, grad_scores)
        return (None, *grads[:5], None, None, *grads[5:])


class _LinearEndsChain(torch.autograd.Function):
    """The chain with its ``data`` and ``latent`` networks when each is one Linear layer (the
    chain of ``MutualInfoChain.from_sizes``) as one node: hx = x Wd^T + bd and hz = z Wl^T + bl
    (``aten::linear``, the modules' own forward, inside critic_chain_forward) then _CriticChain's
    forward; the backward returns
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
        ctx.source_is_hz = source_is_hz
        return _chain_forward(ctx, layout, x, z, None, weight, bias, perm, None, head_weight,
                              head_bias, layer_tensors,
                              ends=(data_weight, data_bias, latent_weight, latent_bias),
                              source_is_hz=source_is_hz)

    @staticmethod
    def backward(ctx: Any, grad_bound: torch.Tensor | None,
                 grad_scores: torch.Tensor | None) -> Any:
        need = ctx.needs_input_grad
        # critic_chain_backward's order with linear ends: x, Wd, bd, z, Wl, bl, weight, bias,
        # head_weight, head_bias, the layers' tensors (perm has none).
        mask = [*need[2:10], *need[11:]]
        if not any(mask) or (grad_bound is None and grad_scores is None):
            return (None,) * len(need)
        saved = ctx.saved_tensors
        ends = saved[-4:]  # x, z, Wd, Wl: the extra tensors the forward saved last
        refuse_double_backward("critic_chain", *ends)
        grads = _chain_backward(ctx, saved[:-4], mask, grad_bound, grad_scores, ends)
        return (None, None, *grads[:8], None, *grads[8:])


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

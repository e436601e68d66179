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
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import precision
from ._op_autograd import OPS, below_autograd, grad_if, refuse_double_backward
from .activations import OUTPUT_DERIVATIVE_ACTIVATIONS
from .critic_mlp_op import _critic_mlp_forward, _layer_lists
from .paired_linear_op import refuse_grad_of_data_half

__all__ = ["critic_chain"]


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
        mlp_layout, activation, param = layout
        refuse_grad_of_data_half(data_half)
        with below_autograd():
            hidden, computed_data, latent, source = OPS.paired_linear_forward.default(
                hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half)
        bound, scores, outputs, pres = _critic_mlp_forward(mlp_layout, hidden,
                                                           head_weight.reshape(-1), head_bias,
                                                           layer_tensors)
        ctx.set_materialize_grads(False)
        ctx.layout = layout
        ctx.n_outputs = len(outputs)
        ctx.from_output = activation in OUTPUT_DERIVATIVE_ACTIVATIONS
        halves = () if ctx.from_output else (
            computed_data if data_half is None else data_half, latent,
            source if hz_shuffled is not None else None)
        ctx.save_for_backward(hx, hz, hz_shuffled, weight, bias, perm, hidden, head_weight,
                              head_bias, scores, *outputs, *pres, *layer_tensors, *halves)
        return bound, scores

    @staticmethod
    def backward(ctx: Any, grad_bound: torch.Tensor | None,
                 grad_scores: torch.Tensor | None) -> Any:
        mlp_layout, activation, param = ctx.layout
        layers, has_bias, activations, params, n_joint, head_act, head_param = mlp_layout
        saved = ctx.saved_tensors
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
        need = ctx.needs_input_grad
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

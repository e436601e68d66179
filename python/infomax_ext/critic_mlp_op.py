"""The MI chain after its paired first layer, one op and one autograd node,
``torch.ops.infomax_ext.critic_mlp``: its Python wrapper, fake kernels and autograd formula.

``critic_mlp(hidden, weights, biases, activations, params, head_weight, head_bias, n_joint,
head_activation, head_param)`` takes ``hidden`` (R, H_0) (joint rows ``[0, n_joint)``, then
shuffled rows), the hidden Linear layers (``weights[l]`` (H_{l+1}, H_l), ``biases[l]``
(H_{l+1},) or None) and the head (``head_weight`` (H_L,), ``head_bias`` (1,) or None), and
returns ``(bound, scores)``: the 0-dim NWJ bound and the (R,) scores (csrc/critic_mlp.cpp). The
autograd node runs ``critic_mlp_forward`` (which also keeps each layer's output and
pre-activation) and ``critic_mlp_backward`` (every gradient in one call), which computes each
hidden layer's input and weight gradients as ``linear_grads(grad, input, weight) -> (grad @
weight, grad.T @ input)`` does: the two products at once with two intra-op threads (csrc/gemm.h).
The fake kernels of ``linear_grads`` and of ``mm_pair(a, b, c, d) -> (a @ b, c @ d)`` (two
independent products the same way: paired_linear's narrow latent-column products) are here too.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import precision, reference
from ._op_autograd import OPS, below_autograd, grad_if, refuse_double_backward, register_autograd
from ._ops import _check_args, _fake_same_device, _listed, extension_available, kernels_apply
from .activations import OUTPUT_DERIVATIVE_ACTIVATIONS

__all__ = ["critic_mlp"]


def critic_mlp(
    hidden: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    activations: Sequence[str],
    params: Sequence[float],
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    n_joint: int,
    head_activation: str = "identity",
    head_param: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MI chain after its paired first layer, one op and one autograd node: the hidden
    Linear layers and the last layer fused with the NWJ bound.

    ``hidden`` (R, H_0) holds joint rows ``[0, n_joint)`` then as many shuffled rows; layer l is
    ``h = act_l(h @ weights[l].T + biases[l])`` with ``weights[l]`` (H_{l+1}, H_l), ``biases[l]``
    (H_{l+1},) or None, ``activations[l]`` (a name of :data:`~infomax_ext.activations.ACTIVATIONS`)
    and ``params[l]``; then ``t = head_act(h @ head_weight + head_bias)`` with ``head_weight``
    (H_L,), ``head_bias`` (1,) or None. Returns ``(bound, scores)``: the 0-dim bound
    ``mean(t[:n_joint]) - mean(exp(t[n_joint:] - 1))`` and the (R,) scores. The backward computes
    every gradient in one call (the activation derivative applied in the pass that sums each bias
    gradient); on the CPU in float32 a forward or input-gradient product of at least 2^26 FLOPs
    runs on oneDNN with the bias fused, a smaller one on MKL (csrc/gemm.h).
    """
    weights, biases = list(weights), list(biases)
    activations, params = [str(a) for a in activations], [float(p) for p in params]
    named = {"hidden": hidden, "head_weight": head_weight, "head_bias": head_bias}
    named.update({f"weights[{i}]": w for i, w in enumerate(weights)})
    named.update({f"biases[{i}]": b for i, b in enumerate(biases)})
    _check_args("critic_mlp", **named)
    if not len(weights) == len(biases) == len(activations) == len(params):
        raise ValueError(
            f"critic_mlp takes one bias, activation and parameter per weight: got {len(weights)} "
            f"weights, {len(biases)} biases, {len(activations)} activations and {len(params)} "
            "parameters")
    if kernels_apply(hidden, head_weight, head_bias, *weights, *biases):
        hidden, weights, biases, head_weight, head_bias = precision.autocast_inputs(
            hidden.device.type, hidden, weights, biases, head_weight, head_bias)
        return _differentiable(hidden, weights, biases, activations, params, head_weight,
                               head_bias, n_joint, head_activation, float(head_param))
    return reference.critic_mlp(hidden, weights, biases, activations, params, head_weight, head_bias,
                             n_joint, head_activation, head_param)


def _critic_mlp_forward(layout: tuple[Any, ...], hidden: torch.Tensor, head_weight: torch.Tensor,
                        head_bias: torch.Tensor | None, layer_tensors: tuple[torch.Tensor, ...]
                        ) -> Any:
    """critic_mlp_forward below autograd for ``layout`` (as :class:`_CriticMlp` takes it):
    (bound, scores, each layer's output, each layer's pre-activation)."""
    layers, has_bias, activations, params, n_joint, head_act, head_param = layout
    weights, biases = _layer_lists(layers, has_bias, layer_tensors)
    with below_autograd():
        return OPS.critic_mlp_forward.default(hidden, weights, biases, activations, params,
                                              head_weight, head_bias, n_joint, head_act,
                                              head_param)


class _CriticMlp(torch.autograd.Function):
    """critic_mlp as one node. Tensors inside lists are invisible to autograd, so ``apply`` takes
    them spread out: ``layout`` = (layers, which biases are present, activations, params,
    n_joint, head activation, head param), then hidden, head_weight, head_bias, the weights and
    the present biases."""

    @staticmethod
    def forward(ctx: Any, layout: tuple[Any, ...], hidden: torch.Tensor, head_weight: torch.Tensor,
                head_bias: torch.Tensor | None, *layer_tensors: torch.Tensor) -> Any:
        bound, scores, outputs, pres = _critic_mlp_forward(layout, hidden, head_weight, head_bias,
                                                           layer_tensors)
        ctx.set_materialize_grads(False)
        ctx.layout = layout
        ctx.n_outputs = len(outputs)
        ctx.save_for_backward(hidden, head_weight, head_bias, scores, *outputs, *pres,
                              *layer_tensors)
        return bound, scores

    @staticmethod
    def backward(ctx: Any, grad_bound: torch.Tensor | None,
                 grad_scores: torch.Tensor | None) -> Any:
        layers, has_bias, activations, params, n_joint, head_act, head_param = ctx.layout
        saved = ctx.saved_tensors
        hidden, head_weight, head_bias, scores = saved[:4]
        k = 4 + ctx.n_outputs
        outputs, pres = list(saved[4:k]), list(saved[k:k + layers + 1])
        layer_tensors = saved[k + layers + 1:]
        weights, biases = _layer_lists(layers, has_bias, layer_tensors)
        refuse_double_backward("critic_mlp", grad_bound, grad_scores, hidden, head_weight,
                                head_bias, *layer_tensors)
        need = ctx.needs_input_grad  # (layout, hidden, head_weight, head_bias, *layer_tensors)
        need_w = list(need[4:4 + layers])
        need_b_present = iter(need[4 + layers:])
        need_b = [bool(next(need_b_present)) if present else False for present in has_bias]
        mask = [need[1], *need_w, *need_b, need[2], head_bias is not None and need[3]]
        if not any(mask) or (grad_bound is None and grad_scores is None):
            return (None,) * (4 + len(layer_tensors))
        if grad_bound is None:
            grad_bound = hidden.new_zeros((), dtype=precision.bound_dtype(hidden.dtype))
        g_hidden, g_weights, g_biases, g_head_w, g_head_b = OPS.critic_mlp_backward.default(
            grad_bound, grad_scores, hidden, weights, biases, activations, params, head_weight,
            head_bias, scores, outputs, pres, n_joint, head_act, head_param, mask)
        grads_b = [grad_if(wanted, g) for wanted, g, present in zip(need_b, g_biases, has_bias)
                   if present]
        return (None, grad_if(mask[0], g_hidden), grad_if(mask[-2], g_head_w),
                grad_if(mask[-1], g_head_b),
                *[grad_if(w, g) for w, g in zip(need_w, g_weights)], *grads_b)


def _layer_lists(layers: int, has_bias: tuple[bool, ...], layer_tensors: tuple[torch.Tensor, ...]
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """The weights and the biases (None where absent) from apply's spread-out tensors."""
    weights = list(layer_tensors[:layers])
    present = iter(layer_tensors[layers:])
    return weights, [next(present) if b else None for b in has_bias]


def _critic_mlp_kernel(hidden: torch.Tensor, weights: Sequence[torch.Tensor],
                       biases: Sequence[torch.Tensor | None], activations: Sequence[str],
                       params: Sequence[float], head_weight: torch.Tensor,
                       head_bias: torch.Tensor | None, n_joint: int, head_activation: str,
                       head_param: float) -> Any:
    """critic_mlp's Autograd kernel: _CriticMlp when a gradient can flow, else the op below autograd."""
    tensors = [hidden, head_weight, head_bias, *weights, *biases]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        layout = (len(weights), tuple(b is not None for b in biases), list(activations),
                  list(params), n_joint, head_activation, head_param)
        return _CriticMlp.apply(layout, hidden, head_weight, head_bias, *weights,  # type: ignore[no-untyped-call]
                             *[b for b in biases if b is not None])
    with below_autograd():
        return OPS.critic_mlp.default(hidden, weights, biases, activations, params, head_weight,
                                      head_bias, n_joint, head_activation, head_param)


if extension_available():

    @torch.library.register_fake("infomax_ext::critic_mlp")
    def _(hidden: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None],
          activations: list[str], params: list[float], head_weight: torch.Tensor,
          head_bias: torch.Tensor | None, n_joint: int, head_activation: str,
          head_param: float) -> Any:
        _fake_same_device("critic_mlp", hidden=hidden, head_weight=head_weight, head_bias=head_bias,
                          **_listed("weights", weights), **_listed("biases", biases))
        torch._check(hidden.dim() == 2, lambda: "hidden must be 2-D")
        return (hidden.new_empty((), dtype=precision.bound_dtype(hidden.dtype)),
                hidden.new_empty((hidden.shape[0],)))

    @torch.library.register_fake("infomax_ext::critic_mlp_forward")
    def _(hidden: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None],
          activations: list[str], params: list[float], head_weight: torch.Tensor,
          head_bias: torch.Tensor | None, n_joint: int, head_activation: str,
          head_param: float) -> Any:
        bound, scores = torch.ops.infomax_ext.critic_mlp.default(
            hidden, weights, biases, activations, params, head_weight, head_bias, n_joint,
            head_activation, head_param)
        rows = hidden.shape[0]
        outputs = [hidden.new_empty((rows, w.shape[0])) for w in weights]
        pres = [hidden.new_empty((0,)) if a in OUTPUT_DERIVATIVE_ACTIVATIONS else hidden.new_empty(o.shape)
                for a, o in zip(activations, outputs)]
        return bound, scores, outputs, pres + [hidden.new_empty((rows,))]

    @torch.library.register_fake("infomax_ext::critic_mlp_backward")
    def _(grad_bound: torch.Tensor, grad_scores: torch.Tensor | None, hidden: torch.Tensor,
          weights: list[torch.Tensor], biases: list[torch.Tensor | None], activations: list[str],
          params: list[float], head_weight: torch.Tensor, head_bias: torch.Tensor | None,
          scores: torch.Tensor, outputs: list[torch.Tensor], pres: list[torch.Tensor], n_joint: int,
          head_activation: str, head_param: float, output_mask: Sequence[bool]) -> Any:
        _fake_same_device("critic_mlp_backward", hidden=hidden, head_weight=head_weight,
                          head_bias=head_bias, scores=scores, grad_bound=grad_bound,
                          grad_scores=grad_scores, **_listed("weights", weights),
                          **_listed("biases", biases), **_listed("outputs", outputs),
                          **_listed("pres", pres))
        layers = len(weights)

        def grad(wanted: bool, shape: Sequence[int]) -> torch.Tensor:
            return hidden.new_empty(shape) if wanted else hidden.new_empty((0,))

        return (
            grad(output_mask[0], hidden.shape),
            [grad(output_mask[1 + i], w.shape) for i, w in enumerate(weights)],
            [grad(output_mask[1 + layers + i], (w.shape[0],)) for i, w in enumerate(weights)],
            grad(output_mask[1 + 2 * layers], head_weight.shape),
            grad(output_mask[2 + 2 * layers], (1,)),
        )

    @torch.library.register_fake("infomax_ext::linear_grads")
    def _(grad: torch.Tensor, input: torch.Tensor,
          weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _fake_same_device("linear_grads", grad=grad, input=input, weight=weight)
        return grad.new_empty(input.shape), grad.new_empty(weight.shape)

    @torch.library.register_fake("infomax_ext::mm_pair")
    def _(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
          d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _fake_same_device("mm_pair", a=a, b=b, c=c, d=d)
        if a.dtype not in precision.KERNEL_DTYPES or any(t.dtype != a.dtype for t in (b, c, d)):
            raise RuntimeError(f"infomax_ext: mm_pair takes four tensors of one floating dtype, "
                               f"got {a.dtype}, {b.dtype}, {c.dtype}, {d.dtype}")
        for x, y, names in ((a, b, "a and b"), (c, d, "c and d")):
            if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[0]:
                raise RuntimeError(f"infomax_ext: mm_pair: {names} have shapes {tuple(x.shape)} "
                                   f"and {tuple(y.shape)}, not two matrices that multiply")
        return a.new_empty((a.shape[0], b.shape[1])), c.new_empty((c.shape[0], d.shape[1]))

    _differentiable = register_autograd("critic_mlp", _critic_mlp_kernel)

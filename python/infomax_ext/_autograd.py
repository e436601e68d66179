"""Autograd formulas of the compiled ops.

The kernels (csrc/) are built on torch's stable C ABI, which has no autograd: each op's formula
is a ``torch.autograd.Function`` here, registered as the op's ``Autograd`` kernel, so
``torch.ops.infomax_ext.<op>`` differentiates wherever it is called from (eager, ``opcheck``,
``torch.compile``). Forwards run the kernels below autograd; backwards call the ``*_backward``
ops. ``paired_linear`` (the MI chain's whole first Linear layer, csrc/paired_linear.cpp) is one
node: ``paired_linear_forward`` keeps the halves, ``paired_linear_backward`` computes every
gradient; ``critic_mlp`` (the rest of the chain with the NWJ head, csrc/critic_mlp.cpp) likewise. Both
run on the CPU and on CUDA.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .activations import OUTPUT_DERIVATIVE_ACTIVATIONS
from .precision import bound_dtype

_OPS = torch.ops.infomax_ext

def _below_autograd() -> Any:
    return torch._C._AutoDispatchBelowAutograd()


def _refuse_double_backward(op: str, *tensors: torch.Tensor | None) -> None:
    """The backward ops have no derivatives of their own: a graph of the backward
    (create_graph=True) would give wrong second derivatives silently, so refuse it."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"infomax_ext: {op} does not support double backward (a gradient of its gradient, "
            "create_graph=True); compute higher derivatives on the plain-PyTorch path: inside "
            "`with infomax_ext.use_reference_path():`"
        )


def _grad_if(wanted: bool, grad: torch.Tensor) -> torch.Tensor | None:
    return grad if wanted else None


def _paired_backward(grad_out: torch.Tensor, data_half: torch.Tensor, latent_half: torch.Tensor,
                     source: torch.Tensor | None, bias: torch.Tensor, perm: torch.Tensor,
                     activation: str, param: float, want: Sequence[bool]) -> Any:
    """paired_first_layer_backward, with the inverse permutation computed when the shuffled
    rows' gradient returns to latent_half or goes to the source (computing it checks that perm
    is a permutation: the source gradient is written, not summed, at perm[r])."""
    needs_inverse = (want[1] and source is None) or want[2]
    inverse = _OPS.inverse_permutation.default(perm) if needs_inverse else perm
    return _OPS.paired_first_layer_backward.default(
        grad_out, data_half, latent_half, source, bias, perm, inverse, activation, param, want
    )


# ------------------------------------------------------------------------- paired_first_layer


class _PairedFirstLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, data_half: torch.Tensor, latent_half: torch.Tensor,
                shuffled_half: torch.Tensor | None, bias: torch.Tensor, perm: torch.Tensor,
                activation: str, param: float) -> Any:
        with _below_autograd():
            out = _OPS.paired_first_layer.default(
                data_half, latent_half, shuffled_half, bias, perm, activation, param
            )
        ctx.save_for_backward(data_half, latent_half, shuffled_half, bias, perm)
        ctx.activation, ctx.param = activation, param
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        data_half, latent_half, source, bias, perm = ctx.saved_tensors
        _refuse_double_backward("paired_first_layer", grad_out, data_half, latent_half, source,
                                bias)
        need = ctx.needs_input_grad
        want = [need[0], need[1], source is not None and need[2], need[3]]
        if not any(want):
            return (None,) * 7
        g_data, g_latent, g_source, g_bias = _paired_backward(
            grad_out, data_half, latent_half, source, bias, perm, ctx.activation, ctx.param, want
        )
        return (_grad_if(want[0], g_data), _grad_if(want[1], g_latent),
                _grad_if(want[2], g_source), _grad_if(want[3], g_bias), None, None, None)


# ------------------------------------------------------------------------------ paired_linear


class _PairedLinear(torch.autograd.Function):
    """paired_linear as one node: paired_linear_forward computes the halves,
    paired_linear_backward every gradient (csrc/paired_linear.cpp). For identity and ReLU the
    derivative is read from the output, so the node keeps the output (which the next layer keeps
    anyway) instead of the three halves (N, M and M rows of H)."""

    @staticmethod
    def forward(ctx: Any, hx: torch.Tensor, hz: torch.Tensor, hz_shuffled: torch.Tensor | None,
                weight: torch.Tensor, bias: torch.Tensor | None, perm: torch.Tensor,
                activation: str, param: float, data_half: torch.Tensor | None = None) -> Any:
        if data_half is not None and data_half.requires_grad:
            raise RuntimeError(
                "infomax_ext: data_half is a precomputed constant (hx @ weight[:, :Dx].T); it "
                "must not require grad")
        with _below_autograd():
            out, computed_data, latent, source = _OPS.paired_linear_forward.default(
                hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half
            )
        ctx.from_output = activation in OUTPUT_DERIVATIVE_ACTIVATIONS
        if ctx.from_output:
            ctx.save_for_backward(hx, hz, hz_shuffled, weight, bias, perm, out)
        else:
            ctx.save_for_backward(hx, hz, hz_shuffled, weight, bias, perm,
                                  computed_data if data_half is None else data_half, latent,
                                  source if hz_shuffled is not None else None)
        ctx.activation, ctx.param = activation, param
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        if ctx.from_output:
            hx, hz, hz_shuffled, weight, bias, perm, out = ctx.saved_tensors
            unused = hx.new_empty((0,))
            data, latent, source = unused, unused, (unused if hz_shuffled is not None else None)
        else:
            hx, hz, hz_shuffled, weight, bias, perm, data, latent, source = ctx.saved_tensors
            out = None
        _refuse_double_backward("paired_linear", grad_out, hx, hz, hz_shuffled, weight, bias)
        need = list(ctx.needs_input_grad[:5])
        if not any(need):
            return (None,) * 9
        grads = _OPS.paired_linear_backward.default(
            grad_out, hx, hz, hz_shuffled, weight, data, latent, source, bias, perm,
            ctx.activation, ctx.param, need, out
        )
        return tuple(_grad_if(wanted, g) for wanted, g in zip(need, grads)) + (None,) * 4


# ----------------------------------------------------------------------------------- critic_head


class _CriticHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                n_joint: int, activation: str, param: float) -> Any:
        with _below_autograd():
            bound, scores, pre = _OPS.critic_head.default(hidden, weight, bias, n_joint, activation,
                                                       param)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(pre)
        ctx.save_for_backward(hidden, weight, bias, scores, pre)
        ctx.n_joint, ctx.activation, ctx.param = n_joint, activation, param
        return bound, scores, pre

    @staticmethod
    def backward(ctx: Any, grad_bound: torch.Tensor, grad_scores: torch.Tensor | None,
                 _grad_pre: torch.Tensor | None) -> Any:
        hidden, weight, bias, scores, pre = ctx.saved_tensors
        _refuse_double_backward("critic_head", grad_bound, grad_scores, hidden, weight, bias)
        need = ctx.needs_input_grad
        want = [need[0], need[1], need[2]]
        if not any(want) or (grad_bound is None and grad_scores is None):
            return (None,) * 6
        if grad_bound is None:
            grad_bound = hidden.new_zeros((), dtype=bound_dtype(hidden.dtype))
        g_hidden, g_weight, g_bias = _OPS.critic_head_backward.default(
            grad_bound, grad_scores, hidden, weight, scores, pre, ctx.n_joint, ctx.activation,
            ctx.param, want
        )
        return (_grad_if(want[0], g_hidden), _grad_if(want[1], g_weight),
                _grad_if(want[2], g_bias), None, None, None)


# ------------------------------------------------------------------------------------ critic_mlp


def _critic_mlp_forward(layout: tuple[Any, ...], hidden: torch.Tensor, head_weight: torch.Tensor,
                        head_bias: torch.Tensor | None, layer_tensors: tuple[torch.Tensor, ...]
                        ) -> Any:
    """critic_mlp_forward below autograd for ``layout`` (as :class:`_CriticMlp` takes it):
    (bound, scores, each layer's output, each layer's pre-activation)."""
    layers, has_bias, activations, params, n_joint, head_act, head_param = layout
    weights, biases = _layer_lists(layers, has_bias, layer_tensors)
    with _below_autograd():
        return _OPS.critic_mlp_forward.default(hidden, weights, biases, activations, params,
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
        _refuse_double_backward("critic_mlp", grad_bound, grad_scores, hidden, head_weight,
                                head_bias, *layer_tensors)
        need = ctx.needs_input_grad  # (layout, hidden, head_weight, head_bias, *layer_tensors)
        need_w = list(need[4:4 + layers])
        need_b_present = iter(need[4 + layers:])
        need_b = [bool(next(need_b_present)) if present else False for present in has_bias]
        mask = [need[1], *need_w, *need_b, need[2], head_bias is not None and need[3]]
        if not any(mask) or (grad_bound is None and grad_scores is None):
            return (None,) * (4 + len(layer_tensors))
        if grad_bound is None:
            grad_bound = hidden.new_zeros((), dtype=bound_dtype(hidden.dtype))
        g_hidden, g_weights, g_biases, g_head_w, g_head_b = _OPS.critic_mlp_backward.default(
            grad_bound, grad_scores, hidden, weights, biases, activations, params, head_weight,
            head_bias, scores, outputs, pres, n_joint, head_act, head_param, mask)
        grads_b = [_grad_if(wanted, g) for wanted, g, present in zip(need_b, g_biases, has_bias)
                   if present]
        return (None, _grad_if(mask[0], g_hidden), _grad_if(mask[-2], g_head_w),
                _grad_if(mask[-1], g_head_b),
                *[_grad_if(w, g) for w, g in zip(need_w, g_weights)], *grads_b)


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
    with _below_autograd():
        return _OPS.critic_mlp.default(hidden, weights, biases, activations, params, head_weight,
                                    head_bias, n_joint, head_activation, head_param)


def critic_mlp(*args: Any) -> Any:
    """``torch.ops.infomax_ext.critic_mlp`` for _ops.py: its Autograd kernel called directly in
    eager mode, the op itself while torch.compile traces."""
    if torch.compiler.is_compiling():
        return _OPS.critic_mlp.default(*args)
    return _critic_mlp_kernel(*args)


# ------------------------------------------------------------------- the whole chain, one node


class _CriticChain(torch.autograd.Function):
    """paired_linear then critic_mlp as one node (the MI chain from its first Linear layer to the
    NWJ bound): the forward runs paired_linear_forward and critic_mlp_forward, the backward
    critic_mlp_backward and paired_linear_backward, so a call builds one node instead of two and
    the first layer's output, which both keep, is saved once. ``apply`` takes the tensors spread
    out: ``layout`` = (critic_mlp's layout as in _CriticMlp, the first layer's activation and param),
    then hx, hz, hz_shuffled, first weight, first bias, perm, data_half, head_weight, head_bias,
    the hidden layers' weights and their present biases."""

    @staticmethod
    def forward(ctx: Any, layout: tuple[Any, ...], hx: torch.Tensor, hz: torch.Tensor,
                hz_shuffled: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
                perm: torch.Tensor, data_half: torch.Tensor | None, head_weight: torch.Tensor,
                head_bias: torch.Tensor | None, *layer_tensors: torch.Tensor) -> Any:
        mlp_layout, activation, param = layout
        if data_half is not None and data_half.requires_grad:
            raise RuntimeError(
                "infomax_ext: data_half is a precomputed constant (hx @ weight[:, :Dx].T); it "
                "must not require grad")
        with _below_autograd():
            hidden, computed_data, latent, source = _OPS.paired_linear_forward.default(
                hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half)
        bound, scores, outputs, pres = _critic_mlp_forward(mlp_layout, hidden, head_weight,
                                                           head_bias, layer_tensors)
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
        _refuse_double_backward("critic_chain", grad_bound, grad_scores, hx, hz, hz_shuffled, weight,
                                bias, head_weight, head_bias, *layer_tensors)
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
            grad_bound = hidden.new_zeros((), dtype=bound_dtype(hidden.dtype))
        g_hidden, g_weights, g_biases, g_head_w, g_head_b = _OPS.critic_mlp_backward.default(
            grad_bound, grad_scores, hidden, weights, biases, activations, params, head_weight,
            head_bias, scores, outputs, pres, n_joint, head_act, head_param, mask)
        first_grads: Sequence[torch.Tensor | None] = (None,) * 5
        if mask[0]:
            if ctx.from_output:
                unused = hx.new_empty((0,))
                data, latent, source = unused, unused, (unused if hz_shuffled is not None else None)
                out = hidden
            else:
                data, latent, source = halves
                out = None
            grads = _OPS.paired_linear_backward.default(
                g_hidden, hx, hz, hz_shuffled, weight, data, latent, source, bias, perm,
                activation, param, first_need, out)
            first_grads = [_grad_if(wanted, g) for wanted, g in zip(first_need, grads)]
        grads_b = [_grad_if(wanted, g) for wanted, g, present in zip(need_b, g_biases, has_bias)
                   if present]
        return (None, *first_grads, None, None, _grad_if(mask[-2], g_head_w),
                _grad_if(mask[-1], g_head_b),
                *[_grad_if(w, g) for w, g in zip(need_w, g_weights)], *grads_b)


def critic_chain(hx: torch.Tensor, hz: torch.Tensor, hz_shuffled: torch.Tensor | None,
              weight: torch.Tensor, bias: torch.Tensor | None, perm: torch.Tensor,
              activation: str, param: float, data_half: torch.Tensor | None,
              weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
              activations: list[str], params: list[float], head_weight: torch.Tensor,
              head_bias: torch.Tensor | None, n_joint: int, head_activation: str,
              head_param: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``critic_mlp(paired_linear(hx, hz, ...), weights, ...)`` in eager mode with a gradient to
    compute, as one autograd node (_CriticChain); the same values and gradients as the two ops.
    The caller has checked that the kernels apply (``_ops.kernels_apply``)."""
    layout = ((len(weights), tuple(b is not None for b in biases), activations, params, n_joint,
               head_activation, float(head_param)), activation, float(param))
    result: tuple[torch.Tensor, torch.Tensor] = _CriticChain.apply(  # type: ignore[no-untyped-call]
        layout, hx, hz, hz_shuffled, weight, bias, perm, data_half, head_weight, head_bias,
        *weights, *[b for b in biases if b is not None])
    return result


# ---------------------------------------------------------------------------------- nwj_bound


class _NwjBound(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t_joint: torch.Tensor, t_shuffled: torch.Tensor) -> Any:
        with _below_autograd():
            bound = _OPS.nwj_bound.default(t_joint, t_shuffled)
        ctx.save_for_backward(t_joint, t_shuffled)
        return bound

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        t_joint, t_shuffled = ctx.saved_tensors
        _refuse_double_backward("nwj_bound", grad, t_joint, t_shuffled)
        g_joint, g_marg = _OPS.nwj_bound_backward.default(grad, t_joint, t_shuffled)
        need = ctx.needs_input_grad
        return _grad_if(need[0], g_joint), _grad_if(need[1], g_marg)


# ------------------------------------------------------------------------------- registration


def _autograd_kernel(function: type[torch.autograd.Function],
                     op: Callable[..., Any]) -> Callable[..., Any]:
    """The op's Autograd kernel: ``function`` when a gradient can flow, else the kernel below
    autograd directly (no autograd node to build)."""

    def kernel(*args: Any) -> Any:
        if torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args
        ):
            return function.apply(*args)
        with _below_autograd():
            return op(*args)

    return kernel


_LIB = torch.library.Library("infomax_ext", "IMPL")
_KERNELS = {
    name: _autograd_kernel(function, getattr(_OPS, name).default)
    for name, function in [("paired_first_layer", _PairedFirstLayer),
                           ("paired_linear", _PairedLinear), ("critic_head", _CriticHead),
                           ("nwj_bound", _NwjBound)]
}
for _name, _kernel in _KERNELS.items():
    _LIB.impl(_name, _kernel, "Autograd")
_LIB.impl("critic_mlp", _critic_mlp_kernel, "Autograd")


def _eager_or_op(name: str) -> Callable[..., Any]:
    op, kernel = getattr(_OPS, name).default, _KERNELS[name]

    def call(*args: Any) -> Any:
        if torch.compiler.is_compiling():
            return op(*args)
        return kernel(*args)

    return call


# ``torch.ops.infomax_ext.<name>`` for the Python wrappers (_ops.py): in eager mode its Autograd
# kernel called directly (the same computation without a round trip through the dispatcher into
# Python); while torch.compile traces, the op itself, so graphs hold the op.
differentiable = {name: _eager_or_op(name) for name in _KERNELS}

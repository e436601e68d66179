"""Autograd formulas of the compiled ops.

The kernels (csrc/) are built on torch's stable C ABI, which has no autograd: each op's formula
is a ``torch.autograd.Function`` here, registered as the op's ``Autograd`` kernel, so
``torch.ops.infomax_ext.<op>`` differentiates wherever it is called from (eager, ``opcheck``,
``torch.compile``). Forwards run the kernels below autograd; backwards call the ``*_backward``
ops. ``paired_linear`` (the MI chain's whole first Linear layer, csrc/paired_linear.cpp) is one
node: ``paired_linear_forward`` keeps the halves, ``paired_linear_backward`` computes every
gradient; it runs on the CPU and on CUDA.
"""
from __future__ import annotations

import torch

_OPS = torch.ops.infomax_ext

def _below_autograd():
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


def _paired_backward(grad_out, data_half, latent_half, source, bias, perm, activation, param,
                     want):
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
    def forward(ctx, data_half, latent_half, shuffled_source, bias, perm, activation, param):
        with _below_autograd():
            out = _OPS.paired_first_layer.default(
                data_half, latent_half, shuffled_source, bias, perm, activation, param
            )
        ctx.save_for_backward(data_half, latent_half, shuffled_source, bias, perm)
        ctx.activation, ctx.param = activation, param
        return out

    @staticmethod
    def backward(ctx, grad_out):
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
    """paired_linear as one node: paired_linear_forward keeps the halves, paired_linear_backward
    computes every gradient (csrc/paired_linear.cpp)."""

    @staticmethod
    def forward(ctx, hx, hz, hz_source, weight, bias, perm, activation, param, data_half=None):
        if data_half is not None and data_half.requires_grad:
            raise RuntimeError(
                "infomax_ext: data_half is a precomputed constant (hx @ weight[:, :Dx].T); it "
                "must not require grad")
        with _below_autograd():
            out, computed_data, latent, source = _OPS.paired_linear_forward.default(
                hx, hz, hz_source, weight, bias, perm, activation, param, data_half
            )
        ctx.save_for_backward(hx, hz, hz_source, weight, bias, perm,
                              computed_data if data_half is None else data_half, latent,
                              source if hz_source is not None else None)
        ctx.activation, ctx.param = activation, param
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hx, hz, hz_source, weight, bias, perm, data, latent, source = ctx.saved_tensors
        _refuse_double_backward("paired_linear", grad_out, hx, hz, hz_source, weight, bias)
        need = list(ctx.needs_input_grad[:5])
        if not any(need):
            return (None,) * 9
        grads = _OPS.paired_linear_backward.default(
            grad_out, hx, hz, hz_source, weight, data, latent, source, bias, perm,
            ctx.activation, ctx.param, need
        )
        return tuple(_grad_if(wanted, g) for wanted, g in zip(need, grads)) + (None,) * 4


# ----------------------------------------------------------------------------------- nwj_head


class _NwjHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, n_joint, activation, param):
        with _below_autograd():
            bound, scores, pre = _OPS.nwj_head.default(hidden, weight, bias, n_joint, activation,
                                                       param)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(pre)
        ctx.save_for_backward(hidden, weight, bias, scores, pre)
        ctx.n_joint, ctx.activation, ctx.param = n_joint, activation, param
        return bound, scores, pre

    @staticmethod
    def backward(ctx, grad_bound, grad_scores, _grad_pre):
        hidden, weight, bias, scores, pre = ctx.saved_tensors
        _refuse_double_backward("nwj_head", grad_bound, grad_scores, hidden, weight, bias)
        need = ctx.needs_input_grad
        want = [need[0], need[1], need[2]]
        if not any(want) or (grad_bound is None and grad_scores is None):
            return (None,) * 6
        if grad_bound is None:
            grad_bound = hidden.new_zeros(())
        g_hidden, g_weight, g_bias = _OPS.nwj_head_backward.default(
            grad_bound, grad_scores, hidden, weight, scores, pre, ctx.n_joint, ctx.activation,
            ctx.param, want
        )
        return (_grad_if(want[0], g_hidden), _grad_if(want[1], g_weight),
                _grad_if(want[2], g_bias), None, None, None)


# ---------------------------------------------------------------------------------- nwj_bound


class _NwjBound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t_joint, t_marg):
        with _below_autograd():
            bound = _OPS.nwj_bound.default(t_joint, t_marg)
        ctx.save_for_backward(t_joint, t_marg)
        return bound

    @staticmethod
    def backward(ctx, grad):
        t_joint, t_marg = ctx.saved_tensors
        _refuse_double_backward("nwj_bound", grad, t_joint, t_marg)
        g_joint, g_marg = _OPS.nwj_bound_backward.default(grad, t_joint, t_marg)
        need = ctx.needs_input_grad
        return _grad_if(need[0], g_joint), _grad_if(need[1], g_marg)


# ------------------------------------------------------------------------------- registration


def _autograd_kernel(function: type[torch.autograd.Function], op):
    """The op's Autograd kernel: ``function`` when a gradient can flow, else the kernel below
    autograd directly (no autograd node to build)."""

    def kernel(*args):
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
                           ("paired_linear", _PairedLinear), ("nwj_head", _NwjHead),
                           ("nwj_bound", _NwjBound)]
}
for _name, _kernel in _KERNELS.items():
    _LIB.impl(_name, _kernel, "Autograd")


def _eager_or_op(name: str):
    op, kernel = getattr(_OPS, name).default, _KERNELS[name]

    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return kernel(*args)

    return call


# ``torch.ops.infomax_ext.<name>`` for the Python wrappers (_ops.py): in eager mode its Autograd
# kernel called directly (the same computation without a round trip through the dispatcher into
# Python); while torch.compile traces, the op itself, so graphs hold the op.
differentiable = {name: _eager_or_op(name) for name in _KERNELS}

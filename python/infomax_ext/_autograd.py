"""Autograd formulas of the compiled ops, and ``paired_linear``: the MI chain's whole first
Linear layer on joint and shuffled pairs as one op and one autograd node.

The kernels (csrc/) are built on torch's stable C ABI, which has no autograd: each op's formula
is a ``torch.autograd.Function`` here, registered as the op's ``Autograd`` kernel, so
``torch.ops.infomax_ext.<op>`` differentiates wherever it is called from (eager, ``opcheck``,
``torch.compile``). Forwards run the kernels below autograd; backwards call the ``*_backward``
ops. ``paired_linear`` itself is composite (two or three GEMMs of the split weight and
``paired_first_layer``), registered for every device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_OPS = torch.ops.infomax_ext

# From this many data rows on, the data-half weight gradient runs faster as (hx^T g)^T plus a
# transposed copy than as g^T hx written into the strided slice (measured on the CPU: 4% of the
# whole MI loss at N = 1024 on the paper chain; no gain at N <= 256).
_TRANSPOSED_WEIGHT_GRAD_ROWS = 512


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
    """paired_first_layer_backward, with the inverse permutation computed only when the
    shuffled rows' gradient returns to latent_half."""
    inverse = _OPS.inverse_permutation.default(perm) if want[1] and source is None else perm
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


def _check_float(t: torch.Tensor, name: str, dim: int) -> None:
    if t.dim() != dim:
        raise RuntimeError(
            f"infomax_ext: {name} must have {dim} dimension(s), got shape {list(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"infomax_ext: {name} must be float32 or float64, got {t.dtype}")


def _check_same(ref: torch.Tensor, t: torch.Tensor, ref_name: str, name: str) -> None:
    if t.dtype != ref.dtype:
        raise RuntimeError(
            f"infomax_ext: dtype mismatch: {name} is {t.dtype} but {ref_name} is {ref.dtype}")
    if t.device != ref.device:
        raise RuntimeError(
            f"infomax_ext: device mismatch: {name} is on {t.device} but {ref_name} is on "
            f"{ref.device}")


def _check_paired_linear(hx, hz, source, weight, bias, data_half) -> None:
    _check_float(hx, "hx", 2)
    _check_float(hz, "hz", 2)
    _check_float(weight, "weight", 2)
    _check_same(hx, hz, "hx", "hz")
    _check_same(hx, weight, "hx", "weight")
    if weight.shape[1] != hx.shape[1] + hz.shape[1]:
        raise RuntimeError(
            f"infomax_ext: the first layer's weight takes {weight.shape[1]} features but hx has "
            f"{hx.shape[1]} and hz has {hz.shape[1]}")
    if source is not None:
        _check_float(source, "hz_source", 2)
        _check_same(hx, source, "hx", "hz_source")
        if source.shape != hz.shape:
            raise RuntimeError(
                f"infomax_ext: hz_source has shape {list(source.shape)} but hz has shape "
                f"{list(hz.shape)}")
    if bias is not None:
        _check_float(bias, "bias", 1)
        _check_same(hx, bias, "hx", "bias")
        if bias.shape[0] != weight.shape[0]:
            raise RuntimeError(
                f"infomax_ext: bias has {bias.shape[0]} entries but the layer has "
                f"{weight.shape[0]} units")
    if data_half is not None:
        _check_float(data_half, "data_half", 2)
        _check_same(hx, data_half, "hx", "data_half")
        if tuple(data_half.shape) != (hx.shape[0], weight.shape[0]):
            raise RuntimeError(
                f"infomax_ext: data_half has shape {list(data_half.shape)}, expected "
                f"[{hx.shape[0]}, {weight.shape[0]}] (hx @ weight[:, :Dx].T)")
        if data_half.requires_grad:
            raise RuntimeError(
                "infomax_ext: data_half is a precomputed constant (hx @ weight[:, :Dx].T); it "
                "must not require grad")


def _linear_halves(hx, hz, source, weight, bias, data_half):
    """The weight split into its data and latent columns, applied: hx Wx^T (N, H) unless given
    as data_half, hz Wz^T (M, H), source Wz^T (M, H) or None, and the bias (zeros if absent)."""
    _check_paired_linear(hx, hz, source, weight, bias, data_half)
    dx = hx.shape[1]
    w_latent = weight[:, dx:]
    data = data_half if data_half is not None else F.linear(hx, weight[:, :dx])
    latent = F.linear(hz, w_latent)
    source_half = F.linear(source, w_latent) if source is not None else None
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    return data, latent, source_half, bias


def _paired_linear_composite(hx, hz, hz_source, weight, bias, perm, activation, param,
                             data_half=None):
    data, latent, source, bias = _linear_halves(hx, hz, hz_source, weight, bias, data_half)
    return _OPS.paired_first_layer.default(data, latent, source, bias, perm, activation, param)


def _narrow_input_grad(grad: torch.Tensor, w_latent: torch.Tensor) -> torch.Tensor:
    """grad @ w_latent (M, Dz) for a narrow Dz, as (w_latent^T grad^T)^T: several times faster
    than the direct product on the CPU."""
    return torch.mm(w_latent.t(), grad.t()).t()


def _is_plain(t: torch.Tensor) -> bool:
    """A real tensor, not a fake or functional one of a trace (torch.compile)."""
    return type(t) in (torch.Tensor, torch.nn.Parameter)


class _PairedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hx, hz, hz_source, weight, bias, perm, activation, param, data_half=None):
        with _below_autograd():
            data, latent, source, full_bias = _linear_halves(hx, hz, hz_source, weight, bias,
                                                             data_half)
            out = _OPS.paired_first_layer.default(data, latent, source, full_bias, perm,
                                                  activation, param)
        ctx.save_for_backward(hx, hz, hz_source, weight, full_bias, perm, data, latent, source)
        ctx.activation, ctx.param = activation, param
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hx, hz, hz_source, weight, full_bias, perm, data, latent, source = ctx.saved_tensors
        _refuse_double_backward("paired_linear", grad_out, hx, hz, hz_source, weight)
        need_hx, need_hz, need_src, need_w, need_bias = ctx.needs_input_grad[:5]
        has_source = hz_source is not None
        want = [need_hx or need_w, need_hz or need_w, has_source and (need_src or need_w),
                need_bias]
        if not any(want):
            return (None,) * 9
        g_data, g_latent, g_source, g_bias = _paired_backward(
            grad_out, data, latent, source, full_bias, perm, ctx.activation, ctx.param, want
        )
        dx, dz = hx.shape[1], hz.shape[1]
        w_data, w_latent = weight[:, :dx], weight[:, dx:]
        grad_w = None
        if need_w:
            # The latent side is narrow (Dz columns): (hz^T g)^T runs several times faster.
            latent_part = torch.mm(hz.t(), g_latent)
            if has_source:
                latent_part = latent_part.addmm_(hz_source.t(), g_source)
            if not (_is_plain(hx) and _is_plain(g_data)):
                # Traced (torch.compile): no writes into views.
                grad_w = torch.cat([torch.mm(g_data.t(), hx), latent_part.t()], 1)
            else:
                # One buffer, each half written in place: no zero fill, slice copies or adds.
                grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format)
                if hx.shape[0] >= _TRANSPOSED_WEIGHT_GRAD_ROWS:
                    grad_w[:, :dx].copy_(torch.mm(hx.t(), g_data).t())
                else:
                    torch.mm(g_data.t(), hx, out=grad_w[:, :dx])
                grad_w[:, dx:].copy_(latent_part.t())
        return (
            torch.mm(g_data, w_data) if need_hx else None,
            _narrow_input_grad(g_latent, w_latent) if need_hz else None,
            _narrow_input_grad(g_source, w_latent) if need_src else None,
            grad_w,
            _grad_if(need_bias, g_bias),
            None, None, None, None,
        )


# ----------------------------------------------------------------------------------- nwj_head


class _NwjHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, n_joint, activation, param):
        with _below_autograd():
            bound, scores, pre = _OPS.nwj_head.default(hidden, weight, bias, n_joint, activation,
                                                       param)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(pre)
        ctx.save_for_backward(hidden, weight, scores, pre)
        ctx.n_joint, ctx.activation, ctx.param = n_joint, activation, param
        return bound, scores, pre

    @staticmethod
    def backward(ctx, grad_bound, grad_scores, _grad_pre):
        hidden, weight, scores, pre = ctx.saved_tensors
        _refuse_double_backward("nwj_head", grad_bound, grad_scores, hidden, weight)
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
_LIB.impl("paired_linear", _paired_linear_composite, "CompositeExplicitAutograd")
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

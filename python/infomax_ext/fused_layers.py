"""The MI chain's first layer as one autograd node: the two GEMMs of the split weight and the
fused paired op, so the backward writes the weight gradient straight into one buffer (no
slice-gradient zero fills, copies and adds, which autograd does for ``weight[:, :dx]``)."""
from __future__ import annotations

import torch

from . import _ops


# From this many data rows on, the data-half weight gradient runs faster as (hx^T g)^T plus a
# transposed copy than as g^T hx written into the strided slice (measured: 4% of the whole MI
# loss at N = 1024 on the paper chain; no gain at N <= 256).
_TRANSPOSED_WGRAD_ROWS = 512


def _halves(hx, hz, hz_source, weight, bias):
    """The first layer's weight split into its data and latent columns, applied:
    ``hx @ Wx^T`` (N, H), ``hz @ Wz^T`` (M, H), ``hz_source @ Wz^T`` or None, and the bias (H,)."""
    dx = hx.shape[1]
    w_data, w_latent = weight[:, :dx], weight[:, dx:]
    source_half = None if hz_source is None else torch.mm(hz_source, w_latent.t())
    bias_vec = bias if bias is not None else weight.new_zeros(weight.shape[0])
    return torch.mm(hx, w_data.t()), torch.mm(hz, w_latent.t()), source_half, bias_vec


class _PairedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hx, hz, hz_source, weight, bias, perm, activation, param):
        data_half, latent_half, source_half, bias_vec = _halves(hx, hz, hz_source, weight, bias)
        out = torch.ops.infomax_ext.paired_first_layer.default(
            data_half, latent_half, source_half, bias_vec, perm, activation, param
        )
        ctx.activation, ctx.param, ctx.has_source, ctx.has_bias = (
            activation, param, hz_source is not None, bias is not None)
        ctx.save_for_backward(hx, hz, hz_source, weight, bias_vec, perm, data_half, latent_half,
                              source_half)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (hx, hz, hz_source, weight, bias, perm, data_half, latent_half,
         source_half) = ctx.saved_tensors
        need_hx, need_hz, need_src, need_w, need_bias = ctx.needs_input_grad[:5]
        need_src = need_src and ctx.has_source
        need_bias = need_bias and ctx.has_bias
        want = [need_hx or need_w, need_hz or need_w,
                ctx.has_source and (need_src or need_w), need_bias]
        g_data, g_latent, g_source, g_bias = _ops.paired_first_layer_backward(
            grad_out, data_half, latent_half, source_half, bias, perm, ctx.activation, ctx.param,
            want,
        )
        dx = hx.shape[1]
        w_data, w_latent = weight[:, :dx], weight[:, dx:]
        grad_w = None
        if need_w:
            # The latent side is narrow (Dz columns): (hz^T g)^T runs several times faster than
            # g^T hz, and likewise (Wz^T g^T)^T for the input gradients below.
            latent_part = torch.mm(hz.t(), g_latent)
            if ctx.has_source:
                latent_part.addmm_(hz_source.t(), g_source)
            if torch.compiler.is_compiling():
                grad_w = torch.cat([g_data.t() @ hx, latent_part.t()], dim=1)
            else:
                grad_w = weight.new_empty(weight.shape)
                if hx.shape[0] >= _TRANSPOSED_WGRAD_ROWS:
                    grad_w[:, :dx].copy_(torch.mm(hx.t(), g_data).t())
                else:
                    torch.mm(g_data.t(), hx, out=grad_w[:, :dx])
                grad_w[:, dx:].copy_(latent_part.t())
        return (
            torch.mm(g_data, w_data) if need_hx else None,
            _narrow_input_grad(g_latent, w_latent) if need_hz else None,
            _narrow_input_grad(g_source, w_latent) if need_src else None,
            grad_w,
            g_bias if need_bias else None,
            None, None, None,
        )


def _narrow_input_grad(grad: torch.Tensor, w_latent: torch.Tensor) -> torch.Tensor:
    """``grad @ w_latent`` (M, Dz) for a narrow Dz, computed as ``(w_latent^T grad^T)^T``."""
    return torch.mm(w_latent.t(), grad.t()).t()


def paired_linear(hx, hz, hz_source, weight, bias, perm, activation="identity", param=0.0):
    """``act`` of the first Linear on joint and shuffled pairs, shape (2M, H).

    ``hx`` (N, Dx) = data(x), ``hz`` (M, Dz) = latent(z) with M = S N, ``weight`` (H, Dx + Dz),
    ``bias`` (H,) or None, ``perm`` (M,). Joint row r: ``act(W [hx[r % N]; hz[r]] + b)``;
    shuffled row r: ``act(W [hx[r % N]; src[perm[r]]] + b)`` with ``src = hz_source`` or, when
    None, ``hz``. Runs the compiled kernels when they apply, else plain PyTorch.
    """
    if _ops.kernels_apply(hx, hz, hz_source, weight, bias):
        return _PairedLinear.apply(hx, hz, hz_source, weight, bias, perm, activation, float(param))
    data_half, latent_half, source_half, bias_vec = _halves(hx, hz, hz_source, weight, bias)
    return _ops.paired_first_layer(data_half, latent_half, source_half, bias_vec, perm, activation, param)

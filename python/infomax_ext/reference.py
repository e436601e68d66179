"""Plain-PyTorch twins of every fused op: the test oracle and the fallback path.

Each function computes exactly what the op of the same name (``infomax_ext.<name>_op``) computes
(same argument meaning, same shapes), with ordinary differentiable torch operations.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .activations import apply_activation

__all__ = [
    "permutation_keys",
    "inverse_permutation",
    "check_perm_entries",
    "paired_first_layer",
    "paired_linear",
    "critic_head",
    "critic_mlp",
    "linear_grads",
    "mm_pair",
    "nwj_bound",
    "bernoulli_loglik",
]

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= (1 << 63) else value


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = x + _signed(0x9E3779B97F4A7C15)
    x = (x ^ _shift_right(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _shift_right(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ _shift_right(x, 31)


def _splitmix64_int(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def permutation_keys(index: torch.Tensor, seed: int) -> torch.Tensor:
    """63-bit key ``splitmix64(splitmix64(seed) ^ index) >> 1`` per entry of the int64 ``index``."""
    mixed_seed = _signed(_splitmix64_int(seed & _MASK64))
    return _shift_right(_splitmix64(index ^ mixed_seed), 1)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[i]] = i`` for a permutation ``perm`` of ``range(n)``.

    Raises RuntimeError, with the compiled op's message, when ``perm`` is not a 1-D int64
    permutation: the first entry (in order) outside ``[0, n)`` or repeating an earlier one is
    named. Checking costs one host synchronisation; a ``meta`` tensor has no values to check."""
    if perm.dim() != 1 or perm.dtype != torch.int64:
        raise RuntimeError(f"infomax_ext: perm must be a 1-D int64 tensor, got {perm.dtype} of "
                           f"shape {list(perm.shape)}")
    n = perm.numel()
    if n and perm.device.type != "meta":
        outside = (perm < 0) | (perm >= n)
        # Entries equal to an earlier entry: after a stable sort, the later ones of each run.
        values, order = torch.sort(perm, stable=True)
        repeated = torch.zeros_like(outside)
        repeated[order[1:][values[1:] == values[:-1]]] = True
        bad = (outside | repeated).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            k = int(perm[i])
            if outside[i]:
                raise RuntimeError(f"infomax_ext: perm is not a permutation: entry {i} is {k}, "
                                   f"outside [0, {n})")
            raise RuntimeError(f"infomax_ext: perm is not a permutation: {k} appears twice")
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n, device=perm.device)
    return inverse


def check_perm_entries(perm: torch.Tensor, m: int) -> None:
    """Raises RuntimeError, with the compiled kernels' message, naming the first entry of
    ``perm`` outside ``[0, m)`` (indexing would wrap a negative one around). On the CPU at
    once; on another device as an assert on the device (``torch._assert_async``: no host
    synchronisation, the error comes at the next one), as the CUDA kernels assert. Skipped
    where the values cannot be read: a ``meta`` tensor, a tensor inside a torch.func
    transform, or while torch.compile traces."""
    if (perm.numel() == 0 or perm.device.type == "meta" or torch.compiler.is_compiling()
            or torch._C._functorch.is_functorch_wrapped_tensor(perm)):
        return
    if perm.device.type != "cpu":
        torch._assert_async(((perm >= 0) & (perm < m)).all(),
                            f"infomax_ext: perm entry outside [0, {m})")
        return
    bad = ((perm < 0) | (perm >= m)).nonzero()
    if bad.numel():
        r = int(bad[0, 0])
        raise RuntimeError(f"infomax_ext: perm entry {r} is {int(perm[r])}, outside [0, {m})")


def paired_first_layer(
    data_half: torch.Tensor,
    latent_half: torch.Tensor,
    shuffled_half: torch.Tensor | None,
    bias: torch.Tensor,
    perm: torch.Tensor,
    activation: str,
    param: float = 0.0,
) -> torch.Tensor:
    """First MLP layer of the MI chain on joint and shuffled pairs at once.

    Shapes: ``data_half`` (N, H), ``latent_half`` and ``shuffled_half`` (M, H) with M = S N,
    ``bias`` (H,), ``perm`` (M,). Returns (2M, H): rows r < M are
    ``act(data_half[r % N] + latent_half[r] + bias)``, rows M + r are
    ``act(data_half[r % N] + source[perm[r]] + bias)`` with ``source = shuffled_half`` or,
    when it is None, ``latent_half``.
    """
    n, m = data_half.shape[0], latent_half.shape[0]
    check_perm_entries(perm, m)
    a = data_half.repeat(m // n, 1) if m != n else data_half
    source = latent_half if shuffled_half is None else shuffled_half
    joint = apply_activation((a + latent_half) + bias, activation, param)
    shuffled = apply_activation((a + source[perm]) + bias, activation, param)
    return torch.cat([joint, shuffled])


def paired_linear(
    hx: torch.Tensor,
    hz: torch.Tensor,
    hz_shuffled: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    perm: torch.Tensor,
    activation: str,
    param: float = 0.0,
    data_half: torch.Tensor | None = None,
) -> torch.Tensor:
    """The MI chain's first Linear layer ``act(W [hx; hz] + b)`` on joint and shuffled pairs.

    Shapes: ``hx`` (N, Dx), ``hz`` and ``hz_shuffled`` (M, Dz) with M = S N, ``weight``
    (H, Dx + Dz), ``bias`` (H,) or None, ``perm`` (M,). Returns (2M, H): joint row r is
    ``act(W [hx[r % N]; hz[r]] + b)``, shuffled row r is ``act(W [hx[r % N]; src[perm[r]]] + b)``
    with ``src = hz_shuffled`` or, when None, ``hz``: :func:`paired_first_layer` of the two halves
    of the weight applied to ``hx`` and ``hz``. ``data_half`` (N, H), when given, is the
    precomputed ``hx @ weight[:, :Dx].T`` (a constant; the gradients of ``hx`` and ``weight`` are
    those of the product it stands for).
    """
    dx = hx.shape[1]
    w_data, w_latent = weight[:, :dx], weight[:, dx:]
    shuffled_half = None if hz_shuffled is None else hz_shuffled @ w_latent.t()
    bias_vec = bias if bias is not None else weight.new_zeros(weight.shape[0])
    product = hx @ w_data.t()
    if data_half is not None:
        # The given value, with the product's gradient.
        product = product + (data_half - product).detach()
    return paired_first_layer(product, hz @ w_latent.t(), shuffled_half, bias_vec, perm,
                              activation, param)


def linear_grads(grad: torch.Tensor, input: torch.Tensor,
                 weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear layer's input and weight gradients ``(grad @ weight, grad.T @ input)`` for grad
    (R, out), input (R, in), weight (out, in)."""
    return grad @ weight, grad.t() @ input


def mm_pair(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
            d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent matrix products ``(a @ b, c @ d)``."""
    return a @ b, c @ d


def nwj_bound(t_joint: torch.Tensor, t_shuffled: torch.Tensor) -> torch.Tensor:
    """NWJ lower bound ``mean(t_joint) - mean(exp(t_shuffled - 1))`` of 1-D score tensors,
    reduced as the kernels reduce: bfloat16 and float16 scores in float32, to a float32 bound
    (``exp`` of a float16 score above 12 would overflow to inf)."""
    t_joint, t_shuffled = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
                           for t in (t_joint, t_shuffled))
    return t_joint.mean() - torch.exp(t_shuffled - 1).mean()


def bernoulli_loglik(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_j x log pc + (1 - x) log1p(-pc)`` per row of ``p`` (M, D), ``pc = clamp(p, eps,
    1 - eps)``, ``eps = torch.finfo(p.dtype).eps``; row ``r`` against row ``r % N`` of ``x``
    (N, D), M a multiple of N (``x`` broadcast over the M / N blocks, not copied): (M,)."""
    eps = torch.finfo(p.dtype).eps
    pc = p.clamp(eps, 1 - eps)
    m, (n, d) = p.shape[0], x.shape
    xb = x.reshape(1, n, d)
    pb = pc.reshape(m // n, n, d)
    return (xb * torch.log(pb) + (1 - xb) * torch.log1p(-pb)).sum(-1).reshape(m)


def critic_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n_joint: int,
    activation: str,
    param: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last layer of the MI chain and the NWJ bound.

    Shapes: ``hidden`` (R, h), ``weight`` (h,), ``bias`` (1,) or None. Scores
    ``t = act(hidden @ weight + bias)`` of shape (R,); rows ``[0, n_joint)`` are joint pairs, the
    rest shuffled pairs. Returns ``(nwj_bound(t[:n_joint], t[n_joint:]), t)``.
    """
    pre = hidden @ weight
    if bias is not None:
        pre = pre + bias
    scores = apply_activation(pre, activation, param)
    return nwj_bound(scores[:n_joint], scores[n_joint:]), scores


def critic_mlp(
    hidden: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    activations: Sequence[str],
    params: Sequence[float],
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    n_joint: int,
    head_activation: str,
    head_param: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MI chain after its first layer and the NWJ bound.

    ``hidden`` (R, H_0) with R = 2 ``n_joint`` (joint rows, then shuffled rows); layer l is
    ``h = act_l(h @ weights[l].T + biases[l])`` (weights[l] (H_{l+1}, H_l), biases[l]
    (H_{l+1},) or None, ``activations[l]`` with ``params[l]``); then :func:`critic_head` with
    ``head_weight`` (H_L,) and ``head_bias`` (1,) or None. Returns ``(bound, scores)``.
    """
    h = hidden
    for weight, bias, activation, param in zip(weights, biases, activations, params):
        h = apply_activation(torch.nn.functional.linear(h, weight, bias), activation, param)
    return critic_head(h, head_weight, head_bias, n_joint, head_activation, head_param)

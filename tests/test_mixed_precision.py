"""bfloat16 and float16 through the fused ops, and torch.autocast (python/infomax_ext/precision.py,
docs/precision.md).

Each op's values and gradients in a reduced dtype are checked against the plain-PyTorch
reference run in float32 on the same (rounded) inputs: the difference is then only the
precision the kernels compute in, with tolerances scaled by the reference's magnitude. The bound
is float32; outputs and gradients have the input dtype.
"""
from __future__ import annotations

import math

import pytest
import torch

import infomax_ext as im
from infomax_ext import (_ops, critic_head_op, critic_mlp_op, nwj_bound_op, paired_first_layer_op,
                         paired_linear_op, precision, reference)
from infomax_ext.activations import ACTIVATIONS, KERNEL_ACTIVATIONS

ops = torch.ops.infomax_ext
needs_kernels = pytest.mark.skipif(not im.extension_available(),
                                   reason="the compiled extension is not loaded")
pytestmark = needs_kernels

DTYPES = [torch.bfloat16, torch.float16]
# Every per-op test runs on the CPU and, where a GPU is present, on CUDA.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available() or not _ops.has_kernel("paired_first_layer", "cuda"),
    reason="no CUDA device or no CUDA kernels in this build"))]
# (rtol, atol relative to the reference's largest magnitude): bfloat16 keeps 8 significant bits,
# float16 11.
TOLERANCES = {torch.bfloat16: (5e-2, 5e-3), torch.float16: (1e-2, 1e-3)}


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype,
                        factor: float = 1.0) -> None:
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(want.detach().abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol * factor,
                               atol=atol * factor * scale)


def param_of(activation: str) -> float:
    return {"leaky_relu": 0.1, "elu": 0.7}.get(activation, 0.0)


def rounded(dtype: torch.dtype, *shapes: tuple[int, ...], scale: float = 0.5,
            seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    """Random tensors rounded to dtype: the same values serve both sides."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)
            for s in shapes]


def grads_of(outputs: list[torch.Tensor], leaves: list[torch.Tensor],
             seed: int = 1) -> list[torch.Tensor]:
    """Gradients of a fixed random weighting of the outputs (float32 weights, one per entry)."""
    g = torch.Generator().manual_seed(seed)
    total = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum()
                for o in outputs)
    return list(torch.autograd.grad(total, leaves))


def as_float32_leaves(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().float().requires_grad_() for t in tensors]


def as_leaves(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


# ------------------------------------------------------------------------- per op, per dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_paired_linear_matches_float32(device, dtype, activation):
    n, s, dx, dz, h = 12, 2, 5, 3, 16
    tensors = rounded(dtype, (n, dx), (s * n, dz), (h, dx + dz), (h,), device=device)
    perm = torch.randperm(s * n, generator=torch.Generator().manual_seed(3)).to(device)
    p = param_of(activation)
    ours = as_leaves(tensors)
    out = paired_linear_op.paired_linear(ours[0], ours[1], None, ours[2], ours[3], perm, activation, p)
    assert out.dtype == dtype and out.grad_fn is not None
    assert "PairedLinear" in type(out.grad_fn).__name__
    ref = as_float32_leaves(tensors)
    want = reference.paired_linear(ref[0], ref[1], None, ref[2], ref[3], perm, activation, p)
    assert_close_scaled(out, want, dtype)
    for g, w, t in zip(grads_of([out], ours), grads_of([want], ref), ours):
        assert g.dtype == dtype
        assert_close_scaled(g, w, dtype, factor=2.0)  # sums of H or N products, each rounded


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_paired_first_layer_matches_float32(device, dtype, activation):
    n, s, h = 6, 2, 9
    tensors = rounded(dtype, (n, h), (s * n, h), (s * n, h), (h,), device=device)
    perm = torch.randperm(s * n, generator=torch.Generator().manual_seed(4)).to(device)
    p = param_of(activation)
    ours, ref = as_leaves(tensors), as_float32_leaves(tensors)
    out = paired_first_layer_op.paired_first_layer(ours[0], ours[1], ours[2], ours[3], perm, activation, p)
    want = reference.paired_first_layer(ref[0], ref[1], ref[2], ref[3], perm, activation, p)
    assert out.dtype == dtype
    assert_close_scaled(out, want, dtype)
    for g, w in zip(grads_of([out], ours), grads_of([want], ref)):
        assert g.dtype == dtype
        assert_close_scaled(g, w, dtype, factor=2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_critic_head_matches_float32(device, dtype, activation):
    rows, h = 40, 24
    tensors = rounded(dtype, (rows, h), (h,), (1,), device=device)
    p = param_of(activation)
    ours, ref = as_leaves(tensors), as_float32_leaves(tensors)
    bound, scores = critic_head_op.critic_head(*ours, rows // 2, activation, p)
    want_bound, want_scores = reference.critic_head(*ref, rows // 2, activation, p)
    assert bound.dtype == torch.float32 and scores.dtype == dtype
    assert_close_scaled(scores, want_scores, dtype)
    assert_close_scaled(bound, want_bound, dtype)
    for g, w in zip(grads_of([bound, scores], ours), grads_of([want_bound, want_scores], ref)):
        assert g.dtype == dtype
        assert_close_scaled(g, w, dtype, factor=2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_critic_mlp_matches_float32(device, dtype, activation):
    n_joint, h0, h1, h2 = 16, 12, 20, 10
    hidden, w0, b0, w1, b1, hw, hb = rounded(dtype, (2 * n_joint, h0), (h1, h0), (h1,), (h2, h1),
                                             (h2,), (h2,), (1,), device=device)
    tensors = [hidden, w0, b0, w1, b1, hw, hb]
    p = param_of(activation)
    acts, params = [activation, "tanh"], [p, 0.0]

    def run(fn, t):
        return fn(t[0], [t[1], t[3]], [t[2], t[4]], acts, params, t[5], t[6], n_joint,
                  activation, p)

    ours, ref = as_leaves(tensors), as_float32_leaves(tensors)
    bound, scores = run(critic_mlp_op.critic_mlp, ours)
    want_bound, want_scores = run(reference.critic_mlp, ref)
    assert bound.dtype == torch.float32 and scores.dtype == dtype
    assert_close_scaled(scores, want_scores, dtype, factor=2.0)
    assert_close_scaled(bound, want_bound, dtype, factor=2.0)
    for g, w in zip(grads_of([bound, scores], ours), grads_of([want_bound, want_scores], ref)):
        assert g.dtype == dtype
        assert_close_scaled(g, w, dtype, factor=3.0)  # through three layers of rounded products


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_nwj_bound_is_float32_and_matches(device, dtype):
    tj, tm = rounded(dtype, (30,), (50,), scale=2.0, device=device)
    ours, ref = as_leaves([tj, tm]), as_float32_leaves([tj, tm])
    bound = nwj_bound_op.nwj_bound(*ours)
    want = reference.nwj_bound(*ref)
    assert bound.dtype == torch.float32
    # The sums run in float32 on the same rounded scores: only float32 rounding differs.
    torch.testing.assert_close(bound, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(torch.autograd.grad(bound, ours), torch.autograd.grad(want, ref)):
        assert g.dtype == dtype
        assert_close_scaled(g, w, dtype)


# ----------------------------------------------------------------------------------- overflow


def test_float16_scores_near_15_give_a_finite_bound_where_float32_does():
    # exp(15 - 1) = 1.2e6 > 65504, float16's largest value: the bound computed in float16 is -inf.
    scores = torch.tensor([14.0, 15.0, 15.5, 13.0], dtype=torch.float16)
    marg = torch.tensor([15.0, 14.5, 15.25, 12.0], dtype=torch.float16)
    assert torch.isinf(scores.mean() - torch.exp(marg - 1).mean())  # reduced in float16
    want = reference.nwj_bound(scores.float(), marg.float())
    # the twin reduces float16 scores in float32, as the kernels do
    torch.testing.assert_close(reference.nwj_bound(scores, marg), want, rtol=0.0, atol=0.0)
    ours = as_leaves([scores, marg])
    bound = nwj_bound_op.nwj_bound(*ours)
    assert math.isfinite(bound.item())
    torch.testing.assert_close(bound, want, rtol=1e-6, atol=0.0)
    grads = torch.autograd.grad(bound, ours)
    # d/dt_marg = -exp(t - 1) / 4: up to -8.9e5 / 4 = -2.2e5 overflows float16 too, so compare
    # where float16 can hold it and require +-inf nowhere else.
    exact = -torch.exp(marg.double() - 1) / 4
    fits = exact.abs() < 65504
    assert torch.isfinite(grads[1][fits]).all()
    torch.testing.assert_close(grads[1][fits].double(), exact[fits], rtol=1e-3, atol=0.0)
    torch.testing.assert_close(grads[0].double(), torch.full((4,), 0.25, dtype=torch.float64))


def test_float16_head_with_scores_near_15_is_finite_and_matches_float32():
    rows, h = 32, 8
    hidden = torch.full((rows, h), 1.875, dtype=torch.float16)  # hidden . w = 15 (exactly)
    weight = torch.ones(h, dtype=torch.float16)
    bound, scores = critic_head_op.critic_head(hidden, weight, None, rows // 2, "identity")
    want, _ = reference.critic_head(hidden.float(), weight.float(), None, rows // 2, "identity")
    assert math.isfinite(bound.item()) and math.isfinite(want.item())
    torch.testing.assert_close(bound, want, rtol=1e-6, atol=0.0)
    mlp_bound, _ = critic_mlp_op.critic_mlp(hidden, [], [], [], [], weight, None, rows // 2, "identity")
    torch.testing.assert_close(mlp_bound, want, rtol=1e-6, atol=0.0)


# ------------------------------------------------------------------------------------ autocast


def small_chain(seed: int = 0) -> im.MutualInfoChain:
    torch.manual_seed(seed)
    return im.MutualInfoChain.from_sizes(8, 2, [16, 16], [torch.relu, torch.tanh])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_autocast_runs_the_fused_ops_with_products_in_its_dtype(device, dtype):
    mi = small_chain().to(device)
    x, z = torch.randn(32, 8, device=device), torch.randn(32, 2, device=device)
    with torch.autocast(device, dtype=dtype):
        assert _ops.kernels_apply(x, z)
        assert im.explain_path(mi, x, z).path == "fused"
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            value = im.variational_mutual_info(mi, x, z, seed=3)
            value.backward()
    names = {e.name for e in prof.events()}
    assert {"infomax_ext::paired_linear_forward", "infomax_ext::critic_mlp_forward",
            "infomax_ext::critic_mlp_backward"} <= names, sorted(n for n in names if "infomax" in n)
    assert "CriticMlp" in type(value.grad_fn).__name__
    assert value.dtype == torch.float32
    grads = [p.grad.clone() for p in mi.parameters()]
    assert all(g.dtype == torch.float32 for g in grads)  # the parameters' dtype
    mi.zero_grad()
    want = im.variational_mutual_info(mi, x, z, seed=3)
    want.backward()
    assert_close_scaled(value, want, dtype, factor=2.0)
    for g, w in zip(grads, [p.grad for p in mi.parameters()]):
        assert_close_scaled(g, w, dtype, factor=3.0)


def test_the_ops_cast_under_autocast_when_called_through_torch_ops():
    hidden, weight = torch.randn(10, 6), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bound, scores, pre = ops.critic_head(hidden, weight, None, 5, "tanh", 0.0)
        kept = ops.nwj_bound(scores[:5], scores[5:].double())  # a reduction: promoted, not cast
        float64 = ops.critic_head(hidden.double(), weight.double(), None, 5, "tanh", 0.0)[0]
    assert scores.dtype == pre.dtype == torch.bfloat16 and bound.dtype == torch.float32
    assert kept.dtype == torch.float64
    assert float64.dtype == torch.float64  # autocast leaves float64 alone, as torch does
    want, _ = reference.critic_head(hidden.bfloat16().float(), weight.bfloat16().float(), None, 5,
                                 "tanh")
    assert_close_scaled(bound, want, torch.bfloat16)


def test_fake_kernels_give_the_kernels_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        hidden = torch.empty(10, 6, dtype=torch.float16)
        weight = torch.empty(6, dtype=torch.float16)
        bound, scores, pre = ops.critic_head(hidden, weight, None, 5, "tanh", 0.0)
        mlp_bound, mlp_scores = ops.critic_mlp(hidden, [], [], [], [], weight, None, 5, "tanh", 0.0)
        alone = ops.nwj_bound(scores[:5], scores[5:])
    assert bound.dtype == mlp_bound.dtype == alone.dtype == torch.float32
    assert scores.dtype == pre.dtype == mlp_scores.dtype == torch.float16


def test_opcheck_with_bfloat16_inputs():
    dtype = torch.bfloat16
    hx, hz, w, b = (t.requires_grad_() for t in rounded(dtype, (6, 4), (6, 3), (8, 7), (8,)))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.library.opcheck(ops.paired_linear.default,
                          (hx, hz, None, w, b, perm, "gelu", 0.0, None))
    hidden, hw, hb = (t.requires_grad_() for t in rounded(dtype, (12, 8), (8,), (1,)))
    torch.library.opcheck(ops.critic_head.default, (hidden, hw, hb, 6, "silu", 0.0))
    w1, b1 = (t.requires_grad_() for t in rounded(dtype, (8, 8), (8,), seed=2))
    torch.library.opcheck(ops.critic_mlp.default,
                          (hidden, [w1], [b1], ["elu"], [1.0], hw, hb, 6, "identity", 0.0))
    tj, tm = (t.requires_grad_() for t in rounded(dtype, (5,), (7,)))
    torch.library.opcheck(ops.nwj_bound.default, (tj, tm))


def test_torch_compile_under_autocast_matches_eager():
    mi = small_chain(1)
    x, z = torch.randn(32, 8), torch.randn(32, 2)

    def value_of(chain: torch.nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return im.variational_mutual_info(chain, x, z, seed=5)

    eager = value_of(mi, x, z)
    eager_grads = torch.autograd.grad(eager, list(mi.parameters()))
    compiled = torch.compile(value_of, fullgraph=True)(mi, x, z)
    assert compiled.dtype == torch.float32
    compiled_grads = torch.autograd.grad(compiled, list(mi.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-2, atol=1e-2)
    for g, w in zip(compiled_grads, eager_grads):
        assert g.dtype == torch.float32
        assert_close_scaled(g, w, torch.bfloat16)


def test_a_bound_gradient_in_the_wrong_dtype_is_refused_by_name():
    hidden, weight = rounded(torch.bfloat16, (8, 4), (4,))
    bound, scores, pre = ops.critic_head(hidden, weight, None, 4, "identity", 0.0)
    with pytest.raises(RuntimeError, match="grad_bound is BFloat16 but the bound of BFloat16 "
                                           "scores is Float"):
        ops.critic_head_backward(torch.ones((), dtype=torch.bfloat16), None, hidden, weight, scores,
                              pre, 4, "identity", 0.0, [True, True, False])


def test_every_activation_is_covered():
    assert set(KERNEL_ACTIVATIONS) <= set(ACTIVATIONS) and len(KERNEL_ACTIVATIONS) == 10
    assert precision.bound_dtype(torch.float16) == torch.float32
    assert precision.bound_dtype(torch.float64) == torch.float64


# --------------------------------------------------------------------------------- convergence


def train_demo_model(autocast: bool, steps: int = 300) -> list[tuple[float, float]]:
    """The demo's InfoMax VAE (build_model, a small TrainConfig) on the digits, ``steps`` steps of
    train_step on seeded batches of 64; (vae_loss, mi_loss) per step."""
    from infomax_ext.data import load_digits
    from infomax_ext.train_config import TrainConfig, build_model

    torch.manual_seed(0)
    config = TrainConfig(latent_dim=4, encoder_neurons=[32], decoder_neurons=[32],
                         mi_neurons=[32, 32])
    model = build_model(config, (64,))
    opt = {"vae": torch.optim.Adam(model.vae.parameters(), lr=2e-3),
           "mi": torch.optim.Adam(model.mi.parameters(), lr=2e-3)}
    x = torch.as_tensor(load_digits().x)
    batches = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (64,), generator=batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses.append(im.train_step(model, x[rows], opt, loss_return=True))
    return losses


def test_demo_model_under_bfloat16_autocast_tracks_float32():
    float32, bfloat16 = train_demo_model(False), train_demo_model(True)

    def tail_mean(losses: list[tuple[float, float]], k: int) -> float:
        return sum(step[k] for step in losses[-100:]) / 100

    vae32, vae16 = tail_mean(float32, 0), tail_mean(bfloat16, 0)
    assert vae32 < float32[0][0] - 5  # it did train
    assert abs(vae16 - vae32) <= 0.03 * abs(vae32), (vae16, vae32)
    mi32, mi16 = -tail_mean(float32, 1), -tail_mean(bfloat16, 1)  # mi_loss = -MI estimate
    assert mi32 > 0.2  # the critic has learnt something to compare (0.41 nat when written)
    assert abs(mi16 - mi32) <= 0.3, (mi16, mi32)


def test_a_data_half_kept_under_autocast_is_not_reused_in_float32():
    torch.manual_seed(2)
    mi = im.MutualInfoChain(torch.nn.Identity(), torch.nn.Identity(),
                            torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(),
                                                torch.nn.Linear(16, 1)))
    x, z = torch.randn(16, 8), torch.randn(16, 2)
    perm = torch.randperm(16)
    cache = im.DataHalfCache()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache)
    value = im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache).bound
    want = im.paired_mutual_info(mi, x, z, perm).bound
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, want)

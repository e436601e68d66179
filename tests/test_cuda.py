"""The CUDA kernels against the CPU kernels: values, gradients, determinism, torch.compile,
a whole train_step. Every test needs a GPU and a build with the CUDA kernels
(``INFOMAX_EXT_CUDA=ON``); without them the tests skip. See docs/cuda.md.

The CPU kernels are the oracle here (tests/test_ops.py checks them against the plain-PyTorch
reference): the CUDA result of every op must match the CPU result on the same inputs.
"""
import pytest
import torch

import infomax_ext as im
from infomax_ext import _ops, critic_mlp_op, paired_linear_op
from activation_cases import KERNEL_CASES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(
        torch.cuda.is_available() and not _ops.has_kernel("paired_first_layer", "cuda"),
        reason="infomax_ext was built without its CUDA kernels (INFOMAX_EXT_CUDA=ON)",
    ),
]

ops = torch.ops.infomax_ext
CUDA = "cuda"
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float64, seed=0, scale=1.0):
    """Normal values made on the CPU (the same numbers for both devices)."""
    return (scale * torch.randn(*shape, generator=gen(seed), dtype=torch.float64)).to(dtype)


def to_cuda(*tensors):
    return [None if t is None else t.to(CUDA) for t in tensors]


def assert_same(cuda_out, cpu_out, dtype):
    """CUDA result equals the CPU one up to rounding: float64 to about 1e-10 relative, float32 to
    the error of a float32 reduction (the two devices sum in different orders)."""
    tol = 1e-10 if dtype == torch.float64 else 3e-5
    cuda_out, cpu_out = cuda_out.detach().cpu(), cpu_out.detach()
    assert cuda_out.shape == cpu_out.shape and cuda_out.dtype == cpu_out.dtype
    scale = max(1.0, float(cpu_out.detach().abs().max())) if cpu_out.numel() else 1.0
    torch.testing.assert_close(cuda_out, cpu_out, rtol=tol, atol=tol * scale)


# ------------------------------------------------------------------------------------ permutation


@pytest.mark.parametrize("n", [2, 7, 1000, 4097])
@pytest.mark.parametrize("seed", [0, 12345, -3, 2**63 - 1])
def test_permutation_keys_and_seeded_permutation_match_cpu(n, seed):
    index = torch.arange(n) * 7919 - 5
    keys_cuda = ops.permutation_keys.default(index.to(CUDA), seed)
    assert torch.equal(keys_cuda.cpu(), ops.permutation_keys.default(index, seed))
    assert torch.equal(im.seeded_permutation(n, seed, CUDA).cpu(), im.seeded_permutation(n, seed))


def test_latent_permutation_with_sample_blocks_matches_cpu():
    for n, s in [(2, 3), (50, 4)]:
        want = im.latent_permutation(n, s, seed=9)
        assert torch.equal(im.latent_permutation(n, s, seed=9, device=CUDA).cpu(), want)


@pytest.mark.parametrize("n", [1, 2, 333, 5000])
def test_inverse_permutation_matches_cpu(n):
    perm = torch.randperm(n, generator=gen(n))
    inverse = ops.inverse_permutation.default(perm.to(CUDA)).cpu()
    assert torch.equal(inverse, ops.inverse_permutation.default(perm))
    assert torch.equal(inverse[perm], torch.arange(n))


def test_empty_index_and_permutation():
    empty = torch.empty(0, dtype=torch.long, device=CUDA)
    assert ops.permutation_keys.default(empty, 1).numel() == 0
    assert ops.inverse_permutation.default(empty).numel() == 0


# ------------------------------------------------------------------------------ paired first layer


def paired_inputs(n, h, s, dtype, with_source, seed=0):
    m = s * n
    a = randn(n, h, dtype=dtype, seed=seed)
    b = randn(m, h, dtype=dtype, seed=seed + 1)
    c = randn(m, h, dtype=dtype, seed=seed + 2) if with_source else None
    bias = randn(h, dtype=dtype, seed=seed + 3, scale=0.5)
    perm = torch.cat([torch.randperm(n, generator=gen(seed + 4 + k)) + k * n for k in range(s)])
    return a, b, c, bias, perm


def check_paired(n, h, s, dtype, with_source, activation, param, mask=(True, True, True, True)):
    a, b, c, bias, perm = paired_inputs(n, h, s, dtype, with_source)
    m = s * n
    out_cpu = ops.paired_first_layer.default(a, b, c, bias, perm, activation, param)
    out_cuda = ops.paired_first_layer.default(*to_cuda(a, b, c, bias, perm), activation, param)
    assert_same(out_cuda, out_cpu, dtype)
    grad_out = randn(2 * m, h, dtype=dtype, seed=99)
    inverse = ops.inverse_permutation.default(perm)
    args = (a, b, c, bias, perm, inverse)
    grads_cpu = ops.paired_first_layer_backward.default(grad_out, *args, activation, param, list(mask))
    grads_cuda = ops.paired_first_layer_backward.default(
        *to_cuda(grad_out, *args), activation, param, list(mask))
    wanted = [mask[0], mask[1], mask[2] and with_source, mask[3]]
    for want, g_cuda, g_cpu in zip(wanted, grads_cuda, grads_cpu):
        assert (g_cuda.numel() > 0) == want
        assert_same(g_cuda, g_cpu, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,param", KERNEL_CASES)
@pytest.mark.parametrize("with_source", [False, True])
def test_paired_first_layer_every_activation(dtype, activation, param, with_source):
    check_paired(37, 45, 2, dtype, with_source, activation, param)


# N = 2; N and H not multiples of the 16-row chunks, 8-warp blocks or 32-lane tiles; S > 1.
@pytest.mark.parametrize("n,h,s", [(2, 1, 1), (2, 33, 3), (64, 257, 2), (300, 64, 1), (1000, 100, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_source", [False, True])
def test_paired_first_layer_shapes(n, h, s, dtype, with_source):
    check_paired(n, h, s, dtype, with_source, "gelu", 0.0)


@pytest.mark.parametrize("mask", [(True, False, False, False), (False, True, False, False),
                                  (False, False, True, True), (False, False, False, False)])
def test_paired_first_layer_only_requested_grads(mask):
    check_paired(40, 20, 2, torch.float64, True, "elu", 1.0, mask)
    check_paired(40, 20, 2, torch.float64, False, "elu", 1.0, mask)


@pytest.mark.parametrize("with_source", [False, True])
def test_paired_first_layer_autograd_matches_cpu(with_source):
    a, b, c, bias, perm = paired_inputs(30, 17, 3, torch.float64, with_source)
    leaves_cpu = [t.clone().requires_grad_() for t in (a, b, c, bias) if t is not None]
    leaves_cuda = [t.to(CUDA).requires_grad_() for t in leaves_cpu]
    weights = randn(180, 17, seed=5)

    def run(leaves, device):
        a_, b_, *rest = leaves
        c_, bias_ = (rest[0], rest[1]) if with_source else (None, rest[0])
        out = im.paired_first_layer(a_, b_, c_, bias_, perm.to(device), "silu")
        return torch.autograd.grad((out * weights.to(device)).sum(), leaves)

    for g_cuda, g_cpu in zip(run(leaves_cuda, CUDA), run(leaves_cpu, "cpu")):
        assert_same(g_cuda, g_cpu, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [30, 600])
@pytest.mark.parametrize("with_source,with_bias", [(False, True), (True, False)])
@pytest.mark.parametrize("given_data_half", [False, True])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_paired_linear_matches_cpu(dtype, n, with_source, with_bias, given_data_half, activation):
    """The whole first layer (split-weight GEMMs + fused op, one autograd node) on CUDA: values and
    every gradient equal the CPU's, with the data half computed or given (17 units: the
    transposed data-half weight gradient); relu's backward reads its derivative from the
    output."""
    s, dx, dz, h = 2, 20, 3, 17
    hx, hz, w = randn(n, dx, dtype=dtype, seed=1), randn(s * n, dz, dtype=dtype, seed=2), randn(h, dx + dz, dtype=dtype, seed=3)
    src = randn(s * n, dz, dtype=dtype, seed=4) if with_source else None
    bias = randn(h, dtype=dtype, seed=5) if with_bias else None
    perm = im.latent_permutation(n, s, seed=9)
    leaves_cpu = [t.clone().requires_grad_() for t in (hx, hz, src, w, bias) if t is not None]
    leaves_cuda = [t.to(CUDA).requires_grad_() for t in leaves_cpu]
    weights = randn(2 * s * n, h, dtype=dtype, seed=6)

    def run(leaves, device):
        it = iter(leaves)
        hx_, hz_ = next(it), next(it)
        src_ = next(it) if with_source else None
        w_ = next(it)
        bias_ = next(it) if with_bias else None
        data_half = (hx_ @ w_[:, :dx].t()).detach() if given_data_half else None
        out = paired_linear_op.paired_linear(hx_, hz_, src_, w_, bias_, perm.to(device), activation, 0.0,
                                 data_half)
        return [out, *torch.autograd.grad((out * weights.to(device)).sum(), leaves)]

    for got, want in zip(run(leaves_cuda, CUDA), run(leaves_cpu, "cpu")):
        assert_same(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_products_at_once_match_cpu(dtype):
    """linear_grads and mm_pair (two products in one call; at once only on the CPU) on CUDA: two
    cuBLAS products one after the other, equal to the CPU's (a transposed view as an operand, as
    paired_linear passes them)."""
    g, x, w = randn(40, 17, dtype=dtype, seed=1), randn(40, 23, dtype=dtype, seed=2), randn(17, 23, dtype=dtype, seed=3)
    a, b = randn(10, 40, dtype=dtype, seed=4).t(), randn(10, 17, dtype=dtype, seed=5)
    c, d = randn(9, 40, dtype=dtype, seed=6), randn(40, 17, dtype=dtype, seed=7)
    for op, args in ((ops.linear_grads, (g, x, w)), (ops.mm_pair, (a, b, c, d))):
        for got, want in zip(op(*to_cuda(*args)), op(*args)):
            assert got.device.type == CUDA
            assert_same(got, want, dtype)


def test_paired_first_layer_rejects_integer_tensors():
    a, b, c, bias, perm = to_cuda(*paired_inputs(4, 3, 1, torch.float32, False))
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 or float16"):
        ops.paired_first_layer.default(a.int(), b.int(), None, bias.int(), perm, "relu", 0.0)


# ------------------------------------------------------------------------------------ NWJ head/bound


def check_head(rows, h, n_joint, dtype, activation, param, with_bias, with_grad_scores,
               mask=(True, True, True)):
    hidden = randn(rows, h, dtype=dtype, seed=1, scale=0.5)
    w = randn(h, dtype=dtype, seed=2, scale=h ** -0.5)
    bias = randn(1, dtype=dtype, seed=3) if with_bias else None
    bound_cpu, scores_cpu, pre_cpu = ops.critic_head.default(hidden, w, bias, n_joint, activation, param)
    bound_cuda, scores_cuda, pre_cuda = ops.critic_head.default(
        *to_cuda(hidden, w, bias), n_joint, activation, param)
    for got, want in [(bound_cuda, bound_cpu), (scores_cuda, scores_cpu), (pre_cuda, pre_cpu)]:
        assert_same(got, want, dtype)
    grad_bound = torch.tensor(-1.3, dtype=dtype)
    grad_scores = randn(rows, dtype=dtype, seed=4) if with_grad_scores else None
    args = (hidden, w, scores_cpu, pre_cpu)
    grads_cpu = ops.critic_head_backward.default(grad_bound, grad_scores, *args, n_joint, activation,
                                              param, list(mask))
    grads_cuda = ops.critic_head_backward.default(*to_cuda(grad_bound, grad_scores, *args), n_joint,
                                               activation, param, list(mask))
    for want, g_cuda, g_cpu in zip(mask, grads_cuda, grads_cpu):
        assert (g_cuda.numel() > 0) == want
        assert_same(g_cuda, g_cpu, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,param", KERNEL_CASES)
def test_critic_head_every_activation(dtype, activation, param):
    check_head(70, 40, 35, dtype, activation, param, True, True)


# Rows around the 32-row chunks and the 1024-score blocks of the sums; h around the 32 lanes.
@pytest.mark.parametrize("rows,h,n_joint", [(4, 1, 2), (10, 7, 3), (66, 100, 33), (3000, 33, 1500),
                                            (12000, 300, 6000), (2050, 64, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias,with_grad_scores", [(True, False), (False, True)])
def test_critic_head_shapes(rows, h, n_joint, dtype, with_bias, with_grad_scores):
    check_head(rows, h, n_joint, dtype, "identity", 0.0, with_bias, with_grad_scores)


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, False, False)])
def test_critic_head_only_requested_grads(mask):
    check_head(300, 20, 150, torch.float64, "relu", 0.0, True, False, mask)


@pytest.mark.parametrize("n_joint,n_marg", [(1, 1), (5, 9), (1000, 3000), (5000, 5000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nwj_bound_matches_cpu(n_joint, n_marg, dtype):
    tj, tm = randn(n_joint, dtype=dtype, seed=1), randn(n_marg, dtype=dtype, seed=2)
    assert_same(ops.nwj_bound.default(*to_cuda(tj, tm)), ops.nwj_bound.default(tj, tm), dtype)
    grad = torch.tensor(0.7, dtype=dtype)
    for got, want in zip(ops.nwj_bound_backward.default(*to_cuda(grad, tj, tm)),
                         ops.nwj_bound_backward.default(grad, tj, tm)):
        assert_same(got, want, dtype)


def test_critic_head_autograd_matches_cpu():
    hidden, w, bias = randn(200, 30, seed=1), randn(30, seed=2), randn(1, seed=3)
    leaves_cpu = [t.clone().requires_grad_() for t in (hidden, w, bias)]
    leaves_cuda = [t.to(CUDA).requires_grad_() for t in leaves_cpu]

    def run(leaves):
        bound, scores = im.critic_head(*leaves, 100, "softplus")
        return torch.autograd.grad(bound + scores.square().sum(), leaves)

    for g_cuda, g_cpu in zip(run(leaves_cuda), run(leaves_cpu)):
        assert_same(g_cuda, g_cpu, torch.float64)


# ------------------------------------------------------------------------------- NaN and inf


def assert_same_nonfinite(cuda_out, cpu_out, dtype):
    """The same NaN positions, the same infinities, the finite values as assert_same."""
    cuda_out, cpu_out = cuda_out.detach().cpu(), cpu_out.detach()
    assert torch.equal(torch.isnan(cuda_out), torch.isnan(cpu_out))
    assert torch.equal(torch.isposinf(cuda_out), torch.isposinf(cpu_out))
    assert torch.equal(torch.isneginf(cuda_out), torch.isneginf(cpu_out))
    finite = torch.isfinite(cpu_out)
    assert_same(cuda_out[finite], cpu_out[finite], dtype)


def poisoned(t, entries):
    t = t.clone()
    for index, value in entries.items():
        t[index] = value
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,param", KERNEL_CASES)
@pytest.mark.parametrize("with_source", [False, True])
def test_nan_and_inf_propagate_as_on_the_cpu(dtype, activation, param, with_source):
    """The activations (csrc/activations.h, shared with the CPU kernels, which
    tests/test_nonfinite.py checks against torch) and the reductions on CUDA keep NaN and inf
    where the CPU kernels do: forward and backward of both fused ops, and nwj_bound."""
    nan, inf = float("nan"), float("inf")
    a, b, c, bias, perm = paired_inputs(37, 45, 2, dtype, with_source)
    a = poisoned(a, {(0, 0): nan, (5, 7): inf, (9, 3): -inf})
    b = poisoned(b, {(3, 1): inf, (40, 2): nan})
    bias = poisoned(bias, {44: nan})
    out_cpu = ops.paired_first_layer.default(a, b, c, bias, perm, activation, param)
    out_cuda = ops.paired_first_layer.default(*to_cuda(a, b, c, bias, perm), activation, param)
    assert_same_nonfinite(out_cuda, out_cpu, dtype)
    grad_out = poisoned(randn(2 * 74, 45, dtype=dtype, seed=99), {(7, 7): nan, (80, 3): inf})
    args = (a, b, c, bias, perm, ops.inverse_permutation.default(perm))
    mask = [True, True, with_source, True]
    for g_cuda, g_cpu in zip(
            ops.paired_first_layer_backward.default(*to_cuda(grad_out, *args), activation, param, mask),
            ops.paired_first_layer_backward.default(grad_out, *args, activation, param, mask)):
        assert_same_nonfinite(g_cuda, g_cpu, dtype)

    hidden = poisoned(randn(2100, 40, dtype=dtype, seed=1, scale=0.5),
                      {(3, 0): nan, (1500, 5): inf, (2099, 39): -inf})
    w, hb = randn(40, dtype=dtype, seed=2, scale=40 ** -0.5), randn(1, dtype=dtype, seed=3)
    head_cpu = ops.critic_head.default(hidden, w, hb, 1050, activation, param)
    head_cuda = ops.critic_head.default(*to_cuda(hidden, w, hb), 1050, activation, param)
    for got, want in zip(head_cuda, head_cpu):
        assert_same_nonfinite(got, want, dtype)
    grad_bound = torch.tensor(1.0, dtype=dtype)
    back_args = (hidden, w, head_cpu[1], head_cpu[2])
    for g_cuda, g_cpu in zip(
            ops.critic_head_backward.default(*to_cuda(grad_bound, None, *back_args), 1050, activation,
                                          param, [True, True, True]),
            ops.critic_head_backward.default(grad_bound, None, *back_args, 1050, activation, param,
                                          [True, True, True])):
        assert_same_nonfinite(g_cuda, g_cpu, dtype)
    for tj, tm in [(poisoned(randn(3000, dtype=dtype, seed=4), {2999: nan}), randn(5, dtype=dtype)),
                   (randn(5, dtype=dtype), poisoned(randn(3000, dtype=dtype, seed=5), {1234: inf}))]:
        assert_same_nonfinite(ops.nwj_bound.default(*to_cuda(tj, tm)), ops.nwj_bound.default(tj, tm),
                              dtype)


# ---------------------------------------------------------------------------------- determinism


def test_kernels_are_bit_identical_run_to_run():
    n, h, s = 4096, 300, 2
    a, b, c, bias, perm = to_cuda(*paired_inputs(n, h, s, torch.float32, True))
    inverse = ops.inverse_permutation.default(perm)
    grad_out = torch.randn(2 * s * n, h, device=CUDA)
    hidden = torch.randn(2 * s * n, h, device=CUDA)
    w, hb = torch.randn(h, device=CUDA) / h ** 0.5, torch.randn(1, device=CUDA)

    def run():
        out = ops.paired_first_layer.default(a, b, c, bias, perm, "relu", 0.0)
        grads = ops.paired_first_layer_backward.default(grad_out, a, b, None, bias, perm, inverse,
                                                        "relu", 0.0, [True, True, False, True])
        bound, scores, pre = ops.critic_head.default(hidden, w, hb, s * n, "identity", 0.0)
        head_grads = ops.critic_head_backward.default(bound * 0 + 1, scores, hidden, w, scores, pre,
                                                   s * n, "identity", 0.0, [True, True, True])
        nb = ops.nwj_bound.default(scores[: s * n], scores[s * n:])
        nb_grads = ops.nwj_bound_backward.default(nb, scores[: s * n], scores[s * n:])
        return [out, *grads, bound, scores, *head_grads, nb, *nb_grads]

    first, second = run(), run()
    for x, y in zip(first, second):
        assert torch.equal(x, y)


# ------------------------------------------------------------------------ the chain, end to end


def small_chain(dtype=torch.float64):
    torch.manual_seed(3)
    return im.MutualInfoChain.from_sizes(12, 3, [16, 8], [torch.relu, torch.nn.functional.gelu]).to(dtype)


@pytest.mark.parametrize("shuffled_grad", [False, True])
@pytest.mark.parametrize("n,s", [(2, 1), (33, 1), (40, 3)])
def test_paired_mutual_info_matches_cpu(shuffled_grad, n, s):
    mi_cpu = small_chain()
    mi_cuda = small_chain().to(CUDA)
    assert im.backend(CUDA) == "compiled"
    x = randn(n, 12, seed=1)
    z = randn(s * n, 3, seed=2)
    perm = im.latent_permutation(n, s, seed=7)

    def run(mi, device):
        zz = z.to(device).requires_grad_()
        out = im.paired_mutual_info(mi, x.to(device), zz, perm.to(device), shuffled_grad=shuffled_grad)
        leaves = [zz, *mi.parameters()]
        return [out.bound, out.joint, out.shuffled,
                *torch.autograd.grad(out.bound + out.shuffled.sum(), leaves)]

    for got, want in zip(run(mi_cuda, CUDA), run(mi_cpu, "cpu")):
        assert_same(got, want, torch.float64)


def test_variational_mutual_info_same_seed_same_value_on_both_devices():
    mi_cpu, mi_cuda = small_chain(), small_chain().to(CUDA)
    x, z = randn(64, 12, seed=1), randn(64, 3, seed=2)
    want = im.variational_mutual_info(mi_cpu, x, z, seed=11)
    got = im.variational_mutual_info(mi_cuda, x.to(CUDA), z.to(CUDA), seed=11)
    assert_same(got, want, torch.float64)


def test_torch_compile_over_the_cuda_path():
    """torch.compile of the MI loss runs the CUDA kernels (fake kernels let it trace them) and
    gives eager's loss and gradients."""
    mi = small_chain(torch.float32).to(CUDA)
    x = torch.randn(64, 12, device=CUDA)
    z = torch.randn(64, 3, device=CUDA, requires_grad=True)
    perm = im.latent_permutation(64, 1, seed=5, device=CUDA)
    leaves = [z, *mi.parameters()]

    def loss_fn(x, z):
        return -im.paired_mutual_info(mi, x, z, perm, shuffled_grad=True).bound

    eager = loss_fn(x, z)
    compiled = torch.compile(loss_fn)(x, z)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(compiled, leaves), torch.autograd.grad(eager, leaves)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_train_step_on_cuda_matches_the_plain_pytorch_path():
    """A whole train_step on CUDA through the fused kernels gives the losses and the updated
    weights of the same step through the exact two-call path (plain torch ops, same RNG)."""
    def model():
        torch.manual_seed(0)
        enc = im.JointGaussianLogEncoder.from_sizes(16, 3, [24], [torch.relu])
        dec = im.BernoulliDecoder.from_sizes(16, 3, [24], [torch.relu])
        mi = im.MutualInfoChain.from_sizes(16, 3, [24, 12], [torch.relu, torch.relu])
        return im.InfoMaxVAE(im.VAE(enc, dec), mi).double().to(CUDA)

    def step(m):
        opt = {"vae": torch.optim.SGD(m.vae.parameters(), 0.1),
               "mi": torch.optim.SGD(m.mi.parameters(), 0.1)}
        torch.manual_seed(5)
        losses = im.train_step(m, x, opt, loss_return=True, infomaxloss_kwargs={"seed": 1},
                               miloss_kwargs={"seed": 2})
        return losses, [p.detach().clone() for p in m.parameters()]

    x = torch.rand(32, 16, generator=gen(1), dtype=torch.float64).round().to(CUDA)
    fused_model = model()
    before = [p.detach().clone() for p in fused_model.parameters()]
    fused_losses, fused_params = step(fused_model)
    with im.use_path("two_call"):
        plain_losses, plain_params = step(model())
    assert fused_losses == pytest.approx(plain_losses, rel=1e-9)
    assert any(not torch.equal(b, p) for b, p in zip(before, fused_params))
    for got, want in zip(fused_params, plain_params):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------ critic_mlp


def check_critic_mlp(rows, widths, activations, biases, head_activation, head_bias, dtype, seed=0):
    """critic_mlp on CUDA against the CPU on the same inputs: scores, bound and every gradient of
    a loss of bound and scores, to k = 8 eps x the scales of tests/test_critic_mlp.py (both devices
    are within them of the exact result)."""
    from test_critic_mlp import make_mlp, mlp_scales
    from tolerances import assert_close_scaled

    mlp = make_mlp(rows, widths, activations, biases, head_activation, head_bias, dtype,
                   seed=seed)
    grad_bound = randn((), dtype=dtype, seed=seed + 1)
    grad_scores = randn(rows, dtype=dtype, seed=seed + 2)
    on_cuda = mlp.with_tensors([t.detach().to(CUDA).requires_grad_() for t in mlp.tensors()])
    results = []
    for m, device in ((mlp, "cpu"), (on_cuda, CUDA)):
        bound, scores = critic_mlp_op.critic_mlp(*m.args())
        assert bound.grad_fn.name() == "_CriticMlpBackward" and bound.device.type == device
        grads = torch.autograd.grad((bound, scores), m.tensors(),
                                    (grad_bound.to(device), grad_scores.to(device)))
        results.append([scores, bound, *grads])
    score_scale, bound_scale, grad_scales = mlp_scales(mlp, dtype, grad_bound, grad_scores)
    names = ["scores", "bound", *[f"gradient of {n}" for n in mlp.names()]]
    for name, want, got, scale in zip(names, results[0], results[1],
                                      [score_scale, bound_scale, *grad_scales]):
        assert got.device.type == CUDA
        assert_close_scaled(got.detach().cpu(), want, scale, k=8, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,param", KERNEL_CASES)
@pytest.mark.parametrize("biases,head_bias", [((True, True), True), ((False, False), False),
                                              ((False, True), True)])
def test_critic_mlp_every_activation_matches_cpu(dtype, activation, param, biases, head_bias):
    # In both hidden layers and as the head's activation (activation_cases.py's parameters).
    check_critic_mlp(70, [20, 33, 17], [activation, activation], list(biases), activation,
                  head_bias, dtype)


# 0 to 3 hidden layers, an identity between two Linears; rows from 2 (one joint, one shuffled)
# to several thousand (many blocks of every reduction).
@pytest.mark.parametrize("rows,widths,activations,biases", [
    (2, [3], [], []),
    (2, [3, 4], ["relu"], [True]),
    (300, [16, 33, 8], ["gelu", "identity"], [False, True]),
    (2050, [64, 100, 32, 40], ["relu", "tanh", "relu"], [True, False, True]),
    (6000, [40, 300], ["silu"], [True]),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_critic_mlp_shapes_match_cpu(rows, widths, activations, biases, dtype):
    check_critic_mlp(rows, widths, activations, biases, "softplus", True, dtype, seed=rows)


@pytest.mark.parametrize("wanted", [("hidden",), ("weights[0]",), ("head_weight", "head_bias"),
                                    ("biases[1]", "weights[1]")])
def test_critic_mlp_only_requested_grads_match_cpu(wanted):
    from test_critic_mlp import make_mlp

    mlp = make_mlp(40, [6, 8, 5], ["elu", "mish"], [True, True], "identity", True,
                   requires_grad=False, seed=3)
    results = []
    for device in ("cpu", CUDA):
        m = mlp.with_tensors([t.detach().to(device).requires_grad_(name in wanted)
                              for name, t in zip(mlp.names(), mlp.tensors())])
        bound, scores = critic_mlp_op.critic_mlp(*m.args())
        results.append(torch.autograd.grad(bound, [t for t in m.tensors() if t.requires_grad]))
    assert len(results[1]) == len(wanted)
    for g_cuda, g_cpu in zip(results[1], results[0]):
        assert_same(g_cuda, g_cpu, torch.float64)


def test_critic_mlp_is_bit_identical_run_to_run():
    from test_critic_mlp import make_mlp

    mlp = make_mlp(4096, [128, 256, 64], ["relu", "gelu"], [True, True], "identity", True,
                   torch.float32, seed=4)
    m = mlp.with_tensors([t.detach().to(CUDA).requires_grad_() for t in mlp.tensors()])

    def run():
        bound, scores = critic_mlp_op.critic_mlp(*m.args())
        return [bound, scores, *torch.autograd.grad(bound + scores.mean(), m.tensors())]

    for x, y in zip(run(), run()):
        assert torch.equal(x, y)


def mlp_chain(dtype=torch.float64):
    """An MI chain whose middle runs in critic_mlp: Linear + relu, Linear, Linear + tanh, and a
    1-unit head with a sigmoid."""
    torch.manual_seed(4)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(15, 24), torch.nn.ReLU(), torch.nn.Linear(24, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 12), torch.nn.Linear(12, 8), torch.nn.Tanh(),
        torch.nn.Linear(8, 1), torch.nn.Sigmoid())
    return im.MutualInfoChain(torch.nn.Identity(), torch.nn.Identity(), mlp).to(dtype)


@pytest.mark.parametrize("shuffled_grad", [False, True])
@pytest.mark.parametrize("n,s", [(2, 1), (40, 2)])
def test_paired_mutual_info_through_critic_mlp_matches_cpu(shuffled_grad, n, s, monkeypatch):
    calls = []
    real = critic_mlp_op.critic_mlp

    def counting(*args):
        calls.append(args[0].device.type)
        return real(*args)

    monkeypatch.setattr(critic_mlp_op, "critic_mlp", counting)
    mi_cpu, mi_cuda = mlp_chain(), mlp_chain().to(CUDA)
    x, z = randn(n, 12, seed=1), randn(s * n, 3, seed=2)
    perm = im.latent_permutation(n, s, seed=7)

    def run(mi, device):
        zz = z.to(device).requires_grad_()
        out = im.paired_mutual_info(mi, x.to(device), zz, perm.to(device),
                                    shuffled_grad=shuffled_grad)
        assert out.bound.grad_fn.name() == "_CriticChainBackward"
        return [out.bound, out.joint, out.shuffled,
                *torch.autograd.grad(out.bound + out.shuffled.sum(), [zz, *mi.parameters()])]

    for got, want in zip(run(mi_cuda, CUDA), run(mi_cpu, "cpu")):
        assert_same(got, want, torch.float64)
    assert calls == [CUDA, "cpu"]

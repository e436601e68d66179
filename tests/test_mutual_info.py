"""MutualInfoChain, shuffle_latent, the NWJ estimate and the shared (fused) evaluation."""
import pytest
import torch
from torch import nn

import infomax_ext as im
from infomax_ext.mutual_info import fused_plan


def paper_like_chain(n_x=12, n_z=3, hidden=(16, 8), act=nn.ReLU, out_act=None, dtype=torch.float64):
    layers, width = [], n_x + n_z
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, 1))
    if out_act is not None:
        layers.append(out_act)
    return im.MutualInfoChain(nn.Identity(), nn.Identity(), nn.Sequential(*layers)).to(dtype)


def two_calls(mi, x, z, perm, shuffled_grad=False):
    """The bound on the exact two-call path, chosen through the public switch."""
    with im.use_path("two_call"):
        return im.paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad)


def direct_nwj(mi, x, z, z_shuffle):
    """The bound written out: float64, two calls of the chain, explicit means."""
    joint = mi(x, z).double()
    marg = mi(x, z_shuffle).double()
    return joint.sum() / len(joint) - torch.exp(marg - 1).sum() / len(marg)


# ---------------------------------------------------------------------------- the chain

def test_from_sizes_builds_the_julia_default_chain():
    mi = im.MutualInfoChain.from_sizes(784, 10, [256, 128], [torch.relu, torch.tanh], torch.sigmoid)
    assert isinstance(mi.latent, nn.Linear) and mi.latent.in_features == mi.latent.out_features == 10
    data_linear = [m for m in mi.data.modules() if isinstance(m, nn.Linear)]
    assert len(data_linear) == 1 and data_linear[0].in_features == data_linear[0].out_features == 784
    kinds = [type(m) for m in mi.mlp]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.Tanh, nn.Linear, nn.Sigmoid]
    assert mi.mlp[0].in_features == 794 and mi.mlp[-2].out_features == 1
    assert float(mi.mlp[0].bias.detach().abs().sum()) == 0.0
    # Glorot uniform: |w| <= sqrt(6 / (fan_in + fan_out))
    assert float(mi.mlp[0].weight.abs().max()) <= (6 / (794 + 256)) ** 0.5
    scores = mi(torch.randn(5, 784), torch.randn(5, 10))
    assert scores.shape == (5,) and bool(((scores > 0) & (scores < 1)).all())


def test_from_sizes_with_a_shape_flattens():
    mi = im.MutualInfoChain.from_sizes((1, 8, 8), 2, [16], [torch.relu])
    assert mi(torch.randn(4, 1, 8, 8), torch.randn(4, 2)).shape == (4,)
    assert mi.mlp[0].in_features == 66


def test_from_sizes_rejects_mismatched_activations():
    with pytest.raises(ValueError, match="mlp_neurons has 2 layers but mlp_activations has 1"):
        im.MutualInfoChain.from_sizes(8, 2, [4, 4], [torch.relu])


def test_from_sizes_sizes_must_be_positive_ints():
    build = im.MutualInfoChain.from_sizes
    with pytest.raises(TypeError, match="size_input must be a positive int, got float 4.0"):
        build(4.0, 2, [4], [torch.relu])
    with pytest.raises(TypeError, match="size_input must be a positive int, got bool True"):
        build(True, 2, [4], [torch.relu])
    with pytest.raises(ValueError, match=r"size_input\[0\] must be a positive int, got -2"):
        build([-2, -3], 2, [4], [torch.relu])
    with pytest.raises(TypeError, match=r"size_input\[1\] must be a positive int, got float"):
        build((2, 2.5), 2, [4], [torch.relu])
    with pytest.raises(ValueError, match="size_input must be a positive int or a non-empty shape"):
        build([], 2, [4], [torch.relu])
    with pytest.raises(TypeError, match="n_latent must be a positive int, got bool True"):
        build(8, True, [4], [torch.relu])
    with pytest.raises(ValueError, match="n_latent must be a positive int, got 0"):
        build(8, 0, [4], [torch.relu])
    with pytest.raises(TypeError, match=r"mlp_neurons\[1\] must be a positive int, got bool"):
        build(8, 2, [4, True], [torch.relu, torch.relu])
    with pytest.raises(TypeError, match="mlp_neurons must be a list of ints"):
        build(8, 2, 4, [torch.relu])


def test_from_config_round_trip():
    mi = im.MutualInfoChain.from_sizes((1, 4, 4), 3, [8, 5], [nn.LeakyReLU(0.3), "gelu"], torch.sigmoid)
    again = im.MutualInfoChain.from_config(mi.config)
    again.load_state_dict(mi.state_dict())
    x, z = torch.randn(6, 1, 4, 4), torch.randn(6, 3)
    torch.testing.assert_close(again(x, z), mi(x, z))
    assert isinstance(again.mlp[1], nn.LeakyReLU) and again.mlp[1].negative_slope == 0.3


def test_the_chain_and_the_vae_share_their_builders():
    # One set of builders: the same init (here one that writes in place), the same activation
    # configs and the same config checks for the MI chain as for an encoder.
    def init(w):
        w.fill_(0.25)

    mi = im.MutualInfoChain.from_sizes(6, 2, [4], [nn.LeakyReLU(0.3)], init=init)
    enc = im.JointGaussianLogEncoder.from_sizes(6, 2, [4], [nn.LeakyReLU(0.3)], init=init)
    for module in (mi, enc):
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        assert all(bool((m.weight == 0.25).all()) and not m.bias.any() for m in linears)
    leaky = [{"name": "leaky_relu", "param": 0.3}]
    assert mi.config["mlp_activations"] == enc.config["encoder_activation"] == leaky
    with pytest.raises(ValueError, match="config is for 'JointGaussianLogEncoder', not 'MutualInfoChain'"):
        im.MutualInfoChain.from_config(enc.config)


def test_chain_rejects_bad_batches():
    mi = paper_like_chain()
    with pytest.raises(ValueError, match="batch sizes differ"):
        mi(torch.randn(4, 12, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 samples"):
        im.variational_mutual_info(mi, torch.randn(1, 12, dtype=torch.float64),
                                   torch.randn(1, 3, dtype=torch.float64), seed=0)


# ---------------------------------------------------------------------------- shuffle_latent

def test_shuffle_latent_permutes_rows_reproducibly():
    z = torch.arange(40.0).reshape(20, 2)
    s1, s2 = im.shuffle_latent(z, seed=9), im.shuffle_latent(z, seed=9)
    assert torch.equal(s1, s2)
    assert torch.equal(torch.sort(s1[:, 0]).values, z[:, 0])
    assert torch.equal(s1[:, 1] - s1[:, 0], torch.ones(20))  # whole rows move
    assert not torch.equal(s1, z)


def test_shuffle_latent_seed_none_uses_the_global_generator():
    z = torch.randn(50, 3)
    torch.manual_seed(4)
    a = im.shuffle_latent(z)
    torch.manual_seed(4)
    b = im.shuffle_latent(z)
    c = im.shuffle_latent(z)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_seeded_shuffle_does_not_touch_the_global_generator():
    torch.manual_seed(1)
    im.shuffle_latent(torch.randn(10, 2), seed=3)
    after = torch.rand(1)
    torch.manual_seed(1)
    torch.randn(10, 2)
    assert torch.equal(after, torch.rand(1))


# ---------------------------------------------------------------------------- the estimate

def test_nwj_estimate_equals_direct_float64_computation():
    mi = paper_like_chain()
    x, z = torch.randn(32, 12, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    z_shuffle = im.shuffle_latent(z, seed=5)
    expected = direct_nwj(mi, x, z, z_shuffle)
    torch.testing.assert_close(im.variational_mutual_info(mi, x, z, z_shuffle), expected,
                               rtol=1e-12, atol=1e-12)
    # the internal-shuffle form uses the permutation shuffle_latent uses for the same seed
    torch.testing.assert_close(im.variational_mutual_info(mi, x, z, seed=5), expected,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(im.variational_mutual_info(mi, x, z, 5), expected, rtol=1e-12, atol=1e-12)


def test_nwj_estimate_hand_value():
    # A chain whose score is the constant c: I = c - exp(c - 1). For c = 1: 1 - 1 = 0; c = 2: 2 - e.
    for c, expected in ((1.0, 0.0), (2.0, 2.0 - torch.e)):
        last = nn.Linear(5, 1)
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, c)
        mi = im.MutualInfoChain(nn.Identity(), nn.Identity(), nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 5), last))
        x, z = torch.randn(8, 3), torch.randn(8, 2)
        assert abs(im.variational_mutual_info(mi, x, z, seed=1).item() - expected) < 1e-6


def test_infomaxvae_forms():
    torch.manual_seed(0)
    enc = im.JointGaussianLogEncoder.from_sizes(12, 3, [8], [torch.relu])
    dec = im.BernoulliDecoder.from_sizes(12, 3, [8], [torch.relu])
    model = im.InfoMaxVAE(im.VAE(enc, dec), im.MutualInfoChain.from_sizes(12, 3, [8], [torch.relu]))
    x = torch.rand(16, 12)
    z = torch.randn(16, 3)
    z_shuffle = im.shuffle_latent(z, seed=2)
    torch.testing.assert_close(im.variational_mutual_info(model, x, z, z_shuffle),
                               im.variational_mutual_info(model.mi, x, z, z_shuffle))
    torch.manual_seed(3)
    got = im.variational_mutual_info(model, x, seed=7)
    torch.manual_seed(3)
    out = model.vae(x, latent=True)
    want = direct_nwj(model.mi, x, out.z, im.shuffle_latent(out.z, seed=7)).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.manual_seed(3)
    result = model(x, latent=True, seed=7)
    torch.testing.assert_close(result.mi, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(result.vae.z, out.z)


# ---------------------------------------------------------------------------- fused = two calls

CHAINS = {
    "relu": lambda: paper_like_chain(),
    "gelu+sigmoid": lambda: paper_like_chain(act=nn.GELU, out_act=nn.Sigmoid()),
    "leaky+softplus": lambda: paper_like_chain(act=lambda: nn.LeakyReLU(0.1), out_act=nn.Softplus()),
    "one hidden": lambda: paper_like_chain(hidden=(6,), act=nn.ELU),
    "no hidden": lambda: paper_like_chain(hidden=()),
    "julia default": lambda: im.MutualInfoChain.from_sizes(12, 3, [16, 16], [torch.relu, torch.tanh]).double(),
    "unsupported act": lambda: paper_like_chain(act=nn.Hardswish),
    "batchnorm": lambda: im.MutualInfoChain(nn.Identity(), nn.Identity(), nn.Sequential(
        nn.Linear(15, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))).double(),
}


@pytest.mark.parametrize("name", CHAINS)
@pytest.mark.parametrize("shuffled_grad", [False, True])
@pytest.mark.parametrize("n_samples", [1, 3])
def test_shared_evaluation_equals_two_calls(name, shuffled_grad, n_samples):
    mi = CHAINS[name]()
    n = 10
    x = torch.randn(n, 12, dtype=torch.float64)
    z = torch.randn(n_samples * n, 3, dtype=torch.float64, requires_grad=True)
    perm = im.latent_permutation(n, n_samples, seed=4)
    params = [z] + list(mi.parameters())
    fused = im.paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad)
    plain = two_calls(mi, x, z, perm, shuffled_grad)
    torch.testing.assert_close(fused.bound, plain.bound, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.joint, plain.joint, rtol=1e-12, atol=1e-12)
    for g1, g2 in zip(torch.autograd.grad(fused.bound, params), torch.autograd.grad(plain.bound, params)):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_fused_plan_detection():
    assert fused_plan(paper_like_chain())
    assert not fused_plan(paper_like_chain(act=nn.Hardswish))
    assert not fused_plan(CHAINS["batchnorm"]())
    plan = fused_plan(paper_like_chain(out_act=nn.Sigmoid()))
    assert plan.head_act.name == "sigmoid" and plan.first_act.name == "relu" and len(plan.middle) == 2
    not_linear_first = im.MutualInfoChain(nn.Identity(), nn.Identity(), nn.Sequential(nn.ReLU(), nn.Linear(15, 1)))
    assert not fused_plan(not_linear_first)


@pytest.mark.parametrize("shuffled_grad", [False, True])
@pytest.mark.parametrize("n_samples", [1, 2])
def test_mish_chain_on_the_fused_path_equals_the_reference_path(shuffled_grad, n_samples):
    # mish as the first layer's, a middle layer's and the head's activation: all three run in
    # the fused kernels (paired_linear and critic_head); values and gradients in float64 equal the
    # plain-PyTorch path.
    mi = paper_like_chain(hidden=(16, 8), act=nn.Mish, out_act=nn.Mish())
    plan = fused_plan(mi)
    assert plan.first_act.name == "mish" and plan.head_act.name == "mish"
    x = torch.randn(10, 12, dtype=torch.float64)
    z = torch.randn(10 * n_samples, 3, dtype=torch.float64, requires_grad=True)
    perm = im.latent_permutation(10, n_samples, seed=5)
    params = [z] + list(mi.parameters())
    fused = im.paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad)
    assert im.backend() == "compiled"
    with im.use_reference_path():
        ref = im.paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad)
    torch.testing.assert_close(fused.bound, ref.bound, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.joint, ref.joint, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.shuffled, ref.shuffled, rtol=1e-12, atol=1e-12)
    for g1, g2 in zip(torch.autograd.grad(fused.bound, params), torch.autograd.grad(ref.bound, params)):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_shuffled_grad_modes_differ_exactly_by_the_shuffled_path():
    mi = paper_like_chain()
    x = torch.randn(16, 12, dtype=torch.float64)
    z = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    perm = im.latent_permutation(16, 1, seed=8)
    params = list(mi.parameters())
    g_const = torch.autograd.grad(im.paired_mutual_info(mi, x, z, perm).bound, [z] + params)
    g_flow = torch.autograd.grad(im.paired_mutual_info(mi, x, z, perm, shuffled_grad=True).bound, [z] + params)
    # constant shuffled codes: z's gradient is that of the joint term alone
    joint_only = torch.autograd.grad(mi(x, z).mean(), z)[0]
    torch.testing.assert_close(g_const[0], joint_only, rtol=1e-12, atol=1e-12)
    # flowing: plus the gradient of -mean(exp(T(x, z[perm]) - 1)) through z[perm]
    shuffled_path = torch.autograd.grad(-torch.exp(mi(x, z[perm]) - 1).mean(), z)[0]
    torch.testing.assert_close(g_flow[0], joint_only + shuffled_path, rtol=1e-10, atol=1e-12)
    # the chain's own parameters get both terms either way
    for a, b in zip(g_const[1:], g_flow[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float32_fused_matches_float64_two_calls():
    mi64 = paper_like_chain(hidden=(64, 32))
    mi32 = paper_like_chain(hidden=(64, 32), dtype=torch.float32)
    mi32.load_state_dict({k: v.float() for k, v in mi64.state_dict().items()})
    x, z = torch.randn(200, 12, dtype=torch.float64), torch.randn(200, 3, dtype=torch.float64)
    perm = im.latent_permutation(200, 1, seed=1)
    want = two_calls(mi64, x, z, perm, False).bound
    got = im.paired_mutual_info(mi32, x.float(), z.float(), perm).bound
    assert abs(got.item() - want.item()) < 1e-5


def test_reference_fallback_gives_the_same_numbers():
    mi = paper_like_chain(out_act=nn.Softplus())
    x = torch.randn(9, 12, dtype=torch.float64)
    z = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    perm = im.latent_permutation(9, 1, seed=2)
    fused = im.paired_mutual_info(mi, x, z, perm)
    g_fused = torch.autograd.grad(fused.bound, [z] + list(mi.parameters()))
    with im.use_reference_path():
        ref = im.paired_mutual_info(mi, x, z, perm)
    assert ref.bound.grad_fn is not None and "infomax_ext" not in type(ref.bound.grad_fn).__name__
    torch.testing.assert_close(fused.bound, ref.bound, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fused, torch.autograd.grad(ref.bound, [z] + list(mi.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bfloat16_on_cpu_gives_a_float32_bound_close_to_float64():
    mi = paper_like_chain(dtype=torch.bfloat16)
    x, z = torch.randn(8, 12, dtype=torch.bfloat16), torch.randn(8, 3, dtype=torch.bfloat16)
    value = im.variational_mutual_info(mi, x, z, seed=0)
    want = direct_nwj(mi.double(), x.double(), z.double(), im.shuffle_latent(z.double(), seed=0))
    expected = torch.float32 if im.extension_available() else torch.bfloat16
    assert value.dtype == expected and abs(value.item() - want.item()) < 0.1


def test_torch_compile_fullgraph_over_the_fused_mi_loss():
    mi = paper_like_chain(dtype=torch.float32)
    x, z = torch.randn(16, 12), torch.randn(16, 3, requires_grad=True)
    perm = im.latent_permutation(16, 1, seed=3)

    def loss(x, z, perm):
        return -im.paired_mutual_info(mi, x, z, perm).bound

    compiled = torch.compile(loss, fullgraph=True, backend="inductor")
    got = compiled(x, z, perm)
    want = loss(x, z, perm)
    torch.testing.assert_close(got, want)
    params = [z] + list(mi.parameters())
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["relu", "gelu+sigmoid", "no hidden", "julia default"])
@pytest.mark.parametrize("n_samples", [1, 2])
def test_frozen_chain_takes_the_joint_graph_path_and_equals_two_calls(name, n_samples):
    # A frozen chain with constant shuffled codes (the VAE step of train_step): only the joint
    # half is differentiated; values and z's gradient equal the two-call evaluation.
    mi = CHAINS[name]().requires_grad_(False)
    x = torch.randn(10, 12, dtype=torch.float64)
    z = torch.randn(10 * n_samples, 3, dtype=torch.float64, requires_grad=True)
    perm = im.latent_permutation(10, n_samples, seed=6)
    fused = im.paired_mutual_info(mi, x, z, perm)
    plain = two_calls(mi, x, z, perm, False)
    assert fused.shuffled.grad_fn is None and fused.joint.grad_fn is not None
    torch.testing.assert_close(fused.bound, plain.bound, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.shuffled, plain.shuffled, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(fused.bound, z)[0], torch.autograd.grad(plain.bound, z)[0],
                               rtol=1e-10, atol=1e-12)


def test_large_batch_weight_gradient_equals_two_calls():
    # N >= 512 computes the data-half weight gradient in its transposed orientation.
    mi = paper_like_chain(hidden=(8,))
    x = torch.randn(600, 12, dtype=torch.float64)
    z = torch.randn(600, 3, dtype=torch.float64, requires_grad=True)
    perm = im.latent_permutation(600, 1, seed=2)
    params = [z] + list(mi.parameters())
    fused = torch.autograd.grad(im.paired_mutual_info(mi, x, z, perm).bound, params)
    plain = torch.autograd.grad(two_calls(mi, x, z, perm, False).bound, params)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- data-half reuse


def test_a_data_half_cache_skips_the_product_and_changes_nothing(data_half_spy):
    mi = paper_like_chain()
    x, z = torch.randn(10, 12, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    perm = im.latent_permutation(10, 1, seed=4)
    params = list(mi.parameters())
    want = im.paired_mutual_info(mi, x, z, perm).bound
    want_grads = torch.autograd.grad(want, params)
    calls = data_half_spy
    calls.clear()  # count only the calls from here on
    cache = im.DataHalfCache()
    # the frozen evaluation (the VAE step: codes need gradient) computes and keeps it
    frozen = im.paired_mutual_info(mi.requires_grad_(False), x, z.requires_grad_(), perm,
                                   data_half_cache=cache).bound
    mi.requires_grad_(True)
    got = im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache).bound
    assert len(calls) == 1 and calls[0] is not None  # the trainable evaluation reused it
    assert len(cache) == 1
    torch.testing.assert_close(frozen, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g1, g2 in zip(torch.autograd.grad(got, params), want_grads):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_a_data_half_cache_holds_for_one_x_and_one_weight_until_cleared():
    # The owner of a cache keeps x and the weight unchanged while it passes it (train_step: one
    # cache per step, dropped before the MI update); after an in-place change it clears it.
    mi = paper_like_chain()
    x, z = torch.randn(10, 12, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    perm = im.latent_permutation(10, 1, seed=4)

    def fresh():
        plain = paper_like_chain()
        plain.load_state_dict(mi.state_dict())
        return im.paired_mutual_info(plain, x, z, perm).bound

    cache = im.DataHalfCache()
    im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache)
    with torch.no_grad():
        mi.mlp[0].weight.add_(0.5)  # an optimizer step on the MI chain
    cache.clear()
    after_weight = im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache).bound
    torch.testing.assert_close(after_weight, fresh(), rtol=1e-12, atol=1e-12)
    x.mul_(2.0)  # the data changed in place
    cache.clear()
    after_x = im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache).bound
    torch.testing.assert_close(after_x, fresh(), rtol=1e-12, atol=1e-12)
    assert after_weight.item() != after_x.item()


def test_no_reuse_without_a_cache_or_when_data_needs_gradient(data_half_spy):
    mi = im.MutualInfoChain.from_sizes(12, 3, [8], [torch.relu]).double()  # data = Linear
    x, z = torch.randn(10, 12, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    perm = im.latent_permutation(10, 1, seed=4)
    calls = data_half_spy
    cache = im.DataHalfCache()
    with torch.no_grad():
        im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache)  # data(x) constant: kept
    im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache)  # data(x) needs a graph now
    im.paired_mutual_info(paper_like_chain(), x, z, perm)
    assert [c is not None for c in calls] == [True, False, False]


def test_double_backward_is_refused_on_the_fused_path_and_exact_on_the_reference_path():
    mi = paper_like_chain(act=nn.Tanh)
    x = torch.randn(6, 12, dtype=torch.float64)
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    perm = im.latent_permutation(6, 1, seed=1)

    def gradient_norm(z):
        bound = im.paired_mutual_info(mi, x, z, perm, shuffled_grad=True).bound
        g, = torch.autograd.grad(bound, [z], create_graph=True)
        return g.pow(2).sum()

    with pytest.raises(RuntimeError, match="does not support double backward"):
        gradient_norm(z)
    with im.use_reference_path():
        assert torch.autograd.gradgradcheck(
            lambda z: im.paired_mutual_info(mi, x, z, perm, shuffled_grad=True).bound, [z])
        penalty = gradient_norm(z)
        second, = torch.autograd.grad(penalty, [z])
    # the same quantity from the two-call chain, by autograd twice
    bound = direct_nwj(mi, x, z, z[perm])
    g, = torch.autograd.grad(bound, [z], create_graph=True)
    want, = torch.autograd.grad(g.pow(2).sum(), [z])
    torch.testing.assert_close(second, want, rtol=1e-10, atol=1e-12)
    assert im._ops.kernels_apply(x)  # the switch is back


def test_a_data_half_cache_with_a_new_batch():
    # A freed batch's memory may be reused by the next one; the cache keeps each entry's tensors
    # alive, so a new batch never matches an old entry.
    mi = paper_like_chain()
    z = torch.randn(10, 3, dtype=torch.float64)
    perm = im.latent_permutation(10, 1, seed=4)
    cache = im.DataHalfCache()
    for seed in range(4):
        x = torch.randn(10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        got = im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache).bound
        want = direct_nwj(mi, x, z, z[perm])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        del x
    assert len(cache) == 4


def test_paired_mutual_info_takes_exactly_one_of_perm_and_z_shuffle():
    torch.manual_seed(0)
    mi = im.MutualInfoChain.from_sizes(6, 2, [8], [torch.relu])
    x, z = torch.randn(10, 6), torch.randn(10, 2)
    for path in im.PATHS:
        with im.use_path(path):
            with pytest.raises(ValueError, match="exactly one of perm"):
                im.paired_mutual_info(mi, x, z)
            with pytest.raises(ValueError, match="exactly one of perm"):
                im.paired_mutual_info(mi, x, z, torch.arange(10), z_shuffle=z)
            with pytest.raises(ValueError, match=r"perm must be an int64 tensor of shape \(10,\)"):
                im.paired_mutual_info(mi, x, z, torch.arange(5))


def _layer_norm_chain():
    """A chain the shared evaluation cannot split (a LayerNorm): two calls on every path."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1))
    return im.MutualInfoChain(nn.Linear(6, 6), nn.Linear(2, 2), mlp)


@pytest.mark.parametrize("path", im.PATHS)
@pytest.mark.parametrize("make_chain", [
    lambda: im.MutualInfoChain.from_sizes(6, 2, [8], ["relu"]), _layer_norm_chain,
    # frozen: with z needing gradient the auto path builds the joint rows' graph only
    lambda: im.MutualInfoChain.from_sizes(6, 2, [8], ["relu"]).requires_grad_(False)],
    ids=["from_sizes", "layer_norm", "frozen"])
@pytest.mark.parametrize("args, error, message", [
    ((torch.randn(1, 6), torch.randn(1, 2), torch.zeros(1, dtype=torch.long)), ValueError,
     "needs a batch of at least 2 samples .* got a batch of 1"),
    ((torch.randn(0, 6), torch.randn(0, 2), torch.zeros(0, dtype=torch.long)), ValueError,
     "got a batch of 0"),
    ((torch.randn(4, 6), torch.randn(6, 2), torch.arange(6)), ValueError,
     r"z has 6 codes for x's 4 samples: M must be a multiple S N"),
    ((torch.randn(4, 6), torch.randn(2, 2), torch.arange(2)), ValueError,
     r"z has 2 codes for x's 4 samples"),
    ((torch.randn(4, 6), torch.randn(4, 2, 1), torch.arange(4)), ValueError,
     r"z must be \(M, d\) codes, got \(4, 2, 1\)"),
    ((torch.randn(4, 6), torch.randn(4, 2), torch.ones(4, dtype=torch.bool)), ValueError,
     r"perm must be an int64 tensor of shape \(4,\), one entry per code, got torch.bool"),
    ((torch.randn(4, 6), torch.randn(4, 2), torch.arange(4, dtype=torch.int32)), ValueError,
     r"got torch.int32 of shape \(4,\)"),
    ((torch.randn(4, 6), torch.randn(4, 2), torch.tensor([-1, 0, 1, 2])), RuntimeError,
     r"perm entry 0 is -1, outside \[0, 4\)"),
    ((torch.randn(4, 6), torch.randn(4, 2), torch.tensor([0, 1, 2, 4])), RuntimeError,
     r"perm entry 3 is 4, outside \[0, 4\)"),
])
def test_paired_mutual_info_names_a_bad_argument_on_every_path(path, make_chain, args, error,
                                                               message):
    """The same error on every path and for chains that take two calls; a negative perm entry
    is never wrapped around into a wrong bound."""
    mi = make_chain()
    x, z, perm = args
    with im.use_path(path), pytest.raises(error, match=message):
        im.paired_mutual_info(mi, x, z.requires_grad_(), perm)


@pytest.mark.parametrize("path", im.PATHS)
def test_paired_mutual_info_names_shuffled_codes_of_another_shape(path):
    mi = im.MutualInfoChain.from_sizes(6, 2, [8], ["relu"])
    x, z = torch.randn(4, 6), torch.randn(4, 2)
    with im.use_path(path), pytest.raises(ValueError,
                                          match=r"z_shuffle must have z's shape \(4, 2\), got \(3, 2\)"):
        im.paired_mutual_info(mi, x, z, z_shuffle=torch.randn(3, 2))


class _CountedReads(nn.Module):
    """A parametrization that counts how often the weight is computed (as spectral_norm's
    power iteration would run once per read)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def forward(self, weight):
        self.reads += 1
        return weight


@pytest.mark.parametrize("data", ["identity", "linear"])
@pytest.mark.parametrize("grad", [True, False])
def test_the_shared_evaluation_reads_each_parametrized_weight_once(data, grad):
    """One read per weight and call on the fused path (one node with a gradient, the two ops
    without), where two calls read each weight twice; the bound equals the two calls'."""
    torch.manual_seed(0)
    mi = paper_like_chain(n_x=12, n_z=3)
    if data == "linear":
        mi.data = nn.Linear(6, 12).double()
    counters = []
    for layer in [m for m in mi.mlp if isinstance(m, nn.Linear)]:
        counters.append(_CountedReads())
        nn.utils.parametrize.register_parametrization(layer, "weight", counters[-1])
    x = torch.randn(10, 12 if data == "identity" else 6, dtype=torch.float64)
    z = torch.randn(10, 3, dtype=torch.float64, requires_grad=grad)
    perm = im.latent_permutation(10, 1, seed=1)
    assert [c.reads for c in counters] == [1, 1, 1]  # registering computes the weight once
    with torch.set_grad_enabled(grad), im.use_path("fused"):
        fused = im.paired_mutual_info(mi, x, z, perm)
    assert [c.reads for c in counters] == [2, 2, 2]
    with torch.set_grad_enabled(grad):
        plain = two_calls(mi, x, z, perm)
    assert [c.reads for c in counters] == [4, 4, 4]
    torch.testing.assert_close(fused.bound, plain.bound, rtol=1e-12, atol=1e-12)

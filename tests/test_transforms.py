"""Function transforms and tracing over the ops and the MI bound: ``torch.func.grad``, ``vmap``
and ``jacrev`` give what autograd gives on the eager path (float64), ``torch.jit.trace`` records a
graph that gives the eager values, and ``torch.compile(fullgraph=True)`` traces the bound with a
permutation drawn inside the graph (``seed=None``)."""
import warnings

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

import infomax_ext as im
from infomax_ext import reference
from infomax_ext.mutual_info import latent_permutation

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def chain(n_x=6, n_z=3, seed=0):
    torch.manual_seed(seed)
    return im.MutualInfoChain.from_sizes(n_x, n_z, [8, 5], ["tanh", "relu"]).double()


def inputs(n=12, n_x=6, n_z=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n_x, dtype=F64, generator=g), torch.randn(n, n_z, dtype=F64, generator=g)


def _bound(mi, params, x, z, seed):
    """The bound as a function of the chain's parameters ``params`` (by name) and z."""
    with torch.nn.utils.stateless._reparametrize_module(mi, params):
        return im.variational_mutual_info(mi, x, z, seed=seed)


def autograd_grads(mi, x, z, seed=3):
    """d bound / d (z, parameters) by autograd on the eager (compiled-kernel) path."""
    z = z.clone().requires_grad_(True)
    value = im.variational_mutual_info(mi, x, z, seed=seed)
    grads = torch.autograd.grad(value, [z, *mi.parameters()])
    return value, grads[0], dict(zip([n for n, _ in mi.named_parameters()], grads[1:]))


def test_the_eager_path_runs_the_compiled_kernels():
    # What the transforms are compared with is the compiled path (when it is built).
    mi = chain()
    x, z = inputs()
    value = im.variational_mutual_info(mi, x, z.requires_grad_(), seed=3)
    if im.extension_available():
        assert type(value.grad_fn).__name__ == "_LinearEndsChainBackward"  # data, latent: Linear


def test_grad_over_the_bound_matches_autograd():
    mi = chain()
    x, z = inputs()
    params = {k: v.detach() for k, v in mi.named_parameters()}
    value, want_z, want_params = autograd_grads(mi, x, z)
    got_z = grad(lambda z: _bound(mi, params, x, z, 3))(z)
    torch.testing.assert_close(got_z, want_z, rtol=1e-12, atol=1e-14)
    got_params = grad(lambda p: _bound(mi, p, x, z, 3))(params)
    for name, g in want_params.items():
        torch.testing.assert_close(got_params[name], g, rtol=1e-12, atol=1e-14)


def test_jacrev_over_the_bound_matches_autograd():
    mi = chain()
    x, z = inputs()
    params = {k: v.detach() for k, v in mi.named_parameters()}
    _, want_z, _ = autograd_grads(mi, x, z)
    torch.testing.assert_close(jacrev(lambda z: _bound(mi, params, x, z, 3))(z), want_z,
                               rtol=1e-12, atol=1e-14)


def test_vmap_over_batches_of_codes_matches_a_loop():
    mi = chain()
    x, _ = inputs()
    zs = torch.randn(4, 12, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    params = {k: v.detach() for k, v in mi.named_parameters()}
    got = vmap(lambda z: _bound(mi, params, x, z, 3))(zs)
    want = torch.stack([im.variational_mutual_info(mi, x, z, seed=3) for z in zs])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # per-example gradients: vmap of grad
    got_grads = vmap(grad(lambda z: _bound(mi, params, x, z, 3)))(zs)
    for z, g in zip(zs, got_grads):
        torch.testing.assert_close(g, autograd_grads(mi, x, z)[1], rtol=1e-12, atol=1e-14)


def test_grad_over_the_infomax_loss_matches_autograd():
    torch.manual_seed(0)
    model = im.InfoMaxVAE(
        im.VAE(im.JointGaussianLogEncoder.from_sizes(6, 3, [8], ["relu"]),
               im.BernoulliDecoder.from_sizes(6, 3, [8], ["relu"])),
        im.MutualInfoChain.from_sizes(6, 3, [8], ["relu"])).double()
    x, _ = inputs()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p):
        torch.manual_seed(5)
        with torch.nn.utils.stateless._reparametrize_module(model, p):
            return im.infomaxloss(model.vae, model.mi, x, alpha=3.0, seed=2)

    got = grad(loss)(params)
    torch.manual_seed(5)
    value = im.infomaxloss(model.vae, model.mi, x, alpha=3.0, seed=2)
    want = torch.autograd.grad(value, list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), want):
        torch.testing.assert_close(got[name], g, rtol=1e-11, atol=1e-13)


# ----------------------------------------------------------------------------- the public ops

def op_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, dtype=F64, generator=g)

    return r


def test_paired_first_layer_and_paired_linear_under_jacrev_and_vmap():
    r = op_inputs()
    perm = im.seeded_permutation(6, 4)
    data_half, latent_half, bias = r(6, 4), r(6, 4), r(4)
    got = jacrev(lambda l: im.paired_first_layer(data_half, l, None, bias, perm, "tanh"))(latent_half)
    want = torch.autograd.functional.jacobian(
        lambda l: reference.paired_first_layer(data_half, l, None, bias, perm, "tanh", 0.0),
        latent_half)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)

    hx, hz, weight = r(6, 5), r(6, 3), r(4, 8)
    stacked = r(3, 6, 3)
    got = vmap(lambda hz: im.paired_linear(hx, hz, None, weight, bias, perm, "relu"))(stacked)
    want = torch.stack([im.paired_linear(hx, h, None, weight, bias, perm, "relu") for h in stacked])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_nwj_ops_under_grad_match_autograd():
    r = op_inputs(1)
    hidden, w, b = r(12, 5), r(5), r(1)
    weights, biases = [r(4, 5)], [r(4)]
    head = r(4)

    def head_bound(h):
        return im.critic_head(h, w, b, 6, "identity")[0]

    def mlp_bound(h):
        return im.critic_mlp(h, weights, biases, ["relu"], [0.0], head, b, 6)[0]

    for f in (head_bound, mlp_bound, lambda t: im.nwj_bound(t[:6, 0], t[6:, 1])):
        h = hidden.clone().requires_grad_(True)
        want = torch.autograd.grad(f(h), h)[0]
        torch.testing.assert_close(grad(f)(hidden), want, rtol=1e-12, atol=1e-14)


def test_inverse_permutation_under_vmap():
    perms = torch.stack([im.seeded_permutation(7, s) for s in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's note that a custom op runs in a loop
        got = vmap(im.inverse_permutation)(perms)
    for p, inv in zip(perms, got):
        assert torch.equal(p[inv], torch.arange(7))


# ----------------------------------------------------------------------------- jit.trace

class _Bound(torch.nn.Module):
    def __init__(self, mi):
        super().__init__()
        self.mi = mi

    def forward(self, x, z):
        return im.variational_mutual_info(self.mi, x, z, seed=3)


def test_jit_trace_records_the_reference_ops_and_gives_the_eager_values():
    mi = chain()
    x, z = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_Bound(mi), (x, z))
    graph = str(traced.graph)  # the fused ops' list arguments cannot be traced: none is called
    assert "infomax_ext::paired" not in graph and "infomax_ext::nwj" not in graph
    for seed in (1, 2):  # new inputs of the same shapes
        x2, z2 = inputs(seed=seed + 10)
        torch.testing.assert_close(traced(x2, z2), _Bound(mi)(x2, z2), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- torch.compile

def test_compile_fullgraph_with_the_default_seed_draws_a_valid_shuffle():
    mi = chain().float()
    x, z = (t.float() for t in inputs(n=10))

    def paired(x, z):
        return im.mutual_info.shuffled_bound(mi, x, z)

    compiled = torch.compile(paired, fullgraph=True, backend="inductor")
    torch.manual_seed(0)
    got = compiled(x, z)
    # Which code each shuffled score paired with: the one code j whose T(x_i, z_j) it equals.
    with torch.no_grad():
        n = x.shape[0]
        scores = mi(x.repeat_interleave(n, 0), z.repeat(n, 1)).reshape(n, n)
    torch.testing.assert_close(got.joint, scores.diagonal(), rtol=1e-5, atol=1e-5)
    distance = (scores - got.shuffled[:, None]).abs()
    partner = distance.argmin(1)
    assert torch.equal(partner.sort().values, torch.arange(n)), "not a permutation of the codes"
    torch.testing.assert_close(got.shuffled, scores[torch.arange(n), partner], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.bound, im.nwj_bound(got.joint, got.shuffled), rtol=1e-6, atol=1e-6)
    # The draw follows torch's global generator: the same seed, the same shuffle.
    torch.manual_seed(0)
    assert torch.equal(compiled(x, z).shuffled, got.shuffled)
    draws = {tuple(compiled(x, z).shuffled.tolist()) for _ in range(4)}
    assert len(draws) > 1, "every call drew the same shuffle"


def test_compile_fullgraph_over_variational_mutual_info_with_the_default_seed():
    mi = chain().float()
    x, z = (t.float() for t in inputs(n=10))
    z.requires_grad_(True)
    compiled = torch.compile(lambda x, z: im.variational_mutual_info(mi, x, z), fullgraph=True)
    value = compiled(x, z)
    assert value.dim() == 0 and torch.isfinite(value)
    (g,) = torch.autograd.grad(value, z)
    assert g.shape == z.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_latent_permutation_blocks_under_compile_are_permutations_of_their_block():
    compiled = torch.compile(lambda: latent_permutation(5, 3), fullgraph=True)
    perm = compiled()
    for s in range(3):
        assert torch.equal(perm[5 * s:5 * (s + 1)].sort().values, torch.arange(5) + 5 * s)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grad_and_vmap_over_the_bound_on_cuda():
    mi = chain().cuda()
    x, z = (t.cuda() for t in inputs())
    params = {k: v.detach() for k, v in mi.named_parameters()}
    _, want_z, _ = autograd_grads(mi, x, z)
    torch.testing.assert_close(grad(lambda z: _bound(mi, params, x, z, 3))(z), want_z,
                               rtol=1e-12, atol=1e-14)
    zs = torch.stack([z, 2 * z])
    want = torch.stack([im.variational_mutual_info(mi, x, zz, seed=3) for zz in zs])
    torch.testing.assert_close(vmap(lambda z: _bound(mi, params, x, z, 3))(zs), want,
                               rtol=1e-12, atol=1e-14)

"""The MI chain from its first Linear layer to the NWJ bound as one autograd node
(critic_chain_op.critic_chain, eager mode): the values and every gradient equal the two-call
evaluation in float64 whichever tensors need a gradient and whichever outputs the gradient comes
from."""
import pytest
import torch
from torch import nn

import infomax_ext as im

F64 = torch.float64


def chain(first_act, act):
    torch.manual_seed(4)
    mlp = nn.Sequential(nn.Linear(15, 16), first_act, nn.Linear(16, 8), act, nn.Linear(8, 1))
    return im.MutualInfoChain(nn.Linear(12, 12), nn.Linear(3, 3), mlp).to(F64)


@pytest.mark.parametrize("acts", [(nn.ReLU(), nn.ReLU()), (nn.Tanh(), nn.ELU(0.7)),
                                  (nn.LeakyReLU(0.2), nn.Identity())])
@pytest.mark.parametrize("frozen", ["nothing", "first layer", "data and latent", "hidden",
                                    "head"])
@pytest.mark.parametrize("wrt_output", ["bound", "scores", "both"])
@pytest.mark.parametrize("shuffled_grad", [False, True])
def test_one_node_equals_two_calls(acts, frozen, wrt_output, shuffled_grad):
    mi = chain(*acts)
    if isinstance(acts[1], nn.Identity):
        del mi.mlp[3]
    frozen_params = {"nothing": [], "first layer": list(mi.mlp[0].parameters()),
                     "data and latent": [*mi.data.parameters(), *mi.latent.parameters()],
                     "hidden": list(mi.mlp[2].parameters()),
                     "head": list(mi.mlp[-1].parameters())}[frozen]
    for p in frozen_params:
        p.requires_grad_(False)
    n, s = 7, 2
    x = torch.randn(n, 12, dtype=F64)
    z = torch.randn(s * n, 3, dtype=F64, requires_grad=True)
    perm = im.latent_permutation(n, s, seed=9)
    wrt = [z, *[p for p in mi.parameters() if p.requires_grad]]

    def target(out):
        weights = torch.linspace(-1.0, 1.0, 2 * s * n, dtype=F64)
        scores = torch.cat([out.joint, out.shuffled])
        return {"bound": out.bound, "scores": (scores * weights).sum(),
                "both": out.bound + (scores * weights).sum()}[wrt_output]

    fused = im.paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad)
    # data and latent are Linear layers: inside the node unless data(x) needs no gradient
    node = "_CriticChainBackward" if frozen == "data and latent" else "_LinearEndsChainBackward"
    assert fused.bound.grad_fn.name() == node
    with im.use_path("two_call"):
        plain = im.paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad)
    torch.testing.assert_close(fused.bound, plain.bound, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.joint, plain.joint, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.shuffled, plain.shuffled, rtol=1e-12, atol=1e-12)
    for g1, g2 in zip(torch.autograd.grad(target(fused), wrt),
                      torch.autograd.grad(target(plain), wrt)):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_one_node_refuses_double_backward():
    mi = chain(nn.Tanh(), nn.Tanh())
    x = torch.randn(6, 12, dtype=F64)
    z = torch.randn(6, 3, dtype=F64, requires_grad=True)
    bound = im.paired_mutual_info(mi, x, z, im.latent_permutation(6, 1, seed=1)).bound
    with pytest.raises(RuntimeError, match="critic_chain does not support double backward"):
        torch.autograd.grad(bound, [z], create_graph=True)


def test_without_a_gradient_no_node_is_built():
    mi = chain(nn.ReLU(), nn.ReLU())
    x, z = torch.randn(6, 12, dtype=F64), torch.randn(6, 3, dtype=F64)
    with torch.no_grad():
        out = im.paired_mutual_info(mi, x, z, im.latent_permutation(6, 1, seed=1))
    assert out.bound.grad_fn is None
    with im.use_path("two_call"), torch.no_grad():
        plain = im.paired_mutual_info(mi, x, z, im.latent_permutation(6, 1, seed=1))
    torch.testing.assert_close(out.bound, plain.bound, rtol=1e-12, atol=1e-12)


def test_the_node_takes_data_and_head_weight_without_view_nodes():
    """data(x) of shape (N, Dx) and the head Linear's (1, H) weight reach the node as they are:
    no view node between them and it (each would be one more node per call). With data and
    latent Linear layers that need gradient, the node runs them too: every parameter and z are
    its direct leaves."""
    mi = chain(nn.ReLU(), nn.ReLU())
    x = torch.randn(6, 12, dtype=F64)
    z = torch.randn(6, 3, dtype=F64, requires_grad=True)
    bound = im.paired_mutual_info(mi, x, z, im.latent_permutation(6, 1, seed=1)).bound
    node = bound.grad_fn
    assert node.name() == "_LinearEndsChainBackward"
    names = [f.name() for f, _ in node.next_functions if f is not None]
    assert set(names) == {"torch::autograd::AccumulateGrad"}, names
    leaves = {id(f.variable) for f, _ in node.next_functions if f is not None}
    assert leaves == {id(z), *(id(p) for p in mi.parameters())}

    for p in [*mi.data.parameters(), *mi.latent.parameters()]:
        p.requires_grad_(False)
    node = im.paired_mutual_info(mi, x, z, im.latent_permutation(6, 1, seed=1)).bound.grad_fn
    assert node.name() == "_CriticChainBackward"
    names = [f.name() for f, _ in node.next_functions if f is not None]
    assert not any("View" in name for name in names), names
    leaves = {id(f.variable) for f, _ in node.next_functions
              if f is not None and f.name() == "torch::autograd::AccumulateGrad"}
    assert id(mi.mlp[4].weight) in leaves
    assert names.count("AddmmBackward0") == 1  # latent(z); latent(z.detach()) is frozen


def _bound_and_grads(mi, x, z, perm, **kwargs):
    out = im.paired_mutual_info(mi, x, z, perm, **kwargs)
    wrt = [t for t in (x, z) if t.requires_grad] + [p for p in mi.parameters() if p.requires_grad]
    return out.bound, out.bound.grad_fn.name(), torch.autograd.grad(out.bound, wrt)


def _assert_equal_to_two_calls(mi, x, z, perm, node, **kwargs):
    bound, name, grads = _bound_and_grads(mi, x, z, perm, **kwargs)
    assert name == node
    with im.use_path("two_call"):
        plain, _, plain_grads = _bound_and_grads(mi, x, z, perm, **kwargs)
    torch.testing.assert_close(bound, plain, rtol=1e-12, atol=1e-12)
    for g1, g2 in zip(grads, plain_grads):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("x_grad", [False, True])
def test_from_sizes_with_a_shaped_input_runs_flatten_and_both_layers_in_the_node(x_grad):
    torch.manual_seed(2)
    mi = im.MutualInfoChain.from_sizes((1, 4, 3), 3, [8, 8], [torch.relu, torch.tanh]).to(F64)
    assert isinstance(mi.data[0], nn.Flatten)
    x = torch.randn(5, 1, 4, 3, dtype=F64, requires_grad=x_grad)
    z = torch.randn(10, 3, dtype=F64, requires_grad=True)
    perm = im.latent_permutation(5, 2, seed=3)
    for shuffled_grad in (False, True):
        _assert_equal_to_two_calls(mi, x, z, perm, "_LinearEndsChainBackward",
                                   shuffled_grad=shuffled_grad)


def test_float32_with_linear_ends_matches_float64_within_rounding():
    mi = chain(nn.ReLU(), nn.ReLU())
    x = torch.randn(64, 12, dtype=F64)
    z = torch.randn(64, 3, dtype=F64, requires_grad=True)
    perm = im.latent_permutation(64, 1, seed=5)
    bound, name, grads = _bound_and_grads(mi, x, z, perm)
    mi32 = chain(nn.ReLU(), nn.ReLU()).float()
    z32 = z.detach().float().requires_grad_()
    bound32, name32, grads32 = _bound_and_grads(mi32, x.float(), z32, perm)
    assert name == name32 == "_LinearEndsChainBackward"
    eps = torch.finfo(torch.float32).eps
    bound, bound32 = float(bound.detach()), float(bound32.detach())
    assert abs(bound32 - bound) <= 64 * eps * max(1.0, abs(bound))
    for g32, g in zip(grads32, grads):
        assert float((g32.double() - g).abs().max()) <= 64 * eps * float(g.abs().max())


def _counting_hook(counter):
    def hook(module, args, output):
        counter.append(type(module).__name__)
    return hook


class _ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2.0 * super().forward(x)


@pytest.mark.parametrize("case", ["data hook", "latent hook", "global hook", "instance forward",
                                  "Linear subclass"])
def test_the_modules_run_as_modules_where_calling_them_does_more_than_forward(case):
    """A hook, an instance forward or a subclass of Linear on data or latent: the node leaves
    them to their module calls, so the hook runs and the subclass computes as it says. A global
    hook would see the MLP's layers too: the chain takes two calls."""
    mi = chain(nn.ReLU(), nn.Tanh())
    seen = []
    handle = None
    if case == "data hook":
        handle = mi.data.register_forward_hook(_counting_hook(seen))
    elif case == "latent hook":
        handle = mi.latent.register_forward_hook(_counting_hook(seen))
    elif case == "global hook":
        handle = torch.nn.modules.module.register_module_forward_hook(_counting_hook(seen))
    elif case == "instance forward":
        plain_forward = mi.latent.forward
        mi.latent.forward = lambda z: (seen.append("Linear"), plain_forward(z))[1]
    else:
        scaled = _ScaledLinear(12, 12).to(F64)
        scaled.load_state_dict(mi.data.state_dict())
        mi.data = scaled
    x = torch.randn(6, 12, dtype=F64)
    z = torch.randn(6, 3, dtype=F64, requires_grad=True)
    perm = im.latent_permutation(6, 1, seed=1)
    try:
        if case == "global hook":
            with im.use_path("two_call"):
                two_call_node = im.paired_mutual_info(mi, x, z, perm).bound.grad_fn.name()
            seen.clear()
            _assert_equal_to_two_calls(mi, x, z, perm, two_call_node)
            # every Linear of both calls: data, latent and the MLP's three, twice over
            assert seen.count("Linear") == 2 * 2 * 5
        else:
            _assert_equal_to_two_calls(mi, x, z, perm, "_CriticChainBackward")
        if case == "Linear subclass":
            scaled_bound = im.paired_mutual_info(mi, x, z, perm).bound.detach()
            mi.data = nn.Linear(12, 12).to(F64)
            mi.data.load_state_dict(scaled.state_dict())
            assert float(scaled_bound) != float(im.paired_mutual_info(mi, x, z, perm).bound.detach())
        else:
            assert "Linear" in seen
    finally:
        if handle is not None:
            handle.remove()
    # Without the hook (or with the plain Linear back), the node runs the layers again.
    if case in ("data hook", "latent hook", "global hook", "Linear subclass"):
        _assert_equal_to_two_calls(mi, x, z, perm, "_LinearEndsChainBackward")


def test_a_wrong_width_of_x_is_named_as_on_the_module_path():
    mi = chain(nn.ReLU(), nn.ReLU())
    z = torch.randn(6, 3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"mi.data \(Linear\) takes 12 features .* given 11"):
        im.paired_mutual_info(mi, torch.randn(6, 11, dtype=F64), z, im.latent_permutation(6, 1, seed=1))


def test_the_chain_ops_name_a_bad_argument_before_any_work():
    """critic_chain_forward and critic_chain_backward (the node's one op each way) refuse
    arguments that do not fit, with the argument named, before computing anything."""
    ops = torch.ops.infomax_ext
    torch.manual_seed(0)
    n, dx, dz, h, h1 = 4, 5, 3, 6, 7
    hx, hz = torch.randn(n, dx), torch.randn(n, dz)
    weight, bias = torch.randn(h, dx + dz), torch.randn(h)
    w1, b1, head_w, head_b = torch.randn(h1, h), torch.randn(h1), torch.randn(1, h1), torch.randn(1)
    perm = im.latent_permutation(n, 1, seed=1)
    layers = ([w1], [b1], ["relu"], [0.0], head_w, head_b, n, "identity", 0.0)
    forward_args = (hx, hz, None, weight, bias, perm, "relu", 0.0, None, *layers)
    bound, scores, kept = ops.critic_chain_forward(*forward_args)
    with pytest.raises(RuntimeError, match="data_weight and latent_weight together"):
        ops.critic_chain_forward(*forward_args, torch.randn(dx, dx))
    with pytest.raises(RuntimeError, match="perm"):
        ops.critic_chain_forward(hx, hz, None, weight, bias, perm[:-1], "relu", 0.0, None, *layers)
    hidden, outputs, pres = kept[2], kept[6:7], kept[7:]

    def backward(mask, activation="relu", halves=()):
        return ops.critic_chain_backward(
            torch.tensor(1.0), None, hx, hz, None, weight, bias, perm, activation, 0.0, hidden,
            list(halves), [w1], [b1], ["relu"], [0.0], head_w, head_b, scores, outputs, pres, n,
            "identity", 0.0, None, None, None, None, mask)

    # hx, hz, hz_shuffled, weight, bias, head_weight, head_bias, w1, b1
    grads = backward([False, False, False, True, False, False, False, False, False])
    assert grads[3].shape == weight.shape and all(g.numel() == 0 for i, g in enumerate(grads) if i != 3)
    with pytest.raises(RuntimeError, match="output_mask must have 9 entries, got 8"):
        backward([True] * 8)
    with pytest.raises(RuntimeError, match="needs the first layer's halves"):
        backward([True] * 9, activation="tanh")

"""The shared (fused) evaluations compute the chain's layers without calling the modules. Where
calling a module does more than its class's forward (a hook, an instance forward, a subclass of
Linear or of an activation, a chain class with its own forward), every path and both kinds of
negatives give what calling the chain gives: the plain NWJ formula on ``mi(x, z)`` in float64,
value and gradients. The plan of a chain is not spoiled by a hook that came and went."""
import pytest
import torch
from torch import nn

import infomax_ext as im
from infomax_ext.mutual_info import FusedPlan, fused_plan, fused_plan_reasons, shuffled_bound

F64 = torch.float64


def chain():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    return im.MutualInfoChain(nn.Linear(6, 6), nn.Linear(3, 3), mlp).to(F64)


class _DoubledLinear(nn.Linear):
    def forward(self, h):
        return 2.0 * super().forward(h)


class _ShiftedReLU(nn.ReLU):
    def forward(self, h):
        return super().forward(h) + 0.1


class _SwappedChain(im.MutualInfoChain):
    """Scores of the chain on (x, z) minus a tenth of |z|^2: not mlp(cat([data(x), latent(z)]))."""

    def forward(self, x, z):
        return super().forward(x, z) - 0.1 * z.pow(2).sum(1)


def _twice(module, args, output):
    return 2.0 * output


def _halved_input(module, args):
    return (0.5 * args[0],)


def _scaled_grad(module, grad_input, grad_output):
    return tuple(None if g is None else 3.0 * g for g in grad_input)


def _swap(mi, index, new):
    new = new.to(F64)
    new.load_state_dict(mi.mlp[index].state_dict())
    mi.mlp[index] = new


CASES = {
    "forward hook on the first layer": lambda mi: mi.mlp[0].register_forward_hook(_twice),
    "forward hook on a hidden layer": lambda mi: mi.mlp[2].register_forward_hook(_twice),
    "forward hook on the head": lambda mi: mi.mlp[4].register_forward_hook(_twice),
    "forward hook on the chain": lambda mi: mi.register_forward_hook(_twice),
    "pre-hook on the mlp": lambda mi: mi.mlp.register_forward_pre_hook(_halved_input),
    "backward hook on a hidden layer": lambda mi: mi.mlp[2].register_full_backward_hook(
        _scaled_grad),
    "global forward hook": lambda mi: nn.modules.module.register_module_forward_hook(
        lambda m, a, o: 2.0 * o if type(m) is nn.Tanh else None),
    "instance forward on the head": lambda mi: setattr(
        mi.mlp[4], "forward", lambda h, f=mi.mlp[4].forward: f(h) + 1.0),
    "Linear subclass as first layer": lambda mi: _swap(mi, 0, _DoubledLinear(9, 8)),
    "Linear subclass as hidden layer": lambda mi: _swap(mi, 2, _DoubledLinear(8, 8)),
    "Linear subclass as head": lambda mi: _swap(mi, 4, _DoubledLinear(8, 1)),
    "ReLU subclass": lambda mi: mi.mlp.__setitem__(1, _ShiftedReLU()),
}


def _plain_nwj(mi, x, z, perm):
    """The NWJ bound from two calls of the chain, written out: mean T(x, z) - mean e^(T - 1)."""
    return mi(x, z).mean() - torch.exp(mi(x, z.detach()[perm]) - 1).mean()


def _plain_all_pairs_nwj(mi, x, z):
    """NWJ with every pair (x_i, z_j), j != i, as negatives (the codes constants there, as
    shuffled_grad=False has them), from the chain on repeated rows."""
    n = x.shape[0]
    scores = mi(x.repeat_interleave(n, 0), z.detach().repeat(n, 1)).view(n, n)
    off = ~torch.eye(n, dtype=torch.bool)
    return mi(x, z).mean() - torch.exp(scores[off] - 1).mean()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 6, dtype=F64, generator=gen)
    z = torch.randn(6, 3, dtype=F64, generator=gen, requires_grad=True)
    return x, z, im.latent_permutation(6, 1, seed=2)


def _check(value, want, mi, z):
    wrt = [z, *mi.parameters()]
    torch.testing.assert_close(value, want, rtol=1e-12, atol=1e-12)
    for got, expected in zip(torch.autograd.grad(value, wrt), torch.autograd.grad(want, wrt)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", ["auto", "fused", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_path_gives_what_calling_the_chain_gives(case, path):
    mi = chain()
    x, z, perm = _inputs()
    with torch.no_grad():
        before = float(_plain_nwj(mi, x, z, perm))
    handle = CASES[case](mi)
    try:
        with torch.no_grad():  # the change must matter (a backward hook only to gradients)
            changed = float(_plain_nwj(mi, x, z, perm)) - before
        assert abs(changed) > 1e-4 or case.startswith("backward")
        with im.use_path(path):
            _check(im.paired_mutual_info(mi, x, z, perm).bound, _plain_nwj(mi, x, z, perm), mi, z)
            _check(shuffled_bound(mi, x, z, negatives="all").bound,
                   _plain_all_pairs_nwj(mi, x, z), mi, z)
    finally:
        if handle is not None:
            handle.remove()


def test_a_chain_class_with_its_own_forward_takes_two_calls():
    plain = chain()
    mi = _SwappedChain(plain.data, plain.latent, plain.mlp)
    x, z, perm = _inputs()
    assert "_SwappedChain has its own forward" in fused_plan_reasons(mi)[0]
    _check(im.paired_mutual_info(mi, x, z, perm).bound, _plain_nwj(mi, x, z, perm), mi, z)
    _check(shuffled_bound(mi, x, z, negatives="all").bound, _plain_all_pairs_nwj(mi, x, z), mi, z)


def test_the_reasons_name_the_module_and_the_plan_returns_when_the_hook_goes():
    mi = chain()
    x, z, perm = _inputs()
    plan = fused_plan(mi)
    assert isinstance(plan, FusedPlan)
    handle = mi.mlp[2].register_forward_pre_hook(_halved_input)
    assert fused_plan_reasons(mi) == [
        "mi.mlp[2] has a forward pre-hook: the shared evaluation computes it without calling it"]
    print_path = str(im.explain_path(mi, x, z))
    assert print_path.startswith("path: two_call") and "mi.mlp[2] has a forward pre-hook" in print_path
    handle.remove()
    assert fused_plan(mi) is plan  # the kept plan, not one spoiled by the hook
    out = im.paired_mutual_info(mi, x, z, perm)
    assert out.bound.grad_fn.name() == "_LinearEndsChainBackward"
    mi.mlp[4].forward = lambda h: h
    assert fused_plan_reasons(mi) == [
        "mi.mlp[4] has an instance forward: the shared evaluation computes it without calling it"]
    del mi.mlp[4].forward
    handle = nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
    try:
        assert fused_plan_reasons(mi)[0].startswith(
            "a module forward pre-hook is registered globally")
    finally:
        handle.remove()
    assert fused_plan(mi) is plan


def test_an_activation_subclass_is_not_the_named_activation():
    assert im.activations.spec_of_module(nn.ReLU()) == ("relu", 0.0)
    assert im.activations.spec_of_module(_ShiftedReLU()) is None


def test_a_parametrized_layer_keeps_the_fused_plan_and_a_hook_based_weight_norm_takes_two_calls():
    """torch.nn.utils.parametrize gives a Linear a subclass that keeps Linear's forward (its
    weight is computed on each read): still fused. The old weight_norm recomputes the weight in
    a forward pre-hook: two calls, so the weight is never stale."""
    x, z, perm = _inputs()
    mi = chain()
    nn.utils.parametrizations.weight_norm(mi.mlp[2])
    nn.utils.parametrizations.weight_norm(mi.data)  # runs inside the chain node too
    assert isinstance(fused_plan(mi), FusedPlan) and fused_plan(mi).ends is not None
    out = im.paired_mutual_info(mi, x, z, perm)
    assert out.bound.grad_fn.name() == "_LinearEndsChainBackward"
    _check(out.bound, _plain_nwj(mi, x, z, perm), mi, z)

    mi = chain()
    with pytest.warns(FutureWarning):
        nn.utils.weight_norm(mi.mlp[2])
    with torch.no_grad():
        mi.mlp[2].weight_g.mul_(1.5)  # the weight itself is recomputed only by the pre-hook
    assert "mi.mlp[2] has a forward pre-hook" in fused_plan_reasons(mi)[0]
    _check(im.paired_mutual_info(mi, x, z, perm).bound, _plain_nwj(mi, x, z, perm), mi, z)


def test_a_torch_compile_wrapped_chain_keeps_the_fused_plan_and_its_hooks_count():
    """torch.compile(chain) computes the chain's forward: its layers stay fused (nothing is
    compiled, the wrapper is never called); a hook on the wrapped module still counts."""
    mi = chain()
    wrapped = torch.compile(mi)
    x, z, perm = _inputs()
    assert isinstance(fused_plan(wrapped), FusedPlan)
    out = im.paired_mutual_info(wrapped, x, z, perm)
    assert out.bound.grad_fn.name() == "_LinearEndsChainBackward"
    _check(out.bound, _plain_nwj(mi, x, z, perm), mi, z)
    handle = mi.register_forward_hook(_twice)
    try:
        assert fused_plan_reasons(wrapped) == [
            "the compiled chain's module has a forward hook: the shared evaluation computes it "
            "without calling it"]
    finally:
        handle.remove()

"""The fused plan of a chain is built once and kept while the chain's structure is unchanged;
what changes the structure (a replaced layer, a swapped activation, a changed slope, an inserted
batch-coupled layer) gives a new plan; what changes only tensors (optimizer steps,
load_state_dict, .to(), edits under torch.no_grad) keeps the plan and never gives a stale value.
``fused_plan`` returns a falsy NoFusedPlan with the reasons where the chain cannot be fused.
Values are checked in float64 against the two-call evaluation of the same chain."""
import copy

import pytest
import torch
from torch import nn

import infomax_ext as im
from infomax_ext.mutual_info import FusedPlan, NoFusedPlan, fused_plan, fused_plan_reasons

F64 = torch.float64


def chain(act=nn.ReLU, data=None):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(15, 16), act(), nn.Linear(16, 8), act(), nn.Linear(8, 1))
    return im.MutualInfoChain(data or nn.Identity(), nn.Linear(3, 3), mlp).to(F64)


def inputs(n=10):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 12, dtype=F64, generator=gen)
    z = torch.randn(n, 3, dtype=F64, generator=gen, requires_grad=True)
    return x, z, im.latent_permutation(n, 1, seed=2)


def check_against_two_calls(mi, x, z, perm):
    """The fused bound and its gradients equal the two-call path of the same chain now."""
    params = [z, *mi.parameters()]
    fused = im.paired_mutual_info(mi, x, z, perm)
    assert fused.bound.grad_fn is not None and fused.bound.grad_fn.name() == "_CriticChainBackward"
    with im.use_path("two_call"):
        plain = im.paired_mutual_info(mi, x, z, perm)
    torch.testing.assert_close(fused.bound, plain.bound, rtol=1e-12, atol=1e-12)
    for g1, g2 in zip(torch.autograd.grad(fused.bound, params),
                      torch.autograd.grad(plain.bound, params)):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    return fused.bound.detach()


def test_the_plan_is_built_once_and_reused():
    mi = chain()
    plan = fused_plan(mi)
    assert isinstance(plan, FusedPlan) and plan
    assert fused_plan(mi) is plan
    x, z, perm = inputs()
    im.paired_mutual_info(mi, x, z, perm)
    assert fused_plan(mi) is plan
    mi.eval()  # the training flag does not enter the plan
    assert fused_plan(mi) is plan
    assert fused_plan(chain()) is not plan  # each chain its own


def test_replacing_a_layer_gives_a_new_plan():
    mi = chain()
    x, z, perm = inputs()
    old = fused_plan(mi)
    mi.mlp[2] = nn.Linear(16, 8).to(F64)
    new = fused_plan(mi)
    assert new is not old and new.stack[0][0] is mi.mlp[2]
    check_against_two_calls(mi, x, z, perm)
    mi.mlp[0] = nn.Linear(15, 16).to(F64)
    assert fused_plan(mi).first is mi.mlp[0]
    check_against_two_calls(mi, x, z, perm)


def test_an_activation_swapped_or_its_setting_changed_gives_a_new_plan():
    mi = chain(act=nn.LeakyReLU)
    x, z, perm = inputs()
    assert fused_plan(mi).first_act == ("leaky_relu", 0.01)
    mi.mlp[1].negative_slope = 0.3
    assert fused_plan(mi).first_act == ("leaky_relu", 0.3)
    check_against_two_calls(mi, x, z, perm)
    mi.mlp[3] = nn.Tanh()
    assert fused_plan(mi).stack[0][1] == ("tanh", 0.0)
    check_against_two_calls(mi, x, z, perm)
    mi.mlp[1] = nn.Hardswish()  # not a kernel activation: no fused plan, with the reason
    plan = fused_plan(mi)
    assert isinstance(plan, NoFusedPlan) and not plan
    assert "Hardswish" in plan.reasons[0] and fused_plan_reasons(mi) == list(plan.reasons)
    assert im.paired_mutual_info(mi, x, z, perm).bound.grad_fn.name() != "_CriticChainBackward"
    mi.mlp[1] = nn.ReLU()
    assert fused_plan(mi) and fused_plan_reasons(mi) == []
    check_against_two_calls(mi, x, z, perm)


def test_a_batch_coupled_layer_anywhere_removes_the_plan():
    mi = chain(data=nn.Sequential(nn.Linear(12, 12)))
    assert fused_plan(mi)
    mi.data.append(nn.BatchNorm1d(12).to(F64))
    plan = fused_plan(mi)
    assert not plan and "batch-coupled" in plan.reasons[0]
    del mi.data[1]
    assert fused_plan(mi)


@pytest.mark.parametrize("change", ["optimizer step", "load_state_dict", "no_grad edit", "to",
                                    "replaced parameter"])
def test_tensor_changes_keep_the_plan_and_never_give_a_stale_value(change):
    mi = chain()
    x, z, perm = inputs()
    plan = fused_plan(mi)
    before = check_against_two_calls(mi, x, z, perm)
    if change == "optimizer step":
        opt = torch.optim.SGD(mi.parameters(), lr=0.5)
        im.paired_mutual_info(mi, x, z, perm).bound.backward()
        opt.step()
    elif change == "load_state_dict":
        other = chain()
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(1.5)
        mi.load_state_dict(other.state_dict())
    elif change == "no_grad edit":
        with torch.no_grad():
            mi.mlp[2].weight.mul_(-1.0)
            mi.mlp[0].bias.add_(0.25)
    elif change == "to":
        mi.to(torch.float32)
        x = x.float()
        z = z.detach().float().requires_grad_()
    else:
        mi.mlp[4].weight = nn.Parameter(torch.randn(1, 8, dtype=F64))
    assert fused_plan(mi) is plan
    if change == "to":
        fused = im.paired_mutual_info(mi, x, z, perm).bound
        with im.use_path("two_call"):
            plain = im.paired_mutual_info(mi, x, z, perm).bound
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5 * float(plain.detach().abs()) + 1e-6)
        return
    after = check_against_two_calls(mi, x, z, perm)
    assert float(after) != float(before)


def test_a_deep_copy_plans_its_own_modules():
    mi = chain()
    plan = fused_plan(mi)
    twin = copy.deepcopy(mi)
    assert fused_plan(twin).first is twin.mlp[0] and plan.first is mi.mlp[0]


def test_a_data_half_cache_entry_is_never_used_after_an_in_place_change():
    # The cache's key holds the version counters of data(x) and of the first-layer weight: an
    # optimizer step or an in-place edit of x makes the kept data half unreachable.
    mi = chain()
    x, z, perm = inputs()
    cache = im.DataHalfCache()

    def fresh():
        plain = chain()
        plain.load_state_dict(mi.state_dict())
        return im.paired_mutual_info(plain, x, z, perm).bound

    im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache)
    assert len(cache) == 1
    opt = torch.optim.SGD(mi.parameters(), lr=0.5)
    im.paired_mutual_info(mi, x, z, perm).bound.backward()
    opt.step()
    after_step = im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache).bound
    torch.testing.assert_close(after_step, fresh(), rtol=1e-12, atol=1e-12)
    x.mul_(2.0)
    after_x = im.paired_mutual_info(mi, x, z, perm, data_half_cache=cache).bound
    torch.testing.assert_close(after_x, fresh(), rtol=1e-12, atol=1e-12)
    assert len(cache) == 3


def test_the_fused_forward_copies_no_weight():
    # The weight halves and transposes are strided GEMM operands: no aten::copy_ of a tensor of
    # a weight's shape in the forward of the fused path.
    mi = chain()
    x, z, perm = inputs(32)
    shapes = {tuple(p.shape) for p in mi.parameters() if p.dim() == 2}
    shapes |= {tuple(reversed(s)) for s in shapes}
    with torch.profiler.profile(record_shapes=True) as prof:
        im.paired_mutual_info(mi, x, z, perm)
    copies = [e for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
    assert not [e for e in copies if e.input_shapes and tuple(e.input_shapes[0]) in shapes]


def test_compile_fullgraph_over_ours_on_the_default_chain_after_the_plan_was_kept():
    # The chain from_sizes builds (data and latent Linear layers), its plan kept by an eager call
    # first: torch.compile traces a function calling ours whole (fullgraph=True, no graph
    # break) and gives the eager bound and gradients.
    torch.manual_seed(3)
    mi = im.MutualInfoChain.from_sizes(12, 3, [16, 8], [torch.relu, torch.relu])
    x, z = torch.randn(16, 12), torch.randn(16, 3, requires_grad=True)
    perm = im.latent_permutation(16, 1, seed=3)

    def loss(x, z, perm):
        return -im.paired_mutual_info(mi, x, z, perm).bound

    want = loss(x, z, perm)
    assert fused_plan(mi)
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")
    got = compiled(x, z, perm)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    params = [z, *mi.parameters()]
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

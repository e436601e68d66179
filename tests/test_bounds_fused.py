"""Every bound on each shape of the fused path (critic_mlp; hidden layers one by one then critic_head;
no fused head; the joint-graph evaluation): values and gradients equal the two-call evaluation
in float64; and the path chooser's explanations (fused_plan_reasons, im.explain_path)."""
import pytest
import torch
from torch import nn

import infomax_ext as im
from infomax_ext.mutual_info import fused_plan, fused_plan_reasons, paired_mutual_info

NAMES = [name for name, b in im.BOUNDS.items() if not b.needs_all_pairs]


def _chain(kind: str):
    torch.manual_seed(0)
    if kind == "critic_mlp":
        mlp = nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 1))
    elif kind == "critic_head":  # a LayerNorm in the middle: the hidden layers run one by one
        mlp = nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.LayerNorm(7), nn.Linear(7, 1))
    elif kind == "no_head":  # ends with an activation the kernels do not run
        mlp = nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 1), nn.Hardswish())
    else:
        raise AssertionError(kind)
    return im.MutualInfoChain(nn.Linear(5, 5), nn.Linear(3, 3), mlp).double()


def _batch(n=10):
    g = torch.Generator().manual_seed(4)
    return (torch.randn(n, 5, generator=g, dtype=torch.float64),
            torch.randn(n, 3, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["critic_mlp", "critic_head", "no_head"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shuffled_grad", [False, True])
def test_fused_equals_two_call(kind, name, shuffled_grad):
    mi = _chain(kind)
    x, z = _batch()
    z.requires_grad_()
    perm = im.latent_permutation(10, 1, 3)
    wrt = [z, *mi.parameters()]
    results = []
    for path in ("fused", "two_call"):
        with im.use_path(path):
            got = paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad, bound=name)
        results.append((got.bound, torch.autograd.grad(got.bound, wrt)))
    (v_fused, g_fused), (v_two, g_two) = results
    assert torch.allclose(v_fused, v_two, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fused, g_two):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_joint_graph_equals_two_call(name):
    """The VAE step's evaluation (chain frozen, shuffled codes constant) for every bound."""
    mi = _chain("critic_mlp").requires_grad_(False)
    x, z = _batch()
    z.requires_grad_()
    perm = im.latent_permutation(10, 1, 3)
    assert im.explain_path(mi, x, z).path == "joint_graph"
    values = []
    for path in ("auto", "two_call"):
        with im.use_path(path):
            b = paired_mutual_info(mi, x, z, perm, bound=name).bound
        values.append((b, torch.autograd.grad(b, z)[0]))
    assert torch.allclose(values[0][0], values[1][0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(values[0][1], values[1][1], rtol=1e-10, atol=1e-12)


def test_float32_fused_bounds_within_rounding():
    torch.manual_seed(0)
    mi = im.MutualInfoChain.from_sizes(20, 4, [32, 32], [torch.relu, torch.relu])
    x, z = torch.randn(64, 20), torch.randn(64, 4)
    perm = im.latent_permutation(64, 1, 9)
    for name in NAMES:
        fused = paired_mutual_info(mi, x, z, perm, bound=name)
        with im.use_path("reference"):
            ref = paired_mutual_info(mi, x, z, perm, bound=name)
        scale = 1 + fused.joint.abs().max() + fused.shuffled.abs().max().exp()
        assert abs(float((fused.bound - ref.bound).detach())) <= 1e-5 * float(scale.detach())


# ------------------------------------------------------------------------------ explanations


def test_fused_plan_reasons():
    assert fused_plan_reasons(_chain("critic_mlp")) == []
    hard = _chain("critic_mlp")
    hard.mlp[1] = nn.Hardswish()
    assert not fused_plan(hard)
    assert "Hardswish" in fused_plan_reasons(hard)[0]
    bn = _chain("critic_mlp")
    bn.mlp.insert(2, nn.BatchNorm1d(7))
    assert "batch-coupled" in fused_plan_reasons(bn)[0]
    first = _chain("critic_mlp")
    first.mlp.insert(0, nn.Identity())
    assert "not an nn.Linear" in fused_plan_reasons(first)[0]
    assert "not a non-empty nn.Sequential" in fused_plan_reasons(
        im.MutualInfoChain(nn.Identity(), nn.Identity(), nn.Linear(7, 1)))[0]
    assert fused_plan_reasons(nn.Linear(2, 1))[:3] == [
        f"the chain has no module {name!r} (expected data, latent and mlp, as MutualInfoChain)"
        for name in ("data", "latent", "mlp")]


@pytest.mark.parametrize("kind, path, words", [
    ("critic_mlp", "fused", "one op (critic_mlp)"),
    ("critic_head", "fused", "LayerNorm"),
    ("no_head", "fused", "does not end with Linear(., 1)"),
])
def test_explain_path(kind, path, words):
    mi = _chain(kind)
    x, z = _batch()
    got = im.explain_path(mi, x, z)
    assert got.path == path and any(words in note for note in got.notes), got
    assert str(got).startswith(f"path: {path}\n  - ")


def test_explain_path_says_where_linear_data_and_latent_run():
    mi = im.MutualInfoChain.from_sizes(5, 3, [8], ["relu"]).double()
    x, z = _batch()
    assert any("inside the chain's autograd node" in n for n in im.explain_path(mi, x, z).notes)
    handle = mi.latent.register_forward_pre_hook(lambda module, args: None)
    try:
        notes = im.explain_path(mi, x, z).notes
    finally:
        handle.remove()
    assert any("run as module calls" in n and "hook" in n for n in notes), notes


def test_explain_path_names_every_fallback():
    mi = _chain("critic_mlp")
    x, z = _batch()
    with im.use_path("two_call"):
        assert im.explain_path(mi, x, z).path == "two_call"
    with im.use_path("reference"):
        notes = im.explain_path(mi, x, z).notes
    assert any("plain-PyTorch" in n for n in notes) or not im.extension_available()
    half = im.explain_path(mi.half(), x.half(), z.half())  # float16 runs the kernels
    assert (half.path == "fused" and not any("plain-PyTorch" in n for n in half.notes)
            or not im.extension_available())
    hard = _chain("critic_mlp")
    hard.mlp[1] = nn.Hardswish()
    two = im.explain_path(hard, x, z)
    assert two.path == "two_call" and "Hardswish" in two.notes[0]
    assert im.explain_path(hard, x, z, bound="infonce").path == "all_pairs"
    assert im.explain_path(_chain("critic_mlp"), x, z, bound="smile").notes[-1].startswith(
        "bound 'smile'")
    first = _chain("critic_mlp")
    first.mlp.insert(0, nn.Identity())
    assert im.explain_path(first, x, z, negatives="all").path == "all_pairs_calls"

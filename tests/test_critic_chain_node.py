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
    assert fused.bound.grad_fn.name() == "_CriticChainBackward"
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
    no view node between them and it (each would be one more node per call)."""
    mi = chain(nn.ReLU(), nn.ReLU())
    x = torch.randn(6, 12, dtype=F64)
    z = torch.randn(6, 3, dtype=F64, requires_grad=True)
    bound = im.paired_mutual_info(mi, x, z, im.latent_permutation(6, 1, seed=1)).bound
    node = bound.grad_fn
    assert node.name() == "_CriticChainBackward"
    names = [f.name() for f, _ in node.next_functions if f is not None]
    assert not any("View" in name for name in names), names
    leaves = {id(f.variable) for f, _ in node.next_functions
              if f is not None and f.name() == "torch::autograd::AccumulateGrad"}
    assert id(mi.mlp[4].weight) in leaves
    assert names.count("AddmmBackward0") == 3  # data(x), latent(z), latent(z.detach())

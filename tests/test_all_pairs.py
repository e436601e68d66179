"""All-pairs negatives (infomax_ext.all_pairs): scores, values and gradients equal the brute-force
N x N tile in float64, for chains that split and chains that do not, whatever the chunking; the
memory kept for the backward pass grows with one chunk, not with the N^2 pairs."""
import pytest
import torch
from torch import nn

import infomax_ext as im
from infomax_ext.all_pairs import (all_pairs_scores, all_pairs_scores_tile, chunk_rows_for,
                                   split_reasons)
from infomax_ext.bounds import resolve_bound
from infomax_ext.mutual_info import shuffled_bound

NAMES = list(im.BOUNDS)


def _split_chain(seed=0):
    torch.manual_seed(seed)
    return im.MutualInfoChain.from_sizes(5, 3, [8, 6], [torch.relu, torch.tanh]).double()


def _unsplit_chain(seed=0):
    """A chain whose MLP starts with an activation: it cannot be split."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 1))
    return im.MutualInfoChain(nn.Linear(5, 5), nn.Linear(3, 3), mlp).double()


def _batch(n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, z


@pytest.mark.parametrize("make", [_split_chain, _unsplit_chain])
@pytest.mark.parametrize("chunk_rows", [None, 1, 2, 4, 9, 100])
def test_scores_equal_the_tile(make, chunk_rows):
    mi = make()
    x, z = _batch()
    joint, scores = all_pairs_scores(mi, x, z, chunk_rows=chunk_rows)
    tile = all_pairs_scores_tile(mi, x, z)
    assert torch.allclose(scores, tile, rtol=1e-12, atol=1e-12)
    assert torch.allclose(joint, mi(x, z), rtol=1e-12, atol=1e-12)


def test_split_reasons():
    assert split_reasons(_split_chain()) == []
    assert "not an nn.Linear" in split_reasons(_unsplit_chain())[0]
    bn = _split_chain()
    bn.mlp.insert(1, nn.BatchNorm1d(8))
    assert "batch-coupled" in split_reasons(bn)[0]
    assert "no module 'data'" in split_reasons(nn.Linear(2, 1))[0]


@pytest.mark.parametrize("make", [_split_chain, _unsplit_chain])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shuffled_grad", [False, True])
def test_bound_and_gradients_equal_the_tile(make, name, shuffled_grad):
    mi = make()
    x, z = _batch()
    x.requires_grad_()
    z.requires_grad_()
    got = shuffled_bound(mi, x, z, shuffled_grad=shuffled_grad, bound=name, negatives="all")
    # The tile, with the codes constant in the negatives unless shuffled_grad.
    tile = all_pairs_scores_tile(mi, x, z if shuffled_grad else z.detach())
    eye = torch.eye(9, dtype=torch.bool)
    tile = torch.where(eye, torch.diag(mi(x, z)), tile)
    want = resolve_bound(name).from_matrix(tile)
    assert torch.allclose(got.bound, want, rtol=1e-12, atol=1e-12)
    wrt = [x, z, *mi.parameters()]
    for a, b in zip(torch.autograd.grad(got.bound, wrt), torch.autograd.grad(want, wrt)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert got.joint.shape == (9,) and got.shuffled.shape == (72,)


def test_infonce_takes_all_pairs_and_stays_below_log_n():
    mi = _split_chain()
    x, z = _batch()
    shuffled = shuffled_bound(mi, x, z, bound="infonce")
    every = shuffled_bound(mi, x, z, bound="infonce", negatives="all")
    assert torch.equal(shuffled.bound, every.bound)
    with torch.no_grad():
        mi.mlp[-2].weight.mul_(100)  # large scores: still at most log N
    assert shuffled_bound(mi, x, z, bound="infonce").bound <= torch.log(torch.tensor(9.0))


def test_saved_memory_grows_with_a_chunk_not_the_tile():
    """The tensors autograd keeps for the backward pass: a chunk's inputs, not the N^2 rows."""
    torch.manual_seed(0)
    mi = im.MutualInfoChain.from_sizes(20, 4, [64, 64], [torch.relu, torch.relu])
    n = 128
    x, z = torch.randn(n, 20), torch.randn(n, 4, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        shuffled_bound(mi, x, z, bound="nwj", negatives="all")
    kept = sum(saved)
    one_tile_layer = n * n * 64 * 4  # one hidden layer's activations on every pair
    assert kept < one_tile_layer / 10, (kept, one_tile_layer)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        im.BOUNDS["nwj"].from_matrix(all_pairs_scores_tile(mi, x, z))
    assert sum(saved) > 3 * one_tile_layer  # the tile keeps every layer of every pair


def test_chunk_rows_for():
    assert chunk_rows_for(512, 256) == 16
    assert chunk_rows_for(10**6, 10**3) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"negatives": "pairs"}, "negatives must be one of"),
    ({"negatives": "all", "n_samples": 2}, "one code per sample"),
])
def test_bad_arguments(kwargs, match):
    mi = _split_chain()
    x, z = _batch()
    if kwargs.get("n_samples") == 2:
        z = torch.cat([z, z])
    with pytest.raises(ValueError, match=match):
        shuffled_bound(mi, x, z, **kwargs)


def test_variational_mutual_info_all_pairs():
    mi = _split_chain()
    x, z = _batch()
    got = im.variational_mutual_info(mi, x, z, bound="dv", negatives="all")
    assert torch.allclose(got, im.BOUNDS["dv"].from_matrix(all_pairs_scores_tile(mi, x, z)))
    with pytest.raises(ValueError, match="give no z_shuffle"):
        im.variational_mutual_info(mi, x, z, z.flip(0), negatives="all")

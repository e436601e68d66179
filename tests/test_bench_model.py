"""bench/common.py's model of ours' products (``ours_gemms``, ``ours_schedule``,
``make_replay``) against the products one call of ours runs, as torch's profiler counts them
with one intra-op thread (every product on the calling thread): the FLOP floor and the eager
floor price what ours runs only if the model lists it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from infomax_ext.cli.model_io import torch_threads
from op_counts import calling_thread_counts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import (  # noqa: E402
    CHAINS,
    N_DATA,
    N_LATENT,
    chain_layout,
    make_replay,
    ours_gemms,
    ours_loss,
    ours_schedule,
)

def _products(fn) -> int:
    """Matrix-product op calls torch's profiler sees in ``fn()`` (one thread)."""
    return sum(calling_thread_counts(fn).values())


@pytest.mark.parametrize("shuffled_grad", [False, True])
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_the_model_lists_every_product_ours_runs(chain, shuffled_grad):
    # Ours runs every product of ours_gemms but the head's three (inside its kernel); the replay
    # runs each of them once (the pairs through linear_grads and mm_pair, two products each).
    torch.manual_seed(0)
    mi = CHAINS[chain][1]()
    n = 8
    x, z = torch.rand(n, N_DATA), torch.randn(n, N_LATENT, requires_grad=True)
    perm = torch.randperm(n)
    wrt = [*mi.parameters(), z]
    layout = chain_layout(mi, N_DATA, N_LATENT)
    gemms = ours_gemms(layout, n, shuffled_grad)
    head = f"mlp.{len(layout.mlp) - 1}"
    replay = make_replay(gemms, **ours_schedule(layout))

    def ours():
        torch.autograd.grad(ours_loss(mi, x, z, perm, shuffled_grad), wrt)

    with torch_threads(1):
        ours(), replay()  # warm-up: the first float32 product also probes oneDNN
        assert _products(ours) == len([g for g in gemms if g.layer != head])
        assert _products(replay) == len(gemms)

"""bench/profile_phases.py: the forward and backward of a call of ours timed in place, beside the
replay of the same GEMMs. The timing wrappers must leave the call's results as they are, time
every part the call runs, and put the op module back as they found it."""
from __future__ import annotations

import contextlib
import mmap
import sys
from pathlib import Path

import pytest
import torch

import infomax_ext.critic_chain_op as chain_op

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import profile_phases  # noqa: E402
from common import (N_DATA, N_LATENT, chain_layout, kernel_usage, ours_gemms,  # noqa: E402
                    ours_loss)
from profile_fixed_cost import case  # noqa: E402


def test_every_gemm_of_ours_belongs_to_one_part():
    mi = case("T", 8)[0]
    parts = {(g.layer, g.kind): profile_phases.part_of_gemm(g.kind)
             for g in ours_gemms(chain_layout(mi, N_DATA, N_LATENT), 8, False)}
    assert parts["data.0", "fwd"] == parts["mlp.1", "fwd"] == profile_phases.FORWARD
    assert parts["data.0", "wgrad"] == parts["mlp.0.latent_half.0", "igrad"] == profile_phases.BACKWARD
    assert set(parts.values()) == set(profile_phases.PARTS)


def test_timed_calls_give_the_plain_gradients_and_time_each_part():
    mi, x, z, perm, wrt = case("T", 8)
    plain = torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt)
    clock = profile_phases._Clock()
    with profile_phases.timed_parts(clock):
        timed = torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt)
    for a, b in zip(plain, timed):
        assert torch.equal(a, b)
    for part in profile_phases.PARTS:
        assert clock.spent[part] > 0, part


def test_stand_in_ops_give_the_real_call_without_running_the_ops():
    mi, x, z, perm, wrt = case("T", 8)
    outputs: dict = {}
    with profile_phases.timed_parts(profile_phases._Clock(), outputs):
        real = torch.autograd.grad(ours_loss(mi, x, z, perm, False), wrt)
    assert set(outputs) == {"critic_chain_forward", "critic_chain_backward"}
    # a changed input changes nothing while the ops are stand-ins: their outputs are the record's
    x2 = x + 1.0
    with profile_phases.timed_parts(profile_phases._Clock(), outputs, replay=True):
        replayed = torch.autograd.grad(ours_loss(mi, x2, z, perm, False), wrt)
    computed = torch.autograd.grad(ours_loss(mi, x2, z, perm, False), wrt)
    for a, b, c in zip(real, replayed, computed):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(real, computed))


def test_a_call_that_never_reaches_the_forward_op_is_named():
    with pytest.raises(RuntimeError, match="never reached critic_chain_forward"):
        profile_phases._forward_start(profile_phases._Clock())


def test_the_op_module_is_put_back():
    clock = profile_phases._Clock()
    try:
        with profile_phases.timed_parts(clock):
            assert chain_op.OPS is not torch.ops.infomax_ext
            raise KeyboardInterrupt  # leaving the block by an exception restores it too
    except KeyboardInterrupt:
        pass
    assert chain_op.OPS is torch.ops.infomax_ext


def test_measure_and_table_on_the_smallest_case():
    result = profile_phases.measure("T", 8, rounds=2)
    assert set(result["parts_ms"]) == {*profile_phases.PARTS, profile_phases.REST,
                                       profile_phases.BEFORE}
    assert set(result["replay_ms"]) == set(profile_phases.PARTS)
    assert all(result["parts_ms"][part] > 0 for part in profile_phases.PARTS)
    # the parts are timed inside the call: what is left of it is positive
    assert 0 < result["parts_ms"][profile_phases.REST] < result["ours_ms"]
    # the loss's Python runs before the forward op: a piece of the rest (medians of the same
    # calls, so at most the rest's median)
    assert 0 < result["parts_ms"][profile_phases.BEFORE] <= result["parts_ms"][profile_phases.REST]
    rows = profile_phases.table(result)
    assert rows[-1].startswith("| the call |") and len(rows) == 4 + 2 + 5
    warm = result["warm_ms"]
    assert 0 < warm[profile_phases.BEFORE] <= warm[profile_phases.REST]
    assert set(result["kernel"]) == {*profile_phases.PARTS, profile_phases.REST,
                                     profile_phases.CALL}
    assert all(len(row.split("|")) == 8 for row in rows if row.startswith("| "))
    p = profile_phases.measure("P", 8, rounds=2)  # the paper chain's node: the same two parts
    assert all(p["parts_ms"][part] > 0 for part in profile_phases.PARTS)


def test_the_kernel_share_needs_every_part_timed(monkeypatch):
    # without the op wrappers every part's kernel time would land in the rest unseen
    monkeypatch.setattr(profile_phases, "timed_parts", lambda clock: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="never ran"):
        profile_phases.in_kernel(*case("T", 8), calls=2)


def test_usage_counts_the_page_faults_of_fresh_memory():
    if not hasattr(mmap, "MADV_NOHUGEPAGE"):
        pytest.skip("huge pages cannot be refused here: a fault could map 512 pages at once")
    pages, size = 2048, mmap.PAGESIZE
    # private and anonymous, as the allocator's memory: no page is in memory yet
    block = mmap.mmap(-1, pages * size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block.madvise(mmap.MADV_NOHUGEPAGE)  # 4 KiB pages even where huge pages are the default
    try:
        faults_before = kernel_usage()[1]
        for page in range(pages):
            block[page * size] = 1  # one write per page: each page faults in once
        faults = kernel_usage()[1] - faults_before
    finally:
        block.close()
    assert pages <= faults < pages + 100, faults

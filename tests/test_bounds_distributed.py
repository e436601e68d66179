"""Every bound over a batch split across 2 gloo processes (float64): the values averaged over the
processes equal the bound of one process on the whole batch, and so do the averaged gradients
(the chain's parameters and the codes), to 1e-10. One spawn runs every case."""
import pytest
import torch
import torch.distributed as dist
from test_distributed import WORLD, spawn

import infomax_ext as im
from infomax_ext.bounds import DV
from infomax_ext.distributed import DistributedMismatchError
from infomax_ext.distributed_bounds import bound_over_group
from infomax_ext.mutual_info import shuffled_bound

N, DX, DZ = 24, 5, 3
ROWS = N // WORLD
CASES = [(name, negatives, shuffled_grad)
         for name, bound in im.BOUNDS.items()
         for negatives in (("all",) if bound.needs_all_pairs else ("shuffle", "all"))
         for shuffled_grad in (False, True)]
LOG_MEAN_EXP = [name for name, bound in im.BOUNDS.items() if bound.reduction == "log_mean_exp"]


def _chain():
    torch.manual_seed(1)
    return im.MutualInfoChain.from_sizes(DX, DZ, [16, 8], ["tanh", "relu"]).double()


def _batch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, DX, generator=g, dtype=torch.float64)
    z = (2 * torch.randn(N, DZ, generator=g, dtype=torch.float64) + x[:, :DZ])
    return x, z


def _evaluate(mi, x, z, case, group=None):
    bound, negatives, shuffled_grad = case
    z = z.clone().requires_grad_()
    value = shuffled_bound(mi, x, z, seed=5, shuffled_grad=shuffled_grad, process_group=group,
                           bound=bound, negatives=negatives).bound
    grads = torch.autograd.grad(value, [z, *mi.parameters()])
    return value.detach(), grads[0], grads[1:]


def _bound_cases(rank, out):
    """Every case on this rank's rows of the batch, saved to ``out/rank{rank}.pt``."""
    mi = _chain()
    x, z = _batch()
    rows = slice(rank * ROWS, (rank + 1) * ROWS)
    results = [_evaluate(mi, x[rows], z[rows], case, dist.group.WORLD) for case in CASES]
    with im.use_reference_path():  # the plain-PyTorch global log-mean-exp
        reference = [_evaluate(mi, x[rows], z[rows], case, dist.group.WORLD)
                     if case[0] in LOG_MEAN_EXP else None for case in CASES]
    value = shuffled_bound(mi, x[rows], z[rows], seed=5, process_group=dist.group.WORLD,
                           bound="dv").bound
    dv_node = type(value.grad_fn).__name__
    dv_runs = {negatives: _dv_average_run(mi, x[rows], z[rows], negatives, dist.group.WORLD)
               for negatives in ("shuffle", "all")}
    torch.save({"results": results, "reference": reference, "dv_node": dv_node,
                "dv_runs": dv_runs}, f"{out}/rank{rank}.pt")


def _dv_average_run(mi, x, z, negatives, group=None, steps=3):
    """DV with MINE's moving average over ``steps`` evaluations (seeds 5, 6, 7): each one's
    value and chain gradient, and the average after it."""
    dv = DV(moving_average=0.9)
    out = []
    for step in range(steps):
        value = shuffled_bound(mi, x, z, seed=5 + step, process_group=group, bound=dv,
                               negatives=negatives).bound
        grads = torch.autograd.grad(value, list(mi.parameters()))
        out.append((value.detach(), grads, dv.ema.clone(), dv.average_updates))
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("bounds_ranks")
    spawn(_bound_cases, str(out))
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[
    f"{b}-{n}-{'grad' if g else 'const'}" for b, n, g in CASES])
def test_whole_batch_over_processes(ranks, index):
    case = CASES[index]
    mi = _chain()
    x, z = _batch()
    value, z_grad, param_grads = _evaluate(mi, x, z, case)
    per_rank = [r["results"][index] for r in ranks]
    mean_value = sum(v for v, _, _ in per_rank) / WORLD
    assert torch.allclose(mean_value, value, rtol=0, atol=1e-10), (float(mean_value), float(value))
    for i, want in enumerate(param_grads):
        got = sum(r[2][i] for r in per_rank) / WORLD
        assert torch.allclose(got, want, rtol=0, atol=1e-10)
    # Each rank's codes get the gradient of the sum of all ranks' values: divided by the number
    # of ranks, the whole batch's gradient of its rows.
    got_z = torch.cat([r[1] for r in per_rank]) / WORLD
    assert torch.allclose(got_z, z_grad, rtol=0, atol=1e-10)


def test_log_mean_exp_bounds_take_the_compiled_op_across_processes(ranks):
    """dv and smile over processes: each process's (shift, log sum) from mi_bound, combined by
    one all-gather (_MiBoundOverGroup), give the values and gradients of the plain-PyTorch
    global log-mean-exp (use_reference_path) on every rank (which both equal one process on the
    whole batch: test_whole_batch_over_processes)."""
    assert all(r["dv_node"] == "_MiBoundOverGroupBackward" for r in ranks)
    checked = 0
    for index, case in enumerate(CASES):
        if case[0] not in LOG_MEAN_EXP:
            continue
        for r in ranks:
            (value, z_grad, grads), (ref_value, ref_z_grad, ref_grads) = \
                r["results"][index], r["reference"][index]
            assert torch.allclose(value, ref_value, rtol=0, atol=1e-10), case
            assert torch.allclose(z_grad, ref_z_grad, rtol=0, atol=1e-10), case
            for got, want in zip(grads, ref_grads):
                assert torch.allclose(got, want, rtol=0, atol=1e-10), case
            checked += 1
    assert checked == 2 * len(LOG_MEAN_EXP) * 2 * 2  # ranks x bounds x negatives x shuffled_grad


@pytest.mark.parametrize("negatives", ["shuffle", "all"])
def test_dv_moving_average_is_the_whole_batch_s_on_every_process(ranks, negatives):
    """Every process keeps the average one process keeps on the whole batch; the averaged
    gradients (the average's correction included) are the whole batch's."""
    mi = _chain()
    x, z = _batch()
    whole = _dv_average_run(mi, x, z, negatives)
    for step, (value, grads, average, updates) in enumerate(whole):
        per_rank = [r["dv_runs"][negatives][step] for r in ranks]
        assert all(r[3] == updates == step + 1 for r in per_rank)
        for r in per_rank:
            assert torch.allclose(r[2], average, rtol=0, atol=1e-10), (float(r[2]), float(average))
        mean_value = sum(r[0] for r in per_rank) / WORLD
        assert torch.allclose(mean_value, value, rtol=0, atol=1e-10)
        for i, want in enumerate(grads):
            got = sum(r[1][i] for r in per_rank) / WORLD
            assert torch.allclose(got, want, rtol=0, atol=1e-10)


def _unequal_counts(rank, out):
    """bound_over_group with 6 negatives on rank 0 and 4 on rank 1 (dv, smile; the compiled
    op's all-gather and the plain global log-mean-exp): what each rank raised."""
    joint = torch.randn(3, dtype=torch.float64)
    negatives = torch.randn(6 - 2 * rank, dtype=torch.float64)
    errors = {}
    for name in LOG_MEAN_EXP:
        for reference in (False, True):
            try:
                if reference:
                    with im.use_reference_path():
                        bound_over_group(im.BOUNDS[name], joint, negatives, dist.group.WORLD)
                else:
                    bound_over_group(im.BOUNDS[name], joint, negatives, dist.group.WORLD)
                errors[name, reference] = None
            except DistributedMismatchError as exc:
                errors[name, reference] = str(exc)
    torch.save(errors, f"{out}/rank{rank}.pt")


def test_unequal_counts_over_processes_are_an_error_on_every_rank(tmp_path):
    """The whole batch's log-mean-exp needs equal numbers of scores per process: otherwise the
    same DistributedMismatchError on every rank (never a value that is not the batch's)."""
    spawn(_unequal_counts, str(tmp_path))
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for errors in per_rank:
        assert len(errors) == 2 * len(LOG_MEAN_EXP)
        for key, message in errors.items():
            assert message is not None and "number of negatives" in message, key
            assert "rank 0 has 6" in message and "rank 1 has 4" in message, (key, message)

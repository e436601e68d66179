"""The compiled reduction ``torch.ops.infomax_ext.mi_bound`` (csrc/bounds.h, csrc/cpu/bound_cpu.cpp,
csrc/cuda/bound_cuda.cu, python/infomax_ext/bound_op.py): values and both outputs' gradients
against float64 formulas written out here, hand-derived numbers, gradcheck, opcheck, the NWJ
arithmetic of nwj_bound bit for bit, numerically extreme scores, errors before any kernel, and
the compiled op on the fused path of every bound."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infomax_ext as im
from infomax_ext import bound_op
from infomax_ext.mutual_info import paired_mutual_info
from test_bounds import bound_objective, bound_value

OPS = torch.ops.infomax_ext
# Every bound of the compiled table with its default parameter (bounds.py's op_param), and
# SMILE with a clip the scores exceed.
CASES = [(name, b.op_param()) for name, b in im.BOUNDS.items() if b.compiled] + [("smile", 0.5)]
IDS = [f"{b}-{p}" for b, p in CASES]
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]
SIZES = [(1, 1), (7, 13), (130, 301)]  # one score; a chunk; several chunks (64 per chunk)


def sample_inputs(device, dtype=torch.float64, requires_grad=False):
    """(t_joint, t_negatives) pairs, scores of scale 2 (beyond SMILE's clip 0.5)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for m, k in SIZES:
        tj = (2 * torch.randn(m, generator=g, dtype=torch.float64)).to(device, dtype)
        tn = (2 * torch.randn(k, generator=g, dtype=torch.float64)).to(device, dtype)
        out.append((tj.requires_grad_(requires_grad), tn.requires_grad_(requires_grad)))
    return out


def _f64(*ts):
    return [t.detach().double().cpu().requires_grad_() for t in ts]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bound,param", CASES, ids=IDS)
def test_values_and_gradients_against_float64_formulas(device, bound, param):
    for tj, tn in sample_inputs(device, requires_grad=True):
        value, objective, _ = OPS.mi_bound.default(tj, tn, bound, param)
        rj, rn = _f64(tj, tn)
        want_v, want_o = bound_value(bound, rj, rn, param), bound_objective(bound, rj, rn, param)
        torch.testing.assert_close(value.cpu(), want_v.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(objective.cpu(), want_o.detach(), rtol=1e-12, atol=1e-12)
        for got_out, want_out in ((value, want_v), (objective, want_o)):
            got = torch.autograd.grad(got_out, (tj, tn), retain_graph=True)
            want = torch.autograd.grad(want_out, (rj, rn), retain_graph=True)
            for a, b in zip(got, want):
                torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bound,param", CASES, ids=IDS)
def test_float32_within_rounding_of_float64(device, bound, param):
    """float32 scores: the sums run in double on the CPU; the error is a few float32 roundings of
    the terms' magnitude."""
    for tj, tn in sample_inputs(device, torch.float32):
        value, objective, _ = OPS.mi_bound.default(tj, tn, bound, param)
        rj, rn = (t.double().cpu() for t in (tj, tn))
        # the terms' magnitude: |t_j|, exp(t_k) (bounds exp(t_k - 1) and every clipped term's
        # exponential), the softplus terms
        scale = (rj.abs().mean() + torch.exp(rn).mean() + F.softplus(rn).mean()
                 + F.softplus(-rj).mean() + 1).item()
        tol = 64 * torch.finfo(torch.float32).eps * scale
        assert abs(value.item() - bound_value(bound, rj, rn, param).item()) <= tol
        assert abs(objective.item() - bound_objective(bound, rj, rn, param).item()) <= tol


@pytest.mark.parametrize("bound,param", CASES, ids=IDS)
def test_gradcheck_float64(bound, param):
    for tj, tn in sample_inputs("cpu", requires_grad=True)[:2]:
        assert torch.autograd.gradcheck(
            lambda a, b: OPS.mi_bound.default(a, b, bound, param)[:2], (tj, tn))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bound,param", CASES, ids=IDS)
def test_opcheck(device, bound, param):
    for dtype in (torch.float64, torch.float32):
        for tj, tn in sample_inputs(device, dtype, requires_grad=True):
            torch.library.opcheck(OPS.mi_bound.default, (tj, tn, bound, param))


def test_hand_derived_values_and_gradients():
    tj = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    tn = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64, requires_grad=True)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    js_objective = -(sp(-1.0) + sp(-2.0)) / 2 - (sp(0.0) + sp(math.log(3.0))) / 2
    want = {  # (value, objective)
        "nwj": (1.5 - (math.exp(-1) + 3 * math.exp(-1)) / 2, None),
        "dv": (1.5 - math.log(2.0), None),  # mean exp = (1 + 3) / 2
        "js": (1.5 + 1 - 2.0, js_objective),
        "smile": (1.5 - math.log((1 + math.exp(0.5)) / 2), js_objective),  # log 3 clipped to 0.5
    }
    params = {"smile": 0.5}
    for bound, (v, o) in want.items():
        value, objective, _ = OPS.mi_bound.default(tj, tn, bound, params.get(bound, 0.0))
        assert value.item() == pytest.approx(v, rel=1e-15, abs=1e-15)
        assert objective.item() == pytest.approx(v if o is None else o, rel=1e-15, abs=1e-15)
    # dv: d value / d t_n = -softmax(t_n) = -(1/4, 3/4); d / d t_j = 1/2 each
    gj, gn = torch.autograd.grad(OPS.mi_bound.default(tj, tn, "dv", 0.0)[0], (tj, tn))
    assert gj.tolist() == [0.5, 0.5]
    assert gn.tolist() == pytest.approx([-0.25, -0.75], abs=1e-15)
    # smile's value: the clip stops the gradient of log 3 > 0.5; t = 0 gets -1 / (1 + e^0.5)
    _, gn = torch.autograd.grad(OPS.mi_bound.default(tj, tn, "smile", 0.5)[0], (tj, tn))
    assert gn.tolist() == pytest.approx([-1 / (1 + math.exp(0.5)), 0.0], abs=1e-15)
    # js's objective: d/dt_j = sigmoid(-t_j) / 2, d/dt_n = -sigmoid(t_n) / 2
    gj, gn = torch.autograd.grad(OPS.mi_bound.default(tj, tn, "js", 0.0)[1], (tj, tn))
    assert gj.tolist() == pytest.approx([1 / (1 + math.exp(t)) / 2 for t in (1.0, 2.0)], abs=1e-15)
    assert gn.tolist() == pytest.approx([-0.25, -0.375], abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nwj_is_nwj_bound_bit_for_bit(dtype):
    """mi_bound's nwj sums the scores as nwj_bound does: the same bits, value and gradients."""
    g = torch.Generator().manual_seed(3)
    for m, k in ((5, 9), (1000, 4097)):
        tj = torch.randn(m, generator=g, dtype=dtype)
        tn = torch.randn(k, generator=g, dtype=dtype)
        value, _, _ = OPS.mi_bound.default(tj, tn, "nwj", 0.0)
        assert torch.equal(value, OPS.nwj_bound.default(tj, tn))
        grad = torch.tensor(0.37, dtype=dtype)
        got = OPS.mi_bound_backward.default(grad, None, tj, tn, "nwj", 0.0)
        want = OPS.nwj_bound_backward.default(grad, tj, tn)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bound,param", CASES, ids=IDS)
def test_log_sum_exp_output_and_its_reuse(bound, param, dtype):
    """The third output is (shift, log sum exp(n - shift)) for a log-mean-exp bound, zeros
    otherwise; the backward given it computes what it computes when it sums again."""
    for tj, tn in sample_inputs("cpu", dtype):
        _, _, parts = OPS.mi_bound.default(tj, tn, bound, param)
        if im.BOUNDS[bound].reduction == "log_mean_exp":
            terms = tn.double().clamp(-param, param) if bound == "smile" else tn.double()
            assert parts[0].item() == terms.max().item()
            want = torch.log(torch.exp(terms - terms.max()).sum())
            assert parts[1].item() == pytest.approx(want.item(), rel=4 * torch.finfo(dtype).eps,
                                                    abs=4 * torch.finfo(dtype).eps)
        else:
            assert parts.tolist() == [0.0, 0.0]
        one = torch.ones((), dtype=dtype)
        for grads in ((one, None), (None, one), (one, one)):
            given = OPS.mi_bound_backward.default(*grads, tj, tn, bound, param, parts)
            again = OPS.mi_bound_backward.default(*grads, tj, tn, bound, param)
            assert all(torch.equal(a, b) for a, b in zip(given, again))


def test_backward_of_either_output_alone():
    """An absent incoming gradient contributes nothing (not 0 * inf): js's value gradient
    -exp(t) / K overflows at t = 1000, its objective gradient does not."""
    tj = torch.tensor([0.5, 1.0], dtype=torch.float64)
    tn = torch.tensor([1000.0, 0.0], dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)
    gj, gn = OPS.mi_bound_backward.default(None, one, tj, tn, "js", 0.0)
    assert torch.isfinite(gn).all() and gn[0].item() == pytest.approx(-0.5)
    both = OPS.mi_bound_backward.default(one, one, tj, tn, "dv", 0.0)
    alone = OPS.mi_bound_backward.default(2 * one, None, tj, tn, "dv", 0.0)
    assert all(torch.equal(a, b) for a, b in zip(both, alone))  # dv's objective is its value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_mean_exp_is_shifted(dtype):
    """Scores far beyond exp's range: the log-mean-exp stays finite and exact."""
    big = 1000.0 if dtype == torch.float64 else 200.0
    tj = torch.tensor([0.0], dtype=dtype)
    tn = torch.tensor([big, big - math.log(3.0), -big], dtype=dtype)
    value, _, _ = OPS.mi_bound.default(tj, tn, "dv", 0.0)
    want = -torch.logsumexp(tn.double(), 0) + math.log(3.0)
    assert torch.isfinite(value)
    torch.testing.assert_close(value.double(), want, rtol=4 * torch.finfo(dtype).eps, atol=0)
    gj, gn = OPS.mi_bound_backward.default(torch.ones((), dtype=dtype), None, tj, tn, "dv", 0.0)
    torch.testing.assert_close(gn.double(), -torch.softmax(tn.double(), 0),
                               rtol=8 * torch.finfo(dtype).eps, atol=1e-30)


@pytest.mark.parametrize("bound,param", CASES, ids=IDS)
def test_nonfinite_scores_as_the_formulas(bound, param):
    """NaN and +-inf give what the PyTorch formulas give (value and training gradient)."""
    cases = [[0.5, float("nan")], [float("inf"), 0.0], [float("-inf"), float("-inf")],
             [float("inf"), float("-inf")]]
    b = im.bounds.resolve_bound(bound, clip=param) if bound == "smile" else im.BOUNDS[bound]
    for neg in cases:
        tj = torch.tensor([0.25, -1.0], dtype=torch.float64, requires_grad=True)
        tn = torch.tensor(neg, dtype=torch.float64, requires_grad=True)
        got = b(tj, tn)
        g_got = torch.autograd.grad(got, (tj, tn))
        with im.use_reference_path():
            want = b(tj, tn)
        g_want = torch.autograd.grad(want, (tj, tn))
        torch.testing.assert_close(got, want, equal_nan=True)
        for a, c in zip(g_got, g_want):
            torch.testing.assert_close(a, c, equal_nan=True)


def test_large_batch_precision_float32():
    """A million float32 negatives: the double accumulation keeps the float32 result within a
    few roundings of the float64 value."""
    g = torch.Generator().manual_seed(1)
    tj, tn = torch.randn(1000, generator=g), torch.randn(1_000_000, generator=g)
    rj, rn = tj.double(), tn.double()
    want = {"nwj": rj.mean() - torch.exp(rn - 1).mean(),
            "dv": rj.mean() - (torch.logsumexp(rn, 0) - math.log(rn.numel())),
            "js": rj.mean() + 1 - torch.exp(rn).mean()}
    for bound, v in want.items():
        value, _, _ = OPS.mi_bound.default(tj, tn, bound, 0.0)
        assert abs(value.item() - v.item()) <= 4 * torch.finfo(torch.float32).eps * 3


def test_bad_input_errors_before_any_kernel():
    tj, tn = torch.randn(4), torch.randn(6)
    cases = [
        ((tj, tn, "infonce", 0.0), r"unknown bound 'infonce'; supported: nwj, dv, js, smile"),
        ((tj, tn, "NWJ", 0.0), r"unknown bound 'NWJ'"),
        ((tj, tn, "nwj", 1.0), r"bound 'nwj' takes no parameter \(param must be 0\), got param = 1"),
        ((tj, tn, "smile", 0.0), r"bound 'smile': clip \(param\) must be a positive finite number"),
        ((tj, tn, "smile", float("nan")), r"clip \(param\) must be a positive finite number"),
        ((tj.view(2, 2), tn, "nwj", 0.0), r"t_joint must have 1 dimension\(s\), got shape \[2, 2\]"),
        ((tj, tn.view(2, 3), "dv", 0.0), r"t_negatives must have 1 dimension\(s\), got shape \[2, 3\]"),
        ((tj, tn.double(), "nwj", 0.0), r"dtype mismatch: t_negatives is Double but t_joint is Float"),
        ((tj.long(), tn.long(), "nwj", 0.0), r"t_joint must be float32 or float64, got Long"),
        ((tj[:0], tn, "js", 0.0), r"needs at least one joint and one negative score, got 0 and 6"),
        ((tj, tn[:0], "js", 0.0), r"needs at least one joint and one negative score, got 4 and 0"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            OPS.mi_bound.default(*args)
    with pytest.raises(RuntimeError, match=r"grad_value must hold one value, got shape \[2\]"):
        OPS.mi_bound_backward.default(torch.ones(2), None, tj, tn, "nwj", 0.0)
    with pytest.raises(RuntimeError, match=r"dtype mismatch: grad_objective is Double"):
        OPS.mi_bound_backward.default(None, torch.ones((), dtype=torch.float64), tj, tn, "js", 0.0)
    with pytest.raises(RuntimeError, match=r"log_sum_exp must have 2 entries \(mi_bound's third "
                                           r"output\), got 3"):
        OPS.mi_bound_backward.default(torch.ones(()), None, tj, tn, "dv", 0.0, torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"unknown bound 'tuba'"):
        OPS.mi_bound_backward.default(torch.ones(()), None, tj, tn, "tuba", 0.0)


def test_python_wrapper_errors():
    tj, tn = torch.randn(4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"unknown bound 'infonce'; supported: nwj, dv, js, smile"):
        bound_op.mi_bound(tj, tn, "infonce")
    with pytest.raises(RuntimeError, match=r"bound 'dv' takes no parameter"):
        bound_op.mi_bound(tj, tn, "dv", 2.0)
    with pytest.raises(RuntimeError, match=r"bound 'smile': clip \(param\) must be a positive"):
        bound_op.mi_bound(tj, tn, "smile", -1.0)
    with pytest.raises(ValueError, match=r"t_negatives must be a non-empty 1-D tensor of scores, "
                                         r"got shape \(0,\)"):
        bound_op.mi_bound(tj, tn[:0], "nwj")
    with pytest.raises(ValueError, match=r"t_joint must be a non-empty 1-D tensor of scores, "
                                         r"got shape \(2, 2\)"):
        bound_op.mi_bound(tj.view(2, 2), tn, "nwj")
    with pytest.raises(TypeError, match=r"mi_bound: t_joint must be a torch.Tensor, got list"):
        bound_op.mi_bound([1.0], tn, "nwj")
    with pytest.raises(TypeError, match=r"param must be a number, got str"):
        bound_op.mi_bound(tj, tn, "smile", "5")
    with im.use_reference_path():
        assert not bound_op.kernel_applies(tj, tn)
        with pytest.raises(RuntimeError, match=r"the plain-PyTorch path is chosen.*"
                                               r"infomax_ext.BOUNDS\['dv'\]"):
            bound_op.mi_bound(tj, tn, "dv")
    with pytest.raises(RuntimeError, match=r"do not run torch.float64 and torch.float32 scores"):
        bound_op.mi_bound(tj, tn.float(), "dv")


@pytest.mark.parametrize("bound,param", CASES, ids=IDS)
def test_bound_classes_compiled_equal_their_pytorch_formulas(bound, param):
    """Bound(...)(joint, negatives) takes mi_bound where it applies and its own formulas inside
    use_reference_path: the same values and training gradients (float64, 1e-12)."""
    b = im.bounds.resolve_bound(bound, clip=param) if bound == "smile" else im.BOUNDS[bound]
    for tj, tn in sample_inputs("cpu", requires_grad=True):
        got = b(tj, tn)
        g_got = torch.autograd.grad(got, (tj, tn))
        with im.use_reference_path():
            want = b(tj, tn)
        g_want = torch.autograd.grad(want, (tj, tn))
        assert any(_is_mi_bound_node(n) for n in _graph_names(got))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for a, c in zip(g_got, g_want):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)


def test_fake_kernels_shapes_and_devices():
    tj, tn = torch.randn(4, device="meta"), torch.randn(6, device="meta")
    value, objective, _ = OPS.mi_bound.default(tj, tn, "smile", 5.0)
    assert value.shape == objective.shape == () and value.device.type == "meta"
    with pytest.raises(RuntimeError, match="device mismatch in mi_bound: t_negatives is on cpu"):
        OPS.mi_bound.default(tj, torch.randn(6), "nwj", 0.0)


def _op_args():
    tj, tn = torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    one = torch.ones((), dtype=torch.float64)
    return {"mi_bound": (OPS.mi_bound.default, [tj, tn, "dv", 0.0]),
            "mi_bound_backward": (OPS.mi_bound_backward.default,
                                  [one, one, tj, tn, "dv", 0.0, torch.zeros(2, dtype=torch.float64)])}


@pytest.mark.parametrize("name,index", [(n, i) for n, (_, args) in _op_args().items()
                                        for i, a in enumerate(args) if isinstance(a, torch.Tensor)])
def test_an_argument_on_another_device_is_refused(name, index):
    """A meta tensor among CPU tensors dispatches to the fake kernel, which must refuse it (it
    would return uninitialised memory): "device mismatch" naming the argument."""
    op, args = _op_args()[name]
    args[index] = args[index].to("meta")
    with pytest.raises(RuntimeError, match="device mismatch"):
        op(*args)


def test_double_backward_is_refused():
    tj = torch.randn(4, dtype=torch.float64, requires_grad=True)
    tn = torch.randn(6, dtype=torch.float64, requires_grad=True)
    value, _, _ = OPS.mi_bound.default(tj, tn, "dv", 0.0)
    with pytest.raises(RuntimeError, match="mi_bound does not support double backward"):
        torch.autograd.grad(value, tj, create_graph=True)


def _chain_and_batch():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 1))
    mi = im.MutualInfoChain(nn.Linear(5, 5), nn.Linear(3, 3), mlp).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 5, generator=g, dtype=torch.float64)
    z = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    return mi, x, z


def _is_mi_bound_node(name):
    """The autograd node of mi_bound: the op's registered autograd, or bound_op's
    autograd.Function (what bound_op.mi_bound calls in eager mode)."""
    return "infomax_ext_mi_bound" in name or name == "_MiBoundBackward"


def _graph_names(t):
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("bound", ["nwj", "dv", "js", "smile"])
def test_fused_path_runs_the_compiled_reduction(bound):
    """On the fused path the bound's reduction is a compiled op, seen in the graph and by the
    profiler: nwj's inside the fused head (in the chain node's critic_chain_forward), the others'
    in mi_bound."""
    mi, x, z = _chain_and_batch()
    perm = im.latent_permutation(10, 1, 3)
    with im.use_path("fused"), torch.profiler.profile() as prof:
        got = paired_mutual_info(mi, x, z, perm, bound=bound)
        got.bound.backward()
    events = {e.name for e in prof.events()}
    names = _graph_names(got.bound)
    if bound == "nwj":
        assert "infomax_ext::critic_chain_forward" in events
        assert "infomax_ext::mi_bound" not in events
    else:
        assert {"infomax_ext::mi_bound", "infomax_ext::mi_bound_backward"} <= events
        assert any(_is_mi_bound_node(n) for n in names), names
        assert "infomax_ext::critic_chain_forward" in events  # the scores: the fused chain


def test_bound_classes_match_the_compiled_table():
    """Every bound bounds.py marks compiled is one the op accepts with its parameter, and the
    op refuses the others: the Python and C++ tables agree."""
    tj, tn = torch.randn(3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    for name, b in im.BOUNDS.items():
        if b.compiled:
            value, objective, _ = OPS.mi_bound.default(tj, tn, name, b.op_param())
            assert torch.isfinite(value) and torch.isfinite(objective)
        else:
            with pytest.raises(RuntimeError, match=f"unknown bound '{name}'"):
                OPS.mi_bound.default(tj, tn, name, 0.0)
    assert im.bounds.DV(moving_average=0.9).op_param() is None  # stateful: PyTorch formulas


@pytest.mark.parametrize("bound", ["dv", "smile"])
def test_torch_compile_fullgraph(bound):
    """Bound(...) with the compiled op traces in one graph (the fake kernel, the registered
    autograd) and gives the eager value and training gradient."""
    tj = torch.randn(8, dtype=torch.float64, requires_grad=True)
    tn = torch.randn(20, dtype=torch.float64, requires_grad=True)
    b = im.BOUNDS[bound]
    compiled = torch.compile(lambda x, y: b(x, y), fullgraph=True, backend="aot_eager")
    got = compiled(tj, tn)
    want = b(tj, tn)
    assert torch.equal(got, want)
    for g, w in zip(torch.autograd.grad(got, (tj, tn)), torch.autograd.grad(want, (tj, tn))):
        assert torch.equal(g, w)

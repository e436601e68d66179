"""The compiled InfoNCE reduction ``torch.ops.infomax_ext.infonce_rows`` (csrc/cpu/infonce_cpu.cpp,
csrc/cuda/infonce_cuda.cu, python/infomax_ext/infonce_op.py): value, row log-sum-exps and
gradients against the plain formula in float64 (1e-12) and float32 (a tolerance scaled with the
scores), hand-derived numbers, gradcheck, opcheck, non-finite scores as torch.logsumexp gives
them, errors before any kernel, and InfoNCE.from_rows taking the op where it applies."""
import math

import pytest
import torch

import infomax_ext as im
from infomax_ext import infonce_op

OPS = torch.ops.infomax_ext
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]
# one entry; a few rows; rows longer than one block of 512 exponentials; many short rows
SIZES = [(1, 1), (7, 13), (3, 1200), (300, 5)]


def formula(rows, joint):
    """The plain formula: mean_i [joint_i - logsumexp_j rows[i, j]] + log C."""
    return (joint - torch.logsumexp(rows, 1)).mean() + math.log(rows.shape[1])


def sample_inputs(device, dtype=torch.float64, requires_grad=False, scale=3.0):
    g = torch.Generator().manual_seed(11)
    out = []
    for r, c in SIZES:
        rows = (scale * torch.randn(r, c, generator=g, dtype=torch.float64)).to(device, dtype)
        joint = (scale * torch.randn(r, generator=g, dtype=torch.float64)).to(device, dtype)
        out.append((rows.requires_grad_(requires_grad), joint.requires_grad_(requires_grad)))
    return out


def _value_and_grads(fn, rows, joint, weight=0.7):
    rows, joint = rows.detach().requires_grad_(), joint.detach().requires_grad_()
    value = fn(rows, joint)
    grads = torch.autograd.grad(weight * value, (rows, joint))
    return value.detach(), grads


@pytest.mark.parametrize("device", DEVICES)
def test_equals_the_formula_in_float64(device):
    for rows, joint in sample_inputs(device) + sample_inputs(device, scale=300.0):
        value, row_lse = OPS.infonce_rows.default(rows, joint)
        assert torch.allclose(row_lse, torch.logsumexp(rows, 1), rtol=1e-13, atol=1e-12)
        got, (g_rows, g_joint) = _value_and_grads(infonce_op.infonce_rows, rows, joint)
        want, (w_rows, w_joint) = _value_and_grads(formula, rows, joint)
        assert torch.equal(got, value)
        assert abs(got.item() - want.item()) <= 1e-12 * (1 + abs(want.item()))
        assert torch.allclose(g_rows, w_rows, rtol=0, atol=1e-12)
        assert torch.allclose(g_joint, w_joint, rtol=0, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_within_a_scaled_tolerance(device):
    eps = torch.finfo(torch.float32).eps
    for rows, joint in sample_inputs(device, torch.float32):
        r64, j64 = rows.double(), joint.double()
        got, (g_rows, g_joint) = _value_and_grads(infonce_op.infonce_rows, rows, joint)
        want, (w_rows, w_joint) = _value_and_grads(formula, r64, j64)
        # each term joint_i - lse_i rounds at the scale of |joint_i| + |lse_i| (+ the log C)
        scale = (j64.abs() + torch.logsumexp(r64, 1).abs()).mean().item() + math.log(rows.shape[1])
        assert abs(got.item() - want.item()) <= 16 * eps * scale
        # -(g / R) exp(x - lse): relative error of exp of a difference rounded at the scale of
        # |x| + |lse|
        row_scale = 1 + r64.abs() + torch.logsumexp(r64, 1, keepdim=True).abs()
        assert ((g_rows.double() - w_rows).abs() <= 16 * eps * w_rows.abs() * row_scale).all()
        assert torch.allclose(g_joint.double(), w_joint, rtol=4 * eps, atol=0)


def test_gradcheck_float64():
    for rows, joint in sample_inputs("cpu", requires_grad=True)[:3]:
        assert torch.autograd.gradcheck(infonce_op.infonce_rows, (rows, joint))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for dtype in (torch.float64, torch.float32):
        for rows, joint in sample_inputs(device, dtype, requires_grad=True):
            torch.library.opcheck(OPS.infonce_rows.default, (rows, joint))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward_with_transposed_rows(device):
    """The backward op's fake kernel gives the strides its kernels give (a contiguous
    grad_rows) also for transposed or sliced rows: torch.compile plans with the fake's."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 5, generator=g, dtype=torch.float64).to(device)
    for rows in (base.t(), base[:, 1:4], base):
        joint = rows[:, 0].contiguous()
        row_lse = torch.logsumexp(rows, 1)
        grad = torch.tensor(0.5, dtype=torch.float64, device=device)
        torch.library.opcheck(OPS.infonce_rows_backward.default, (grad, rows, joint, row_lse))


def test_hand_derived_value_and_gradients():
    rows = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]], dtype=torch.float64,
                        requires_grad=True)
    joint = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    value, row_lse = OPS.infonce_rows.default(rows, joint)
    # logsumexp: log(1 + 3) = log 4 and 1 + log 2; value = (-log 4 - log 2) / 2 + log 2
    assert row_lse.tolist() == pytest.approx([math.log(4.0), 1 + math.log(2.0)], abs=1e-15)
    assert value.item() == pytest.approx(-0.5 * math.log(2.0), abs=1e-15)
    g_rows, g_joint = torch.autograd.grad(value, (rows, joint))
    # -(1 / R) softmax of each row: softmax (1/4, 3/4) and (1/2, 1/2)
    assert g_rows.tolist() == [pytest.approx([-1 / 8, -3 / 8], abs=1e-15),
                               pytest.approx([-1 / 4, -1 / 4], abs=1e-15)]
    assert g_joint.tolist() == [0.5, 0.5]


NONFINITE_ROWS = {
    "a row of -inf": [[-math.inf, -math.inf, -math.inf], [0.5, 1.0, -2.0]],
    "some -inf": [[-math.inf, 0.3, -math.inf], [0.5, 1.0, -2.0]],
    "+inf": [[math.inf, 0.3, 1.0], [0.5, 1.0, -2.0]],
    "+inf and -inf": [[math.inf, -math.inf, 1.0], [0.5, 1.0, -2.0]],
    "NaN": [[math.nan, 0.3, 1.0], [0.5, 1.0, -2.0]],
    "huge": [[1e308, 1e308, -1e308], [0.5, 1.0, -2.0]],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(NONFINITE_ROWS))
@pytest.mark.parametrize("joint_first", [0.25, -math.inf, math.inf])
def test_nonfinite_scores_as_torch_logsumexp(device, case, joint_first):
    rows = torch.tensor(NONFINITE_ROWS[case], dtype=torch.float64, device=device)
    joint = torch.tensor([joint_first, 0.75], dtype=torch.float64, device=device)
    _, row_lse = OPS.infonce_rows.default(rows, joint)
    assert torch.equal(torch.isnan(row_lse), torch.isnan(torch.logsumexp(rows, 1)))
    assert torch.allclose(row_lse, torch.logsumexp(rows, 1), rtol=1e-15, atol=0, equal_nan=True)
    got, (g_rows, g_joint) = _value_and_grads(infonce_op.infonce_rows, rows, joint)
    want, (w_rows, w_joint) = _value_and_grads(formula, rows, joint)
    assert torch.allclose(got, want, rtol=1e-15, atol=0, equal_nan=True), (got, want)
    assert torch.allclose(g_rows, w_rows, rtol=1e-15, atol=0, equal_nan=True), (g_rows, w_rows)
    assert torch.equal(g_joint, w_joint)


def test_op_errors_before_any_kernel():
    rows, joint = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    cases = [
        ((rows[0], joint), r"rows must have 2 dimension\(s\), got shape \[6\]"),
        ((rows, rows), r"joint must have 1 dimension\(s\), got shape \[4, 6\]"),
        ((rows.float(), joint), r"dtype mismatch: joint is Double but rows is Float"),
        ((rows.long(), joint.long()), r"rows must be float32 or float64, got Long"),
        ((rows.half(), joint.half()), r"rows must be float32 or float64, got Half"),
        ((rows, joint[:3]), r"joint has 3 entries but rows has 4 rows"),
        ((rows[:, :0], joint), r"at least one row and one column, got rows of shape \[4, 0\]"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            OPS.infonce_rows.default(*args)
    _, row_lse = OPS.infonce_rows.default(rows, joint)
    grad = torch.ones((), dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"grad must hold one value, got shape \[2\]"):
        OPS.infonce_rows_backward.default(torch.ones(2, dtype=torch.float64), rows, joint, row_lse)
    with pytest.raises(RuntimeError, match=r"dtype mismatch: grad is Float"):
        OPS.infonce_rows_backward.default(grad.float(), rows, joint, row_lse)
    with pytest.raises(RuntimeError, match=r"row_lse has 3 entries but rows has 4 rows"):
        OPS.infonce_rows_backward.default(grad, rows, joint, row_lse[:3])


def test_python_wrapper_errors():
    rows, joint = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"infonce_rows: rows must be a torch.Tensor, got list"):
        infonce_op.infonce_rows([[1.0]], joint)
    with pytest.raises(ValueError, match=r"rows must be a non-empty \(R, C\) matrix of scores, "
                                         r"got shape \(24,\)"):
        infonce_op.infonce_rows(rows.flatten(), joint)
    with pytest.raises(ValueError, match=r"joint must hold one score per row of rows, shape "
                                         r"\(4,\), got \(5,\)"):
        infonce_op.infonce_rows(rows, torch.randn(5, dtype=torch.float64))
    with im.use_reference_path():
        assert not infonce_op.kernel_applies(rows, joint)
        with pytest.raises(RuntimeError, match=r"the plain-PyTorch path is chosen.*"
                                               r"BOUNDS\['infonce'\].from_rows"):
            infonce_op.infonce_rows(rows, joint)
    assert not infonce_op.kernel_applies(rows.float(), joint)  # two dtypes
    assert not infonce_op.kernel_applies(rows.half(), joint.half())


def test_double_backward_refused():
    rows = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    joint = torch.randn(3, dtype=torch.float64)
    value = infonce_op.infonce_rows(rows, joint)
    with pytest.raises(RuntimeError, match="infonce_rows does not support double backward"):
        torch.autograd.grad(value, rows, create_graph=True)


def test_same_bits_whatever_the_thread_count():
    rows, joint = sample_inputs("cpu", torch.float32)[3]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = OPS.infonce_rows.default(rows, joint)
        torch.set_num_threads(2)
        two = OPS.infonce_rows.default(rows, joint)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_from_rows_takes_the_op_and_equals_its_formula(dtype):
    """InfoNCE.from_rows runs the op where it applies (reduced precision converted to float32
    first), the plain formula inside use_reference_path: the same value and gradients."""
    infonce = im.BOUNDS["infonce"]
    g = torch.Generator().manual_seed(5)
    scores = (2 * torch.randn(9, 9, generator=g, dtype=torch.float64)).to(dtype)
    results = []
    for reference in (False, True):
        s = scores.clone().requires_grad_()
        if reference:
            with im.use_reference_path():
                value = infonce.from_matrix(s)
        else:
            value = infonce.from_matrix(s)
            assert type(value.grad_fn).__name__ == "_InfoNceRowsBackward"
        (grad,) = torch.autograd.grad(value, s)
        assert value.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
        assert grad.dtype == dtype
        results.append((value.detach(), grad))
    (v_op, g_op), (v_ref, g_ref) = results
    # float32 sums: the terms are of scale 4 (|S| <= 8, log 9); the gradients are rounded to
    # the scores' dtype once
    tol = 1e-12 if dtype == torch.float64 else 64 * torch.finfo(torch.float32).eps * 4
    assert abs(v_op.item() - v_ref.item()) <= tol
    g_ref = g_ref.double()
    g_tol = tol * (1 + g_ref.abs()) if dtype != torch.bfloat16 else \
        2 * torch.finfo(dtype).eps * g_ref.abs() + 1e-6
    assert ((g_op.double() - g_ref).abs() <= g_tol).all()


@pytest.mark.parametrize("reference", [False, True])
def test_from_rows_refuses_bad_shapes_on_every_path(reference):
    """A joint that is not one score per row, or empty rows, is a ValueError on the plain path
    too (int scores, use_reference_path), never a broadcast value or a NaN."""
    infonce = im.BOUNDS["infonce"]
    rows = torch.randn(5, 3, dtype=torch.float64)
    cases = [(rows, rows[:1, 0], r"joint must hold one score per row"),
             (rows, rows[:, :1], r"joint must hold one score per row"),
             (rows.long(), torch.zeros(1, dtype=torch.long), r"joint must hold one score"),
             (rows[:0], rows[:0, 0], r"rows must be a non-empty \(R, C\) matrix"),
             (rows[:, :0], rows[:, 0], r"rows must be a non-empty \(R, C\) matrix")]
    for r, j, message in cases:
        with pytest.raises(ValueError, match=message):
            if reference:
                with im.use_reference_path():
                    infonce.from_rows(r, j)
            else:
                infonce.from_rows(r, j)


def test_torch_compile_fullgraph():
    """InfoNCE.from_matrix with the compiled op traces in one graph (the fake kernel, the
    registered autograd) and gives the eager value and gradient."""
    scores = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    infonce = im.BOUNDS["infonce"]
    compiled = torch.compile(lambda s: infonce.from_matrix(s), fullgraph=True,
                             backend="aot_eager")
    got, want = compiled(scores), infonce.from_matrix(scores)
    assert torch.equal(got, want)
    (g,), (w,) = torch.autograd.grad(got, scores), torch.autograd.grad(want, scores)
    assert torch.equal(g, w)

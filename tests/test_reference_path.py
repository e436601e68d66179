"""The evaluation path switch, use_path() (use_reference_path() is use_path("reference")): each
path is the evaluation it names; the choice is context-local (other threads and asyncio tasks
keep theirs), nesting works, backend() tells the truth inside it, and torch.compile follows it
per thread."""
import asyncio
import threading

import pytest
import torch
from torch import nn

import infomax_ext as im
from infomax_ext import _ops, paired_first_layer_op

pytestmark = pytest.mark.skipif(not im.extension_available(), reason="compiled ops not loaded")

TIMEOUT = 30  # seconds: a broken synchronisation fails the test instead of hanging it


def path_taken() -> str:
    """Which path a paired_first_layer call takes here: the fused op's autograd node or the
    reference's torch.cat."""
    a = torch.randn(4, 3, requires_grad=True)
    out = paired_first_layer_op.paired_first_layer(a, torch.randn(4, 3), None, torch.zeros(3), torch.arange(4),
                                  "relu", 0.0)
    return "reference" if out.grad_fn.name().startswith("Cat") else "compiled"


def view() -> tuple:
    """(backend(), kernels_apply, the path an op takes) as seen from the calling context."""
    return im.backend("cpu"), _ops.kernels_apply(torch.zeros(1)), path_taken()


COMPILED = ("compiled", True, "compiled")
REFERENCE = ("reference", False, "reference")


def test_backend_and_the_path_inside_and_outside():
    assert view() == COMPILED
    with im.use_reference_path():
        assert view() == REFERENCE
    assert view() == COMPILED


def test_nested_use():
    with im.use_reference_path():
        with im.use_reference_path():
            assert view() == REFERENCE
        assert view() == REFERENCE  # the inner exit does not end the outer context
    assert view() == COMPILED


def test_the_context_is_restored_after_an_exception():
    with pytest.raises(KeyError):
        with im.use_reference_path():
            raise KeyError("boom")
    assert view() == COMPILED


def run_threads(*targets):
    errors = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
        return run

    threads = [threading.Thread(target=guard(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def test_two_threads_overlapping():
    """A enters the context while B runs outside it; then B enters while A leaves. Each sees only
    its own choice at every step (the barrier makes the overlap certain)."""
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    seen = {"a": [], "b": []}

    def thread_a():
        with im.use_reference_path():
            barrier.wait()  # 1: A inside, B outside
            seen["a"].append(view())
            barrier.wait()  # 2: both looked
            barrier.wait()  # 3: B has entered
        seen["a"].append(view())  # A outside, B still inside
        barrier.wait()  # 4: both looked
        barrier.wait()  # 5: B has left

    def thread_b():
        barrier.wait()  # 1
        seen["b"].append(view())
        barrier.wait()  # 2
        with im.use_reference_path():
            barrier.wait()  # 3
            seen["b"].append(view())
            barrier.wait()  # 4
        barrier.wait()  # 5
        seen["b"].append(view())

    run_threads(thread_a, thread_b)
    assert seen["a"] == [REFERENCE, COMPILED]
    assert seen["b"] == [COMPILED, REFERENCE, COMPILED]
    assert view() == COMPILED  # the main thread never left the fused path


def test_a_thread_started_outside_the_context_is_unaffected():
    inside, looked = threading.Event(), threading.Event()
    seen = []

    def worker():
        assert inside.wait(TIMEOUT)
        seen.append(view())
        looked.set()

    worker_thread = threading.Thread(target=worker)
    worker_thread.start()
    with im.use_reference_path():
        inside.set()
        assert looked.wait(TIMEOUT)
        assert view() == REFERENCE
    worker_thread.join(TIMEOUT)
    assert seen == [COMPILED]


def test_asyncio_tasks_keep_their_own_choice():
    async def main():
        entered, looked = asyncio.Event(), asyncio.Event()

        async def with_reference():
            with im.use_reference_path():
                entered.set()
                await looked.wait()  # the other task runs while this one is inside
                return view()

        async def without():
            await entered.wait()
            result = view()
            looked.set()
            return result

        return await asyncio.wait_for(asyncio.gather(with_reference(), without()), TIMEOUT)

    assert asyncio.run(main()) == [REFERENCE, COMPILED]


def test_torch_compile_follows_the_context_per_thread():
    """A function compiled outside the context recompiles inside it (and back), and each thread
    gets the path of its own context."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append("infomax_ext.paired_first_layer" in str(gm.graph))
        return gm.forward

    def f(a, b):
        return paired_first_layer_op.paired_first_layer(a, b, None, torch.zeros(3), torch.arange(4), "tanh", 0.0)

    compiled = torch.compile(f, backend=backend, fullgraph=True)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    want = torch.tanh(torch.cat([a + b, a + b]))
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    results = {}

    def inside():
        with im.use_reference_path():
            barrier.wait()
            results["inside"] = compiled(a, b)
            barrier.wait()

    def outside():
        barrier.wait()
        results["outside"] = compiled(a, b)
        barrier.wait()

    torch._dynamo.reset()
    try:
        torch.testing.assert_close(compiled(a, b), want)
        assert graphs == [True]  # traced with the fused op
        with im.use_reference_path():
            torch.testing.assert_close(compiled(a, b), want)
        assert graphs == [True, False]  # recompiled: the reference ops, no fused op
        torch.testing.assert_close(compiled(a, b), want)
        assert len(graphs) == 2  # back outside: the first graph again, no third trace
        run_threads(inside, outside)
        assert len(graphs) == 2  # each thread found the graph of its own context
        for result in results.values():
            torch.testing.assert_close(result, want)
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------------------------ the paths of the bound


def frozen_chain():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(7, 8), nn.Tanh(), nn.Linear(8, 1))
    return im.MutualInfoChain(nn.Identity(), nn.Identity(), mlp).double().requires_grad_(False)


def evaluate(mi):
    """The bound of a frozen chain on codes that need gradient (the VAE step), with the number of
    calls of its data network (once in a shared evaluation, once per call of the whole chain in
    two calls; a hook on the chain itself would make every path take two calls), whether the
    shuffled scores have a graph, and z's gradient."""
    calls = []
    handle = mi.data.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z.requires_grad_()
    try:
        out = im.paired_mutual_info(mi, x, z, im.latent_permutation(6, 1, seed=3))
    finally:
        handle.remove()
    grad, = torch.autograd.grad(out.bound, z)
    return out.bound.detach(), len(calls), out.shuffled.grad_fn is not None, grad


def test_each_path_is_the_evaluation_it_names():
    mi = frozen_chain()
    auto = evaluate(mi)
    assert auto[1:3] == (1, False)  # shared evaluation, joint graph only
    with im.use_path("fused"):
        fused = evaluate(mi)
        assert im.current_path() == "fused" and im.backend() == "compiled"
    assert fused[1:3] == (1, True)  # both halves through the fused ops
    with im.use_path("two_call"):
        two_calls = evaluate(mi)
    assert two_calls[1] == 2  # T(x, z) and T(x, z_shuffle)
    with im.use_path("reference"):
        reference = evaluate(mi)
        assert im.backend() == "reference"
    assert reference[1:3] == (1, False)
    for other in (fused, two_calls, reference):
        torch.testing.assert_close(other[0], auto[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(other[3], auto[3], rtol=1e-10, atol=1e-12)
    assert im.current_path() == "auto"


def test_nested_paths_and_unknown_names():
    with im.use_path("two_call"):
        with im.use_reference_path():
            assert im.current_path() == "reference" and view() == REFERENCE
        assert im.current_path() == "two_call" and view() == COMPILED
    assert im.current_path() == "auto"
    with pytest.raises(ValueError, match="unknown evaluation path 'fast'; known: auto, fused, two_call, reference"):
        with im.use_path("fast"):
            pass
    assert im.PATHS == ("auto", "fused", "two_call", "reference")


def test_a_path_chosen_in_one_thread_stays_there():
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    seen = {}

    def inside():
        with im.use_path("two_call"):
            barrier.wait()
            seen["inside"] = evaluate(frozen_chain())[1]
            barrier.wait()

    def outside():
        barrier.wait()
        seen["outside"] = evaluate(frozen_chain())[1]
        barrier.wait()

    run_threads(inside, outside)
    assert seen == {"inside": 2, "outside": 1}


def test_torch_compile_follows_the_two_call_path():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append("infomax_ext.paired_linear" in str(gm.graph))
        return gm.forward

    mi = frozen_chain().requires_grad_(True).float()
    perm = im.latent_permutation(6, 1, seed=3)

    def f(x, z):
        return im.paired_mutual_info(mi, x, z, perm).bound

    compiled = torch.compile(f, backend=backend, fullgraph=True)
    x, z = torch.randn(6, 4), torch.randn(6, 3)
    torch._dynamo.reset()
    try:
        want = f(x, z)
        torch.testing.assert_close(compiled(x, z), want)
        with im.use_path("two_call"):
            torch.testing.assert_close(compiled(x, z), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compiled(x, z), want)
        assert graphs == [True, False]  # recompiled for the two calls, then the first graph again
    finally:
        torch._dynamo.reset()

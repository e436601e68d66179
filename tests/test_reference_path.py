"""use_reference_path() is context-local: other threads and asyncio tasks keep the fused kernels,
nesting works, backend() tells the truth inside it, and torch.compile follows it per thread."""
import asyncio
import threading

import pytest
import torch

import infomax_ext as im
from infomax_ext import _ops

pytestmark = pytest.mark.skipif(not im.extension_available(), reason="compiled ops not loaded")

TIMEOUT = 30  # seconds: a broken synchronisation fails the test instead of hanging it


def path_taken() -> str:
    """Which path a paired_first_layer call takes here: the fused op's autograd node or the
    reference's torch.cat."""
    a = torch.randn(4, 3, requires_grad=True)
    out = _ops.paired_first_layer(a, torch.randn(4, 3), None, torch.zeros(3), torch.arange(4),
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
    gets the path of its own context, as the module-wide switch did before."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append("infomax_ext.paired_first_layer" in str(gm.graph))
        return gm.forward

    def f(a, b):
        return _ops.paired_first_layer(a, b, None, torch.zeros(3), torch.arange(4), "tanh", 0.0)

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

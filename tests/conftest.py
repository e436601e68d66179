import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Small networks: one thread is as fast, and immune to a busy machine's other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_half_spy(monkeypatch):
    """A list that gets, for each fused first-layer call (``_ops.paired_linear``), the
    precomputed data half it was given, or None."""
    from infomax_ext import _ops

    calls = []
    real = _ops.paired_linear

    def spy(*args, **kwargs):
        calls.append(args[8] if len(args) > 8 else kwargs.get("data_half"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_ops, "paired_linear", spy)
    return calls


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

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
    """A list that gets, for each fused first-layer call (``paired_linear_op.paired_linear``, or the
    one-node chain ``critic_chain_op.critic_chain``, whose first nine arguments are paired_linear's, or
    ``critic_chain_with_linear_ends``, which computes data(x) itself), the precomputed data half it
    was given, or None."""
    from infomax_ext import critic_chain_op, paired_linear_op

    calls = []

    def spy_on(module, name):
        real = getattr(module, name)

        def spy(*args, **kwargs):
            calls.append(args[8] if len(args) > 8 else kwargs.get("data_half"))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    spy_on(paired_linear_op, "paired_linear")
    spy_on(critic_chain_op, "critic_chain")
    with_ends = critic_chain_op.critic_chain_with_linear_ends

    def spy_with_ends(*args, **kwargs):  # computes data(x) itself: never given a data half
        calls.append(None)
        return with_ends(*args, **kwargs)

    monkeypatch.setattr(critic_chain_op, "critic_chain_with_linear_ends", spy_with_ends)
    return calls


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

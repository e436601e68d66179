"""infomax_ext.serialization: exact save/load round trips, clear errors, atomic writes."""
import json
import os

import pytest
import torch
from torch import nn

from infomax_ext import (
    VAE,
    BernoulliDecoder,
    InfoMaxVAE,
    JointGaussianEncoder,
    JointGaussianLogEncoder,
    MutualInfoChain,
    SplitGaussianLogDecoder,
)
from infomax_ext.serialization import (
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    SerializationError,
    atomic_torch_save,
    atomic_write_text,
    load_model,
    save_model,
    safe_torch_load,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(size=6, d=3, encoder=JointGaussianLogEncoder, decoder=BernoulliDecoder):
    return InfoMaxVAE(
        VAE(encoder.from_sizes(size, d, [5], [torch.relu]),
            decoder.from_sizes(size, d, [5, 4], [torch.tanh, nn.LeakyReLU(0.2)])),
        MutualInfoChain.from_sizes(size, d, [7], [torch.relu]),
    )


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k
    assert a.vae.config == b.vae.config and a.mi.config == b.mi.config
    assert repr(a) == repr(b)  # same architecture, module by module


@pytest.mark.parametrize("parts", [
    (JointGaussianLogEncoder, BernoulliDecoder, 6),
    (JointGaussianEncoder, SplitGaussianLogDecoder, [2, 3]),
])
def test_save_load_round_trip_is_exact(tmp_path, parts):
    encoder, decoder, size = parts
    torch.manual_seed(0)
    model = small_model(size, encoder=encoder, decoder=decoder)
    model.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE}
    loaded = InfoMaxVAE.load(tmp_path / "m")
    assert isinstance(loaded, InfoMaxVAE)
    assert_same_model(model, loaded)
    shape = (4, size) if isinstance(size, int) else (4, *size)
    x = torch.rand(shape)
    torch.manual_seed(1)
    out_a = model(x, latent=True, seed=3)
    torch.manual_seed(1)
    out_b = loaded(x, latent=True, seed=3)
    assert torch.equal(out_a.mi, out_b.mi)
    assert torch.equal(out_a.vae.z, out_b.vae.z)


def test_float64_weights_stay_float64(tmp_path):
    model = small_model().double()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    assert_same_model(model, loaded)


def test_load_leaves_the_global_rng_alone(tmp_path):
    save_model(small_model(), tmp_path)
    state = torch.get_rng_state()
    load_model(tmp_path)
    assert torch.equal(state, torch.get_rng_state())


def test_config_file_is_readable_json(tmp_path):
    save_model(small_model(), tmp_path)
    config = json.loads((tmp_path / MODEL_CONFIG_FILE).read_text())
    assert config["format"] == "infomax_ext.InfoMaxVAE"
    assert config["vae"]["encoder"]["class"] == "JointGaussianLogEncoder"
    assert config["mi"]["mlp_neurons"] == [7]


def test_model_without_config_is_refused_clearly(tmp_path):
    model = small_model()
    model.vae.encoder = nn.Sequential(nn.Linear(6, 3))  # hand-built: no config
    with pytest.raises(SerializationError, match=r"vae\.encoder carries no config.*from_sizes"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m" / MODEL_CONFIG_FILE).exists()
    with pytest.raises(SerializationError, match="expects an InfoMaxVAE"):
        save_model(nn.Linear(2, 2), tmp_path)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(SerializationError, match="model directory not found"):
        load_model(tmp_path / "nope")
    save_model(small_model(), tmp_path / "a")
    (tmp_path / "a" / MODEL_WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(SerializationError, match="corrupt or not a torch file"):
        load_model(tmp_path / "a")
    save_model(small_model(), tmp_path / "b")
    (tmp_path / "b" / MODEL_CONFIG_FILE).write_text("{broken")
    with pytest.raises(SerializationError, match="not valid JSON"):
        load_model(tmp_path / "b")
    save_model(small_model(), tmp_path / "c")
    save_model(small_model(d=4), tmp_path / "d")
    os.replace(tmp_path / "d" / MODEL_WEIGHTS_FILE, tmp_path / "c" / MODEL_WEIGHTS_FILE)
    with pytest.raises(SerializationError, match="do not fit the architecture"):
        load_model(tmp_path / "c")
    (tmp_path / "b" / MODEL_CONFIG_FILE).write_text('{"format": "something else"}')
    with pytest.raises(SerializationError, match="not an InfoMaxVAE model config"):
        load_model(tmp_path / "b")


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1}, path)
    with pytest.raises(Exception):
        atomic_torch_save({"bad": lambda: None}, path)  # cannot be pickled
    assert safe_torch_load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_interrupt_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, "old\n")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new, half written")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]

"""infomax_ext.serialization: exact save/load round trips, clear errors, atomic writes."""
import hashlib
import json
import math
import os
import re

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
    load_model,
    save_model,
)
from infomax_ext.activations import KERNEL_ACTIVATIONS
from infomax_ext.serialization import (
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    SerializationError,
    atomic_torch_save,
    atomic_write_text,
    atomic_write_with,
    safe_torch_load,
)


pytestmark = pytest.mark.usefixtures("one_thread")



def write_signed(path, config):
    """Write ``config`` to model_config.json ``path`` with its entries' digest recomputed (as a
    writer would), so that what the loader checks next is the config itself."""
    from infomax_ext.serialization import config_digest

    path.write_text(json.dumps({**config, "config_sha256": config_digest(config)}))

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
    assert {p.name for p in (tmp_path / "m").iterdir()} == {MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE,
                                                          "preprocessing.json"}
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


def test_config_and_from_config_like_its_parts(tmp_path):
    model = small_model()
    config = model.config
    assert config["vae"] == model.vae.config and config["mi"] == model.mi.config
    assert config == json.loads(json.dumps(config))
    state = torch.get_rng_state()
    again = InfoMaxVAE.from_config(config)
    assert torch.equal(state, torch.get_rng_state())  # the builders' draws leave it alone
    again.load_state_dict(model.state_dict())
    assert_same_model(model, again)
    model.save(tmp_path)
    written = json.loads((tmp_path / MODEL_CONFIG_FILE).read_text())
    digest = hashlib.sha256((tmp_path / MODEL_WEIGHTS_FILE).read_bytes()).hexdigest()
    from infomax_ext.serialization import config_digest

    recorded = {**config, "preprocessing_sha256": hashlib.sha256(
        (tmp_path / "preprocessing.json").read_bytes()).hexdigest()}
    assert written == {**recorded, "weights_sha256": digest,
                       "config_sha256": config_digest(recorded)}
    hand_built = InfoMaxVAE(model.vae, MutualInfoChain(nn.Identity(), nn.Identity(), nn.Linear(9, 1)))
    assert hand_built.config is None
    with pytest.raises(SerializationError, match="not an InfoMaxVAE model config"):
        InfoMaxVAE.from_config(model.vae.config)


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


def model_with(activation, size=6, d=3):
    """A model with ``activation`` in the encoder trunk, the decoder output and the MI chain."""
    return InfoMaxVAE(
        VAE(JointGaussianLogEncoder.from_sizes(size, d, [5], [activation]),
            BernoulliDecoder.from_sizes(size, d, [5], ["relu"], activation)),
        MutualInfoChain.from_sizes(size, d, [7, 4], ["tanh", activation], activation),
    )


@pytest.mark.parametrize("activation", [*KERNEL_ACTIVATIONS, nn.LeakyReLU(0.2), nn.ELU(0.5),
                                        nn.ELU(), torch.nn.functional.silu])
def test_every_named_activation_round_trips(tmp_path, activation):
    torch.manual_seed(0)
    model = model_with(activation).double()
    model.save(tmp_path)
    loaded = InfoMaxVAE.load(tmp_path)
    assert_same_model(model, loaded)
    x = torch.rand(5, 6, dtype=torch.float64)
    torch.manual_seed(2)
    want = model(x, latent=True, seed=4)
    torch.manual_seed(2)
    got = loaded(x, latent=True, seed=4)
    assert torch.equal(got.mi, want.mi) and torch.equal(got.vae.decoder.p, want.vae.decoder.p)


@pytest.mark.parametrize("where,build", [
    ("vae.encoder.encoder_activation[0]",
     lambda: JointGaussianLogEncoder.from_sizes(6, 3, [5], [lambda t: t * 2])),
    ("vae.decoder.output_activation",
     lambda: BernoulliDecoder.from_sizes(6, 3, [5], ["relu"], lambda t: torch.sigmoid(t))),
    ("mi.mlp_activations[1]",
     lambda: MutualInfoChain.from_sizes(6, 3, [7, 4], ["tanh", nn.Hardtanh()])),
    ("mi.output_activation",
     lambda: MutualInfoChain.from_sizes(6, 3, [7], ["tanh"], nn.Softplus(beta=2.0))),
])
def test_save_refuses_an_activation_with_no_name(tmp_path, where, build):
    model = model_with("relu")
    part = build()
    if where.startswith("mi."):
        model.mi = part
    elif ".encoder." in where:
        model.vae.encoder = part
    else:
        model.vae.decoder = part
    module = {"vae.encoder.encoder_activation[0]": r"vae\.encoder\.encoder\.1 = Activation\(<lambda>\)",
              "vae.decoder.output_activation": r"vae\.decoder\.decoder\.3 = Activation\(<lambda>\)",
              "mi.mlp_activations[1]": r"mi\.mlp\.3 = Hardtanh",
              "mi.output_activation": r"mi\.mlp\.3 = Softplus\(beta=2"}[where]
    with pytest.raises(SerializationError, match=rf"activation with no name at {re.escape(where)} \({module}"):
        model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="activation with no name"):
        save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()  # refused before anything was written


TAMPERED = [
    ({"name": "tanh", "param": 1}, "'tanh' takes no parameter"),
    ({"name": "swish", "param": 1.0}, "'swish' is not a known activation"),
    ("swish", "unknown activation 'swish'"),
    ({"name": "elu"}, "exactly the keys 'name'"),
    ({"name": "elu", "param": 1.0, "inplace": True}, "exactly the keys 'name'"),
    ({"name": ["elu"], "param": 1.0}, "exactly the keys 'name'"),
    ({"name": "elu", "param": "1.0"}, "elu parameter must be a finite number, got '1.0'"),
    ({"name": "leaky_relu", "param": True}, "leaky_relu parameter must be a finite number, got True"),
    ({"name": "elu", "param": math.nan}, "elu parameter must be a finite number, got nan"),
    (3, "must be a name or a dict with 'name' and 'param', got int 3"),
    (None, "holds an activation that has no name"),
]


@pytest.mark.parametrize("entry,message", TAMPERED)
@pytest.mark.parametrize("key", ["mi.mlp_activations.0", "mi.output_activation",
                                 "vae.encoder.encoder_activation.0",
                                 "vae.decoder.output_activation"])
def test_tampered_activation_entries_are_refused(tmp_path, key, entry, message):
    save_model(model_with(nn.ELU(0.5)), tmp_path)
    config = json.loads((tmp_path / MODEL_CONFIG_FILE).read_text())
    *parents, last = key.split(".")
    holder = config
    for part in parents:
        holder = holder[int(part)] if part.isdigit() else holder[part]
    holder[int(last) if last.isdigit() else last] = entry
    write_signed(tmp_path / MODEL_CONFIG_FILE, config)
    name = parents[-1] if last.isdigit() else last
    index = rf"\[{last}\]" if last.isdigit() else ""
    with pytest.raises(SerializationError, match=rf"config entry '{name}{index}'.*{re.escape(message)}"):
        load_model(tmp_path)


def test_tampered_activation_lists_are_refused(tmp_path):
    save_model(model_with("relu"), tmp_path)
    good = json.loads((tmp_path / MODEL_CONFIG_FILE).read_text())
    nested = json.loads(json.dumps(good))
    nested["mi"]["mlp_activations"][1] = ["relu"]
    write_signed(tmp_path / MODEL_CONFIG_FILE, nested)
    with pytest.raises(SerializationError, match=r"'mlp_activations\[1\]'.*got list \['relu'\]"):
        load_model(tmp_path)
    listed = json.loads(json.dumps(good))
    listed["mi"]["output_activation"] = ["relu"]
    write_signed(tmp_path / MODEL_CONFIG_FILE, listed)
    with pytest.raises(SerializationError, match="activation must be a module, a callable or a name"):
        load_model(tmp_path)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(SerializationError, match="model directory not found"):
        load_model(tmp_path / "nope")
    save_model(small_model(), tmp_path / "a")
    (tmp_path / "a" / MODEL_WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(SerializationError, match="model.pt does not match the SHA-256 digest"):
        load_model(tmp_path / "a")
    config = json.loads((tmp_path / "a" / MODEL_CONFIG_FILE).read_text())
    config["weights_sha256"] = hashlib.sha256(b"not a torch file").hexdigest()
    write_signed(tmp_path / "a" / MODEL_CONFIG_FILE, config)
    with pytest.raises(SerializationError, match="corrupt or not a torch file"):
        load_model(tmp_path / "a")
    save_model(small_model(), tmp_path / "b")
    (tmp_path / "b" / MODEL_CONFIG_FILE).write_text("{broken")
    with pytest.raises(SerializationError, match="not valid JSON"):
        load_model(tmp_path / "b")
    save_model(small_model(), tmp_path / "c")
    save_model(small_model(d=4), tmp_path / "d")
    os.replace(tmp_path / "d" / MODEL_WEIGHTS_FILE, tmp_path / "c" / MODEL_WEIGHTS_FILE)
    with pytest.raises(SerializationError, match="does not match the SHA-256 digest recorded"):
        load_model(tmp_path / "c")
    config = json.loads((tmp_path / "c" / MODEL_CONFIG_FILE).read_text())
    config["weights_sha256"] = json.loads((tmp_path / "d" / MODEL_CONFIG_FILE).read_text())[
        "weights_sha256"]  # the digest of the swapped-in file: now the shapes are checked
    write_signed(tmp_path / "c" / MODEL_CONFIG_FILE, config)
    with pytest.raises(SerializationError, match="do not fit the architecture"):
        load_model(tmp_path / "c")
    write_signed(tmp_path / "b" / MODEL_CONFIG_FILE, {"format": "something else"})
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


def test_a_failed_atomic_write_names_its_target_not_the_temp_file(tmp_path):
    (tmp_path / "plot.png").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(IsADirectoryError) as exc:
        atomic_write_text(tmp_path / "plot.png", "x")
    assert exc.value.filename == str(tmp_path / "plot.png") and ".tmp" not in str(exc.value)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temp file left
    (tmp_path / "file").write_text("keep")
    with pytest.raises(NotADirectoryError) as exc:  # a folder on the path is a file
        atomic_write_text(tmp_path / "file" / "x.json", "x")
    assert exc.value.filename == str(tmp_path / "file" / "x.json")
    assert exc.value.strerror == "a folder on its path is a file"
    assert (tmp_path / "file").read_text() == "keep"


def test_atomic_write_with_streams_into_the_target(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_with(path, lambda f: [f.write(bytes([k]) * 1000) for k in range(3)])
    assert path.read_bytes() == b"\x00" * 1000 + b"\x01" * 1000 + b"\x02" * 1000

    def disk_full(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as exc:
        atomic_write_with(path, disk_full)
    assert exc.value.errno == 28 and exc.value.filename == str(path)
    assert path.read_bytes()[:1000] == b"\x00" * 1000  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]

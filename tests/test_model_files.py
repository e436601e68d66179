"""A saved model directory as untrusted input: weights that alias or overlap are refused, and
preprocessing.json, weights and config form one set (a failed save or an edit is refused)."""
import errno
import hashlib
import io
import json
import re

import pytest
import torch

from infomax_ext import (
    VAE,
    BernoulliDecoder,
    InfoMaxVAE,
    JointGaussianLogEncoder,
    MutualInfoChain,
    serialization,
    train_step,
)
from infomax_ext.preprocessing import PREPROCESSING_FILE, Preprocessing
from infomax_ext.serialization import (
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    SerializationError,
    config_digest,
    load_model_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(preprocessing=None):
    torch.manual_seed(0)
    return InfoMaxVAE(VAE(JointGaussianLogEncoder.from_sizes(6, 3, [6], ["tanh"]),
                          BernoulliDecoder.from_sizes(6, 3, [6], ["tanh"])),
                      MutualInfoChain.from_sizes(6, 3, [7], ["tanh"]), preprocessing=preprocessing)


def resign(directory, **entries):
    """Rewrite model_config.json with ``entries`` changed (None: removed) and its own digest
    recomputed, as someone who ships the directory can."""
    path = directory / MODEL_CONFIG_FILE
    config = json.loads(path.read_text())
    for key, value in entries.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config.pop("config_sha256")
    path.write_text(json.dumps({**config, "config_sha256": config_digest(config)}))


def with_weights(tmp_path, name, state):
    """A copy of a saved model whose model.pt holds ``state``, its digest recorded."""
    directory = tmp_path / name
    small_model().save(directory)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (directory / MODEL_WEIGHTS_FILE).write_bytes(buffer.getvalue())
    resign(directory, weights_sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    return directory


def files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ----------------------------------------------------------------------------- aliasing weights

def test_loaded_parameters_each_own_their_memory(tmp_path):
    small_model().save(tmp_path / "m")
    model = InfoMaxVAE.load(tmp_path / "m")
    params = list(model.parameters())
    pointers = {p.untyped_storage().data_ptr() for p in params}
    assert len(pointers) == len(params)
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in params)


def test_weights_sharing_one_storage_are_refused(tmp_path):
    state = {k: v.clone() for k, v in small_model().state_dict().items()}
    state["mi.data.0.weight"] = state["vae.encoder.encoder.0.weight"]  # both (6, 6)
    directory = with_weights(tmp_path, "shared", state)
    with pytest.raises(SerializationError, match=re.escape(
            f"{directory / MODEL_WEIGHTS_FILE}: mi.data.0.weight and vae.encoder.encoder.0.weight "
            "share one storage; not a file save() writes, refusing it")):
        InfoMaxVAE.load(directory)


@pytest.mark.parametrize("name, weight, layout", [
    ("expanded", torch.zeros(1, 1).expand(6, 6), "strides (0, 0), offset 0, 4 bytes of storage for 144"),
    ("offset", torch.randn(1000)[100:136].view(6, 6),
     "strides (6, 1), offset 100, 4000 bytes of storage for 144"),
    ("prefix", torch.randn(1000)[:36].view(6, 6),
     "strides (6, 1), offset 0, 4000 bytes of storage for 144"),
    ("transposed", torch.randn(6, 6).t(), "strides (1, 6), offset 0, 144 bytes of storage for 144"),
])
def test_views_and_overlapping_weights_are_refused(tmp_path, name, weight, layout):
    state = {k: v.clone() for k, v in small_model().state_dict().items()}
    state["vae.encoder.encoder.0.weight"] = weight
    directory = with_weights(tmp_path, name, state)
    with pytest.raises(SerializationError, match=re.escape(
            f"{directory / MODEL_WEIGHTS_FILE}: vae.encoder.encoder.0.weight does not own exactly "
            f"its memory ({layout}): a view, an expanded or an overlapping tensor; not a file "
            "save() writes, refusing it")):
        InfoMaxVAE.load(directory)


def test_load_model_weights_checks_a_state_it_is_given(tmp_path):
    model = small_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mi.data.0.weight"] = state["vae.encoder.encoder.0.weight"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SerializationError, match="share one storage"):
        load_model_weights(model, tmp_path, state=state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_a_step_of_the_loaded_vae_leaves_the_critic_alone(tmp_path):
    small_model().save(tmp_path / "m")
    model = InfoMaxVAE.load(tmp_path / "m")
    critic = {k: v.clone() for k, v in model.mi.state_dict().items()}
    opt = {"vae": torch.optim.SGD(model.vae.parameters(), 0.1),
           "mi": torch.optim.SGD(model.mi.parameters(), 0.0)}  # the critic's own step: none
    train_step(model, (torch.rand(8, 6) > 0.5).float(), opt)
    assert all(torch.equal(critic[k], v) for k, v in model.mi.state_dict().items())


# ----------------------------------------------------------------------------- preprocessing

def test_save_records_the_digest_of_preprocessing(tmp_path):
    small_model(Preprocessing("unit", 1.0, 4.0, (6,))).save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / MODEL_CONFIG_FILE).read_text())
    assert config["preprocessing_sha256"] == hashlib.sha256(
        (tmp_path / "m" / PREPROCESSING_FILE).read_bytes()).hexdigest()
    assert InfoMaxVAE.load(tmp_path / "m").preprocessing == Preprocessing("unit", 1.0, 4.0, (6,))


def test_a_save_that_fails_at_the_weights_leaves_a_set_load_refuses(tmp_path, monkeypatch):
    directory = tmp_path / "m"
    small_model(Preprocessing("standardize", 100.0, 5.0, (6,))).save(directory)
    old = files(directory)

    def disk_full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(serialization, "atomic_torch_save", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        small_model(Preprocessing("unit", -3.0, 40.0, (6,))).save(directory)
    now = files(directory)
    assert {k: v for k, v in now.items() if k != PREPROCESSING_FILE} == \
        {k: v for k, v in old.items() if k != PREPROCESSING_FILE}  # weights and config as they were
    with pytest.raises(SerializationError, match=re.escape(
            f"preprocessing {directory / PREPROCESSING_FILE} does not match the SHA-256 digest "
            f"recorded in {directory / MODEL_CONFIG_FILE}: it was edited, or a save was "
            "interrupted before it wrote its weights and config; refusing the set (save the "
            "model again)")):
        InfoMaxVAE.load(directory)


def test_an_edited_preprocessing_file_is_refused(tmp_path):
    directory = tmp_path / "m"
    small_model(Preprocessing("unit", 1.0, 4.0, (6,))).save(directory)
    path = directory / PREPROCESSING_FILE
    edited = {**json.loads(path.read_text()), "scale": 1e6}
    path.write_text(json.dumps(edited))
    with pytest.raises(SerializationError, match="does not match the SHA-256 digest recorded in"):
        InfoMaxVAE.load(directory)
    resign(directory, preprocessing_sha256="not a digest")
    with pytest.raises(SerializationError, match=re.escape(
            f"{directory / MODEL_CONFIG_FILE}: preprocessing_sha256 is not a SHA-256 digest")):
        InfoMaxVAE.load(directory)


def test_a_directory_saved_before_the_digest_still_loads(tmp_path):
    directory = tmp_path / "m"
    small_model(Preprocessing("unit", 1.0, 4.0, (6,))).save(directory)
    resign(directory, preprocessing_sha256=None)  # as written before the digest was recorded
    path = directory / PREPROCESSING_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "scale": 8.0}))
    assert InfoMaxVAE.load(directory).preprocessing == Preprocessing("unit", 1.0, 8.0, (6,))

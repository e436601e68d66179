"""The preprocessing travels with the model: saved in model/ and the checkpoint, restored by
InfoMaxVAE.load, applied to raw data exactly as training applied it."""
import json

import numpy as np
import pytest
import torch

from infomax_ext import InfoMaxVAE, Preprocessing
from infomax_ext.checkpoint import write_checkpoint
from infomax_ext.cli import main
from infomax_ext.data import DataError, load_file
from infomax_ext.preprocessing import PREPROCESSING_FILE
from infomax_ext.serialization import SerializationError
from infomax_ext.trainer import TrainConfig, Trainer, build_model
from tiny_runs import as_saved_before_the_file_existed

pytestmark = pytest.mark.usefixtures("one_thread")


def raw_data(n=40, f=5, seed=0):
    g = np.random.default_rng(seed)
    return g.normal(size=(n, f)) * 30.0 + 500.0  # units far from the model's


@pytest.mark.parametrize("kind", ["unit", "standardize"])
def test_shift_and_scale_are_those_of_the_data(tmp_path, kind):
    raw = raw_data()
    np.save(tmp_path / "x.npy", raw)
    x64 = raw.astype(np.float32).astype(np.float64)  # the samples are float32 first
    want = (x64.min(), x64.max() - x64.min()) if kind == "unit" else (x64.mean(), x64.std())
    for mmap in (False, True):
        data = load_file(tmp_path / "x.npy", None, "gaussian", kind, mmap=mmap)
        got_kind, shift, scale = data.normalization
        assert got_kind == kind
        # the streaming pass of a mapped file sums in chunks: equal up to float64 rounding
        assert shift == pytest.approx(want[0], rel=1e-12) and scale == pytest.approx(want[1], rel=1e-12)


@pytest.mark.filterwarnings("ignore::infomax_ext.data.DataWarning")  # kind none: raw is large
@pytest.mark.parametrize("kind", ["none", "unit", "standardize"])
@pytest.mark.parametrize("mmap", [False, True])
def test_apply_gives_exactly_the_training_tensor(tmp_path, kind, mmap):
    raw = raw_data()
    np.save(tmp_path / "x.npy", raw)
    data = load_file(tmp_path / "x.npy", None, "gaussian", kind, mmap=mmap)
    prep = Preprocessing.of_dataset(data)
    trained_on = data.x if isinstance(data.x, torch.Tensor) else data.x.to("cpu")
    assert torch.equal(prep.apply(raw), trained_on)
    assert torch.equal(prep(torch.from_numpy(raw)), trained_on)
    assert prep.sample_shape == (5,) and prep.fingerprint == data.fingerprint()
    # back to the data's units, up to float32 rounding of the model-space values
    back = prep.invert(trained_on.double())
    tol = 4 * np.finfo(np.float32).eps * (np.abs(raw) + abs(prep.shift))
    assert np.all(np.abs(back.numpy() - raw) <= tol)


def test_apply_checks_the_shape_and_constant_data_becomes_zero():
    prep = Preprocessing("unit", 3.0, 0.0, (2,))
    assert torch.equal(prep.apply(np.full((4, 2), 3.0)), torch.zeros(4, 2))
    with pytest.raises(DataError, match=r"samples of shape \(3,\), but the model was trained on "
                                        r"samples of shape \(2,\)"):
        prep.apply(np.zeros((4, 3)), "new.csv")
    with pytest.raises(DataError, match="must be numeric"):
        prep.apply(np.array([["a", "b"]]))


@pytest.mark.parametrize("entries, message", [
    ({"kind": "zscore"}, "kind must be one of"),
    ({"kind": "unit", "shift": float("nan")}, "shift must be a finite number"),
    ({"kind": "unit", "scale": -1.0}, "scale must be >= 0"),
    ({"kind": "none", "shift": 2.0}, "kind 'none' has shift 0 and scale 1"),
    ({"sample_shape": [0]}, "sample_shape must be positive integers"),
    ({"fingerprint": 7}, "fingerprint must be a string"),
    ({"mean": 1.0}, "unknown preprocessing entries"),
])
def test_from_dict_names_the_bad_entry(entries, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(entries)


def small_model(shape=(5,)):
    torch.manual_seed(0)
    return build_model(TrainConfig(latent_dim=2, encoder_neurons=[8], decoder_neurons=[8],
                                   mi_neurons=[8], likelihood="gaussian"), shape)


def test_save_and_load_keep_the_preprocessing(tmp_path):
    model = small_model()
    prep = Preprocessing("standardize", 512.25, 31.5, (5,), None, "ab" * 32)
    model.preprocessing = prep
    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / PREPROCESSING_FILE).read_text())
    assert saved == {"kind": "standardize", "shift": 512.25, "scale": 31.5, "sample_shape": [5],
                     "image_shape": None, "fingerprint": "ab" * 32}
    loaded = InfoMaxVAE.load(tmp_path / "m")
    assert loaded.preprocessing == prep
    raw = raw_data()
    assert torch.equal(loaded.preprocessing.apply(raw),
                       torch.from_numpy(((raw.astype(np.float32).astype(np.float64) - 512.25)
                                         / 31.5).astype(np.float32)))


def test_a_model_dir_without_the_file_loads_with_the_identity(tmp_path):
    model = small_model()
    model.save(tmp_path / "m")
    (tmp_path / "m" / PREPROCESSING_FILE).unlink()
    with pytest.raises(SerializationError, match=r"preprocessing .* is missing, but .* records "
                                                 r"its digest"):
        InfoMaxVAE.load(tmp_path / "m")  # deleted from a directory saved with it: refused
    as_saved_before_the_file_existed(tmp_path / "m")
    loaded = InfoMaxVAE.load(tmp_path / "m")
    assert loaded.preprocessing == Preprocessing() and loaded.preprocessing.is_identity
    x = torch.randn(3, 5)
    assert loaded.preprocessing.apply(x) is not x and torch.equal(loaded.preprocessing.apply(x), x)


def test_a_bad_file_is_a_serialization_error(tmp_path):
    small_model().save(tmp_path / "m")
    path = tmp_path / "m" / PREPROCESSING_FILE
    path.write_text('{"kind": "unit", "shift": 1, "scale": "x"}')
    with pytest.raises(SerializationError, match=r"preprocessing.json: preprocessing scale must"):
        InfoMaxVAE.load(tmp_path / "m")
    path.write_text("{not json")
    with pytest.raises(SerializationError, match="is not valid JSON"):
        InfoMaxVAE.load(tmp_path / "m")


def test_the_checkpoint_holds_the_preprocessing(tmp_path):
    config = TrainConfig(latent_dim=2, encoder_neurons=[8], decoder_neurons=[8], mi_neurons=[8],
                         likelihood="gaussian", epochs=1, batch_size=8)
    x = torch.randn(16, 5)
    trainer = Trainer.create(config, x, run_dir=tmp_path, progress=False)
    prep = Preprocessing("unit", -2.5, 7.0, (5,), None, "cd" * 32)
    trainer.model.preprocessing = prep
    trainer.fit()
    again = Trainer.from_checkpoint(tmp_path / "checkpoint.pt", x, progress=False)
    assert again.model.preprocessing == prep
    # a checkpoint written without the entry restores the identity
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["preprocessing"]
    write_checkpoint(state, tmp_path / "old.pt")  # with its digest file, as a trainer writes
    assert Trainer.from_checkpoint(tmp_path / "old.pt", x, progress=False).model.preprocessing \
        == Preprocessing()


def test_train_saves_what_new_data_needs(tmp_path, capsys):
    raw = raw_data(n=48)
    np.save(tmp_path / "x.npy", raw)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "x.npy"), "--likelihood", "gaussian",
                 "--normalize", "standardize", "--out", str(out), "--epochs", "1",
                 "--latent-dim", "2", "--encoder-neurons", "8", "--decoder-neurons", "8",
                 "--mi-neurons", "8", "--eval-mi-steps", "5", "--batch-size", "16", "--quiet",
                 "--no-plots"]) == 0
    model = InfoMaxVAE.load(out / "model")
    prep = model.preprocessing
    x64 = raw.astype(np.float32).astype(np.float64)
    assert prep.kind == "standardize" and prep.sample_shape == (5,)
    assert prep.shift == pytest.approx(x64.mean(), rel=1e-12)
    assert prep.scale == pytest.approx(x64.std(), rel=1e-12)
    config = json.loads((out / "config.json").read_text())
    assert prep.fingerprint == config["data"]["fingerprint"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert Preprocessing.from_dict(state["preprocessing"]) == prep
    # the raw file through the model's preprocessing is the tensor training used
    trained_on = load_file(tmp_path / "x.npy", None, "gaussian", "standardize").x
    assert torch.equal(prep.apply(raw), trained_on)


@pytest.mark.parametrize("bad, count", [(float("nan"), 2), (float("inf"), 2), (1e39, 2)])
def test_apply_refuses_values_that_are_not_finite_in_float32(bad, count):
    prep = Preprocessing("standardize", 1000.0, 300.0, (3,))
    raw = np.array([[1000.0, bad, 1300.0], [bad, 700.0, 1000.0]])  # 1e39 overflows float32
    with pytest.raises(DataError, match=rf"new.npy: {count} of 6 values are NaN, inf or beyond "
                                        r"float32's range"):
        prep.apply(raw, "new.npy")
    assert torch.equal(prep.apply(np.array([[1000.0, 1300.0, 700.0]])),
                       torch.tensor([[0.0, 1.0, -1.0]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_invert_of_16_bit_values_is_float32_in_the_data_units(dtype):
    prep = Preprocessing("standardize", 1000.0, 300.0, (2,))
    x = torch.tensor([[100.0, -2.5]], dtype=dtype)  # 100 * 300 + 1000 = 31000, -2.5 -> 250
    got = prep.invert(x)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([[31000.0, 250.0]]))
    assert torch.isfinite(prep.invert(torch.full((1, 2), 300.0, dtype=dtype))).all()  # 91000
    assert prep.invert(x.float()).dtype == torch.float32 and \
        prep.invert(x.double()).dtype == torch.float64

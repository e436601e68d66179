"""What the commands for a trained model read besides the data: a bare model's input size (a
model saved from Python records no sample shape), the run's config.json (checked as ``train
--resume`` checks it), and ``sample --n`` against the memory it needs."""
import json
import shutil

import numpy as np
import pytest
import torch

import infomax_ext as im
from infomax_ext import memory
from infomax_ext.cli import main
from infomax_ext.cli import sample as sample_command
from infomax_ext.cli.model_io import TrainedModel, check_model_input
from infomax_ext.data import ArrayDataset, DataError
from infomax_ext.plots import decoder_mean
from tiny_runs import TINY_RUN, error_line, trained_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run directory and its data file (tiny_runs.trained_run)."""
    return trained_run(tmp_path_factory.mktemp("model_inputs"))


@pytest.fixture
def bare_model(tmp_path):
    """A model saved from Python (getting-started): preprocessing.json has no sample shape."""
    enc = im.JointGaussianLogEncoder.from_sizes(4, 2, [8], ["relu"])
    dec = im.BernoulliDecoder.from_sizes(4, 2, [8], ["relu"])
    mi = im.MutualInfoChain.from_sizes(4, 2, [8], ["relu"])
    im.InfoMaxVAE(im.VAE(enc, dec), mi).save(tmp_path / "pymodel")
    assert json.loads((tmp_path / "pymodel" / "preprocessing.json").read_text())[
        "sample_shape"] is None
    return tmp_path / "pymodel"


@pytest.mark.parametrize("command", ["encode", "reconstruct", "evaluate"])
def test_a_bare_model_refuses_samples_of_another_shape(bare_model, tmp_path, capsys, command):
    data = tmp_path / "x5_4.npy"
    np.save(data, np.random.default_rng(0).random((40, 5, 4)).astype(np.float32))
    out = [] if command == "evaluate" else ["--out", str(tmp_path / "out.npy")]
    assert error_line([command, str(bare_model), "--data", str(data), *out], capsys) == (
        f"infomax-ext {command}: error: {data}: samples of shape (5, 4) do not fit the model's "
        f"input: its encoder takes samples of shape (4,) (size_input in "
        f"{bare_model / 'model_config.json'})")
    assert not (tmp_path / "out.npy").exists()
    np.save(data, np.random.default_rng(0).random((40, 4)).astype(np.float32))  # the right shape
    assert main(["encode", str(bare_model), "--data", str(data), "--out",
                 str(tmp_path / "codes.npy")]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (40, 2)


def test_the_probe_wants_one_code_per_sample(bare_model):
    """An encoder whose config records no input size: the probe of one sample decides."""
    model = im.InfoMaxVAE.load(bare_model).eval()
    model.vae.encoder.config = {}  # no size_input, no n_latent: as a custom encoder
    trained = TrainedModel(model, bare_model, None, None)
    x = torch.rand(40, 5, 4)
    with pytest.raises(DataError) as exc:
        check_model_input(ArrayDataset(x, source="x.npy"), trained)
    assert str(exc.value) == ("x.npy: samples of shape (5, 4) do not fit the model's input: its "
                              "encoder maps one of them to codes of shape (1, 5, 2), not (1, 2)")
    check_model_input(ArrayDataset(torch.rand(40, 4), source="x.npy"), trained)  # fits


# ----------------------------------------------------------------------------- config.json

@pytest.mark.parametrize("field, value, message", [
    ("eval_mi_steps", "5", "train.eval_mi_steps must be a positive integer, got '5'"),
    ("eval_mi_steps", 0, "train.eval_mi_steps must be a positive integer, got 0"),
    ("val_fraction", None, "train.val_fraction None is not a valid value (an edited file?)"),
    ("mi_neurons", [0], "train.mi_neurons must be a list of positive integers, got [0]"),
    ("seed", -3, "train.seed must be an integer in [0, 2**63), got -3"),
    ("bound", ["nwj"], "train.bound ['nwj'] is not a valid value (an edited file?)"),
])
def test_evaluate_checks_the_runs_config_as_resume_does(run, tmp_path, capsys, field, value,
                                                        message):
    run_dir, data = run
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    path = edited / "config.json"
    config = json.loads(path.read_text())
    config["train"][field] = value
    path.write_text(json.dumps(config))
    assert error_line(["evaluate", str(edited), "--data", str(data), "--out",
                       str(tmp_path / "ev")], capsys) == (
        f"infomax-ext evaluate: error: {path}: {message}")
    assert not (tmp_path / "ev").exists()
    # train --resume: the same check, the same words
    assert error_line(["train", "--resume", "--out", str(edited), *TINY_RUN], capsys) == (
        f"infomax-ext train: error: {path}: {message}")


def test_evaluate_of_a_run_without_training_options_is_refused(run, tmp_path, capsys):
    run_dir, data = run
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    config = json.loads((edited / "config.json").read_text())
    del config["train"]
    (edited / "config.json").write_text(json.dumps(config))
    assert error_line(["evaluate", str(edited), "--data", str(data)], capsys) == (
        f"infomax-ext evaluate: error: {edited / 'config.json'}: entry train is not a JSON "
        "object of training options (an edited file?)")


# ----------------------------------------------------------------------------- sample --n

def test_sample_decodes_in_batches_the_codes_of_one_draw(run, tmp_path):
    run_dir, _ = run
    out = tmp_path / "s.npy"
    n = 5000  # more than one batch (2048)
    assert main(["sample", str(run_dir), "--n", str(n), "--seed", "3", "--out", str(out),
                 "--no-plots"]) == 0
    model = im.InfoMaxVAE.load(run_dir / "model").eval()
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = decoder_mean(model.vae, z)
    got = np.load(out)
    assert got.shape == (n, 4) and got.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(got), want)


def test_sample_n_beyond_memory_is_refused_naming_it(run, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    monkeypatch.setattr(memory, "machine_memory", lambda device="cpu": 2 ** 20)  # 1 MiB
    out = tmp_path / "s.npy"
    # 100000 samples of 4 float32 values and their codes of 2: 2.3 MiB
    assert error_line(["sample", str(run_dir), "--n", "100000", "--out", str(out), "--no-plots"],
                      capsys) == (
        "infomax-ext sample: error: --n 100000: writing 100000 samples of shape (4,) needs 2.3 "
        "MiB, more than the 1.0 MiB of memory of this machine; choose a smaller --n")
    assert not out.exists()


@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 3200000000 bytes. Error code 12 (Cannot "
                 "allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    MemoryError(),
])
def test_an_allocator_failure_is_one_line(run, tmp_path, capsys, monkeypatch, exc):
    run_dir, _ = run

    failure = [exc]

    def fail(*args, **kwargs):
        raise failure[0]

    monkeypatch.setattr(sample_command, "prior_samples", fail)
    first = str(exc) or "no detail"
    assert error_line(["sample", str(run_dir), "--n", "10", "--out", str(tmp_path / "s.npy"),
                       "--no-plots"], capsys) == (
        f"infomax-ext sample: error: out of memory ({first}); choose a smaller --n")
    failure[0] = RuntimeError("another bug")
    with pytest.raises(RuntimeError, match="another bug"):  # not a memory problem: not hidden
        main(["sample", str(run_dir), "--out", str(tmp_path / "s.npy"), "--no-plots"])

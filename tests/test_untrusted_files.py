"""Files are untrusted input: crafted checkpoints, flipped bits, odd paths, impossible sizes.

Each crafted file is "re-signed" (its digest recomputed, as an attacker would) so that the checks
behind the digest are what refuses it.
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from infomax_ext import InfoMaxVAE, memory
from infomax_ext.checkpoint import digest_path, read_checkpoint, write_checkpoint
from infomax_ext.cli import main
from infomax_ext.serialization import SerializationError
from infomax_ext.trainer import TrainConfig, Trainer
from tiny_runs import TINY_RUN, rewrite_checkpoint, save_data, snapshot, train, trained_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run after one epoch (its directory is copied by each test that changes it)."""
    return trained_run(tmp_path_factory.mktemp("untrusted"))[0]


@pytest.fixture
def copy_of(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def resume(out, capsys, *extra) -> tuple[int, str]:
    code = main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet",
                 "--no-plots", *extra])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- crafted state

def test_an_adam_moment_of_another_shape_is_refused_in_a_subprocess(copy_of):
    # It used to corrupt the heap in the fused Adam kernel (SIGSEGV / SIGABRT): a child process.
    path = copy_of / "checkpoint.pt"
    rewrite_checkpoint(path, lambda s: s["optimizers"]["vae"]["state"][0].update(
        exp_avg=torch.zeros(1000)))
    before = snapshot(copy_of)
    child = subprocess.run([sys.executable, "-m", "infomax_ext", "train", "--resume", "--out",
                            str(copy_of), "--epochs", "2", "--quiet", "--no-plots"],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 1, child.stderr
    assert one_line(child.stderr) == (
        f"infomax-ext train: error: checkpoint {path}: optimizers.vae.state[0].exp_avg has shape "
        "(1000,), the parameter has (8, 4)")
    assert snapshot(copy_of) == before


def _set(path, value):
    def change(state):
        holder = state
        for key in path[:-1]:
            holder = holder[key]
        if value is KeyError:
            del holder[path[-1]]
        else:
            holder[path[-1]] = value(holder[path[-1]]) if callable(value) else value
    return change


CRAFTED = [
    (("optimizers", "mi", "state", 1, "exp_avg_sq"), lambda t: t.double(),
     "optimizers.mi.state[1].exp_avg_sq has dtype torch.float64, expected torch.float32"),
    (("optimizers", "vae", "state", 2, "exp_avg"), KeyError,
     "optimizers.vae.state[2] must hold ['exp_avg', 'exp_avg_sq', 'step'], found ['exp_avg_sq', 'step']"),
    (("optimizers", "vae", "state", 2, "step"), 3, "optimizers.vae.state[2].step must be a tensor, found 3"),
    (("optimizers", "vae", "state", 2, "step"), lambda t: torch.tensor(0.0),
     "step must be a whole number >= 1"),
    (("optimizers", "vae", "state", 0, "exp_avg_sq"), lambda t: -t - 1, "exp_avg_sq holds negative values"),
    (("optimizers", "vae", "state", 0, "exp_avg"), lambda t: t.t().contiguous().t(),
     "optimizers.vae.state[0].exp_avg is not a dense contiguous tensor"),
    (("optimizers", "vae", "state", 99), {}, "optimizers.vae.state has entries [99] for no parameter"),
    (("optimizers", "mi", "param_groups", 0, "lr"), 10.0,
     "optimizers.mi lr is 10.0, the config's Adam has 0.0005"),
    (("optimizers", "mi", "param_groups", 0, "betas"), (0.0, 0.999), "optimizers.mi betas is (0.0, 0.999)"),
    (("optimizers", "mi"), "adam", "optimizers.mi must be a dict, found 'adam'"),
    (("epoch",), -1, "epoch must be an integer >= 0, found -1"),
    (("epoch",), "1", "epoch must be an integer >= 0, found '1'"),
    (("epoch",), 5, "epoch 5 is beyond the config's budget of 1 epochs"),
    (("n_train",), 1.5, "n_train must be an integer >= 2, found 1.5"),
    (("history",), lambda h: h + h, "history must be a list of 1 records (one per epoch), found 2 records"),
    (("history", 0, "vae_loss"), float("nan"), "history[0].vae_loss must be a finite number, found nan"),
    (("history", 0, "epoch"), 7, "history[0].epoch must be 1, found 7"),
    (("rng", "torch"), lambda t: t[:100], "rng.torch is not a valid CPU random generator state"),
    (("rng", "torch"), lambda t: t.float(), "rng.torch has dtype torch.float32, expected torch.uint8"),
    (("rng", "cuda"), torch.zeros(3, 3, dtype=torch.uint8), "rng.cuda is not a CUDA random generator state"),
    (("rank_rng",), [], "rank_rng must be a list of 1 random states, found []"),
    (("model", "mi.mlp.0.weight"), lambda t: t.double(),
     "model holds weights of several dtypes ['torch.float32', 'torch.float64']"),
    (("model", "mi.mlp.0.weight"), lambda t: t.long(),
     "model.mi.mlp.0.weight has dtype torch.int64, not a floating-point dtype"),
    (("model", "vae.encoder.mu.0.bias"), KeyError, "model: missing weights ['vae.encoder.mu.0.bias']"),
    (("model", "vae.decoder.decoder.0.weight"), lambda t: t.fill_(float("inf")),
     "model.vae.decoder.decoder.0.weight holds NaN or infinite values: not a usable training state"),
    (("config", "alpha"), "10", "config: alpha must be a non-negative finite number, got"),
    (("config", "reuse_forward"), "yes", "config: reuse_forward must be True or False, got 'yes'"),
    (("model_config", "mi", "mlp_neurons"), [10 ** 12],
     "parameters: the model needs"),
    (("model_config", "mi", "mlp_neurons"), [8] * 20_000, "more than 10000 list entries"),
    (("surprise",), 1, "unknown entries ['surprise']"),
    (("world_size",), KeyError, "missing entries ['world_size']"),
    (("data_fingerprint",), "abc", "data_fingerprint must be a SHA-256 digest, found 'abc'"),
]


@pytest.mark.parametrize("path, value, message", CRAFTED, ids=[m[:40] for *_, m in CRAFTED])
def test_every_crafted_entry_is_refused_naming_it(copy_of, path, value, message):
    checkpoint = copy_of / "checkpoint.pt"
    rewrite_checkpoint(checkpoint, _set(path, value))
    with pytest.raises(SerializationError) as exc:
        read_checkpoint(checkpoint, TrainConfig)
    assert str(exc.value).startswith(f"checkpoint {checkpoint}: ")
    assert message in str(exc.value)


def test_an_emptied_optimizer_state_and_nan_weights_stop_the_resume(copy_of, capsys):
    checkpoint = copy_of / "checkpoint.pt"
    original = checkpoint.read_bytes()
    rewrite_checkpoint(checkpoint, lambda s: s["optimizers"]["mi"]["state"].clear())
    before = snapshot(copy_of)
    code, err = resume(copy_of, capsys)
    assert code == 1 and one_line(err).endswith(
        "optimizers.mi.state holds Adam moments for 0 of the 8 parameters after 1 epochs (an "
        "emptied or partial optimizer state)")
    checkpoint.write_bytes(original)
    rewrite_checkpoint(checkpoint, lambda s: s["model"]["vae.encoder.mu.0.weight"].fill_(float("nan")))
    code, err = resume(copy_of, capsys)
    assert code == 1 and "vae.encoder.mu.0.weight holds NaN or infinite values: not a usable " \
        "training state" in one_line(err)
    assert "last good state" not in err
    assert snapshot(copy_of) == {**before, "checkpoint.pt": snapshot(copy_of)["checkpoint.pt"],
                                 "checkpoint.sha256.json": snapshot(copy_of)["checkpoint.sha256.json"]}


# ----------------------------------------------------------------------------- digests

def test_one_flipped_bit_in_a_tensor_file_is_refused_naming_it(copy_of, capsys):
    weights = copy_of / "model" / "model.pt"
    data = bytearray(weights.read_bytes())
    state = torch.load(weights, weights_only=True)
    raw = state["vae.encoder.encoder.0.weight"].numpy().tobytes()
    at = bytes(data).index(raw) + 5  # inside the first weight's bytes: a valid, changed file
    data[at] ^= 0x10
    weights.write_bytes(bytes(data))
    changed = torch.load(weights, weights_only=True)["vae.encoder.encoder.0.weight"]
    assert not torch.equal(changed, state["vae.encoder.encoder.0.weight"])  # torch loads it
    with pytest.raises(SerializationError, match=f"model weights {weights} does not match the "
                                                 "SHA-256 digest recorded in .*model_config.json"):
        InfoMaxVAE.load(copy_of / "model")

    checkpoint = copy_of / "checkpoint.pt"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    code, err = resume(copy_of, capsys)
    assert code == 1 and one_line(err) == (
        f"infomax-ext train: error: checkpoint {checkpoint} does not match the SHA-256 digest "
        f"recorded in {digest_path(checkpoint)}: it was changed, damaged or replaced after it "
        "was written; refusing it")


def test_an_edited_model_config_or_a_missing_digest_is_refused(copy_of):
    path = copy_of / "model" / "model_config.json"
    good = path.read_text()
    config = json.loads(good)
    config["vae"]["decoder"]["class"] = "SimpleGaussianDecoder"  # same shapes, another model
    path.write_text(json.dumps(config))
    with pytest.raises(SerializationError, match="was changed after it was written"):
        InfoMaxVAE.load(copy_of / "model")
    del config["weights_sha256"]
    path.write_text(json.dumps(config))
    resign_model_config_only(path)
    with pytest.raises(SerializationError, match="records no valid digest of model.pt"):
        InfoMaxVAE.load(copy_of / "model")
    path.write_text(good)
    assert isinstance(InfoMaxVAE.load(copy_of / "model"), InfoMaxVAE)


def resign_model_config_only(path):
    from infomax_ext.serialization import config_digest

    config = json.loads(path.read_text())
    config["config_sha256"] = config_digest(config)
    path.write_text(json.dumps(config))


def test_the_checkpoint_digest_survives_a_crash_between_its_two_writes(tmp_path, monkeypatch):
    from infomax_ext import checkpoint as checkpoint_module

    path = tmp_path / "checkpoint.pt"
    write_checkpoint({"a": torch.ones(3)}, path)
    first = path.read_bytes()
    record = json.loads(digest_path(path).read_text())
    assert record["sha256"] == hashlib.sha256(first).hexdigest() and record["file"] == path.name

    def crash(target, data):
        raise KeyboardInterrupt  # killed after the companion's first write

    monkeypatch.setattr(checkpoint_module, "atomic_write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == first
    record = json.loads(digest_path(path).read_text())
    assert hashlib.sha256(first).hexdigest() in record["previous_sha256"]  # the old one verifies
    monkeypatch.undo()
    write_checkpoint({"a": torch.full((3,), 2.0)}, path)  # the next save completes
    record = json.loads(digest_path(path).read_text())
    assert set(record) == {"format", "file", "sha256"}
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- paths

def test_paths_that_are_not_regular_files_are_named(copy_of, capsys, tmp_path):
    checkpoint = copy_of / "checkpoint.pt"
    checkpoint.unlink()
    os.symlink(checkpoint.name, checkpoint)  # a symlink to itself: a loop
    code, err = resume(copy_of, capsys)
    assert code == 1 and one_line(err) == (f"infomax-ext train: error: checkpoint {checkpoint} "
                                           "is a symlink loop (it never reaches a file)")
    assert "no checkpoint" not in err
    checkpoint.unlink()
    checkpoint.mkdir()
    code, err = resume(copy_of, capsys)
    assert code == 1 and one_line(err).endswith(f"{checkpoint} is a directory, not a file")
    checkpoint.rmdir()
    os.symlink(tmp_path / "gone.pt", checkpoint)
    code, err = resume(copy_of, capsys)
    assert code == 1 and one_line(err).endswith(
        f"checkpoint {checkpoint} is a symlink to {tmp_path / 'gone.pt'}, which does not exist")
    checkpoint.unlink()
    os.mkfifo(checkpoint)  # reading it would block: named without opening it
    code, err = resume(copy_of, capsys)
    assert code == 1 and one_line(err).endswith("is not a regular file (a pipe, socket or device)")

    model = copy_of / "model"
    (model / "model.pt").unlink()
    (model / "model.pt").mkdir()
    with pytest.raises(SerializationError, match=r"model\.pt is a directory, not a file"):
        InfoMaxVAE.load(model)
    with pytest.raises(SerializationError, match="is a file, not a directory"):
        InfoMaxVAE.load(model / "model_config.json")
    (copy_of / "config.json").unlink()
    (copy_of / "config.json").mkdir()
    code, err = resume(copy_of, capsys)
    assert code == 1 and one_line(err).endswith(f"{copy_of / 'config.json'} is a directory, not a file")

    loop = tmp_path / "loop.npy"
    os.symlink(loop.name, loop)
    for data, what in [(loop, "is a symlink loop"), (tmp_path, "is a directory, not a file")]:
        code = main(["train", "--data", str(data), "--out", str(tmp_path / "fresh"), *TINY_RUN])
        assert code == 1 and one_line(capsys.readouterr().err).endswith(
            f"error: data file {data} {what}" + (" (it never reaches a file)" if "loop" in what
                                                 else ""))


# ----------------------------------------------------------------------------- sizes

def test_sizes_beyond_the_machines_memory_are_refused_naming_the_option(tmp_path, capsys,
                                                                        monkeypatch):
    data = save_data(tmp_path / "x.npy")
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(out), *TINY_RUN,
                 "--mi-neurons", "100000,100000"])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err).startswith(
        "infomax-ext train: error: --mi-neurons 100000,100000: training this model (about "
        "10,000,")
    assert "more than the" in err and "of memory of this machine; choose smaller sizes" in err
    assert not os.path.lexists(out / "config.json")  # nothing blocks the next fresh run

    monkeypatch.setattr(memory, "machine_memory", lambda device="cpu": 2 ** 30)  # a 1 GiB machine
    code = main(["train", "--data", str(data), "--out", str(out), *TINY_RUN, "--latent-dim",
                 "100000"])
    err = capsys.readouterr().err
    assert code == 1 and "error: --latent-dim 100000: training this model" in one_line(err)
    assert "more than the 1.0 GiB of memory of this machine" in err
    assert not os.path.lexists(out / "config.json")
    monkeypatch.undo()
    assert train(out, data) == 0  # the same directory takes a fresh run


def test_a_model_config_beyond_memory_or_its_weights_file_is_refused_before_allocating(
        copy_of, monkeypatch):
    model = copy_of / "model"
    path = model / "model_config.json"
    config = json.loads(path.read_text())
    for part in (config["vae"]["encoder"], config["mi"]):  # the data's width, everywhere
        part["size_input"] = 200000
    config["vae"]["decoder"]["size_output"] = 200000
    path.write_text(json.dumps(config))
    resign_model_config_only(path)
    monkeypatch.setattr(memory, "machine_memory", lambda device="cpu": 2 ** 50)  # it would fit
    allocated = []
    real_init = torch.nn.Linear.reset_parameters
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters",
                        lambda self: (allocated.append(self), real_init(self)))
    with pytest.raises(SerializationError, match=r"the weights in .*model.pt do not fit the "
                       r"architecture in model_config.json: vae.encoder.encoder.0.weight has "
                       r"shape \(8, 4\), the architecture needs \(8, 200000\)"):
        InfoMaxVAE.load(model)
    assert allocated and all(p.is_meta for layer in allocated for p in layer.parameters())
    monkeypatch.setattr(memory, "machine_memory", lambda device="cpu": 2 ** 22)  # 4 MiB
    allocated.clear()
    with pytest.raises(SerializationError, match=r"the model config's sizes \(its largest layer "
                       r"mi.data.0 \(200000 -> 200000\)\) give [\d,]+ parameters: the model needs "
                       r"149.0 GiB, more than the 4.0 MiB of memory of this machine"):
        InfoMaxVAE.from_config(config)
    assert all(p.is_meta for layer in allocated for p in layer.parameters())


def test_a_failed_fresh_start_leaves_nothing_that_blocks_a_rerun(tmp_path, capsys, monkeypatch):
    from infomax_ext.trainer import TrainingError

    data = save_data(tmp_path / "x.npy")

    def diverged(self):
        raise TrainingError("the VAE diverged at epoch 1 (no checkpoint was written)")

    monkeypatch.setattr(Trainer, "fit", diverged)
    assert train(tmp_path / "run", data) == 1
    assert "diverged" in capsys.readouterr().err
    assert not os.path.lexists(tmp_path / "run" / "config.json")
    monkeypatch.undo()
    assert train(tmp_path / "run", data) == 0


def test_the_python_trainer_checks_sizes_before_allocating(monkeypatch):
    config = TrainConfig(latent_dim=2, mi_neurons=[100000, 100000])
    with pytest.raises(ValueError, match=r"^mi_neurons 100000,100000: training this model"):
        Trainer.create(config, torch.rand(16, 4), progress=False)


def test_trainer_config_types_are_checked():
    with pytest.raises(ValueError, match="shuffled_grad must be True or False, got 1"):
        TrainConfig(shuffled_grad=1).validate()
    with pytest.raises(ValueError, match="device must be a string"):
        TrainConfig(device=0).validate()

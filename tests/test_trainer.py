"""infomax_ext.trainer: config validation, the epoch loop, checkpoints and exact resumption."""
import hashlib
import json
import math
import re
import sys

import pytest
import torch

from infomax_ext import InfoMaxVAE, trainer as trainer_module
from infomax_ext.serialization import safe_torch_load
from infomax_ext.trainer import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    TrainConfig,
    Trainer,
    TrainingError,
    build_model,
    fit,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw):
    base = dict(latent_dim=2, encoder_neurons=[8], decoder_neurons=[8], mi_neurons=[8],
                epochs=2, batch_size=16, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def data(n=50, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, size, generator=g), torch.rand(12, size, generator=g)


RECORD_KEYS = {"epoch", "vae_loss", "mi_loss", "mi", "val_recon_loglik", "val_kl",
               "val_active_units", "seconds"}


@pytest.mark.parametrize("field, value, message", [
    ("latent_dim", 0, "latent_dim must be a positive integer"),
    ("batch_size", 1, "batch_size must be at least 2"),
    ("beta", -1.0, "beta must be a non-negative"),
    ("alpha", math.nan, "alpha must be a non-negative finite"),
    ("lr", 0.0, "lr must be a positive"),
    ("val_fraction", 1.0, "val_fraction must lie strictly between 0 and 1"),
    ("encoder_neurons", [8, 0], "encoder_neurons must be a list of positive integers"),
    ("mi_neurons", [], "mi_neurons needs at least one hidden layer"),
    ("activation", "swish", "activation must be one of"),
    ("likelihood", "poisson", "likelihood must be one of"),
    ("seed", -1, r"seed must be an integer in \[0, 2\*\*63\)"),
    ("seed", 2**63, r"seed must be an integer in \[0, 2\*\*63\), got 9223372036854775808"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny(**{field: value}).validate()


def test_config_round_trips_through_json():
    config = tiny(beta=3.0, reuse_forward=True)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({**config.to_dict(), "gamma": 1})


def test_build_model_saves_and_reloads(tmp_path):
    model = build_model(tiny(likelihood="gaussian"), (2, 3))
    model.save(tmp_path)
    loaded = InfoMaxVAE.load(tmp_path)
    assert type(loaded.vae.decoder).__name__ == "SimpleGaussianDecoder"
    assert loaded.vae(torch.rand(4, 2, 3)).mu.shape == (4, 2, 3)


def test_fit_trains_logs_and_checkpoints(tmp_path):
    x, v = data()
    trainer = Trainer.create(tiny(), x, v, tmp_path, progress=False)
    before = {k: t.clone() for k, t in trainer.model.state_dict().items()}
    seen = []
    trainer.callbacks.append(lambda tr, record: seen.append(record["epoch"]))
    history = trainer.fit()
    assert seen == [1, 2] and [r["epoch"] for r in history] == [1, 2]
    assert set(history[0]) == RECORD_KEYS
    assert all(math.isfinite(r["vae_loss"]) and r["mi"] == -r["mi_loss"] for r in history)
    after = trainer.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every tensor moved
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    checkpoint = safe_torch_load(tmp_path / CHECKPOINT_FILE)  # weights_only=True
    assert checkpoint["epoch"] == 2 and checkpoint["config"] == tiny().to_dict()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_same_seed_same_model():
    x, v = data()
    model_a, _ = fit(tiny(), x, v, progress=False)
    model_b, _ = fit(tiny(), x, v, progress=False)
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("reuse_forward", [False, True])
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, reuse_forward):
    x, v = data()
    config = tiny(epochs=3, reuse_forward=reuse_forward)
    straight = Trainer.create(config, x, v, tmp_path / "a", progress=False)
    straight.fit()

    first = Trainer.create(tiny(epochs=1, reuse_forward=reuse_forward), x, v, tmp_path / "b",
                           progress=False)
    first.fit()
    torch.manual_seed(123)  # whatever happens in between does not matter
    resumed = Trainer.from_checkpoint(tmp_path / "b" / CHECKPOINT_FILE, x, v, epochs=3,
                                      progress=False)
    assert resumed.epoch == 1 and resumed.run_dir == tmp_path / "b"
    resumed.fit()
    assert resumed.epoch == 3
    for k, a in straight.model.state_dict().items():
        assert torch.equal(a, resumed.model.state_dict()[k]), k
    for name in ("vae", "mi"):
        sa = straight.optimizers[name].state_dict()["state"]
        sb = resumed.optimizers[name].state_dict()["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    drop = lambda h: [{k: r[k] for k in r if k != "seconds"} for r in h]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)
    lines = (tmp_path / "b" / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_refuses_other_data_and_bad_checkpoints(tmp_path):
    x, v = data()
    Trainer.create(tiny(epochs=1), x, v, tmp_path, progress=False).fit()
    with pytest.raises(TrainingError, match="not the same data"):
        Trainer.from_checkpoint(tmp_path / CHECKPOINT_FILE, x[:40], v, progress=False)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt has no digest file .*bad.sha256.json"):
        Trainer.from_checkpoint(tmp_path / "bad.pt", x, v)
    sign(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="corrupt"):
        Trainer.from_checkpoint(tmp_path / "bad.pt", x, v)
    torch.save({"epoch": 1}, tmp_path / "other.pt")
    sign(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an infomax_ext training checkpoint"):
        Trainer.from_checkpoint(tmp_path / "other.pt", x, v)


def sign(path):
    """Record the digest of the file ``path`` in its checkpoint companion, as a writer would."""
    from infomax_ext.checkpoint import DIGEST_FORMAT, digest_path

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    digest_path(path).write_text(json.dumps({"format": DIGEST_FORMAT, "sha256": digest}))


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    x, v = data()
    trainer = Trainer.create(tiny(), x, v, tmp_path, progress=False)
    monkeypatch.setattr(trainer_module, "train_step", lambda *a, **k: (math.nan, 0.0))
    with pytest.raises(TrainingError, match="non-finite at epoch 1.*lower lr"):
        trainer.fit()
    assert not (tmp_path / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize("reuse_forward", [False, True])
def test_divergence_stops_naming_the_network_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                          reuse_forward):
    # From epoch 2 on, alpha = 1e30: the gradients stay finite (about 1e30) but Adam's squared
    # gradients overflow to inf and every step becomes 0, so weights and losses stay finite.
    x, v = data()
    trainer = Trainer.create(tiny(epochs=3, reuse_forward=reuse_forward), x, v, tmp_path,
                             progress=False)
    good = {}
    trainer.callbacks.append(
        lambda tr, record: good.setdefault("bytes", (tmp_path / CHECKPOINT_FILE).read_bytes()))
    real_step = trainer_module.train_step

    def diverging(*args, **kwargs):
        if trainer.epoch >= 1:
            kwargs["infomaxloss_kwargs"] = {**kwargs["infomaxloss_kwargs"], "alpha": 1e30}
        losses = real_step(*args, **kwargs)
        assert all(math.isfinite(v) for v in losses)
        return losses

    monkeypatch.setattr(trainer_module, "train_step", diverging)
    with pytest.raises(TrainingError, match=r"the VAE diverged at epoch 2: .*overflowed.*"
                                            r"still holds the last good state"):
        trainer.fit()
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == good["bytes"]
    resumed = Trainer.from_checkpoint(tmp_path / CHECKPOINT_FILE, x, v, progress=False)
    assert resumed.epoch == 1
    assert all(torch.isfinite(t).all() for t in resumed.model.state_dict().values())


def test_a_diverging_mi_chain_is_named(monkeypatch):
    x, v = data()
    trainer = Trainer.create(tiny(epochs=1), x, v, progress=False)
    real_step = trainer_module.train_step

    def huge_mi_gradients(*args, **kwargs):  # finite losses, MI gradients about 1e30
        return real_step(*args, **kwargs, miloss_kwargs={
            "regularization": lambda scores: 1e30 * scores.joint.mean()})

    monkeypatch.setattr(trainer_module, "train_step", huge_mi_gradients)
    with pytest.raises(TrainingError, match="the MI chain diverged at epoch 1.*no checkpoint"):
        trainer.fit()


def test_batches_never_hold_a_single_sample():
    x, _ = data(n=33)  # 33 = 2 * 16 + 1: the last batch of one sample is dropped
    sizes = [len(b) for (b,) in Trainer.create(tiny(), x, progress=False)._loader(1)]
    assert sizes == [16, 16]
    with pytest.raises(ValueError, match="batch_size 64 exceeds the 33 training samples"):
        Trainer.create(tiny(batch_size=64), x, progress=False)


def progress_lines(trainer, capsys):
    """The epochs named by the progress lines ``trainer.fit()`` prints, after checking the lines
    against the history."""
    capsys.readouterr()
    history = trainer.fit()
    lines, epochs = capsys.readouterr().out.splitlines(), []
    for line in lines:
        epoch = int(line.split()[2].split("/")[0])
        r = history[epoch - 1]
        want = (f"{trainer.desc} epoch {epoch}/{trainer.config.epochs}: vae_loss "
                f"{r['vae_loss']:.2f}, MI {r['mi']:.3f} nats, ")
        assert re.fullmatch(re.escape(want) + r"[1-9]\d* samples/s", line), line
        epochs.append(epoch)
    return epochs


def test_progress_lines_when_stdout_is_not_a_terminal(capsys, monkeypatch):
    x, v = data()
    make = lambda **kw: Trainer.create(tiny(epochs=3), x, v, desc="run", **kw)  # noqa: E731
    assert progress_lines(make(log_interval=0), capsys) == [1, 2, 3]
    assert progress_lines(make(log_interval=3600), capsys) == [1, 3]  # throttled; the last
    assert progress_lines(make(log_interval=0, progress=False), capsys) == []
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal gets the bar alone
    assert progress_lines(make(log_interval=0), capsys) == []
    with pytest.raises(ValueError, match="log_interval must be a non-negative number"):
        make(log_interval=-1.0)


def test_fit_runs_without_tqdm(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails as if not installed
    x, v = data()
    history = Trainer.create(tiny(epochs=1), x, v, progress=True).fit()
    assert len(history) == 1


# ----------------------------------------------------------------------------- numpy settings

def test_numpy_and_tensor_numbers_become_plain_python_values():
    import numpy as np

    config = tiny(beta=np.float32(1.5), alpha=torch.tensor(2.0), lr=np.float64(1e-3),
                  mi_lr=np.float32(0.5), val_fraction=np.float64(0.25), latent_dim=np.int64(3),
                  encoder_neurons=np.array([4, 5]), decoder_neurons=[np.int32(8)],
                  reuse_forward=np.bool_(True), activation=np.str_("tanh"),
                  active_threshold=np.float16(0.5)).validate()
    values = config.to_dict()
    assert values == {**tiny().to_dict(), "beta": 1.5, "alpha": 2.0, "lr": 1e-3, "mi_lr": 0.5,
                      "val_fraction": 0.25, "latent_dim": 3, "encoder_neurons": [4, 5],
                      "decoder_neurons": [8], "reuse_forward": True, "activation": "tanh",
                      "active_threshold": 0.5}
    plain = (int, float, bool, str, list, type(None))
    assert all(type(v) in plain for v in values.values()), values
    assert all(type(h) is int for h in values["encoder_neurons"] + values["decoder_neurons"])
    json.dumps(values)
    with pytest.raises(ValueError, match="lr must be a positive finite number, got nan"):
        tiny(lr=np.float64("nan")).validate()
    with pytest.raises(ValueError, match="beta must be a non-negative finite number, got a "
                                         "tensor of dtype torch.float32 and shape"):
        tiny(beta=torch.ones(2)).validate()


def test_a_run_with_numpy_settings_resumes(tmp_path):
    import numpy as np

    x, v = data()
    config = tiny(epochs=1, alpha=np.float64(5.0), beta=np.float64(1.0), lr=np.float64(1e-3),
                  val_fraction=np.float64(0.2))
    Trainer.create(config, x, v, tmp_path, progress=False).fit()
    resumed = Trainer.from_checkpoint(tmp_path / CHECKPOINT_FILE, x, v, epochs=2, progress=False)
    assert resumed.epoch == 1 and resumed.config.alpha == 5.0 and type(resumed.config.lr) is float
    resumed.fit()
    assert resumed.epoch == 2


# ----------------------------------------------------------------------------- run directory

def run_files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_fresh_trainer_refuses_a_directory_holding_a_run(tmp_path):
    x, v = data()
    Trainer.create(tiny(epochs=2), x, v, tmp_path, progress=False).fit()
    before = run_files(tmp_path)
    message = re.escape(
        f"run directory {tmp_path} already holds a run (checkpoint.pt and metrics.jsonl with 2 "
        "epoch records); a fresh Trainer would overwrite it: resume it with "
        f"Trainer.from_checkpoint({str(tmp_path / CHECKPOINT_FILE)!r}, ...) or give another "
        "run_dir")
    with pytest.raises(ValueError, match=message):
        Trainer.create(tiny(epochs=1, seed=7), x, v, tmp_path, progress=False)
    with pytest.raises(ValueError, match=message):
        fit(tiny(epochs=1), x, v, tmp_path, progress=False)
    assert run_files(tmp_path) == before  # nothing written
    (tmp_path / CHECKPOINT_FILE).unlink()  # metrics alone are still a run's record
    with pytest.raises(ValueError, match=re.escape(
            f"run directory {tmp_path} already holds a run (metrics.jsonl with 2 epoch records); "
            "a fresh Trainer would overwrite it: remove it or give another run_dir")):
        Trainer.create(tiny(epochs=1), x, v, tmp_path, progress=False)
    (tmp_path / METRICS_FILE).write_text("")  # a run that stopped in its first epoch: nothing
    Trainer.create(tiny(epochs=1), x, v, tmp_path, progress=False).fit()
    assert len((tmp_path / METRICS_FILE).read_text().splitlines()) == 1


def test_resuming_into_another_runs_directory_is_refused(tmp_path):
    import shutil

    from infomax_ext.checkpoint import digest_path

    x, v = data()
    Trainer.create(tiny(epochs=1), x, v, tmp_path / "a", progress=False).fit()
    Trainer.create(tiny(epochs=2, seed=3), x, v, tmp_path / "b", progress=False).fit()
    before = run_files(tmp_path / "b")
    with pytest.raises(ValueError, match=re.escape(
            f"run directory {tmp_path / 'b'} already holds a run (checkpoint.pt and metrics.jsonl "
            f"with 2 epoch records); resuming {tmp_path / 'a' / CHECKPOINT_FILE}, a checkpoint "
            "of another run, there would overwrite it: resume into the checkpoint's own "
            "directory (run_dir=None) or an empty one")):
        Trainer.from_checkpoint(tmp_path / "a" / CHECKPOINT_FILE, x, v, tmp_path / "b",
                                epochs=2, progress=False)
    assert run_files(tmp_path / "b") == before
    shutil.copy(tmp_path / "b" / CHECKPOINT_FILE, tmp_path / "b-epoch2.pt")  # a kept snapshot
    shutil.copy(digest_path(tmp_path / "b" / CHECKPOINT_FILE), digest_path(tmp_path / "b-epoch2.pt"))
    back = Trainer.from_checkpoint(tmp_path / "b-epoch2.pt", x, v, tmp_path / "b", epochs=3,
                                   progress=False)  # the same run (its records begin metrics)
    assert back.epoch == 2 and back.run_dir == tmp_path / "b"
    moved = Trainer.from_checkpoint(tmp_path / "a" / CHECKPOINT_FILE, x, v, tmp_path / "c",
                                    epochs=2, progress=False)  # an empty directory: fine
    moved.fit()
    assert [r["epoch"] for r in moved.history] == [1, 2]


# ----------------------------------------------------------------------------- config vs model

def test_trainer_refuses_a_model_its_config_does_not_describe(tmp_path):
    x, _ = data(size=10)
    model = build_model(tiny(latent_dim=3), (10,))
    config = tiny(bound="js", latent_dim=5, likelihood="gaussian")
    with pytest.raises(ValueError, match=re.escape(
            "Trainer: the model is not the one config describes: config.bound is 'js' but the "
            "model's bound is 'nwj'; config.latent_dim is 5 but the model has "
            "vae.encoder.n_latent = 3; config.likelihood is 'gaussian' but the model's decoder "
            "is BernoulliDecoder; build the model with build_model(config, sample_shape) (as "
            "Trainer.create does)")):
        Trainer(model, config, x, run_dir=tmp_path / "run", progress=False)
    for field, value, text in (
            ("encoder_neurons", [8, 8], "config.encoder_neurons is [8, 8] but the model has "
                                        "vae.encoder.encoder_neurons = [8]"),
            ("mi_neurons", [4], "config.mi_neurons is [4] but the model has mi.mlp_neurons = [8]"),
            ("activation", "tanh", "config.activation is 'tanh' but the model has "
                                   "vae.encoder.encoder_activation = ['relu']")):
        with pytest.raises(ValueError, match=re.escape(text)):
            Trainer(model, tiny(latent_dim=3, **{field: value}), x, progress=False)
    smile = build_model(tiny(latent_dim=3, bound="smile", smile_clip=2.0), (10,))
    with pytest.raises(ValueError, match=re.escape(
            "config.smile_clip is 5.0 but the model's bound is")):
        Trainer(smile, tiny(latent_dim=3, bound="smile"), x, progress=False)
    with pytest.raises(ValueError, match=re.escape(
            "train_data has samples of shape (6,), the model takes (10,)")):
        Trainer(model, tiny(latent_dim=3), data()[0], progress=False)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_whose_config_contradicts_its_model_is_refused(tmp_path):
    from infomax_ext.checkpoint import read_checkpoint, write_checkpoint

    x, v = data()
    Trainer.create(tiny(epochs=1), x, v, tmp_path, progress=False).fit()
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    for change, text in (({"bound": "js"}, "config.bound is 'js' but the model's bound is 'nwj'"),
                         ({"likelihood": "gaussian"},
                          "config.likelihood is 'gaussian' but the model's decoder is "
                          "BernoulliDecoder"),
                         ({"negatives": "all"},
                          "config.negatives is 'all' but the model pairs its negatives by "
                          "'shuffle'")):
        path = tmp_path / "crafted" / CHECKPOINT_FILE
        write_checkpoint({**state, "config": {**state["config"], **change}}, path)
        with pytest.raises(ValueError, match=re.escape(
                f"checkpoint {path}: config contradicts model_config: {text}")):
            read_checkpoint(path, TrainConfig)
    # Sizes the config records otherwise than the model: the model is model_config's, and a
    # trainer of an earlier version wrote such checkpoints; they resume with their model.
    path = tmp_path / "sizes" / CHECKPOINT_FILE
    write_checkpoint({**state, "config": {**state["config"], "mi_neurons": [16]}}, path)
    resumed = Trainer.from_checkpoint(path, x, v, progress=False)
    assert resumed.model.mi.config["mlp_neurons"] == tiny().mi_neurons


def test_a_checkpoint_whose_tensors_share_storage_is_refused(tmp_path):
    from infomax_ext.checkpoint import read_checkpoint, write_checkpoint

    x, v = data()
    Trainer.create(tiny(epochs=1), x, v, tmp_path, progress=False).fit()
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    entry = state["optimizers"]["vae"]["state"][0]
    entry["exp_avg"] = entry["exp_avg_sq"]  # Adam would update both moments in one tensor
    path = tmp_path / "shared" / CHECKPOINT_FILE
    write_checkpoint(state, path)
    with pytest.raises(ValueError, match=re.escape(
            f"checkpoint {path}: optimizers.vae.state[0].exp_avg_sq and "
            "optimizers.vae.state[0].exp_avg share one storage (a checkpoint holds each tensor in "
            "its own storage)")):
        read_checkpoint(path, TrainConfig)


# ----------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_data_of_another_dtype_than_the_model_is_refused_before_writing(tmp_path, dtype):
    x, v = data()
    model = build_model(tiny(), (6,)).to(dtype)
    with pytest.raises(ValueError, match=re.escape(
            f"train_data holds torch.float32 samples but the model's weights are {dtype}: give "
            f"train_data in the model's dtype (train_data.to({dtype})) or convert the model "
            "(model.to(torch.float32))")):
        Trainer(model, tiny(), x, v.to(dtype), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="val_data holds torch.float32 samples"):
        Trainer(model, tiny(), x.to(dtype), v, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    trainer = Trainer(model, tiny(epochs=1), x.to(dtype), v.to(dtype), tmp_path / "run",
                      progress=False)
    trainer.fit()  # the model's own dtype trains
    before = run_files(tmp_path / "run")
    with pytest.raises(ValueError, match=re.escape(
            f"train_data holds torch.float32 samples but the model's weights are {dtype}")):
        Trainer.from_checkpoint(tmp_path / "run" / CHECKPOINT_FILE, x, v, epochs=2,
                                progress=False)
    assert run_files(tmp_path / "run") == before

"""TensorBoard logging (``infomax_ext.monitor``, ``infomax-ext train --tensorboard``), tested by
reading the event files back with TensorBoard's EventAccumulator."""
import importlib.util
import math
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

from infomax_ext.cli import main
from infomax_ext.trainer import TrainConfig, Trainer

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CLI = ["--epochs", "2", "--latent-dim", "2", "--encoder-neurons", "16", "--decoder-neurons",
            "16", "--mi-neurons", "16", "--eval-mi-steps", "10", "--batch-size", "128", "--quiet"]


def events(log_dir):
    """The scalars ({tag: [(step, value)]}) and images ({tag: [(step, width, height)]}) of the
    event files in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [(e.step, e.width, e.height) for e in acc.Images(t)] for t in tags["images"]}
    return scalars, images


def tiny_config(**kw):
    base = dict(latent_dim=2, encoder_neurons=[8], decoder_neurons=[8], mi_neurons=[8],
                epochs=2, batch_size=16, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def tiny_data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(48, 6, generator=g), torch.rand(20, 6, generator=g)  # 3 steps per epoch


def norm64(module):
    """The 2-norm of all gradients, in float64 from the entries."""
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in module.parameters()
                         if p.grad is not None))


class StepSpy:
    """A step callback that keeps each step's values and gradient norms (float64)."""

    def __init__(self):
        self.steps = []

    def __call__(self, trainer, step):
        self.steps.append(dict(step, grad_vae=norm64(trainer.model.vae),
                               grad_mi=norm64(trainer.model.mi)))


def close(a, b, rel=1e-6):
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


@needs_tensorboard
def test_steps_and_epochs_read_back(tmp_path):
    from infomax_ext.monitor import TensorBoardMonitor

    train, val = tiny_data()
    labels = torch.arange(len(val)) % 3
    spy = StepSpy()
    monitor = TensorBoardMonitor(tmp_path / "tb", val_x=val, labels=labels, n_images=8,
                                 title="tiny")
    trainer = Trainer.create(tiny_config(), train, val, progress=False,
                             callbacks=[monitor], step_callbacks=[monitor.on_step, spy])
    with monitor:
        history = trainer.fit()
    scalars, images = events(tmp_path / "tb")

    assert [s["step"] for s in spy.steps] == [1, 2, 3, 4, 5, 6]
    for tag, expected in [("step/vae_loss", [s["vae_loss"] for s in spy.steps]),
                          ("step/mi_loss", [s["mi_loss"] for s in spy.steps]),
                          ("step/mi", [-s["mi_loss"] for s in spy.steps]),
                          ("step/grad_norm_vae", [s["grad_vae"] for s in spy.steps]),
                          ("step/grad_norm_mi", [s["grad_mi"] for s in spy.steps])]:
        assert [step for step, _ in scalars[tag]] == [1, 2, 3, 4, 5, 6], tag
        assert all(close(v, e, 1e-5) for (_, v), e in zip(scalars[tag], expected)), tag
    assert all(v > 0 for _, v in scalars["step/grad_norm_vae"] + scalars["step/grad_norm_mi"])
    # samples/s: the samples of each step (16) over its share of the epoch's seconds
    seconds = [0.0] + [s["seconds"] for s in spy.steps]
    for i, (_, rate) in enumerate(scalars["step/samples_per_s"]):
        start = 0.0 if i % 3 == 0 else seconds[i]
        assert close(rate, 16 / (seconds[i + 1] - start), 1e-4)

    for key in ("vae_loss", "mi_loss", "mi", "val_recon_loglik", "val_kl", "val_active_units",
                "epoch"):
        got = scalars[f"epoch/{key}"]
        assert [step for step, _ in got] == [3, 6], key  # each epoch at its last step
        assert all(close(v, r[key]) for (_, v), r in zip(got, history)), key
    rates = [v for _, v in scalars["epoch/samples_per_s"]]
    assert all(close(r, 48 / s["seconds"], 1e-4) for r, s in zip(rates, spy.steps[2::3]))
    for tag in ("reconstructions", "latent_space"):
        assert [step for step, *_ in images[tag]] == [3, 6]
        assert all(w > 100 and h > 100 for _, w, h in images[tag])


@needs_tensorboard
def test_monitoring_does_not_change_the_run(tmp_path):
    from infomax_ext.monitor import TensorBoardMonitor

    train, val = tiny_data()
    plain = Trainer.create(tiny_config(), train, val, progress=False).fit()
    monitor = TensorBoardMonitor(tmp_path / "tb", val_x=val)
    with monitor:
        watched = Trainer.create(tiny_config(), train, val, progress=False, callbacks=[monitor],
                                 step_callbacks=[monitor.on_step]).fit()
    drop = lambda h: [{k: r[k] for k in r if k != "seconds"} for r in h]  # noqa: E731
    assert drop(plain) == drop(watched)


@needs_tensorboard
def test_a_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path):
    from infomax_ext.checkpoint import digest_path
    from infomax_ext.monitor import TensorBoardMonitor

    train, val = tiny_data()
    run = tmp_path / "run"
    kept = tmp_path / "epoch1.pt"

    def keep_first_checkpoint(trainer, record):
        if record["epoch"] == 1:
            shutil.copy(run / "checkpoint.pt", kept)
            shutil.copy(digest_path(run / "checkpoint.pt"), digest_path(kept))

    first = TensorBoardMonitor(tmp_path / "tb", figures=False)
    with first:  # epochs 1 and 2 logged; the "crash" loses epoch 2's checkpoint
        Trainer.create(tiny_config(), train, val, run, progress=False,
                       callbacks=[first, keep_first_checkpoint],
                       step_callbacks=[first.on_step]).fit()
    second = TensorBoardMonitor(tmp_path / "tb", figures=False)
    spy = StepSpy()
    with second:
        Trainer.from_checkpoint(kept, train, val, run, epochs=3, progress=False,
                                callbacks=[second], step_callbacks=[second.on_step, spy]).fit()
    assert [s["step"] for s in spy.steps] == [4, 5, 6, 7, 8, 9]
    scalars, _ = events(tmp_path / "tb")
    assert [step for step, _ in scalars["step/vae_loss"]] == list(range(1, 10))  # once each
    assert all(close(v, s["vae_loss"]) for (_, v), s in zip(scalars["step/vae_loss"][3:],
                                                              spy.steps))
    assert [step for step, _ in scalars["epoch/epoch"]] == [3, 6, 9]


@needs_tensorboard
def test_only_rank_0_writes(tmp_path):
    from infomax_ext.monitor import TensorBoardMonitor

    monitor = TensorBoardMonitor(tmp_path / "tb")
    other_rank = SimpleNamespace(rank=1)  # a data-parallel trainer of another process
    monitor.on_step(other_rank, {"epoch": 1, "step": 1, "vae_loss": 1.0, "mi_loss": -1.0,
                                 "samples": 16, "seconds": 0.1})
    monitor(other_rank, {"epoch": 1, "vae_loss": 1.0, "mi_loss": -1.0, "mi": 1.0})
    monitor.close()
    assert not (tmp_path / "tb").exists()


@needs_tensorboard
def test_compare_vae_logs_both_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--compare-vae", "--out", str(out), "--tensorboard", *TINY_CLI]) == 0
    import json

    steps_per_epoch = math.ceil(1438 / 128)  # the digits' training split; the last batch has 30
    for name in ("infomax", "vae"):
        history = [json.loads(line) for line in
                   (out / name / "metrics.jsonl").read_text().splitlines()]
        scalars, images = events(out / "tensorboard" / name)
        assert len(scalars["step/mi"]) == 2 * steps_per_epoch
        assert [s for s, _ in scalars["epoch/mi"]] == [steps_per_epoch, 2 * steps_per_epoch]
        assert all(close(v, r["mi"]) for (_, v), r in zip(scalars["epoch/mi"], history))
        assert [s for s, *_ in images["reconstructions"]] == [steps_per_epoch,
                                                              2 * steps_per_epoch]
        assert len(images["latent_space"]) == 2


@needs_tensorboard
def test_tensorboard_dir_option_and_no_plots(tmp_path, capsys):
    logs = tmp_path / "logs"
    assert main(["train", "--out", str(tmp_path / "run"), "--tensorboard", str(logs), "--no-plots",
                 *TINY_CLI]) == 0
    scalars, images = events(logs / "infomax")
    assert len(scalars["epoch/vae_loss"]) == 2 and not images  # --no-plots: scalars only
    assert not (tmp_path / "run" / "tensorboard").exists()


@needs_tensorboard
def test_torchrun_rank_0_alone_logs(tmp_path):
    import json
    import os
    import subprocess

    import numpy as np
    from sklearn.datasets import load_digits

    data = tmp_path / "digits.npy"
    np.save(data, (load_digits().data / 16).astype(np.float32))
    out, logs = tmp_path / "run", tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "2", "-m", "infomax_ext", "train", "--data", str(data), "--out", str(out),
               "--tensorboard", str(logs), "--no-plots", *TINY_CLI]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in logs.iterdir()] == ["infomax"]
    assert len(list((logs / "infomax").iterdir())) == 1  # one event file: rank 0's
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scalars, _ = events(logs / "infomax")
    steps_per_epoch = math.ceil(1438 / 128)  # global batches of 128 (64 per process)
    assert [s for s, _ in scalars["epoch/mi"]] == [steps_per_epoch, 2 * steps_per_epoch]
    assert all(close(v, r["mi"]) for (_, v), r in zip(scalars["epoch/mi"], history))


def test_missing_tensorboard_is_named_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    assert main(["train", "--out", str(tmp_path / "run"), "--tensorboard", *TINY_CLI]) == 1
    err = capsys.readouterr().err
    assert "--tensorboard" in err and "pip install 'infomax_ext[tensorboard]'" in err
    assert not (tmp_path / "run").exists()

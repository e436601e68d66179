"""``infomax-ext train``'s --out and the options checked with it, before any data is read:
a directory holding files a run would write is refused (never overwritten), --tensorboard must
be a directory, --smile-clip goes with --bound smile; labels tables of class names."""
import json
import os
import shutil

import numpy as np
import pytest

from infomax_ext import monitor
from infomax_ext.trainer import Trainer, TrainingError
from tiny_runs import digest, error_line, save_data, snapshot, train, usage_error

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_directory_with_files_a_run_writes_is_refused_untouched(tmp_path, capsys):
    data = save_data(tmp_path / "x.npy")
    assert train(tmp_path / "first", data) == 0
    mine = tmp_path / "mine"  # a model saved earlier and an evaluation: no run
    mine.mkdir()
    shutil.copytree(tmp_path / "first" / "model", mine / "model")
    (mine / "metrics.json").write_text('{"my": "evaluation"}\n')
    before = snapshot(mine)
    assert error_line(["train", "--data", str(data), "--out", str(mine), "--epochs", "1",
                       "--quiet", "--no-plots", "--seed", "7"], capsys) == (
        f"infomax-ext train: error: --out {mine} holds no run but already holds metrics.json, "
        "model, which this run would overwrite; choose another --out (or move them)")
    assert snapshot(mine) == before  # same bytes, same times
    assert sorted(p.name for p in mine.iterdir()) == [".lock", "metrics.json", "model"]


def test_only_the_files_this_run_writes_count(tmp_path, capsys):
    data = save_data(tmp_path / "x.npy")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "latent_space.png").write_bytes(b"my figure")
    # with plots the PNG would be replaced: refused
    assert error_line(["train", "--data", str(data), "--out", str(out), "--quiet"], capsys) == (
        f"infomax-ext train: error: --out {out} holds no run but already holds latent_space.png, "
        "which this run would overwrite; choose another --out (or move them)")
    assert train(out, data) == 0  # --no-plots writes no PNG: the folder is free for it
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "latent_space.png").read_bytes() == b"my figure"
    assert (out / "config.json").is_file() and (out / "model").is_dir()


def test_compare_vae_counts_the_files_of_its_two_runs(tmp_path, capsys):
    data = save_data(tmp_path / "x.npy")
    out = tmp_path / "out"
    (out / "vae" / "model").mkdir(parents=True)
    assert error_line(["train", "--data", str(data), "--out", str(out), "--compare-vae",
                       "--quiet", "--no-plots"], capsys).endswith(
        f"--out {out} holds no run but already holds vae/model, which this run would "
        "overwrite; choose another --out (or move them)")


def test_a_run_that_fails_in_its_first_epoch_leaves_nothing_that_blocks_a_rerun(
        tmp_path, monkeypatch, capsys):
    data = save_data(tmp_path / "x.npy")

    def diverged(self):
        self._write_metrics()  # what fit writes as it starts
        raise TrainingError("the VAE diverged at epoch 1")

    monkeypatch.setattr(Trainer, "fit", diverged)
    assert train(tmp_path / "run", data) == 1
    assert "diverged" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
    monkeypatch.undo()
    assert train(tmp_path / "run", data) == 0


def test_tensorboard_at_a_file_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(monitor, "require_tensorboard", lambda: None)  # installed or not
    data = save_data(tmp_path / "x.npy")
    before = digest(data)
    out = tmp_path / "run"
    assert error_line(["train", "--data", str(data), "--out", str(out), "--quiet", "--no-plots",
                       "--tensorboard", str(data)], capsys) == (
        f"infomax-ext train: error: --tensorboard {data} is a file, not a directory")
    assert not os.path.lexists(out) and digest(data) == before
    out.mkdir()
    (out / "tensorboard").write_text("not a directory")  # the default DIR: --out's tensorboard/
    assert error_line(["train", "--data", str(data), "--out", str(out), "--quiet", "--no-plots",
                       "--tensorboard"], capsys) == (
        f"infomax-ext train: error: --tensorboard {out / 'tensorboard'} is a file, not a "
        "directory")
    assert sorted(p.name for p in out.iterdir()) == ["tensorboard"]  # no lock, no metrics
    assert error_line(["train", "--data", str(data), "--out", str(tmp_path / "run2"), "--quiet",
                       "--tensorboard", str(data / "logs")], capsys) == (
        f"infomax-ext train: error: --tensorboard {data / 'logs'} cannot be created: {data} is "
        "a file")


def test_smile_clip_goes_with_bound_smile(tmp_path, capsys):
    data = save_data(tmp_path / "x.npy")
    for bound in ("nwj", "dv"):
        assert usage_error(["train", "--data", str(data), "--out", str(tmp_path / "run"),
                            "--bound", bound, "--smile-clip", "3"], capsys).splitlines()[-1] == (
            f"infomax-ext train: error: --smile-clip is a setting of --bound smile, but the "
            f"bound is '{bound}'")
    assert usage_error(["train", "--data", str(data), "--out", str(tmp_path / "run"),
                        "--dv-moving-average", "0.1"], capsys).strip().endswith(
        "dv_moving_average is a setting of bound 'dv', but bound is 'nwj'")  # the same rule
    assert not (tmp_path / "run").exists()
    assert train(tmp_path / "run", data, "--bound", "smile", "--smile-clip", "3") == 0


def test_labels_tables_of_class_names(tmp_path, capsys):
    data = save_data(tmp_path / "x.npy")
    names = [f"cls{k % 3}" for k in range(40)]
    (tmp_path / "labels.csv").write_text("label\n" + "\n".join(names) + "\n")
    (tmp_path / "bare.csv").write_text("\n".join(names) + "\n")
    np.save(tmp_path / "labels.npy", np.array(names))
    described = []
    for name in ("labels.npy", "labels.csv", "bare.csv"):
        out = tmp_path / name.replace(".", "_")
        assert train(out, data, "--labels", str(tmp_path / name)) == 0, capsys.readouterr().err
        described.append(json.loads((out / "config.json").read_text())["data"])
    # the same labels, read alike: the same classes and the same fingerprint (samples and codes)
    assert {d["n_classes"] for d in described} == {3}
    assert len({d["fingerprint"] for d in described}) == 1

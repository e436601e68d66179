"""The ``infomax-ext train`` command end to end, on a tiny budget."""
import errno
import json
import math
import os
import signal
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch

from infomax_ext import InfoMaxVAE
from infomax_ext.cli import main
from infomax_ext.trainer import Trainer

TINY = ["--epochs", "2", "--latent-dim", "2", "--encoder-neurons", "16", "--decoder-neurons", "16",
        "--mi-neurons", "16", "--eval-mi-steps", "10", "--batch-size", "128", "--quiet"]
METRICS = {"mi", "active_units", "probe_accuracy", "recon_loglik", "kl"}
PLOTS = ["training_curves.png", "latent_space.png", "reconstructions.png", "prior_samples.png",
         "active_units.png"]


pytestmark = pytest.mark.usefixtures("one_thread")


def usage_error(argv, capsys) -> str:
    """Run ``main(argv)``, expect argparse's exit code 2, return stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_compare_vae_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--compare-vae", "--out", str(out), *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "| held-out metric" in stdout and "plain VAE (alpha=0)" in stdout

    config = json.loads((out / "config.json").read_text())
    assert config["compare_vae"] is True and config["data"]["source"] == "digits"
    assert config["data"]["n_samples"] == 1797 and config["train"]["epochs"] == 2
    comparison = json.loads((out / "comparison.json").read_text())
    assert METRICS <= set(comparison["infomax"]) and METRICS <= set(comparison["vae"])
    assert comparison["infomax"]["alpha"] == 10.0 and comparison["vae"]["alpha"] == 0.0
    assert "| active units (of 2, Var > 0.01)" in (out / "comparison.md").read_text()
    assert is_png(out / "comparison.png")
    for name in ("infomax", "vae"):
        run = out / name
        assert [r["epoch"] for r in jsonl(run / "metrics.jsonl")] == [1, 2]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics == comparison[name]
        assert 0.0 <= metrics["probe_accuracy"] <= 1.0 and 0 <= metrics["active_units"] <= 2
        assert all(is_png(run / p) for p in PLOTS)
        assert json.loads((run / "config.json").read_text())["train"]["alpha"] == metrics["alpha"]
        model = InfoMaxVAE.load(run / "model")
        assert model.vae.encoder.config["n_latent"] == 2
    # same seed and architecture: both models started from the same weights
    start_a = Trainer.create(TrainConfig_from(out / "infomax"), torch.zeros(128, 64)).model
    start_b = Trainer.create(TrainConfig_from(out / "vae"), torch.zeros(128, 64)).model
    assert all(torch.equal(a, b) for a, b in zip(start_a.vae.parameters(), start_b.vae.parameters()))


def TrainConfig_from(run):
    from infomax_ext.trainer import TrainConfig

    return TrainConfig.from_dict(json.loads((run / "config.json").read_text())["train"])


def test_resume_continues_where_it_stopped(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = TINY[2:]  # all but --epochs 2
    assert main(["train", "--out", out, "--epochs", "1", "--no-plots", *args]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", out, "--epochs", "3", "--no-plots", "--quiet"]) == 0
    assert "resuming at epoch 2 of 3" in capsys.readouterr().out
    assert [r["epoch"] for r in jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["epochs"] == 3

    err = usage_error(["train", "--resume", "--out", out, "--beta", "7"], capsys)
    assert "--beta 7.0 differs from the value the run was started with (2.0)" in err
    assert "needs --out" in usage_error(["train", "--resume"], capsys)
    assert "already holds a run; pass --resume" in usage_error(["train", "--out", out], capsys)
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 1
    assert "no run to resume" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: must be a positive integer"),
    (["--beta", "-1"], "--beta: must be a non-negative finite number"),
    (["--alpha", "nan"], "--alpha: must be a non-negative finite number"),
    (["--batch-size", "1"], "--batch-size: must be at least 2"),
    (["--val-fraction", "1.5"], "--val-fraction: must lie strictly between 0 and 1"),
    (["--encoder-neurons", "64,x"], "--encoder-neurons: expected comma-separated layer widths"),
    (["--mi-neurons", "none"], "mi_neurons needs at least one hidden layer"),
    (["--lr", "0"], "--lr: must be a positive finite number"),
    (["--activation", "swish"], "--activation: invalid choice"),
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
    (["--batch-size", "4000"], "--batch-size 4000 exceeds the 1438 training samples"),
    (["--seed", "-1"], "--seed: must be a non-negative integer"),
    (["--seed", str(2**63)], f"--seed: must be below 2**63 = {2**63}, got {2**63}"),
    (["--seed", str(2**64)], f"--seed: must be below 2**63 = {2**63}, got {2**64}"),
])
def test_bad_options_are_refused_with_a_message(tmp_path, capsys, argv, message):
    err = usage_error(["train", "--out", str(tmp_path / "run"), "--quiet", *argv], capsys)
    assert message in err
    assert "Traceback" not in err


def test_missing_or_corrupt_data_file(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for name, message in [("missing.npy", "data file not found"), ("bad.npz", "is corrupt")]:
        assert main(["train", "--data", str(tmp_path / name), "--out", str(tmp_path / "r"),
                     "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"infomax-ext train: error: {message}" in err or message in err
        assert "Traceback" not in err
    np.save(tmp_path / "big.npy", np.full((40, 4), 200.0))
    assert main(["train", "--data", str(tmp_path / "big.npy"), "--out", str(tmp_path / "r")]) == 1
    assert "--likelihood gaussian" in capsys.readouterr().err


def test_user_files_with_and_without_labels(tmp_path, capsys):
    g = np.random.default_rng(0)
    x = g.random((60, 5, 5)) * 3.0
    np.savez(tmp_path / "d.npz", x=x, y=np.array(["a", "b", "c"] * 20))
    np.save(tmp_path / "d.npy", x / 3.0)
    small = ["--epochs", "1", "--latent-dim", "3", "--encoder-neurons", "8", "--decoder-neurons",
             "8", "--mi-neurons", "8", "--eval-mi-steps", "5", "--batch-size", "16", "--quiet"]
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--likelihood", "gaussian",
                 "--out", str(tmp_path / "a"), *small]) == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["probe_accuracy"] is not None and metrics["n_test"] == 12
    assert all(is_png(tmp_path / "a" / p) for p in PLOTS)
    assert main(["train", "--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "b"),
                 "--no-plots", *small]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["probe_accuracy"] is None
    assert "probe accuracy n/a" in capsys.readouterr().out


def test_seeds_beyond_32_bits_train_evaluate_and_resume(tmp_path, capsys):
    out, seed = str(tmp_path / "run"), 2**63 - 1
    assert main(["train", "--out", out, "--seed", str(seed), "--epochs", "1", *TINY[2:]]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1
    assert main(["train", "--resume", "--out", out, "--epochs", "2", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0.0 <= metrics["probe_accuracy"] <= 1.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["seed"] == seed


def test_divergence_exits_1_naming_the_network(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--alpha", "1e30", "--no-plots", *TINY]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "error: the VAE diverged at epoch 1" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()


def test_a_run_holds_its_directory_for_its_life(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    codes, real_fit = [], Trainer.fit

    def fit_while_others_try(self):
        if codes == []:  # the outer run only
            codes.append("started")
            codes.append(main(["train", "--resume", "--out", out, "--no-plots", "--quiet"]))
            codes.append(main(["train", "--out", out, "--no-plots", "--quiet"]))
        return real_fit(self)

    monkeypatch.setattr(Trainer, "fit", fit_while_others_try)
    assert main(["train", "--out", out, "--no-plots", *TINY]) == 0
    assert codes == ["started", 1, 1]
    message = f"error: {out} is in use by another infomax-ext run (pid {os.getpid()})"
    assert capsys.readouterr().err.count(message) == 2


LOCK_AND_WAIT = """
import sys, time
from pathlib import Path
from infomax_ext.cli.run_dir import _RunLock
_RunLock().acquire(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(300)
"""


def test_a_locked_directory_is_refused_and_a_killed_holder_never_blocks(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", "--no-plots", *TINY[2:]]) == 0
    holder = subprocess.Popen([sys.executable, "-c", LOCK_AND_WAIT, str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        capsys.readouterr()
        for argv in (["--resume"], ["--data", "elsewhere.npy"]):  # resume, and a fresh run
            assert main(["train", "--out", str(out), "--epochs", "2", "--quiet", *argv]) == 1
            err = capsys.readouterr().err
            assert f"{out} is in use by another infomax-ext run (pid {holder.pid})" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert holder.returncode == -signal.SIGKILL
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--no-plots",
                 "--quiet"]) == 0
    assert "resuming at epoch 2 of 2" in capsys.readouterr().out
    assert (out / ".lock").read_text() == f"{os.getpid()}\n"


def one_line_error(argv, capsys) -> str:
    """Run ``main(argv)``, expect exit code 1 and a single line on stderr; return it."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("infomax-ext train: error: "), err
    return err


def test_unusable_out_directories(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    err = one_line_error(["train", "--out", str(tmp_path / "file"), *TINY], capsys)
    assert f"--out {tmp_path / 'file'} is a file, not a directory" in err
    err = one_line_error(["train", "--out", str(tmp_path / "file" / "a" / "run"), *TINY], capsys)
    assert f"cannot be created: {tmp_path / 'file'} is a file" in err

    # The tests run as root, who may write anywhere: the refusals are mocked.
    (tmp_path / "read-only").mkdir()
    real_mkdir, real_open = Path.mkdir, os.open

    def mkdir(self, *args, **kwargs):
        if self.parent.name == "no-access":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    def open_(path, *args, **kwargs):
        if Path(path).parent.name == "read-only":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    err = one_line_error(["train", "--out", str(tmp_path / "no-access" / "run"), *TINY], capsys)
    assert f"cannot create --out {tmp_path / 'no-access' / 'run'}: Permission denied" in err
    err = one_line_error(["train", "--out", str(tmp_path / "read-only"), *TINY], capsys)
    assert f"cannot write to --out {tmp_path / 'read-only'}: Read-only file system" in err


class _DiskFull:
    """A file whose writes fail as on a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    from infomax_ext import trainer as trainer_module

    real_save, real_fdopen = trainer_module.write_checkpoint, os.fdopen

    def save(state, path):
        if state["epoch"] == 2:  # the disk is full from the second checkpoint on
            monkeypatch.setattr(os, "fdopen", lambda fd, *a: _DiskFull(real_fdopen(fd, *a)))
        real_save(state, path)

    monkeypatch.setattr(trainer_module, "write_checkpoint", save)
    out = tmp_path / "run"
    err = one_line_error(["train", "--out", str(out), "--epochs", "3", "--no-plots", *TINY[2:]],
                         capsys)
    assert (f"cannot write the checkpoint {out / 'checkpoint.pt'}: No space left on device "
            f"({out / 'checkpoint.pt'} still holds the last good state)") in err
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "checkpoint.pt", "checkpoint.sha256.json", "config.json",
        "metrics.jsonl"]  # no temporary file left
    monkeypatch.undo()
    resumed = Trainer.from_checkpoint(out / "checkpoint.pt", torch.zeros(1438, 64))
    assert resumed.epoch == 1 and [r["epoch"] for r in resumed.history] == [1]


def test_other_write_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from infomax_ext import serialization

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(serialization, "atomic_write_json", full)
    out = tmp_path / "run"
    err = one_line_error(["train", "--out", str(out), *TINY], capsys)
    assert f"error: No space left on device ({out / 'config.json'})" in err


def test_half_precision_data_is_converted_with_a_notice(tmp_path, capsys):
    x = torch.rand(40, 4)
    small = ["--no-plots", *TINY, "--batch-size", "8"]
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        torch.save({"x": x.to(dtype), "y": torch.arange(40) % 2}, tmp_path / f"{name}.pt")
        assert main(["train", "--data", str(tmp_path / f"{name}.pt"),
                     "--out", str(tmp_path / name), *small]) == 0
        out = capsys.readouterr().out
        assert (f"infomax-ext: notice: {tmp_path / name}.pt: entry 'x' holds {name} values; "
                "converted to float32 (exactly)") in out


def test_data_of_any_scale_trains_with_normalize(tmp_path, capsys):
    from sklearn.datasets import load_digits

    np.save(tmp_path / "raw.npy", load_digits().data * 16)  # 0..256
    raw = ["--data", str(tmp_path / "raw.npy"), "--no-plots", *TINY]
    err = one_line_error(["train", "--out", str(tmp_path / "b"), *raw], capsys)
    assert "values range over [0, 256] but the Bernoulli decoder needs them in [0, 1]; rescale " \
           "them with --normalize unit (or yourself: 8-bit images divide by 255), or use " \
           "--likelihood gaussian --normalize standardize" in err
    # unnormalised, the Gaussian run overflows at its first step (the notice says so)
    assert main(["train", "--out", str(tmp_path / "g"), "--likelihood", "gaussian", *raw]) == 1
    captured = capsys.readouterr()
    assert "notice: " in captured.out
    assert "rescale them with --normalize standardize" in captured.out
    assert "diverged at epoch 1" in captured.err
    for likelihood, normalize in (("gaussian", "standardize"), ("bernoulli", "unit")):
        out = tmp_path / normalize
        assert main(["train", "--out", str(out), "--likelihood", likelihood, "--normalize",
                     normalize, *raw]) == 0
        assert "notice" not in capsys.readouterr().out
        assert all(math.isfinite(r[k]) for r in jsonl(out / "metrics.jsonl")
                   for k in ("vae_loss", "mi_loss", "val_recon_loglik", "val_kl"))
        metrics = json.loads((out / "metrics.json").read_text())
        assert all(math.isfinite(metrics[k]) for k in ("mi", "recon_loglik", "kl"))
        assert json.loads((out / "config.json").read_text())["data"]["normalize"] == normalize
    err = usage_error(["train", "--resume", "--out", str(tmp_path / "unit"), "--normalize",
                       "standardize"], capsys)
    assert "--normalize standardize differs from the run's (unit)" in err
    assert main(["train", "--resume", "--out", str(tmp_path / "unit"), "--epochs", "3",
                 "--quiet"]) == 0
    assert "resuming at epoch 3 of 3" in capsys.readouterr().out


def test_progress_lines_in_logs(tmp_path, capsys):
    # stdout is captured here, not a terminal: one line per epoch (every epoch with interval 0)
    not_quiet = [a for a in TINY if a != "--quiet"]
    assert main(["train", "--out", str(tmp_path / "run"), "--no-plots", *not_quiet,
                 "--log-interval", "0"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " epoch " in line]
    assert [line.split(":")[0] for line in lines] == ["infomax epoch 1/2", "infomax epoch 2/2"]
    assert all(line.endswith(" samples/s") and ", MI " in line for line in lines)
    assert main(["train", "--out", str(tmp_path / "quiet"), "--no-plots", *TINY,
                 "--log-interval", "0"]) == 0
    assert " epoch " not in capsys.readouterr().out
    assert "--log-interval: must be a non-negative" in usage_error(
        ["train", "--log-interval", "-1"], capsys)


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--no-plots",
                     *TINY[2:]]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"config.json", "checkpoint.pt", "metrics.json", "model.pt", ".lock"} <= {
        p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {
        p.name: "0o640" for p in files}


def test_resume_after_a_kill_before_the_first_checkpoint_from_another_directory(
        tmp_path, capsys, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    x = np.random.default_rng(0).random((40, 4))
    np.save(tmp_path / "a" / "x.npy", x)
    monkeypatch.chdir(tmp_path / "a")
    real_fit = Trainer.fit

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", killed)
    small = ["--no-plots", *TINY, "--batch-size", "8"]
    assert main(["train", "--data", "x.npy", "--out", "../run", *small]) == 130
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["data"]["source"] == str(
        tmp_path / "a" / "x.npy")
    assert not (run / "checkpoint.pt").exists()
    stale = [run / ".checkpoint.pt.0123456789ab.tmp", run / ".metrics.jsonl.k2j4h1_x.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")

    monkeypatch.setattr(Trainer, "fit", real_fit)
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", "../run", "--quiet"]) == 0
    assert "infomax: no checkpoint in ../run yet; starting from epoch 0" in capsys.readouterr().out
    assert not any(path.exists() for path in stale)
    assert [r["epoch"] for r in jsonl(run / "metrics.jsonl")] == [1, 2]


def test_quiet_runs_without_tqdm(tmp_path, monkeypatch):
    for name in ("tqdm", "tqdm.auto"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    assert main(["train", "--out", str(tmp_path / "run"), "--no-plots", *TINY]) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_ctrl_c_leaves_a_resumable_run(tmp_path, capsys, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    out = str(tmp_path / "run")
    assert main(["train", "--out", out, *TINY]) == 130
    assert f"infomax-ext train --resume --out {out}" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "infomax_ext", "train", "--epochs", "-3"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "--epochs: must be a positive integer" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_training_extras_are_named(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else real(name, *a))
    assert main(["train", "--out", str(tmp_path / "run")]) == 1
    assert "pip install 'infomax_ext[train]'" in capsys.readouterr().err

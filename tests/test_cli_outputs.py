"""The commands for a trained model check every file they will write before any work: never
over their own input, never a directory or a path under a file; their errors name the file the
user asked for, not a temporary one."""
import argparse
import os
import shutil

import numpy as np
import pytest

from infomax_ext.cli import main
from infomax_ext.cli.common import CommandError
from infomax_ext.cli.model_io import check_outputs
from tiny_runs import digest, error_line, trained_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run directory and its data file (tiny_runs.trained_run)."""
    return trained_run(tmp_path_factory.mktemp("outputs"))


@pytest.mark.parametrize("command", ["encode", "reconstruct"])
def test_out_may_not_be_the_data_file(run, tmp_path, capsys, command, monkeypatch):
    run_dir, data = run
    mine = tmp_path / "mine.npy"
    shutil.copy(data, mine)
    before = digest(mine)
    os.symlink(mine, tmp_path / "link.npy")
    os.link(mine, tmp_path / "hard.npy")
    monkeypatch.chdir(tmp_path)
    # the same file: by its name, another spelling of it, a symlink to it, a hard link to it
    (tmp_path / "sub").mkdir()
    extra = ["--no-plots"] if command == "reconstruct" else []
    for out in ("mine.npy", str(mine), "sub/../mine.npy", "link.npy", "hard.npy"):
        assert error_line([command, str(run_dir), "--data", "mine.npy", "--out", out, *extra],
                          capsys) == (
            f"infomax-ext {command}: error: --out {out} is the --data file: writing it would "
            "replace the input; choose another file name")
        assert digest(mine) == before and np.load(mine).shape == (40, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.npy", "link.npy", "mine.npy",
                                                          "sub"]


def test_an_output_may_not_be_the_labels_file(tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(4))
    args = argparse.Namespace(data=None, labels=str(labels))
    with pytest.raises(CommandError, match=r"^--out .*labels\.npy is the --labels file: writing "
                                           "it would replace the input"):
        check_outputs(args, [("--out", labels)])
    check_outputs(args, [("--out", tmp_path / "codes.npy")])  # another file: fine


def test_the_png_is_checked_before_the_npy_is_written(run, tmp_path, capsys):
    run_dir, data = run
    (tmp_path / "s.png").mkdir()
    assert error_line(["sample", str(run_dir), "--out", str(tmp_path / "s.npy")], capsys) == (
        f"infomax-ext sample: error: the PNG {tmp_path / 's.png'} is a directory; it must be a "
        "file name (remove it or pass --no-plots)")
    (tmp_path / "r.png").mkdir()
    assert error_line(["reconstruct", str(run_dir), "--data", str(data), "--out",
                       str(tmp_path / "r.npy")], capsys).endswith(
        f"the PNG {tmp_path / 'r.png'} is a directory; it must be a file name (remove it or "
        "pass --no-plots)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png", "s.png"]  # no .npy, no temp
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "s.npy"), "--no-plots"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (64, 4)


def test_evaluate_checks_its_files_before_measuring(run, tmp_path, capsys):
    run_dir, data = run
    out = tmp_path / "ev"
    (out / "latent_space.png").mkdir(parents=True)
    assert error_line(["evaluate", str(run_dir), "--data", str(data), "--out", str(out)],
                      capsys) == (
        f"infomax-ext evaluate: error: the output {out / 'latent_space.png'} is a directory; it "
        "must be a file name (remove it or pass --no-plots)")
    assert [p.name for p in out.iterdir()] == ["latent_space.png"]  # no metrics.json
    (tmp_path / "file").write_text("keep")
    assert error_line(["evaluate", str(run_dir), "--data", str(data), "--out",
                       str(tmp_path / "file" / "ev")], capsys) == (
        f"infomax-ext evaluate: error: --out {tmp_path / 'file' / 'ev'} cannot be created: "
        f"{tmp_path / 'file'} is a file")


def test_out_under_a_file_is_named(run, tmp_path, capsys):
    run_dir, data = run
    (tmp_path / "ok.npy").write_bytes(b"keep")
    out = tmp_path / "ok.npy" / "x.npy"
    assert error_line(["encode", str(run_dir), "--data", str(data), "--out", str(out)],
                      capsys) == (
        f"infomax-ext encode: error: --out {out} cannot be written: {tmp_path / 'ok.npy'} is a "
        "file, not a directory")
    assert (tmp_path / "ok.npy").read_bytes() == b"keep"
    (tmp_path / "dir.npy").mkdir()
    assert error_line(["encode", str(run_dir), "--data", str(data), "--out",
                       str(tmp_path / "dir.npy")], capsys) == (
        f"infomax-ext encode: error: --out {tmp_path / 'dir.npy'} is a directory; it must be a "
        "file name")


def test_encode_ignores_labels_it_does_not_use(run, tmp_path, capsys):
    run_dir, _ = run
    x = np.random.default_rng(1).random((40, 4))
    np.savez(tmp_path / "short_labels.npz", x=x, y=np.arange(39))  # one label short
    out = tmp_path / "codes.npy"
    assert main(["encode", str(run_dir), "--data", str(tmp_path / "short_labels.npz"), "--out",
                 str(out)]) == 0
    assert np.load(out).shape == (40, 2)
    assert "39 labels for 40 samples" in error_line(  # evaluate uses them: refused there
        ["evaluate", str(run_dir), "--data", str(tmp_path / "short_labels.npz")], capsys)

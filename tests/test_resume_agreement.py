"""Resume never mixes settings: checkpoint, config.json, command line and data must agree, and a
disagreement is refused before anything in the run directory is written."""
import json
import shutil

import pytest
import torch

from infomax_ext.cli import main
from infomax_ext.trainer import Trainer, TrainConfig
from tiny_runs import TINY_RUN, resign_checkpoint, rewrite_checkpoint, save_data, snapshot, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny one-epoch runs: ``alpha10`` and ``alpha0`` and ``latent3`` on x.npy, ``other`` on
    y.npy (same shape, other values), ``compare`` (--compare-vae) on x.npy."""
    root = tmp_path_factory.mktemp("agreement")
    x, y = save_data(root / "x.npy", seed=0), save_data(root / "y.npy", seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(root / "alpha10", x) == 0
        assert train(root / "alpha0", x, "--alpha", "0") == 0
        assert train(root / "latent3", x, "--latent-dim", "3") == 0
        assert train(root / "other", y) == 0
        assert train(root / "compare", x, "--compare-vae") == 0
    finally:
        torch.set_num_threads(threads)
    return root


def copy_run(runs, name, tmp_path):
    shutil.copytree(runs / name, tmp_path / name)
    return tmp_path / name


def copy_checkpoint(source, target):
    """Put ``source``'s checkpoint and its digest file in ``target`` (a consistent pair)."""
    for name in ("checkpoint.pt", "checkpoint.sha256.json"):
        shutil.copyfile(source / name, target / name)


def resume_error(out, capsys, *extra) -> str:
    code = main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet",
                 "--no-plots", *extra])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_checkpoint_of_an_alpha_0_run_in_an_alpha_10_run_is_refused(runs, tmp_path, capsys):
    out = copy_run(runs, "alpha10", tmp_path)
    copy_checkpoint(runs / "alpha0", out)
    before = snapshot(out)
    assert resume_error(out, capsys) == (
        f"infomax-ext train: error: {out / 'checkpoint.pt'} was trained with alpha 0.0, but the "
        "run's config.json (and the command line) say 10.0: a resumed run never mixes settings; "
        "resume with the matching run directory, or start a new run")
    assert snapshot(out) == before
    assert "alpha 0.0" in resume_error(out, capsys, "--alpha", "10")


def test_an_edited_config_json_is_detected(runs, tmp_path, capsys):
    out = copy_run(runs, "alpha10", tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["train"]["beta"] = 4.0
    (out / "config.json").write_text(json.dumps(config))
    before = snapshot(out)
    assert "was trained with beta 2.0, but the run's config.json (and the command line) say 4.0" \
        in resume_error(out, capsys)
    assert snapshot(out) == before
    config["train"]["beta"], config["data"]["fingerprint"] = 2.0, "0" * 64
    (out / "config.json").write_text(json.dumps(config))
    err = resume_error(out, capsys)
    assert "is not the run's (fingerprint 000000000000...)" in err
    config["data"]["fingerprint"] = "not a digest"
    (out / "config.json").write_text(json.dumps(config))
    assert "config.json: data.fingerprint 'not a digest' is not a valid entry" in resume_error(
        out, capsys)


def test_a_checkpoint_of_another_latent_size_changes_nothing(runs, tmp_path, capsys):
    out = copy_run(runs, "alpha10", tmp_path)
    copy_checkpoint(runs / "latent3", out)
    before = snapshot(out)
    assert "was trained with latent_dim 3, but the run's config.json (and the command line) " \
        "say 2" in resume_error(out, capsys)
    assert snapshot(out) == before  # model/ and metrics.json untouched

    # the same checkpoint with this run's options but its own (latent 3) model
    own = json.loads((out / "config.json").read_text())["train"]
    rewrite_checkpoint(out / "checkpoint.pt", lambda s: s.update(config=own))
    assert f"{out / 'checkpoint.pt'} holds a model whose vae.encoder.n_latent is 3, but the " \
        "run's options build 2 for this data: not this run's model" in resume_error(out, capsys)


def test_a_checkpoint_of_other_data_is_refused_by_its_fingerprint(runs, tmp_path, capsys):
    out = copy_run(runs, "alpha10", tmp_path)
    copy_checkpoint(runs / "other", out)
    err = resume_error(out, capsys)
    assert f"{out / 'checkpoint.pt'} was trained on data of fingerprint" in err
    assert "the run's data has fingerprint" in err and err.endswith("not the same data")
    rewrite_checkpoint(out / "checkpoint.pt", lambda s: s.pop("data_fingerprint"))
    assert "records no data fingerprint" in resume_error(out, capsys)


def test_a_python_api_checkpoint_without_a_fingerprint_is_refused(runs, tmp_path, capsys):
    out = copy_run(runs, "alpha10", tmp_path)
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["train"])
    trainer = Trainer.create(config, torch.rand(32, 4), progress=False)
    trainer.save_checkpoint(out / "checkpoint.pt")
    assert "records no data fingerprint" in resume_error(out, capsys)


def test_a_moved_data_file_may_be_given_again(runs, tmp_path, capsys):
    out = copy_run(runs, "alpha10", tmp_path)
    config = json.loads((out / "config.json").read_text())
    moved = tmp_path / "elsewhere" / "x.npy"
    moved.parent.mkdir()
    shutil.copyfile(runs / "x.npy", moved)
    config["data"]["source"] = str(tmp_path / "gone.npy")  # where it was
    (out / "config.json").write_text(json.dumps(config))
    before = snapshot(out)
    assert resume_error(out, capsys).endswith(
        f"the run's data file {tmp_path / 'gone.npy'} is not there any more; if it moved, give its "
        "new place with --data (its contents must have the run's fingerprint)")
    assert "is not the run's" in resume_error(out, capsys, "--data", str(runs / "y.npy"))
    assert snapshot(out) == before
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet", "--no-plots",
                 "--data", str(moved)]) == 0
    assert "resuming at epoch 2 of 2" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["data"]["source"] == str(moved)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_compare_runs_check_both_checkpoints_before_training_either(runs, tmp_path, capsys):
    out = copy_run(runs, "compare", tmp_path)
    copy_checkpoint(out / "infomax", out / "vae")  # an alpha = 10 checkpoint for the plain VAE
    before = snapshot(out)
    assert f"{out / 'vae' / 'checkpoint.pt'} was trained with alpha 10.0, but the run's " \
        "config.json (and the command line) say 0.0" in resume_error(out, capsys)
    assert snapshot(out) == before  # infomax/ was not trained either

    out = copy_run(runs, "compare", tmp_path / "b")
    sub = json.loads((out / "vae" / "config.json").read_text())
    sub["train"]["lr"] = 0.1
    (out / "vae" / "config.json").write_text(json.dumps(sub))
    assert f"{out / 'vae' / 'config.json'} says lr 0.1, the run's config.json gives 0.0005" in \
        resume_error(out, capsys)

    config = json.loads((out / "config.json").read_text())
    config["compare_vae"] = False
    (out / "config.json").write_text(json.dumps(config))
    assert "config.json says compare_vae false, but" in resume_error(out, capsys)


def test_options_on_the_command_line_still_name_both_values(runs, tmp_path, capsys):
    out = copy_run(runs, "alpha10", tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", "--out", str(out), "--latent-dim", "3", *TINY_RUN[2:]])
    assert exc.value.code == 2
    assert "--latent-dim 3 differs from the value the run was started with (2)" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--resume", "--out", str(out), "--normalize", "unit", "--quiet"])
    assert "--normalize unit differs from the run's (none)" in capsys.readouterr().err


def test_an_unchanged_resume_goes_on(runs, tmp_path, capsys):
    out = copy_run(runs, "alpha10", tmp_path)
    resign_checkpoint(out / "checkpoint.pt")  # the same digest again: nothing changes
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet",
                 "--no-plots", "--data", str(runs / "x.npy")]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["data_fingerprint"]) == 64
    assert state["data_fingerprint"] == json.loads(
        (out / "config.json").read_text())["data"]["fingerprint"]

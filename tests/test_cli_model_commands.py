"""The commands for a trained model (evaluate, encode, reconstruct, sample, --version) on CSV
data in raw units, with a tiny model trained once for the module."""
import json
import shutil

import numpy as np
import pytest
import torch

import infomax_ext
from infomax_ext import InfoMaxVAE
from infomax_ext.cli import main
from infomax_ext.evaluation import encoder_mean
from infomax_ext.plots import decoder_mean
from infomax_ext.preprocessing import PREPROCESSING_FILE
from tiny_runs import as_saved_before_the_file_existed, error_line, usage_error

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURES = ["height", "width", "depth", "mass", "speed", "age"]
SMALL = ["--epochs", "2", "--latent-dim", "3", "--encoder-neurons", "16", "--decoder-neurons",
         "16", "--mi-neurons", "16", "--eval-mi-steps", "10", "--batch-size", "16", "--quiet"]


def write_csv(path, x, labels, header=True):
    lines = [",".join(FEATURES + ["kind"])] if header else []
    lines += [",".join(repr(float(v)) for v in row) + f",{label}" for row, label in zip(x, labels)]
    path.write_text("\n".join(lines) + "\n")


def raw_table(n, seed):
    g = np.random.default_rng(seed)
    kinds = g.integers(0, 3, n)
    x = g.normal(size=(n, 6)) * 40.0 + 1000.0 + 60.0 * kinds[:, None]  # far from unit scale
    return x, np.array(["ash", "birch", "cedar"])[kinds]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory trained on raw CSV data (gaussian, --normalize standardize), and the raw
    training and new data."""
    base = tmp_path_factory.mktemp("model_commands")
    x, labels = raw_table(80, 0)
    write_csv(base / "train.csv", x, labels)
    new_x, new_labels = raw_table(40, 1)
    write_csv(base / "new.csv", new_x, new_labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--data", str(base / "train.csv"), "--label-column", "kind",
                     "--likelihood", "gaussian", "--normalize", "standardize", "--no-plots",
                     "--out", str(base / "run"), *SMALL])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return {"dir": base, "run": base / "run", "x": x, "new_x": new_x, "new_labels": new_labels}


def model_input(raw, prep):
    """The model's input computed here: (float32 raw - shift) / scale in float64, as float32."""
    x = np.asarray(raw, dtype=np.float32).astype(np.float64)
    return torch.from_numpy(((x - prep.shift) / prep.scale).astype(np.float32))


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"infomax-ext {infomax_ext.__version__} (torch {torch.__version__}")


def test_evaluate_on_the_training_data_repeats_the_runs_metrics(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run["run"]), "--data", str(run["dir"] / "train.csv"),
                 "--label-column", "kind"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    saved = json.loads((run["run"] / "metrics.json").read_text())
    # same data, split, seed and MI steps as training's own evaluation: the same numbers
    for key in ("mi", "active_units", "probe_accuracy", "recon_loglik", "kl", "elbo",
                "latent_variances", "n_train", "n_test"):
        assert metrics[key] == saved[key], key
    assert metrics["data"]["training_data"] is True
    assert "is the model's training data" in captured.err


def test_evaluate_new_data_writes_json_and_plots(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(run["run"]), "--data", str(run["dir"] / "new.csv"),
                 "--label-column", "kind", "--out", str(out), "--val-fraction", "0.5",
                 "--eval-mi-steps", "5"]) == 0
    assert "infomax-ext evaluate: MI" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_test"] == 20 and metrics["n_train"] == 20 and metrics["latent_dim"] == 3
    assert 0.0 <= metrics["probe_accuracy"] <= 1.0
    assert metrics["data"]["training_data"] is False and metrics["eval_mi_steps"] == 5
    assert metrics["preprocessing"]["kind"] == "standardize"
    for png in ("latent_space.png", "reconstructions.png", "active_units.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the run directory itself is refused as --out: its metrics.json would be replaced
    err = error_line(["evaluate", str(run["run"]), "--data", str(run["dir"] / "new.csv"),
                      "--label-column", "kind", "--out", str(run["run"])], capsys)
    assert err.startswith("infomax-ext evaluate: error: --out") and "holds a training run" in err


def test_encode_applies_the_normalisation_to_raw_data(run, tmp_path, capsys):
    model = InfoMaxVAE.load(run["run"] / "model")
    prep = model.preprocessing
    assert prep.kind == "standardize" and prep.sample_shape == (6,) and prep.image_shape is None
    x = model_input(run["new_x"], prep)
    for target in (run["run"], run["run"] / "model"):  # a run dir and a model dir alike
        out = tmp_path / "codes.npy"
        assert main(["encode", str(target), "--data", str(run["dir"] / "new.csv"),
                     "--label-column", "kind", "--out", str(out)]) == 0
        codes = np.load(out)
        assert codes.shape == (40, 3) and codes.dtype == np.float32
        assert np.array_equal(codes, encoder_mean(model.vae, x).numpy())
    assert main(["encode", str(run["run"]), "--data", str(run["dir"] / "new.csv"),
                 "--label-column", "-1", "--codes", "logvar", "--out", str(out)]) == 0
    with torch.no_grad():
        logsigma = model.vae.encoder(x)[1]
    assert np.allclose(np.load(out), 2 * logsigma.numpy(), rtol=0, atol=1e-6)
    draws = []
    for seed in ("4", "4", "5"):
        assert main(["encode", str(run["run"]), "--data", str(run["dir"] / "new.csv"),
                     "--label-column", "kind", "--codes", "sample", "--seed", seed,
                     "--out", str(out)]) == 0
        draws.append(np.load(out))
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])


def test_reconstruct_in_the_data_units_and_the_model_units(run, tmp_path, capsys):
    model = InfoMaxVAE.load(run["run"] / "model")
    prep = model.preprocessing
    x = model_input(run["new_x"], prep)
    with torch.no_grad():
        rec = decoder_mean(model.vae, model.vae.encoder(x)[0]).double()
    out = tmp_path / "rec.npy"
    assert main(["reconstruct", str(run["run"]), "--data", str(run["dir"] / "new.csv"),
                 "--label-column", "kind", "--out", str(out)]) == 0
    raw_units = np.load(out)
    assert raw_units.shape == (40, 6)
    want = (rec * prep.scale + prep.shift).float().numpy()
    assert np.array_equal(raw_units, want)
    # reconstructions in raw units lie near the data's scale, not the model's
    assert abs(raw_units.mean() - run["new_x"].mean()) < 3 * run["new_x"].std()
    assert (tmp_path / "rec.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["reconstruct", str(run["run"]), "--data", str(run["dir"] / "new.csv"),
                 "--label-column", "kind", "--model-units", "--no-plots", "--out", str(out)]) == 0
    assert np.array_equal(np.load(out), rec.float().numpy())


def test_sample_draws_from_the_prior_in_the_data_units(run, tmp_path):
    model = InfoMaxVAE.load(run["run"] / "model")
    prep = model.preprocessing
    out = tmp_path / "s.npy"
    assert main(["sample", str(run["run"] / "model"), "--n", "7", "--seed", "3",
                 "--out", str(out)]) == 0
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = (model.vae.decoder(z).mu.double() * prep.scale + prep.shift).float()
    assert np.array_equal(np.load(out), want.numpy())
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_an_old_model_dir_without_preprocessing_still_works(run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(run["run"] / "model", old)
    (old / PREPROCESSING_FILE).unlink()
    as_saved_before_the_file_existed(old)
    model = InfoMaxVAE.load(old)
    x = np.asarray(run["new_x"], dtype=np.float32) / 1000.0  # data in the model's own units
    np.save(tmp_path / "x.npy", x)
    assert main(["encode", str(old), "--data", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "c.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "c.npy"),
                          encoder_mean(model.vae, torch.from_numpy(x)).numpy())
    assert main(["sample", str(old), "--n", "4", "--out", str(tmp_path / "s.npy")]) == 0


def test_data_and_directory_errors_exit_1_with_one_line(run, tmp_path, capsys):
    data = str(run["dir"] / "new.csv")
    out = ["--out", str(tmp_path / "c.npy")]
    cases = [
        (["encode", str(tmp_path / "nowhere"), "--data", data, *out], "not found"),
        (["encode", data, "--data", data, *out], "is a file; give a run directory"),
        (["encode", str(tmp_path), "--data", data, *out], "is neither a run directory"),
        (["encode", str(run["run"]), "--data", data, *out],
         f"row 2, column 7 ('kind'): '{run['new_labels'][0]}' is not a number"),
        (["encode", str(run["run"]), "--data", str(tmp_path / "missing.csv"), *out],
         "data file not found"),
    ]
    wide = tmp_path / "wide.csv"
    wide.write_text("\n".join(",".join(["1.0"] * 8) for _ in range(10)) + "\n")
    cases.append((["encode", str(run["run"]), "--data", str(wide), *out],
                  "samples of shape (8,), but the model was trained on samples of shape (6,)"))
    compare = tmp_path / "cmp"
    (compare / "infomax").mkdir(parents=True)
    (compare / "vae").mkdir()
    cases.append((["sample", str(compare), "--out", str(tmp_path / "s.npy")],
                  "is a --compare-vae run holding two models"))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    cases.append((["sample", str(unfinished), "--out", str(tmp_path / "s.npy")],
                  "holds a run without a trained model"))
    for argv, message in cases:
        err = error_line(argv, capsys)
        assert err.startswith(f"infomax-ext {argv[0]}: error: ") and message in err, err
    assert not (tmp_path / "c.npy").exists()


def test_a_bernoulli_model_refuses_data_outside_the_unit_range(tmp_path, capsys):
    g = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", g.random((40, 4)))
    assert main(["train", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"),
                 "--no-plots", *SMALL]) == 0
    np.save(tmp_path / "big.npy", g.random((40, 4)) * 255)
    err = error_line(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "big.npy")],
                     capsys)
    assert "the values range over" in err and "Bernoulli decoder needs them in [0, 1]" in err


@pytest.mark.parametrize("argv, message", [
    (["encode", "d", "--data", "x.csv", "--out", "codes.txt"], "expected a .npy file name"),
    (["encode", "d", "--data", "x.csv", "--out", "c.npy", "--codes", "median"],
     "--codes: invalid choice"),
    (["encode", "d", "--out", "c.npy"], "the following arguments are required: --data"),
    (["evaluate", "d", "--data", "x.csv", "--val-fraction", "1"], "must lie strictly between"),
    (["sample", "d", "--out", "s.npy", "--n", "0"], "--n: must be a positive integer"),
    (["reconstruct", "d", "--data", "x.csv", "--out", "r.npy", "--device", "tpu"],
     "unknown device 'tpu'"),
])
def test_bad_options_exit_2_with_the_commands_usage(capsys, argv, message):
    err = usage_error(argv, capsys)
    assert f"usage: infomax-ext {argv[0]}" in err and message in err


def test_resume_errors_print_the_train_usage(capsys, tmp_path):
    err = usage_error(["train", "--resume"], capsys)
    assert "usage: infomax-ext train" in err and "--resume needs --out DIR" in err


def test_device_auto_is_echoed_as_the_device_chosen(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(3).random((24, 4)))
    assert main(["train", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"),
                 "--device", "auto", "--no-plots", "--epochs", "1", *SMALL[2:]]) == 0
    chosen = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert f"device {chosen} (auto)" in capsys.readouterr().out


def test_encode_a_single_sample(run, tmp_path):
    one = tmp_path / "one.csv"
    write_csv(one, run["new_x"][:1], run["new_labels"][:1])
    assert main(["encode", str(run["run"]), "--data", str(one), "--label-column", "kind",
                 "--out", str(tmp_path / "c.npy")]) == 0
    model = InfoMaxVAE.load(run["run"] / "model")
    want = encoder_mean(model.vae, model_input(run["new_x"][:1], model.preprocessing))
    assert np.array_equal(np.load(tmp_path / "c.npy"), want.numpy())


def test_resume_keeps_the_label_column_and_the_preprocessing(run, tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["--likelihood", "gaussian", "--normalize", "unit", "--no-plots", *SMALL[2:]]
    assert main(["train", "--data", str(run["dir"] / "train.csv"), "--label-column", "kind",
                 "--out", out, "--epochs", "1", *args]) == 0
    first = InfoMaxVAE.load(tmp_path / "run" / "model").preprocessing
    x64 = run["x"].astype(np.float32).astype(np.float64)
    assert first.kind == "unit" and first.shift == x64.min()
    assert first.scale == x64.max() - x64.min()
    assert main(["train", "--resume", "--out", out, "--epochs", "2", "--quiet"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["label_column"] == "kind"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["probe_accuracy"] is not None
    assert InfoMaxVAE.load(tmp_path / "run" / "model").preprocessing == first
    err = usage_error(["train", "--resume", "--out", out, "--label-column", "0"], capsys)
    assert "--label-column 0 differs from the run's (kind)" in err


def test_evaluate_a_digits_run_on_the_digits(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-plots", "--epochs", "1", "--latent-dim", "2",
                 "--encoder-neurons", "8", "--decoder-neurons", "8", "--mi-neurons", "8",
                 "--eval-mi-steps", "5", "--batch-size", "256", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "digits"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("mi", "active_units", "probe_accuracy", "recon_loglik", "kl"):
        assert metrics[key] == saved[key], key
    assert metrics["data"]["training_data"] is True

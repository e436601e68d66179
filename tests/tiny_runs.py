"""Tiny ``infomax-ext train`` runs and what tests do to their files (as a writer would)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from infomax_ext.checkpoint import DIGEST_FORMAT, digest_path
from infomax_ext.cli import main
from infomax_ext.serialization import config_digest

TINY_RUN = ["--latent-dim", "2", "--encoder-neurons", "8", "--decoder-neurons", "8",
            "--mi-neurons", "8", "--eval-mi-steps", "5", "--batch-size", "8", "--quiet",
            "--no-plots"]


def save_data(path: Path, seed: int = 0, n: int = 40, size: int = 4) -> Path:
    """A ``.npy`` file of ``n`` samples of ``size`` values in [0, 1)."""
    np.save(path, np.random.default_rng(seed).random((n, size)))
    return path


def train(out: Path, data: Path, *extra: str, epochs: int = 1) -> int:
    """``infomax-ext train`` of a tiny model on ``data`` into ``out``; the exit code."""
    return main(["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
                 *TINY_RUN, *extra])


def trained_run(base: Path) -> tuple[Path, Path]:
    """``(base/run, base/train.npy)``: a tiny run after one epoch on one thread, trained on (40,
    4) samples in [0, 1) (for a module-scoped fixture: each test that changes it copies it)."""
    data = save_data(base / "train.npy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(base / "run", data) == 0
    finally:
        torch.set_num_threads(threads)
    return base / "run", data


def error_line(argv: list[str], capsys, code: int = 1) -> str:
    """Run ``main(argv)``; expect exit code ``code`` and one line on stderr, return it."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def usage_error(argv: list[str], capsys) -> str:
    """Run ``main(argv)``, expect argparse's exit code 2, return stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def digest(path: Path) -> str:
    """The SHA-256 of the file ``path``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resign_checkpoint(path: Path) -> None:
    """Record the digest of checkpoint ``path`` as it is now in its companion file."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    digest_path(path).write_text(json.dumps({"format": DIGEST_FORMAT, "sha256": digest}))


def rewrite_checkpoint(path: Path, change) -> None:
    """Load checkpoint ``path``, apply ``change(state)`` to it, save it and re-sign it."""
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    resign_checkpoint(path)


def resign_model(directory: Path) -> None:
    """Recompute both digests of ``directory/model_config.json`` for the files as they are."""
    path = directory / "model_config.json"
    config = json.loads(path.read_text())
    config["weights_sha256"] = hashlib.sha256((directory / "model.pt").read_bytes()).hexdigest()
    config["config_sha256"] = config_digest(config)
    path.write_text(json.dumps(config))


def as_saved_before_the_file_existed(directory: Path) -> None:
    """Make the model ``directory`` (without its preprocessing.json) look as saved before that
    file and its digest existed: the digest's entry removed, the config signed again."""
    path = directory / "model_config.json"
    config = json.loads(path.read_text())
    del config["preprocessing_sha256"]
    path.write_text(json.dumps(config))
    resign_model(directory)


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` (but the lock) with its bytes and modification time."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}

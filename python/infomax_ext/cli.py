"""The ``infomax-ext`` command (also ``python -m infomax_ext``).

``infomax-ext train`` trains an InfoMax VAE on scikit-learn's handwritten digits (or on a
``.npy`` / ``.npz`` / ``.pt`` file), evaluates it on a held-out split and writes a run directory::

    DIR/config.json        the data (absolute path, --normalize) and every training option
    DIR/checkpoint.pt      written atomically after every epoch (--resume continues from it,
                           from any working directory)
    DIR/metrics.jsonl      one JSON object per epoch
    DIR/metrics.json       final held-out metrics: mi, active_units, probe_accuracy,
                           recon_loglik, kl, elbo, ...
    DIR/model/             the trained model (InfoMaxVAE.load(DIR/model))
    DIR/*.png              training curves, latent space, reconstructions, prior samples,
                           active units
    DIR/.lock              held (flock) by the run in progress, with its pid: a second run
                           into DIR stops at once

With ``--compare-vae`` the same architecture is also trained with ``alpha = 0`` (a plain VAE)
under the same seed and budget: DIR/infomax/ and DIR/vae/ are two such run directories, and
DIR/comparison.md, DIR/comparison.json and DIR/comparison.png set them side by side.

Started by torchrun (``torchrun --nproc-per-node K -m infomax_ext train ...``), the processes
train one model data-parallel (:mod:`infomax_ext.distributed`): rank 0 alone decides and writes
the run directory (config.json records ``world_size`` and the backend), reads what --resume
continues and sends it to the others, prints, and evaluates; a ``.npy`` file is memory-mapped
and each process reads the rows of its batches. A restart by ``torchrun --max-restarts``
resumes the run in --out from its last checkpoint.

Exit codes: 0 done, 1 the data, the run directory or a saved run cannot be used, or training
diverged (message says why), 2 bad command-line options, 130 interrupted (the last checkpoint is
intact; ``--resume`` continues).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

__all__ = ["main", "build_parser"]

PROG = "infomax-ext"
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
METRICS_SUMMARY = "metrics.json"
RESUMABLE = {"epochs", "device"}


class CommandError(Exception):
    """A problem reported as ``infomax-ext train: error: ...`` with exit code 1."""


# ----------------------------------------------------------------------------- option types

def _int_at_least(text: str, minimum: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be a {kind} integer, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            "must be at least 2 (the MI bound shuffles codes across a batch)")
    return value


def _nonneg_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def _seed(text: str) -> int:
    from .trainer import SEED_LIMIT

    value = _nonneg_int(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be below 2**63 = {SEED_LIMIT}, got {value}")
    return value


def _float(text: str, *, strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        kind = "a positive" if strict else "a non-negative"
        raise argparse.ArgumentTypeError(f"must be {kind} finite number, got {text}")
    return value


def _nonneg_float(text: str) -> float:
    return _float(text, strict=False)


def _positive_float(text: str) -> float:
    return _float(text, strict=True)


def _fraction(text: str) -> float:
    value = _nonneg_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def _layers(text: str) -> list[int]:
    """``"256,128"`` -> [256, 128]; ``""`` or ``"none"`` -> [] (no hidden layer)."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 256,128, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return sizes


def _device(text: str) -> str:
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text!r} asked for, but CUDA is not available on this machine")
    return text


# ----------------------------------------------------------------------------- parser

# (flag, TrainConfig field, type, metavar, help)
_TRAIN_OPTIONS = [
    ("--latent-dim", "latent_dim", _positive_int, "D", "latent dimensions d"),
    ("--encoder-neurons", "encoder_neurons", _layers, "W,W", "encoder hidden layer widths"),
    ("--decoder-neurons", "decoder_neurons", _layers, "W,W", "decoder hidden layer widths"),
    ("--mi-neurons", "mi_neurons", _layers, "W,W", "MI chain hidden layer widths"),
    ("--beta", "beta", _nonneg_float, "B", "weight of the KL term"),
    ("--alpha", "alpha", _nonneg_float, "A", "weight of the MI term (0: a plain beta-VAE)"),
    ("--epochs", "epochs", _positive_int, "N",
     "total training epochs (with --resume: the new total)"),
    ("--batch-size", "batch_size", _batch_size, "N", "samples per batch (>= 2)"),
    ("--lr", "lr", _positive_float, "LR", "Adam learning rate of the VAE"),
    ("--mi-lr", "mi_lr", _positive_float, "LR", "Adam learning rate of the MI chain"),
    ("--seed", "seed", _seed, "S",
     "seed (0 <= S < 2**63) of the weights, batch order, samples, split and evaluation"),
    ("--device", "device", _device, "DEV", "cpu, cuda, cuda:N or auto"),
    ("--val-fraction", "val_fraction", _fraction, "F", "fraction of the data held out for evaluation"),
    ("--active-threshold", "active_threshold", _nonneg_float, "T",
     "a unit is active when Var_x E[z_j|x] exceeds T"),
    ("--eval-mi-steps", "eval_mi_steps", _positive_int, "N",
     "training steps of the fresh MI chain that measures I(x; z) on held-out data"),
    ("--checkpoint-every", "checkpoint_every", _positive_int, "N", "checkpoint every N epochs"),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``infomax-ext``."""
    from .activations import HIDDEN_ACTIVATIONS
    from .data import LIKELIHOODS, NORMALIZATIONS
    from .trainer import NEGATIVES, TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog=PROG, description="InfoMax VAE: train, evaluate and compare with a plain VAE.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train", help="train an InfoMax VAE and evaluate it on held-out data",
        description=(
            "Train an InfoMax VAE (a VAE plus an MI chain; loss -loglik + beta KL - alpha I) on\n"
            "scikit-learn's handwritten digits or on your own data, evaluate it on a held-out\n"
            "split (MI, active units, logistic-regression probe, reconstruction, KL) and write a\n"
            "run directory with checkpoints, metrics and plots. --compare-vae adds a plain VAE\n"
            "(alpha = 0) with the same seed and budget and prints a side-by-side table."),
        epilog=("Examples:\n  infomax-ext train --compare-vae\n"
                "  infomax-ext train --data images.npz --latent-dim 16 --epochs 50 --out runs/mine\n"
                "  infomax-ext train --resume --out runs/mine --epochs 80"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = train.add_argument_group("data")
    data.add_argument("--data", metavar="FILE", default=None,
                      help=".npy, .npz or .pt file of samples (N, ...), optionally with labels "
                           "(.npz/.pt keys x and y); default: scikit-learn's digits")
    data.add_argument("--labels", metavar="FILE", default=None,
                      help="labels (N,) for --data when the file holds none")
    data.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                      help=f"decoder distribution (default {defaults.likelihood}; bernoulli "
                           "needs data in [0, 1])")
    data.add_argument("--normalize", choices=NORMALIZATIONS, default=None,
                      help="rescale the samples by one shift and scale over all values of the "
                           "data set: unit (min-max to [0, 1]), standardize (to mean 0 and "
                           "variance 1) or none (default)")
    model = train.add_argument_group("model and training")
    for flag, dest, type_, metavar, text in _TRAIN_OPTIONS:
        default = getattr(defaults, dest)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        model.add_argument(flag, dest=dest, type=type_, metavar=metavar, default=None,
                           help=f"{text} (default {shown})")
    model.add_argument("--activation", choices=HIDDEN_ACTIVATIONS, default=None,
                       help=f"hidden-layer activation (default {defaults.activation})")
    model.add_argument("--reuse-forward", action="store_const", const=True, default=None,
                       help="one forward pass feeds both updates (the paper's cheaper scheme)")
    model.add_argument("--shuffled-grad", action="store_const", const=True, default=None,
                       help="let the MI gradient reach the encoder through the shuffled codes too")
    model.add_argument("--negatives", choices=NEGATIVES, default=None,
                       help="under torchrun: shuffle the codes over the whole batch of all "
                            "processes (global, the single-process bound) or within each "
                            f"process's share (local: no codes travel) (default {defaults.negatives})")
    run = train.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", default=None,
                     help="run directory (default: a new folder under runs/)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out DIR from its last checkpoint")
    run.add_argument("--compare-vae", action="store_true",
                     help="also train the same model with alpha = 0 and compare the two")
    run.add_argument("--dist-backend", choices=("gloo", "nccl"), default=None,
                     help="torch.distributed backend under torchrun (default nccl for a CUDA "
                          "--device, gloo otherwise)")
    run.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                     help="CPU threads for torch (default 1: robust when other jobs share the "
                          "cores; on idle cores 2 threads train these networks about 1.5x faster)")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bar (shown when stderr is a terminal) and no progress "
                          "lines (printed when stdout is not a terminal)")
    run.add_argument("--log-interval", type=_nonneg_float, default=5.0, metavar="S",
                     help="at most one progress line every S seconds when stdout is not a "
                          "terminal (a log file, CI), and the last epoch's (default 5)")
    train.set_defaults(func=_cmd_train)
    return parser


# ----------------------------------------------------------------------------- helpers

def _say(text: str = "") -> None:
    print(text, flush=True)


def _default_out() -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / stamp
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{stamp}-{k}")
    return out


def _holds_run(directory: Path) -> bool:
    return (directory / CONFIG_FILE).exists() or (directory / "checkpoint.pt").exists()


class _RunLock:
    """The advisory lock of a run directory: ``DIR/.lock``, flock'ed exclusively and holding the
    pid of its holder, from :meth:`acquire` to :meth:`release`. The kernel drops the lock when
    its holder dies, so a killed run never blocks the next one. (No lock where the platform
    lacks flock.)"""

    def __init__(self):
        self.fd: int | None = None

    def acquire(self, directory: Path) -> None:
        """Lock ``directory``, or raise CommandError naming the pid of the run that holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise CommandError(f"cannot write to --out {directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CommandError(f"{directory} is in use by another {PROG} run (pid {holder}); wait "
                               "for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _check_out(out: Path) -> None:
    """CommandError unless ``out`` is, or can be created as, a directory."""
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a directory")
    for parent in out.parents:  # the nearest existing ancestor must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise CommandError(f"--out {out} cannot be created: {parent} is a file")
            return


def _claim(out: Path, lock: _RunLock, resume: bool, parser) -> None:
    """Lock the existing directory ``out`` for this run; a new run also needs it to hold none."""
    lock.acquire(out)
    if not resume and _holds_run(out):
        parser.error(f"{out} already holds a run; pass --resume to continue it, or choose "
                     "another --out")


def _read_run_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CommandError(f"no run to resume in {directory} ({CONFIG_FILE} not found)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "train" not in config or "data" not in config:
        raise CommandError(f"{path} is not an infomax-ext run configuration")
    return config


def _given(args, dest):
    return getattr(args, dest, None)


def _train_config(args, parser, saved: dict | None):
    """The TrainConfig from the defaults (or the saved run) and the options given."""
    from .trainer import TrainConfig

    dests = [dest for _, dest, *_ in _TRAIN_OPTIONS] + ["activation", "likelihood",
                                                        "reuse_forward", "shuffled_grad",
                                                        "negatives"]
    if saved is None:
        values = TrainConfig().to_dict()
        values.update({d: _given(args, d) for d in dests if _given(args, d) is not None})
    else:
        values = dict(saved)
        for d in dests:
            value = _given(args, d)
            if value is None or d in RESUMABLE or value == saved.get(d):
                continue
            flag = "--" + d.replace("_", "-")
            parser.error(f"{flag} {value} differs from the value the run was started with "
                         f"({saved.get(d)}); a resumed run keeps its settings (only --epochs and "
                         "--device may change)")
        for d in RESUMABLE:
            if _given(args, d) is not None:
                values[d] = _given(args, d)
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


def _fmt(value, digits=3):
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


_ROWS = [
    # key, label, higher is better (None: no direction), format digits
    ("mi", "MI estimate I(x; z), nats", True, 3),
    ("active_units", "active units", True, 0),
    ("probe_accuracy", "probe accuracy (logistic regression)", True, 3),
    ("recon_loglik", "reconstruction log-likelihood, nats", True, 2),
    ("kl", "KL to the prior, nats", None, 2),
    ("elbo", "ELBO (recon - KL), nats", True, 2),
]


def comparison_table(infomax: dict, vae: dict, alpha: float, beta: float) -> str:
    """The side-by-side table of the two runs' held-out metrics (markdown, aligned)."""
    head = ["held-out metric", f"InfoMax VAE (alpha={alpha:g})", "plain VAE (alpha=0)", "better"]
    rows = []
    for key, label, higher, digits in _ROWS:
        a, b = infomax.get(key), vae.get(key)
        if key == "active_units":
            label = (f"active units (of {infomax['latent_dim']}, "
                     f"Var > {infomax['active_unit_threshold']:g})")
            cell_a, cell_b = _fmt(a), _fmt(b)
        else:
            cell_a, cell_b = _fmt(a, digits), _fmt(b, digits)
        if higher is None or a is None or b is None or a == b:
            better = "-" if higher is None else "tie" if a == b and a is not None else "n/a"
        else:
            better = "InfoMax" if (a > b) == higher else "VAE"
        rows.append([label, cell_a, cell_b, better])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out) + f"\n\nSame architecture, seed and epochs; beta = {beta:g} for both.\n"


# ----------------------------------------------------------------------------- one run

def _run_one(name: str, config, run_dir: Path, train, val, data_info: dict | None, *,
             resume: bool, progress: bool, log_interval: float, plots: bool, group=None):
    """Train (or resume) one model in ``run_dir``, evaluate it, write its files (its own
    config.json when ``data_info`` is given); returns ``(metrics, held-out encoder means)``.
    With a process ``group`` every process trains and rank 0 alone evaluates and writes (the
    others return ``(None, None)``)."""
    from .distributed import from_rank0
    from .evaluation import encoder_mean, evaluate
    from .serialization import atomic_write_json
    from .trainer import CHECKPOINT_FILE, Trainer

    checkpoint = run_dir / CHECKPOINT_FILE
    started = time.perf_counter()
    if resume and from_rank0(group, checkpoint.exists):
        trainer = Trainer.from_checkpoint(checkpoint, train.x, val.x, run_dir, epochs=config.epochs,
                                          device=config.device, progress=progress, desc=name,
                                          log_interval=log_interval, process_group=group)
        if trainer.epoch > config.epochs:
            raise CommandError(f"{name}: the checkpoint is already at epoch {trainer.epoch}, beyond "
                               f"--epochs {config.epochs}")
        _say(f"{name}: resuming at epoch {trainer.epoch + 1} of {config.epochs}"
             if trainer.epoch < config.epochs else
             f"{name}: already trained for {trainer.epoch} epochs; evaluating again")
    else:
        if resume:
            _say(f"{name}: no checkpoint in {run_dir} yet; starting from epoch 0")
        trainer = Trainer.create(config, train.x, val.x, run_dir, progress=progress, desc=name,
                                 log_interval=log_interval, process_group=group)
    if data_info is not None:
        from_rank0(group, lambda: atomic_write_json(
            run_dir / CONFIG_FILE, {"name": name, "data": data_info, "train": config.to_dict()}))
    trainer.fit()
    if trainer.rank != 0:
        return None, None
    train_seconds = time.perf_counter() - started
    model = trainer.model
    model.save(run_dir / "model")

    t_eval = time.perf_counter()
    metrics = evaluate(model, train.x, val.x, train.y, val.y, threshold=config.active_threshold,
                       mi_steps=config.eval_mi_steps, mi_neurons=config.mi_neurons,
                       activation=config.activation, seed=config.seed)
    metrics.update({"name": name, "alpha": config.alpha, "beta": config.beta,
                    "epochs": trainer.epoch, "train_seconds": round(train_seconds, 2),
                    "eval_seconds": round(time.perf_counter() - t_eval, 2)})
    atomic_write_json(run_dir / METRICS_SUMMARY, metrics)
    mu = encoder_mean(model.vae, val.x).cpu()
    if plots:
        from . import plots as P

        vae = model.vae
        P.plot_training_curves(trainer.history, run_dir / "training_curves.png",
                               title=f"{name} (alpha={config.alpha:g}, beta={config.beta:g})")
        P.plot_latent_space(mu, val.y, run_dir / "latent_space.png", classes=train.classes,
                            title=f"{name}: held-out latent means")
        P.plot_reconstructions(vae, val.x, run_dir / "reconstructions.png",
                               image_shape=train.image_shape, title=f"{name}: reconstructions")
        P.plot_prior_samples(vae, config.latent_dim, run_dir / "prior_samples.png",
                             image_shape=train.image_shape, seed=config.seed,
                             title=f"{name}: samples from the prior")
        P.plot_unit_variances(metrics["latent_variances"], config.active_threshold,
                              run_dir / "active_units.png", title=name)
    probe = metrics["probe_accuracy"]
    _say(f"{name}: MI {metrics['mi']:.3f} nats, {metrics['active_units']}/{metrics['latent_dim']} "
         f"active units, probe accuracy {_fmt(probe)}, recon log-lik {metrics['recon_loglik']:.2f}, "
         f"KL {metrics['kl']:.2f} (held-out; trained {train_seconds:.0f} s, evaluated "
         f"{metrics['eval_seconds']:.0f} s)")
    return metrics, mu


# ----------------------------------------------------------------------------- train command

def _check_extras(plots: bool, quiet: bool) -> None:
    """The training extras must be installed: a clear message instead of an ImportError."""
    import importlib.util

    needed = ["sklearn"] + ([] if quiet else ["tqdm"]) + (["matplotlib"] if plots else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"missing package(s) {', '.join(missing)}: install the training extras "
                           "with pip install 'infomax_ext[train]'")


def _cmd_train(args, parser) -> int:
    _check_extras(not args.no_plots, args.quiet)
    if args.resume and args.out is None:
        parser.error("--resume needs --out DIR, the run to continue")
    from .distributed import from_rank0

    group = _process_group(args)
    lock = _RunLock()
    try:
        with _only_rank0_prints(group):
            out = from_rank0(group, lambda: _claim_out(args, parser, lock))
            args.out = str(out)  # the interrupt hint names the actual directory
            return _cmd_train_locked(args, parser, out, lock, group)
    finally:
        lock.release()
        if group is not None:
            import torch.distributed as dist

            dist.destroy_process_group()


def _process_group(args):
    """The process group when torchrun started this process (None otherwise); a restart by
    ``torchrun --max-restarts`` continues the run in --out (``args.resume``)."""
    import torch

    from .distributed import from_rank0, init_from_env

    device = args.device or "cpu"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    group = init_from_env(args.dist_backend, torch.device(device))
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if group is not None and restarts > 0 and not args.resume and args.out is not None:
        if from_rank0(group, lambda: _holds_run(Path(args.out))):
            args.resume = True
    return group


@contextlib.contextmanager
def _only_rank0_prints(group):
    """Standard output of every process but rank 0 discarded (errors still go to stderr)."""
    import torch.distributed as dist

    if group is None or dist.get_rank(group) == 0:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _claim_out(args, parser, lock: _RunLock) -> Path:
    """The run directory: --out or a new name; locked at once when it exists (a directory in use
    is refused before anything else)."""
    out = Path(args.out) if args.out is not None else _default_out()
    _check_out(out)
    if out.is_dir():
        _claim(out, lock, args.resume, parser)
    return out


def _cmd_train_locked(args, parser, out: Path, lock: _RunLock, group=None) -> int:
    import torch

    from .distributed import from_rank0

    # the data options: (flag, key in config.json's "data", value given, value when not given)
    options = [("--data", "source", _path(args.data), None),
               ("--labels", "labels", _path(args.labels), None),
               ("--normalize", "normalize", args.normalize, "none")]
    saved = None
    if args.resume:
        saved = from_rank0(group, lambda: _read_run_config(out))
        if args.compare_vae and not saved.get("compare_vae", False):
            parser.error("--compare-vae: the run in --out was not started with --compare-vae")
        compare = bool(saved.get("compare_vae", False))
        data = {key: saved["data"].get(key, unset) for _, key, _, unset in options}
        data.update(source=_path(data["source"]), labels=_path(data["labels"]))
        from_rank0(group, lambda: _remove_stale_temporaries(out))
        for flag, key, given, _ in options:
            if given is not None and given != data[key]:
                parser.error(f"{flag} {given} differs from the run's ({data[key]})")
    else:
        compare = args.compare_vae
        data = {key: unset if given is None else given for _, key, given, unset in options}
    config = _train_config(args, parser, None if saved is None else saved["train"])

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _train(args, parser, out, lock, saved, compare, data, config, group)
    finally:
        torch.set_num_threads(threads)


def _path(text: str | None) -> str | None:
    """A data path as stored in config.json: absolute, so --resume works from any directory
    (``digits``, the built-in data, stays as it is)."""
    return text if text in (None, "digits") else os.path.abspath(text)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files (``.NAME.XXXX.tmp``) of atomic writes that a killed run left in
    its directory ``out`` and the directories under it that runs write (locked: no run of ours
    is writing there)."""
    for sub in ("", "model", "infomax", "vae", "infomax/model", "vae/model"):
        for tmp in (out / sub).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _load_data(data: dict, config, saved) -> tuple:
    """The dataset of the data options ``data`` (a .npy file memory-mapped) and its description
    for config.json, checked against the ``saved`` run's."""
    from .data import DataWarning, load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        dataset = load_dataset(data["source"], data["labels"], config.likelihood,
                               data["normalize"], mmap=True)
    for w in caught:
        if issubclass(w.category, DataWarning):
            _say(f"{PROG}: notice: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    info = dataset.describe()
    info.update(labels=data["labels"], normalize=data["normalize"])
    if saved is not None and saved["data"].get("fingerprint") != info["fingerprint"]:
        raise CommandError(f"the data in {dataset.source} changed since the run started "
                           "(fingerprint mismatch); a resumed run needs the same data")
    return dataset, info


def _write_run_config(args, parser, out: Path, lock: _RunLock, saved, compare: bool, info: dict,
                      config, group) -> None:
    """Create and lock ``out`` if not yet done and write its config.json."""
    import torch.distributed as dist

    from .serialization import atomic_write_json

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create --out {out}: {exc.strerror}") from None
    if not lock.held:
        _claim(out, lock, args.resume, parser)
    atomic_write_json(out / CONFIG_FILE, {
        "command": "train", "compare_vae": compare, "data": info, "train": config.to_dict(),
        "created": saved.get("created") if saved else _dt.datetime.now().isoformat(timespec="seconds"),
        "distributed": {"world_size": 1 if group is None else dist.get_world_size(group),
                        "backend": None if group is None else str(dist.get_backend(group))},
    })


def _train(args, parser, out: Path, lock: _RunLock, saved, compare: bool, data: dict,
           config, group=None) -> int:
    """Train with the data options ``data`` (``source``, ``labels``, ``normalize``); with a
    process ``group``, rank 0 reads the data (a .npy file: checks it and sends its mapping) and
    writes, every process trains."""
    import torch.distributed as dist

    from .data import train_val_split
    from .distributed import from_rank0
    from .trainer import check_batch_size
    from .serialization import atomic_write_json, atomic_write_text

    dataset, info = from_rank0(group, lambda: _load_data(data, config, saved))
    train, val = train_val_split(dataset, config.val_fraction, config.seed)
    world = 1 if group is None else dist.get_world_size(group)
    try:
        check_batch_size(config.batch_size, len(train), world, name="--batch-size")
    except ValueError as exc:
        parser.error(str(exc))
    from_rank0(group, lambda: _write_run_config(args, parser, out, lock, saved, compare, info,
                                                config, group))
    scaled = "" if data["normalize"] == "none" else f" (--normalize {data['normalize']})"
    _say(f"{PROG}: {dataset.source} data{scaled}, {len(train)} training / {len(val)} held-out "
         f"samples of shape {tuple(dataset.sample_shape)}; run directory {out}")
    _say(f"{PROG}: latent_dim={config.latent_dim}, beta={config.beta:g}, alpha={config.alpha:g}, "
         f"{config.epochs} epochs of batch {config.batch_size}, device {config.device}")
    progress = not args.quiet
    plots = not args.no_plots
    if not compare:
        name = "infomax" if config.alpha > 0 else "vae"
        _run_one(name, config, out, train, val, None, resume=args.resume, progress=progress,
                 log_interval=args.log_interval, plots=plots, group=group)
        _say(f"{PROG}: wrote {out}")
        return 0

    results, means = {}, {}
    for name, cfg in (("infomax", config), ("vae", replace(config, alpha=0.0))):
        results[name], means[name] = _run_one(name, cfg, out / name, train, val, info,
                                              resume=args.resume, progress=progress,
                                              log_interval=args.log_interval, plots=plots,
                                              group=group)
    if results["infomax"] is None:  # not rank 0
        return 0
    table = comparison_table(results["infomax"], results["vae"], config.alpha, config.beta)
    atomic_write_text(out / "comparison.md",
                      f"# InfoMax VAE vs plain VAE on {dataset.source}\n\n{table}")
    atomic_write_json(out / "comparison.json", {
        "infomax": results["infomax"], "vae": results["vae"],
        "data": info, "train": config.to_dict(),
    })
    if plots:
        from .plots import plot_comparison

        runs = {}
        for name, label in (("infomax", f"InfoMax VAE (alpha={config.alpha:g})"),
                            ("vae", "plain VAE (alpha=0)")):
            runs[label] = {"mu": means[name], "labels": val.y, "classes": train.classes,
                           "variances": results[name]["latent_variances"],
                           "threshold": config.active_threshold}
        plot_comparison(runs, out / "comparison.png")
    _say()
    _say(table)
    _say(f"{PROG}: wrote {out} (comparison.md, comparison.json"
         f"{', comparison.png' if plots else ''}; per-model runs in infomax/ and vae/)")
    return 0


# ----------------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    """Run ``infomax-ext`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    import torch.distributed as dist

    from .data import DataError
    from .distributed import DistributedMismatchError
    from .serialization import SerializationError
    from .trainer import TrainingError

    try:
        return args.func(args, parser)
    except (CommandError, DataError, DistributedMismatchError, SerializationError,
            TrainingError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except dist.DistError as exc:  # another process of a torchrun job stopped
        print(f"{PROG} {args.command}: error: lost contact with another process of the job "
              f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
              "torchrun's summary names the process that stopped; the last checkpoint is intact",
              file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # a full disk, a vanished directory, ...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG} {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr,
              flush=True)
        return 1
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f" --out {out}" if out else " --out DIR"
        print(f"\n{PROG}: interrupted. Completed epochs are in the last checkpoint; continue "
              f"with: {PROG} train --resume{hint}", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``infomax-ext train``: train (or resume) an InfoMax VAE, evaluate it and write its run
directory (layout in :mod:`infomax_ext.cli`)."""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .common import PROG, CommandError, _say
from .compare import _fmt, comparison_table
from .job import _only_rank0_prints, _process_group, _sigterm_as_error
from .options import _TRAIN_OPTIONS, _device
from .resume import RESUMABLE, read_resume_states
from .run_dir import (CONFIG_FILE, METRICS_SUMMARY, _RunLock, _check_out, _claim, _default_out,
                      _path, _read_run_config, _remove_stale_temporaries, check_train_options,
                      run_outputs)

if TYPE_CHECKING:
    import torch
    from torch.distributed import ProcessGroup

    from ..data import ArrayDataset
    from ..preprocessing import Preprocessing
    from ..trainer import TrainConfig

def _given(args: argparse.Namespace, dest: str) -> Any:
    return getattr(args, dest, None)


def _train_config(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  saved: dict[str, Any] | None) -> TrainConfig:
    """The TrainConfig from the defaults (or the saved run) and the options given."""
    from ..train_config import upgrade_options
    from ..trainer import TrainConfig

    dests = [dest for _, dest, *_ in _TRAIN_OPTIONS] + ["activation", "likelihood",
                                                        "reuse_forward", "shuffled_grad",
                                                        "negatives_scope", "bound",
                                                        "smile_clip", "dv_moving_average",
                                                        "negatives"]
    if saved is None:
        values = TrainConfig().to_dict()
        values.update({d: _given(args, d) for d in dests if _given(args, d) is not None})
    else:
        # the saved options alone: an edited config.json is named as such
        checked = check_train_options(saved, Path(args.out) / CONFIG_FILE)
        if _given(args, "device") is None:
            try:
                _device(checked.device)
            except argparse.ArgumentTypeError as exc:
                raise CommandError(f"{CONFIG_FILE} of the run: {exc}") from None
        saved = upgrade_options(saved)  # today's keys, every field
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
        config = TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if _given(args, "smile_clip") is not None and config.bound != "smile":
        # as TrainConfig refuses dv_moving_average with another bound than dv
        parser.error(f"--smile-clip is a setting of --bound smile, but the bound is "
                     f"{config.bound!r}")
    return config


# ----------------------------------------------------------------------------- one run

def _run_one(name: str, config: TrainConfig, run_dir: Path, train: ArrayDataset, val: ArrayDataset,
             data_info: dict[str, Any] | None, *,
             resume: bool, progress: bool, log_interval: float, plots: bool,
             group: ProcessGroup | None = None,
             state: dict[str, Any] | None = None, fingerprint: str | None = None,
             preprocessing: Preprocessing | None = None, tensorboard: Path | None = None,
             ) -> tuple[dict[str, Any] | None, torch.Tensor | None]:
    """Train (or resume from the checked checkpoint ``state``) one model in ``run_dir``,
    evaluate it, write its files (its own config.json when ``data_info`` is given); returns
    ``(metrics, held-out encoder means)``. Checkpoints record the data's ``fingerprint``. With a
    process ``group`` every process trains and rank 0 alone evaluates and writes (the others
    return ``(None, None)``). The model saved keeps ``preprocessing``, how the data was
    prepared. With ``tensorboard``, training is logged to ``tensorboard/name``
    (:mod:`infomax_ext.monitor`)."""
    from ..distributed import from_rank0, wait_for_rank0
    from ..evaluation import encoder_mean, evaluate
    from ..serialization import atomic_write_json
    from ..trainer import CHECKPOINT_FILE, Trainer

    checkpoint = run_dir / CHECKPOINT_FILE
    wait_for_rank0(group)  # rank 0 may still be evaluating the previous model
    started = time.perf_counter()
    monitor, hooks = _monitor(name, tensorboard, train, val, plots)
    if resume and state is not None:
        trainer = Trainer.from_checkpoint(checkpoint, train.x, val.x, run_dir, epochs=config.epochs,
                                          device=config.device, progress=progress, desc=name,
                                          log_interval=log_interval, process_group=group,
                                          state=state, **hooks)
        _say(f"{name}: resuming at epoch {trainer.epoch + 1} of {config.epochs}"
             if trainer.epoch < config.epochs else
             f"{name}: already trained for {trainer.epoch} epochs; evaluating again")
    else:
        if resume:
            _say(f"{name}: no checkpoint in {run_dir} yet; starting from epoch 0")
        trainer = Trainer.create(config, train.x, val.x, run_dir, progress=progress, desc=name,
                                 log_interval=log_interval, process_group=group, **hooks)
    trainer.data_fingerprint = fingerprint
    if preprocessing is not None:
        trainer.model.preprocessing = preprocessing
    if data_info is not None:
        from_rank0(group, lambda: atomic_write_json(
            run_dir / CONFIG_FILE, {"name": name, "data": data_info, "train": config.to_dict()}))
    with monitor:  # closes the event files
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
        from .. import plots as P

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


def _monitor(name: str, tensorboard: Path | None, train: ArrayDataset, val: ArrayDataset,
             figures: bool) -> tuple[Any, dict[str, Any]]:
    """``(monitor, Trainer keywords)`` logging to ``tensorboard/name``; without ``tensorboard``
    a monitor that does nothing and no keywords."""
    if tensorboard is None:
        return contextlib.nullcontext(), {}
    from ..monitor import TensorBoardMonitor

    monitor = TensorBoardMonitor(tensorboard / name, val_x=val.x,  # type: ignore[arg-type]
                                 labels=val.y,
                                 classes=train.classes, image_shape=train.image_shape,
                                 figures=figures, title=name)
    _say(f"{name}: TensorBoard log in {tensorboard / name} (tensorboard --logdir {tensorboard})")
    return monitor, {"callbacks": [monitor], "step_callbacks": [monitor.on_step]}


# ----------------------------------------------------------------------------- train command

def _check_extras(plots: bool, quiet: bool) -> None:
    """The training extras must be installed: a clear message instead of an ImportError."""
    import importlib.util

    needed = ["sklearn"] + ([] if quiet else ["tqdm"]) + (["matplotlib"] if plots else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"missing package(s) {', '.join(missing)}: install the training extras "
                           "with pip install 'infomax_ext[train]'")


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_extras(not args.no_plots, args.quiet)
    if args.tensorboard is not None:
        from ..monitor import TensorBoardMissing, require_tensorboard

        try:
            require_tensorboard()
        except TensorBoardMissing as exc:
            raise CommandError(f"--tensorboard: {exc}") from None
    if args.resume and args.out is None:
        parser.error("--resume needs --out DIR, the run to continue")
    from ..distributed import from_rank0

    group = _process_group(args)
    lock = _RunLock()
    with _sigterm_as_error(group):  # through the roll call of lost_contact too
        try:
            with _only_rank0_prints(group):
                out = from_rank0(group, lambda: _claim_out(args, parser, lock))
                args.out = str(out)  # the interrupt hint names the actual directory
                return _cmd_train_locked(args, parser, out, lock, group)
        except Exception as exc:
            from ..distributed_failures import is_lost_contact, lost_contact

            if group is None or not is_lost_contact(exc):
                raise
            raise lost_contact(exc, group, args.dist_timeout) from None
        finally:
            lock.release()
            if group is not None:
                import torch.distributed as dist

                dist.destroy_process_group()


def _tensorboard_dir(args: argparse.Namespace, out: Path) -> Path | None:
    """Where --tensorboard logs go: its DIR, ``out/tensorboard`` without one, None when off."""
    if args.tensorboard is None:
        return None
    return Path(args.tensorboard) if args.tensorboard else out / "tensorboard"


def _claim_out(args: argparse.Namespace, parser: argparse.ArgumentParser, lock: _RunLock) -> Path:
    """The run directory: --out or a new name; locked at once when it exists (a directory in use
    is refused before anything else)."""
    out = Path(args.out) if args.out is not None else _default_out()
    _check_out(out)
    tensorboard = _tensorboard_dir(args, out)
    if tensorboard is not None:
        _check_out(tensorboard, "--tensorboard")
    if out.is_dir():
        _claim(out, lock, args.resume, parser, _outputs(args, out))
    return out


def _outputs(args: argparse.Namespace, out: Path) -> list[str]:
    """What this run writes into ``out`` (:func:`~.run_dir.run_outputs`): a fresh --out must
    hold none of it. A resumed run rewrites its own files: a --compare-vae layout when ``out``
    holds its two run directories (config.json, read later, decides the rest)."""
    compare = args.compare_vae
    if args.resume:
        compare = os.path.isdir(out / "infomax") and os.path.isdir(out / "vae")
    return run_outputs(compare, not args.no_plots)


def _cmd_train_locked(args: argparse.Namespace, parser: argparse.ArgumentParser, out: Path,
                      lock: _RunLock, group: ProcessGroup | None = None) -> int:
    import torch

    from ..distributed import from_rank0

    # the data options: (flag, key in config.json's "data", value given, value when not given)
    options = [("--data", "source", _path(args.data), None),
               ("--labels", "labels", _path(args.labels), None),
               ("--label-column", "label_column", args.label_column, None),
               ("--normalize", "normalize", args.normalize, "none")]
    saved = None
    if args.resume:
        saved = from_rank0(group, lambda: _read_run_config(out))
        if args.compare_vae and not saved.get("compare_vae", False):
            parser.error("--compare-vae: the run in --out was not started with --compare-vae")
        compare = bool(saved.get("compare_vae", False))
        data = {key: saved["data"].get(key, unset) for _, key, _, unset in options}
        data.update(source=_path(data["source"]), labels=_path(data["labels"]))
        for flag, key, given, _ in options:
            if given is not None and given != data[key]:
                if key not in ("source", "labels"):  # a setting, not a file
                    parser.error(f"{flag} {given} differs from the run's ({data[key]})")
                data[key] = given  # a moved file: the data's fingerprint decides (_load_data)
            elif key in ("source", "labels") and data[key] not in (None, "digits") \
                    and not os.path.lexists(data[key]):
                raise CommandError(
                    f"the run's {key.replace('source', 'data')} file {data[key]} is not there any "
                    f"more; if it moved, give its new place with {flag} (its contents must have "
                    "the run's fingerprint)")
    else:
        compare = args.compare_vae
        data = {key: unset if given is None else given for _, key, given, unset in options}
    config = _train_config(args, parser, None if saved is None else saved["train"])
    if saved is not None and config.negatives_scope == "local":
        import torch.distributed as dist

        before = (saved.get("distributed") or {}).get("world_size", 1)
        now = 1 if group is None else dist.get_world_size(group)
        if before != now:
            raise CommandError(
                f"the run in {out} was trained with --negatives-scope local on {before} process"
                f"{'es' if before != 1 else ''}; resuming on {now} would change its objective "
                f"(each process draws its negatives from its share of the batch): resume with "
                f"{before}")

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _train(args, parser, out, lock, saved, compare, data, config, group)
    finally:
        torch.set_num_threads(threads)


def _load_data(data: dict[str, Any], config: TrainConfig,
               saved: dict[str, Any] | None) -> tuple[ArrayDataset, dict[str, Any]]:
    """The dataset of the data options ``data`` (a .npy file memory-mapped) and its description
    for config.json, checked against the ``saved`` run's."""
    from ..csv_data import parse_label_column
    from ..data import DataWarning, load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        dataset = load_dataset(data["source"], data["labels"], config.likelihood,
                               data["normalize"], mmap=True,
                               label_column=parse_label_column(data["label_column"]))
    for w in caught:
        if issubclass(w.category, DataWarning):
            _say(f"{PROG}: notice: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    info = dataset.describe()
    info.update(labels=data["labels"], label_column=data["label_column"],
                normalize=data["normalize"])
    recorded = None if saved is None else saved["data"]["fingerprint"]
    if recorded is not None and recorded != info["fingerprint"]:
        raise CommandError(f"the data in {dataset.source} (fingerprint {info['fingerprint'][:12]}"
                           f"...) is not the run's (fingerprint {recorded[:12]}...): it changed "
                           "since the run started, or it is another file; a resumed run needs "
                           "the same data")
    return dataset, info


def _check_memory(config: TrainConfig, sample_shape: Sequence[int]) -> None:
    """A CommandError naming the option (or the data's sample size) when training the model of
    ``config`` for samples of ``sample_shape`` needs more memory than the device has
    (:func:`infomax_ext.memory.check_training`; nothing is allocated)."""
    from ..memory import SIZE_FIELDS, check_training
    from ..trainer import build_model

    try:
        check_training(config, sample_shape, build_model,
                       {f: "--" + f.replace("_", "-") for f in SIZE_FIELDS})
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _write_run_config(args: argparse.Namespace, parser: argparse.ArgumentParser, out: Path,
                      lock: _RunLock, saved: dict[str, Any] | None, compare: bool,
                      info: dict[str, Any], config: TrainConfig,
                      group: ProcessGroup | None) -> None:
    """Create and lock ``out`` if not yet done and write its config.json."""
    import torch.distributed as dist

    from ..serialization import atomic_write_json

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create --out {out}: {exc.strerror}") from None
    if not lock.held:
        _claim(out, lock, args.resume, parser, _outputs(args, out))
    atomic_write_json(out / CONFIG_FILE, {
        "command": "train", "compare_vae": compare, "data": info, "train": config.to_dict(),
        "created": saved.get("created") if saved else _dt.datetime.now().isoformat(timespec="seconds"),
        "distributed": {"world_size": 1 if group is None else dist.get_world_size(group),
                        "backend": None if group is None else str(dist.get_backend(group))},
    })


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser, out: Path, lock: _RunLock,
           saved: dict[str, Any] | None, compare: bool, data: dict[str, Any], config: TrainConfig,
           group: ProcessGroup | None = None) -> int:
    """Train with the data options ``data`` (``source``, ``labels``, ``normalize``); with a
    process ``group``, rank 0 reads the data (a .npy file: checks it and sends its mapping) and
    writes, every process trains."""
    import torch.distributed as dist

    from ..data import train_val_split
    from ..distributed import from_rank0
    from ..preprocessing import Preprocessing
    from ..trainer import check_batch_size

    dataset, info = from_rank0(group, lambda: _load_data(data, config, saved))
    preprocessing = Preprocessing.of_dataset(dataset, info["fingerprint"])
    train, val = train_val_split(dataset, config.val_fraction, config.seed)
    world = 1 if group is None else dist.get_world_size(group)
    runs = [("infomax", config, out / "infomax"), ("vae", replace(config, alpha=0.0), out / "vae")] \
        if compare else [("infomax" if config.alpha > 0 else "vae", config, out)]
    states: dict[str, dict[str, Any] | None] = {name: None for name, _, _ in runs}
    if args.resume:  # everything checked before anything in the run directory is written
        states = from_rank0(group, lambda: read_resume_states(
            out, runs, info["fingerprint"], len(train), dataset.sample_shape))
    try:
        check_batch_size(config.batch_size, len(train), world, name="--batch-size")
    except ValueError as exc:
        if args.resume and _given(args, "batch_size") is None:
            raise CommandError(f"{CONFIG_FILE} of the run: {exc}") from None
        parser.error(str(exc))
    from_rank0(group, lambda: _check_memory(config, dataset.sample_shape))
    if args.resume:
        from_rank0(group, lambda: _remove_stale_temporaries(out))
    from_rank0(group, lambda: _write_run_config(args, parser, out, lock, saved, compare, info,
                                                config, group))
    try:
        return _train_runs(args, out, dataset, info, train, val, compare, config, runs, states,
                           preprocessing, group)
    except Exception:  # a failed fresh start leaves nothing that blocks a rerun (Ctrl-C does)
        if not args.resume and (group is None or dist.get_rank(group) == 0):
            _forget_failed_start(out, runs)
        raise


def _forget_failed_start(out: Path, runs: list[tuple[str, TrainConfig, Path]]) -> None:
    """Remove the config.json and metrics.jsonl files of a fresh run that failed before any
    checkpoint was written (what remains holds no run and none of a run's files: a rerun into
    ``out`` starts afresh). A fresh run starts only where none of them exists (_claim): they
    are this run's."""
    from ..trainer import CHECKPOINT_FILE, METRICS_FILE

    if any(os.path.lexists(run_dir / CHECKPOINT_FILE) for _, _, run_dir in runs):
        return
    for path in [out / CONFIG_FILE] + [run_dir / name for _, _, run_dir in runs
                                       for name in (CONFIG_FILE, METRICS_FILE)]:
        with contextlib.suppress(OSError):
            path.unlink()


def _train_runs(args: argparse.Namespace, out: Path, dataset: ArrayDataset, info: dict[str, Any],
                train: ArrayDataset, val: ArrayDataset, compare: bool, config: TrainConfig,
                runs: list[tuple[str, TrainConfig, Path]], states: dict[str, dict[str, Any] | None],
                preprocessing: Preprocessing | None, group: ProcessGroup | None = None) -> int:
    """Train, evaluate and write each of ``runs`` (``(name, config, run_dir)``), resuming those
    with a checked checkpoint in ``states``; with --compare-vae also the comparison."""
    from ..serialization import atomic_write_json, atomic_write_text
    from ..trainer import _resolve_device

    scaled = "" if info["normalize"] == "none" else f" (--normalize {info['normalize']})"
    _say(f"{PROG}: {dataset.source} data{scaled}, {len(train)} training / {len(val)} held-out "
         f"samples of shape {tuple(dataset.sample_shape)}; run directory {out}")
    device = str(_resolve_device(config.device)) + (" (auto)" if config.device == "auto" else "")
    _say(f"{PROG}: latent_dim={config.latent_dim}, beta={config.beta:g}, alpha={config.alpha:g}, "
         f"{config.epochs} epochs of batch {config.batch_size}, device {device}")
    progress = not args.quiet
    plots = not args.no_plots
    if not compare:
        name, _, _ = runs[0]
        _run_one(name, config, out, train, val, None, resume=args.resume, progress=progress,
                 log_interval=args.log_interval, plots=plots, group=group, state=states[name],
                 fingerprint=info["fingerprint"], preprocessing=preprocessing,
                 tensorboard=_tensorboard_dir(args, out))
        _say(f"{PROG}: wrote {out}")
        return 0

    results: dict[str, Any] = {}  # each a metrics dict (None on the ranks but 0: returns below)
    means: dict[str, torch.Tensor | None] = {}
    for name, cfg, run_dir in runs:
        results[name], means[name] = _run_one(name, cfg, run_dir, train, val, info,
                                              resume=args.resume, progress=progress,
                                              log_interval=args.log_interval, plots=plots,
                                              group=group, state=states[name],
                                              fingerprint=info["fingerprint"],
                                              preprocessing=preprocessing,
                                              tensorboard=_tensorboard_dir(args, out))
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
        from ..plots import plot_comparison

        panels: dict[str, dict[str, Any]] = {}
        for name, label in (("infomax", f"InfoMax VAE (alpha={config.alpha:g})"),
                            ("vae", "plain VAE (alpha=0)")):
            panels[label] = {"mu": means[name], "labels": val.y, "classes": train.classes,
                           "variances": results[name]["latent_variances"],
                           "threshold": config.active_threshold}
        plot_comparison(panels, out / "comparison.png")
    _say()
    _say(table)
    _say(f"{PROG}: wrote {out} (comparison.md, comparison.json"
         f"{', comparison.png' if plots else ''}; per-model runs in infomax/ and vae/)")
    return 0

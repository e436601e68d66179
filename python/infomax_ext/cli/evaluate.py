"""``infomax-ext evaluate``: the held-out metrics of ``metrics.json`` for a trained model on new
data (in the training data's units), as JSON and the plots.

The data is split like training data (``--val-fraction``, ``--seed``): the fresh MI chain and the
logistic-regression probe learn on one part, every metric is measured on the other
(:func:`infomax_ext.evaluation.evaluate`). Without ``--out`` the metrics go to standard output as
JSON; with ``--out DIR``, to ``DIR/metrics.json`` beside ``latent_space.png``,
``reconstructions.png`` and ``active_units.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import PROG, CommandError, _say
from .compare import _fmt
from .model_io import (TrainedModel, add_data_arguments, add_model_argument,
                       add_run_arguments, check_matplotlib, check_outputs, check_unit_range,
                       load_trained, read_prepared, resolved_device, torch_threads)
from .options import _fraction, _nonneg_float, _positive_int, _seed
from .run_dir import (CONFIG_FILE, METRICS_SUMMARY, _check_out as _check_directory, _holds_run,
                      check_train_options)

PLOTS = ("latent_space.png", "reconstructions.png", "active_units.png")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "evaluate", help="the held-out metrics of a trained model on new data",
        description=(
            "Measure a trained model on new data given in the units of its training data (the\n"
            "model's normalisation is applied): MI of a freshly trained MI chain, active units,\n"
            "probe accuracy (with labels), reconstruction log-likelihood and KL, the metrics of\n"
            "train's metrics.json. The data is split: the MI chain and the probe learn on one\n"
            "part, the metrics are measured on the other."),
        epilog=("Examples:\n  infomax-ext evaluate runs/mine --data new.csv --label-column label\n"
                "  infomax-ext evaluate runs/mine/model --data new.npz --out runs/mine-new"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    add_data_arguments(parser, labels=True)
    ev = parser.add_argument_group("evaluation (defaults: the run's training options)")
    ev.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                    help="fraction of the data the metrics are measured on")
    ev.add_argument("--seed", type=_seed, default=None, metavar="S",
                    help="seed of the split, the MI chain and the samples")
    ev.add_argument("--eval-mi-steps", type=_positive_int, default=None, metavar="N",
                    help="training steps of the fresh MI chain")
    ev.add_argument("--active-threshold", type=_nonneg_float, default=None, metavar="T",
                    help="a unit is active when Var_x E[z_j|x] exceeds T")
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", default=None,
                     help="write DIR/metrics.json and the plots (default: JSON to standard output)")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    add_run_arguments(parser)
    parser.set_defaults(func=cmd_evaluate, command_parser=parser)
    return parser


def _settings(args: argparse.Namespace, trained: TrainedModel) -> dict[str, Any]:
    """The evaluation options: given, else the run's (its config.json checked as ``train
    --resume`` checks it: a CommandError naming the file and the field), else the training
    defaults (the MI chain's layers from the model's own MI chain when there is no run)."""
    from ..trainer import TrainConfig

    base = TrainConfig().to_dict()
    if trained.run_dir is not None:
        base = check_train_options(trained.train_options, trained.run_dir / CONFIG_FILE).to_dict()
    else:
        mi = (trained.model.config or {}).get("mi", {})
        if isinstance(mi.get("mlp_neurons"), list):
            base["mi_neurons"] = mi["mlp_neurons"]
            acts = mi.get("mlp_activations") or []
            if acts and isinstance(acts[0], str):
                base["activation"] = acts[0]
    for key in ("val_fraction", "seed", "eval_mi_steps", "active_threshold"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    return base


def _check_out(args: argparse.Namespace, out: Path) -> None:
    """A CommandError unless ``out`` can take the evaluation: a directory (or one that can be
    created) holding no training run, its files writable (:func:`~.model_io.check_outputs`)."""
    _check_directory(out)
    if _holds_run(out):
        raise CommandError(f"--out {out} holds a training run; its metrics.json would be "
                           "replaced: choose another directory")
    names = [METRICS_SUMMARY] + ([] if args.no_plots else list(PLOTS))
    check_outputs(args, [("the output", out / name) for name in names])


def cmd_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..data import train_val_split
    from ..evaluation import encoder_mean, evaluate
    from ..serialization import atomic_write_json

    out = None if args.out is None else Path(args.out)
    if out is not None:
        _check_out(args, out)
        if not args.no_plots:
            check_matplotlib()
    device = resolved_device(args.device)
    with torch_threads(args.threads):
        trained = load_trained(args.model_dir, device)
        s = _settings(args, trained)
        data = read_prepared(args, trained, labels=True)
        check_unit_range(data, trained)
        train, val = train_val_split(data, s["val_fraction"], s["seed"])
        if data.y is not None:
            import importlib.util

            if importlib.util.find_spec("sklearn") is None:
                raise CommandError("the probe needs scikit-learn: pip install 'infomax_ext[train]'")
        started = time.perf_counter()
        metrics = evaluate(trained.model, train.x, val.x, train.y, val.y,
                           threshold=s["active_threshold"], mi_steps=s["eval_mi_steps"],
                           mi_neurons=s["mi_neurons"], activation=s["activation"], seed=s["seed"])
        prep = trained.model.preprocessing
        fingerprint = type(data)(data.x, data.y).fingerprint()
        metrics.update({
            "model": str(trained.model_dir),
            "data": {"source": data.source, "n_samples": len(data),
                     "sample_shape": list(data.sample_shape), "labels": data.y is not None,
                     "training_data": prep.fingerprint is not None and fingerprint == prep.fingerprint},
            "preprocessing": prep.to_dict(),
            "val_fraction": s["val_fraction"], "seed": s["seed"],
            "eval_mi_steps": s["eval_mi_steps"],
            "eval_seconds": round(time.perf_counter() - started, 2),
        })
        if metrics["data"]["training_data"]:
            print(f"{PROG}: notice: {data.source} is the model's training data (same "
                  "fingerprint); these metrics are not held-out ones", file=sys.stderr, flush=True)
        if out is None:
            print(json.dumps(metrics, indent=2), flush=True)
            return 0
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"cannot create --out {out}: {exc.strerror}") from None
        atomic_write_json(out / METRICS_SUMMARY, metrics)
        if not args.no_plots:
            from .. import plots as P

            vae = trained.model.vae
            name = trained.model_dir.parent.name if trained.run_dir else trained.model_dir.name
            P.plot_latent_space(encoder_mean(vae, val.x).cpu(), val.y, out / PLOTS[0],
                                classes=data.classes, title=f"{name}: latent means, {val.source}")
            P.plot_reconstructions(vae, val.x, out / PLOTS[1],
                                   image_shape=data.image_shape, units=prep.invert,
                                   title=f"{name}: reconstructions, {Path(val.source).name}")
            P.plot_unit_variances(metrics["latent_variances"], s["active_threshold"],
                                  out / PLOTS[2], title=name)
    _say(f"{PROG} evaluate: MI {metrics['mi']:.3f} nats, {metrics['active_units']}/"
         f"{metrics['latent_dim']} active units, probe accuracy {_fmt(metrics['probe_accuracy'])}, "
         f"recon log-lik {metrics['recon_loglik']:.2f}, KL {metrics['kl']:.2f} (on "
         f"{metrics['n_test']} of {len(data)} samples; {metrics['eval_seconds']:.0f} s)")
    _say(f"{PROG}: wrote {out} (metrics.json{'' if args.no_plots else ', plots'})")
    return 0

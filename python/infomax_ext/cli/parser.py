"""The argument parser of ``infomax-ext``: one sub-parser per command."""
from __future__ import annotations

import argparse

from .common import PROG
from .options import _TRAIN_OPTIONS, _nonneg_float, _positive_float, _positive_int
from .train import cmd_train
from . import encode, evaluate, reconstruct, sample

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``infomax-ext``."""
    from ..activations import HIDDEN_ACTIVATIONS
    from ..bounds import BOUNDS
    from ..data import LIKELIHOODS, NORMALIZATIONS
    from ..train_config import NEGATIVES, NEGATIVES_SCOPES, TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog=PROG, description=("InfoMax VAE: train, compare with a plain VAE, evaluate, and use "
                                "a trained model (encode, reconstruct, sample)."))
    parser.add_argument("--version", action="version", version=_version())
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
                      help=".npy, .npz, .pt, .csv or .tsv file of samples (N, ...), optionally "
                           "with labels (.npz/.pt keys x and y, a table's --label-column); "
                           "default: scikit-learn's digits")
    data.add_argument("--labels", metavar="FILE", default=None,
                      help="labels (N,) for --data when the file holds none")
    data.add_argument("--label-column", metavar="NAME_OR_INDEX", default=None,
                      help="the labels' column of a .csv/.tsv --data file: a header name or a "
                           "0-based index (-1: the last column)")
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
    model.add_argument("--negatives-scope", dest="negatives_scope", choices=NEGATIVES_SCOPES,
                       default=None,
                       help="under torchrun: draw the MI bound's negatives from the whole batch "
                            "of all processes (global, the single-process bound) or within each "
                            "process's share (local: no codes travel) (default "
                            f"{defaults.negatives_scope})")
    model.add_argument("--negatives", type=_negatives, choices=NEGATIVES, default=None,
                       help="how the MI bound pairs the negatives: shuffle (each sample with one "
                            "shuffled code, N pairs) or all (each sample with every other "
                            "sample's code, N(N - 1) pairs, evaluated in row chunks); --bound "
                            "infonce always uses all pairs, whichever is given (default "
                            f"{defaults.negatives})")
    model.add_argument("--bound", choices=list(BOUNDS), default=None,
                       help="the MI bound both losses use (default "
                            f"{defaults.bound}; each bound's formula and when to use it: "
                            "docs/bounds.md)")
    model.add_argument("--smile-clip", dest="smile_clip", type=float, metavar="TAU", default=None,
                       help=f"smile's clip tau (default {defaults.smile_clip})")
    model.add_argument("--dv-moving-average", dest="dv_moving_average", type=float,
                       metavar="RATE", default=None,
                       help="dv: MINE's bias-corrected gradient with this moving-average rate "
                            "in [0, 1) (default: off)")
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
    run.add_argument("--dist-timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                     help="under torchrun: how long a process waits in a collective for a silent "
                          "one (stopped, hung) before the job ends naming it (default 300)")
    run.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                     help="CPU threads for torch (default 1: robust when other jobs share the "
                          "cores; on idle cores 2 threads train these networks about 1.5x faster)")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    run.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                     help="log losses, MI estimate, samples/s and gradient norms per step and "
                          "the figures per epoch for TensorBoard in DIR/<model> (default DIR: "
                          "--out's tensorboard/; needs pip install 'infomax_ext[tensorboard]')")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bar (shown when stderr is a terminal) and no progress "
                          "lines (printed when stdout is not a terminal)")
    run.add_argument("--log-interval", type=_nonneg_float, default=5.0, metavar="S",
                     help="at most one progress line every S seconds when stdout is not a "
                          "terminal (a log file, CI), and the last epoch's (default 5)")
    train.set_defaults(func=cmd_train, command_parser=train)
    for command in (evaluate, encode, reconstruct, sample):
        command.add_parser(sub)
    return parser


def _negatives(text: str) -> str:
    """``--negatives``'s value; the scope's words get a hint to ``--negatives-scope``."""
    if text in ("global", "local"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a data-parallel scope: give it as --negatives-scope {text} (--negatives "
            "takes shuffle or all)")
    return text


def _version() -> str:
    """``infomax-ext X.Y.Z (torch A.B.C, compiled ops loaded|not loaded)``."""
    import torch

    from .. import __version__, extension_available

    ops = "compiled ops loaded" if extension_available() else "compiled ops not loaded"
    return f"{PROG} {__version__} (torch {torch.__version__}, {ops})"

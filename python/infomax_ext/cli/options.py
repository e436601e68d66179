"""Option types of the ``infomax-ext`` command line and the training options' table."""
from __future__ import annotations

import argparse
import math

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
    from ..train_config import SEED_LIMIT

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

"""``infomax-ext encode``: the latent codes of new data (in the training data's units) as a
``.npy`` file of shape (N, d): the encoder means (default), one sample ``z ~ q(z | x)`` per row
(``--codes sample``, seeded) or the log-variances ``log sigma^2`` (``--codes logvar``)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import PROG, _say
from .model_io import (_npy_path, add_data_arguments, add_model_argument, add_run_arguments,
                       batched, check_outputs, load_trained, read_prepared, resolved_device,
                       torch_threads, write_npy)
from .options import _seed

if TYPE_CHECKING:
    import torch

    from ..vae import VAE

CODES = ("mean", "sample", "logvar")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "encode", help="the latent codes of new data (.npy)",
        description=(
            "Encode data given in the units of the training data (the model's normalisation is\n"
            "applied) and write its latent codes, one row per sample, to a .npy file (float32)."),
        epilog="Example:\n  infomax-ext encode runs/mine --data new.csv --out codes.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    add_data_arguments(parser, labels=False)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=_npy_path, required=True, metavar="FILE.npy",
                     help="where the codes (N, d) go")
    out.add_argument("--codes", choices=CODES, default="mean",
                     help="mean: E[z | x] (default); sample: one z ~ q(z | x) per sample; "
                          "logvar: log Var[z | x]")
    out.add_argument("--seed", type=_seed, default=0, metavar="S",
                     help="seed of --codes sample (default 0)")
    add_run_arguments(parser)
    parser.set_defaults(func=cmd_encode, command_parser=parser)
    return parser


def latent_codes(vae: VAE, x: torch.Tensor, codes: str, seed: int = 0) -> torch.Tensor:
    """``(N, d)`` codes of the model input ``x`` (N, ...): ``"mean"``, ``"sample"`` (one
    reparameterised draw per row, from a forked RNG seeded with ``seed``) or ``"logvar"``."""
    import torch

    from ..vae import GaussianLogOutput

    device = next(vae.parameters()).device

    def one(xb: torch.Tensor) -> torch.Tensor:
        out = vae.encoder(xb.to(device))
        if codes == "mean":
            mean: torch.Tensor = out[0]
            return mean
        if codes == "sample":
            return vae.sample_latent(out)
        spread = out[1].double()
        logvar = 2 * spread if isinstance(out, GaussianLogOutput) else torch.log(spread ** 2)
        return logvar.to(out[0].dtype)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return batched(one, x)


def cmd_encode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    check_outputs(args, [("--out", args.out)])
    with torch_threads(args.threads):
        trained = load_trained(args.model_dir, resolved_device(args.device))
        data = read_prepared(args, trained, labels=False)
        z = latent_codes(trained.model.vae, data.x,  # type: ignore[arg-type]  # prepared: a tensor
                     args.codes, args.seed)
    write_npy(args.out, z.numpy())
    _say(f"{PROG} encode: wrote {args.out}: {z.shape[0]} codes of {z.shape[1]} dimensions "
         f"({args.codes})")
    return 0

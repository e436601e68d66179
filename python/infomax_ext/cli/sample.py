"""``infomax-ext sample``: new samples from a trained model, the decoder means of codes
``z ~ N(0, I)``, written as a ``.npy`` file (in the training data's units unless
``--model-units``) and a PNG."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import PROG, CommandError, _say
from .model_io import (_npy_path, add_model_argument, add_run_arguments, batched,
                       check_matplotlib, check_outputs, load_trained, resolved_device,
                       torch_threads, write_npy)
from .options import _positive_int, _seed

if TYPE_CHECKING:
    from typing import Callable

    import torch

    from ..vae import VAE


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "sample", help="samples from the prior through the decoder (.npy and PNG)",
        description=(
            "Draw N codes z ~ N(0, I) and write the decoder's means, in the units of the training\n"
            "data (the model's normalisation undone), as a .npy file (N, *sample_shape) and a PNG."),
        epilog="Example:\n  infomax-ext sample runs/mine --n 64 --out samples.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=_npy_path, required=True, metavar="FILE.npy",
                     help="where the samples go; the PNG goes to FILE.png")
    out.add_argument("--n", type=_positive_int, default=64, metavar="N",
                     help="number of samples (default 64)")
    out.add_argument("--seed", type=_seed, default=0, metavar="S", help="seed of the codes")
    out.add_argument("--model-units", action="store_true",
                     help="write the values the model sees (normalised), not the data's units")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG")
    add_run_arguments(parser)
    parser.set_defaults(func=cmd_sample, command_parser=parser)
    return parser


def prior_samples(vae: VAE, n: int, seed: int,
                  units: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Decoder means of ``n`` codes ``z ~ N(0, I_d)`` drawn from a private generator seeded with
    ``seed`` (the codes of :func:`~infomax_ext.plots.plot_prior_samples`): (n, *sample_shape),
    decoded in batches (:func:`~.model_io.batched`), each mapped by ``units`` when given."""
    import torch

    from ..plots import decoder_mean

    d = _latent_dim(vae)
    device = next(vae.parameters()).device
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))

    def one(zb: torch.Tensor) -> torch.Tensor:
        x = decoder_mean(vae, zb.to(device)).cpu()
        return x if units is None else units(x)

    return batched(one, z)


def check_memory(vae: VAE, n: int) -> None:
    """A CommandError naming ``--n`` when ``n`` samples (and their codes) need more memory than
    the machine has (:func:`infomax_ext.memory.shortfall`); one sample is decoded to learn its
    size."""
    import torch

    from ..memory import shortfall
    from ..plots import decoder_mean

    d = _latent_dim(vae)
    with torch.no_grad():
        one = decoder_mean(vae, torch.zeros(1, d, device=next(vae.parameters()).device))
    problem = shortfall(n * (one.numel() * one.element_size() + 4 * d))
    if problem is not None:
        raise CommandError(f"--n {n}: writing {n} samples of shape {tuple(one.shape[1:])} "
                           f"{problem}; choose a smaller --n")


def _latent_dim(vae: VAE) -> int:
    config = getattr(vae.decoder, "config", None) or {}
    d = config.get("n_latent")
    if not isinstance(d, int):
        raise CommandError("the model's decoder config does not say its latent size (n_latent)")
    return d


def cmd_sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    png = args.out.with_suffix(".png")
    check_outputs(args, [("--out", args.out)] + ([] if args.no_plots else [("the PNG", png)]))
    if not args.no_plots:
        check_matplotlib()
    with torch_threads(args.threads):
        trained = load_trained(args.model_dir, resolved_device(args.device))
        prep = trained.model.preprocessing
        vae = trained.model.vae
        check_memory(vae, args.n)
        x = prior_samples(vae, args.n, args.seed, None if args.model_units else prep.invert)
        write_npy(args.out, x.numpy())
        if not args.no_plots:
            from ..plots import plot_prior_samples

            from ..data import _image_shape

            shape = prep.image_shape if prep.sample_shape else _image_shape(tuple(x.shape[1:]))
            plot_prior_samples(vae, _latent_dim(vae), png, image_shape=shape,
                               n=args.n, seed=args.seed,
                               units=None if args.model_units else prep.invert,
                               title=f"{args.n} samples from the prior")
    _say(f"{PROG} sample: wrote {args.out} ({args.n} samples of shape {tuple(x.shape[1:])})"
         f"{'' if args.no_plots else f' and {png}'}")
    return 0

"""``infomax-ext sample``: new samples from a trained model, the decoder means of codes
``z ~ N(0, I)``, written as a ``.npy`` file (in the training data's units unless
``--model-units``) and a PNG."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import PROG, CommandError, _say
from .model_io import (_npy_path, add_model_argument, add_run_arguments, check_matplotlib,
                       load_trained, resolved_device, torch_threads, write_npy)
from .options import _positive_int, _seed

if TYPE_CHECKING:
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


def prior_samples(vae: VAE, n: int, seed: int) -> torch.Tensor:
    """Decoder means of ``n`` codes ``z ~ N(0, I_d)`` drawn from a private generator seeded with
    ``seed`` (the codes of :func:`~infomax_ext.plots.plot_prior_samples`): (n, *sample_shape)."""
    import torch

    from ..plots import decoder_mean

    d = _latent_dim(vae)
    device = next(vae.parameters()).device
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return decoder_mean(vae, z.to(device)).cpu()


def _latent_dim(vae: VAE) -> int:
    config = getattr(vae.decoder, "config", None) or {}
    d = config.get("n_latent")
    if not isinstance(d, int):
        raise CommandError("the model's decoder config does not say its latent size (n_latent)")
    return d


def cmd_sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.no_plots:
        check_matplotlib()
    with torch_threads(args.threads):
        trained = load_trained(args.model_dir, resolved_device(args.device))
        prep = trained.model.preprocessing
        vae = trained.model.vae
        x = prior_samples(vae, args.n, args.seed)
        values = x if args.model_units else prep.invert(x)
        write_npy(args.out, values.numpy())
        png = args.out.with_suffix(".png")
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

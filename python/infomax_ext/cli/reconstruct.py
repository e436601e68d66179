"""``infomax-ext reconstruct``: the decoder means at the encoder means of new data (given in the
training data's units), written as a ``.npy`` file of the data's shape (in the training data's
units unless ``--model-units``) and a PNG of originals beside their reconstructions."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import PROG, _say
from .model_io import (_npy_path, add_data_arguments, add_model_argument, add_run_arguments,
                       batched, check_matplotlib, check_outputs, load_trained, read_prepared,
                       resolved_device, torch_threads, write_npy)
from .options import _positive_int

if TYPE_CHECKING:
    from typing import Callable

    import torch

    from ..vae import VAE


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "reconstruct", help="reconstructions of new data (.npy and PNG)",
        description=(
            "Reconstruct data given in the units of the training data: the decoder's mean at the\n"
            "encoder's mean, in the units of the training data (the model's normalisation\n"
            "undone), as a .npy file of the data's shape and a PNG beside it."),
        epilog="Example:\n  infomax-ext reconstruct runs/mine --data new.npy --out recon.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    add_data_arguments(parser, labels=False)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=_npy_path, required=True, metavar="FILE.npy",
                     help="where the reconstructions go; the PNG goes to FILE.png")
    out.add_argument("--model-units", action="store_true",
                     help="write the values the model sees (normalised), not the data's units")
    out.add_argument("--n", type=_positive_int, default=24, metavar="N",
                     help="samples drawn in the PNG (default 24)")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG")
    add_run_arguments(parser)
    parser.set_defaults(func=cmd_reconstruct, command_parser=parser)
    return parser


def reconstructions(vae: VAE, x: torch.Tensor,
                    units: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Decoder means at the encoder means of the model input ``x`` (N, ...): (N, ...), each
    batch mapped by ``units`` (e.g. into the data's units) when given."""
    from ..plots import decoder_mean

    device = next(vae.parameters()).device

    def one(xb: torch.Tensor) -> torch.Tensor:
        rec = decoder_mean(vae, vae.encoder(xb.to(device))[0]).cpu()
        return rec if units is None else units(rec)

    return batched(one, x)


def cmd_reconstruct(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    png = args.out.with_suffix(".png")
    check_outputs(args, [("--out", args.out)] + ([] if args.no_plots else [("the PNG", png)]))
    if not args.no_plots:
        check_matplotlib()
    with torch_threads(args.threads):
        trained = load_trained(args.model_dir, resolved_device(args.device))
        data = read_prepared(args, trained, labels=False)
        prep = trained.model.preprocessing
        to_units = None if args.model_units else prep.invert
        rec = reconstructions(trained.model.vae, data.x, to_units)  # type: ignore[arg-type]  # a tensor
        write_npy(args.out, rec.numpy())
        if not args.no_plots:
            from ..plots import plot_reconstructions

            plot_reconstructions(trained.model.vae, data.x, png, image_shape=data.image_shape,
                                 n=args.n, units=to_units,
                                 title=f"reconstructions of {data.source}")
    units = "model units" if args.model_units or prep.is_identity else "the data's units"
    _say(f"{PROG} reconstruct: wrote {args.out} ({len(data)} reconstructions of shape "
         f"{tuple(data.sample_shape)}, {units}){'' if args.no_plots else f' and {png}'}")
    return 0

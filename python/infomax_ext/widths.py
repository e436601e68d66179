"""Feature widths where the encoder, the decoder and the MI chain meet, read from their Linear
layers, so that a mismatch is named (modules and widths) instead of ending in torch's "mat1 and
mat2 shapes cannot be multiplied".

A width is known when a module starts (or ends) with a ``nn.Linear``: directly, inside
``nn.Sequential``\\ s, behind layers that keep the number of features per sample (activations,
Flatten, Unflatten, Dropout, LayerNorm), or through the parts a class names in its
``widths_through`` (the encoders, decoders and :class:`~infomax_ext.MutualInfoChain` of this
package). Any other module has an unknown width and is not checked. :func:`check_vae`,
:func:`check_chain` and :func:`check_model` run when the models are built; :func:`explain` turns
a multiplication error at call time into one that names the module whose input does not fit.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .activations import Activation

__all__ = ["Width", "in_width", "out_width", "check_vae", "check_chain", "check_model",
           "explain"]

_MISMATCH = "shapes cannot be multiplied"


class Width(NamedTuple):
    """``features`` per sample, as the Linear layer at ``layer`` (a dotted path) takes or gives."""

    features: int
    layer: str


def _keeps_width(module: nn.Module) -> bool:
    """Whether ``module`` gives as many features per sample as it takes."""
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if isinstance(module, (nn.Identity, nn.Unflatten, nn.modules.dropout._DropoutNd,
                           nn.LayerNorm, Activation)):
        return True
    return (type(module).__module__ == nn.modules.activation.__name__
            and not isinstance(module, (nn.GLU, nn.MultiheadAttention)))


def _parts(module: nn.Module, first: bool) -> tuple[str, ...] | None:
    """The names of the parts of ``module`` that data flows through, from its input (``first``)
    or back from its output, as its class declares them in ``widths_through`` (``(from the input,
    from the output)``; the encoders, decoders and MI chain of this package); None for any other
    module."""
    through = getattr(type(module), "widths_through", None)
    return None if through is None else through[0 if first else 1]


def _find(module: nn.Module, path: str, first: bool) -> Width | None | bool:
    """The Width at the start (``first``) or end of ``module``; True when every layer keeps the
    width (look further), None when unknown."""
    if isinstance(module, nn.Linear):
        return Width(module.in_features if first else module.out_features, path)
    if isinstance(module, nn.Sequential):
        children = list(module.named_children())
        parts = [(f"{path}.{name}", child) for name, child in (children if first else children[::-1])]
    else:
        names = _parts(module, first)
        if names is None:
            return True if _keeps_width(module) else None
        parts = [(f"{path}.{name}", getattr(module, name)) for name in names]
    for child_path, child in parts:
        found = _find(child, child_path, first)
        if found is not True:
            return found
    return True


def in_width(module: nn.Module, path: str) -> Width | None:
    """The features per sample ``module`` (found at ``path``) takes, when known."""
    found = _find(module, path, True)
    return found if isinstance(found, Width) else None


def out_width(module: nn.Module, path: str) -> Width | None:
    """The features per sample ``module`` (found at ``path``) gives, when known."""
    found = _find(module, path, False)
    return found if isinstance(found, Width) else None


def _describe(module: nn.Module, path: str) -> str:
    return f"{path} ({type(module).__name__})"


def _check_pair(where: str, giver: nn.Module, giver_path: str, taker: nn.Module,
                taker_path: str, what: str) -> None:
    gives, takes = out_width(giver, giver_path), in_width(taker, taker_path)
    if gives is not None and takes is not None and gives.features != takes.features:
        raise ValueError(
            f"{where}: {_describe(giver, giver_path)} gives {what} of width {gives.features} (its layer "
            f"{gives.layer}) but {_describe(taker, taker_path)} takes {takes.features} features "
            f"(its layer {takes.layer}); build both for the same width")


def check_vae(encoder: nn.Module, decoder: nn.Module, prefix: str = "") -> None:
    """A ValueError naming both modules when the encoder's codes and the decoder's input differ
    in width (when both are known)."""
    _check_pair("VAE(encoder, decoder)", encoder, f"{prefix}encoder", decoder,
                f"{prefix}decoder", "codes")


def check_chain(data: nn.Module, latent: nn.Module, mlp: nn.Module, prefix: str = "") -> None:
    """A ValueError naming the modules when ``data``'s and ``latent``'s outputs together do not
    give the width the MI chain's ``mlp`` takes (when all are known)."""
    hx, hz = out_width(data, f"{prefix}data"), out_width(latent, f"{prefix}latent")
    takes = in_width(mlp, f"{prefix}mlp")
    if hx is None or hz is None or takes is None or hx.features + hz.features == takes.features:
        return
    raise ValueError(
        f"MutualInfoChain(data, latent, mlp): {prefix}data gives {hx.features} features (its layer {hx.layer}) and {prefix}latent "
        f"gives {hz.features} (its layer {hz.layer}), {hx.features + hz.features} together, but "
        f"{prefix}mlp takes {takes.features} (its layer {takes.layer})")


def check_model(vae: nn.Module, mi: nn.Module) -> None:
    """A ValueError naming the modules when the MI chain does not fit the VAE: its latent network
    must take the encoder's code width and its data network the encoder's input width."""
    encoder = getattr(vae, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return
    if isinstance(getattr(mi, "latent", None), nn.Module):
        _check_pair("InfoMaxVAE(vae, mi)", encoder, "vae.encoder",
                    mi.latent, "mi.latent",  # type: ignore[arg-type]  # a module: checked above
                    "codes")
    if isinstance(getattr(mi, "data", None), nn.Module):
        takes_x = in_width(encoder, "vae.encoder")
        data_x = in_width(mi.data, "mi.data")  # type: ignore[arg-type]  # a module: checked above
        if takes_x is not None and data_x is not None and takes_x.features != data_x.features:
            raise ValueError(
                f"InfoMaxVAE(vae, mi): vae.encoder takes samples of {takes_x.features} features (its layer "
                f"{takes_x.layer}) but mi.data takes {data_x.features} (its layer {data_x.layer}); "
                "both see the same data x")


def _features(t: object) -> int | None:
    if not isinstance(t, torch.Tensor) or t.dim() < 1:
        return None
    return t[0].numel() if t.shape[0] else None


def explain(exc: BaseException, inputs: dict[str, tuple[Any, Any]]) -> None:
    """Raise a ValueError naming the module whose input does not fit, when ``exc`` is torch's
    "mat1 and mat2 shapes cannot be multiplied" and the widths tell which one; return otherwise.

    ``inputs`` maps a module's path (e.g. ``"vae.encoder"``) to ``(module, tensor it was given)``;
    the first module whose known input width differs from its tensor's features is named."""
    if not isinstance(exc, RuntimeError) or _MISMATCH not in str(exc):
        return
    for path, (module, tensor) in inputs.items():
        takes, given = in_width(module, path), _features(tensor)
        if takes is not None and given is not None and takes.features != given:
            raise ValueError(
                f"{_describe(module, path)} takes {takes.features} features per sample (its "
                f"layer {takes.layer}) but was given {given} (input of shape "
                f"{tuple(tensor.shape)}); torch said: {exc}") from exc

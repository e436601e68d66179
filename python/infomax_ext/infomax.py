"""The InfoMax VAE: the model (with its config, save and load), its two losses and the training
step.

VAE loss:  ``-<log p(x|z)> + beta * KL(q(z|x) || p(z)) - alpha * I(x; z) + reg_strength * reg``;
MI loss:   ``-I(x; z) + reg_strength * reg``, with ``I`` the NWJ bound of the MI chain.
"""
from __future__ import annotations

import contextlib
import json
import os
import weakref
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping,
                    NamedTuple, cast, overload)

import torch
from torch import nn

from . import distributed, distributed_step, memory, widths
from .activations import ACTIVATIONS, spec_of_module
from .bounds import BOUNDS, Bound, resolve_bound
from .mutual_info import (
    DataHalfCache,
    MIScores,
    MutualInfoChain,
    check_batch,
    shuffled_bound,
)
from .preprocessing import PREPROCESSING_FILE, Preprocessing
from .serialization import (
    MODEL_WEIGHTS_FILE,
    WEIGHTS_DIGEST_KEY,
    SerializationError,
    atomic_write_json,
    check_weights_fit,
    load_model_weights,
    read_json,
    read_model_config,
    read_model_weights,
    write_model_files,
)
from .vae import VAE, VAEOutput, decoder_loglikelihood, encoder_kl
from .validation import as_count, check_weight, check_weights

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

PathLike = str | os.PathLike[str]
"""A file or directory path: a ``str`` or a ``pathlib.Path``."""

__all__ = ["InfoMaxVAE", "InfoMaxVAEOutput", "InfoMaxTerms", "infomaxloss", "infomax_terms",
           "miloss", "train_step", "model_config", "save_model", "load_model"]

# The "format" and "version" of InfoMaxVAE.config (model_config.json).
FORMAT = "infomax_ext.InfoMaxVAE"
VERSION = 1


class InfoMaxVAEOutput(NamedTuple):
    """``model(x, latent=True)``: the VAE's latent output and the MI estimate (0-dim)."""

    vae: VAEOutput
    mi: torch.Tensor


class InfoMaxVAE(nn.Module):
    """A :class:`VAE` trained together with a :class:`MutualInfoChain` ``mi``.

    ``model(x)`` is ``vae(x)`` (the decoder output); ``model(x, latent=True, seed=None)`` returns
    ``InfoMaxVAEOutput(vae=VAEOutput(encoder, z, decoder), mi=I)``; with ``process_group`` the
    codes are shuffled over all processes' rows (:func:`~infomax_ext.mutual_info.shuffled_bound`).
    ``bound`` (default ``"nwj"``; a name of :data:`~infomax_ext.BOUNDS` or a
    :class:`~infomax_ext.bounds.Bound`) is the MI bound of ``model(x, latent=True)`` and of
    :func:`train_step`'s losses; it is saved with the model's config.

    ``preprocessing`` (:class:`~infomax_ext.preprocessing.Preprocessing`, the identity unless
    set) is how raw data becomes the model's input; :meth:`save` and :meth:`load` keep it.
    """

    def __init__(self, vae: VAE, mi: MutualInfoChain, preprocessing: Preprocessing | None = None,
                 bound: str | Bound = "nwj") -> None:
        super().__init__()
        if not isinstance(vae, nn.Module) or not isinstance(mi, nn.Module):
            raise TypeError("InfoMaxVAE(vae, mi) takes two nn.Modules")
        widths.check_model(vae, mi)
        self.vae, self.mi = vae, mi
        self.preprocessing = Preprocessing() if preprocessing is None else preprocessing
        self.bound = resolve_bound(bound)

    def forward(self, x: torch.Tensor, latent: bool = False, seed: int | None = None,
                process_group: ProcessGroup | None = None) -> Any:
        if not latent:
            return self.vae(x)
        check_batch(x)
        out = self.vae(x, latent=True)
        bound = shuffled_bound(self.mi, x, out.z, seed=seed, process_group=process_group,
                               bound=self.bound).bound
        return InfoMaxVAEOutput(out, bound)

    @property
    def config(self) -> dict[str, Any] | None:
        """``{"format": "infomax_ext.InfoMaxVAE", "version": 1, "vae": <VAE config>, "mi":
        <MutualInfoChain config>}``, the file ``model_config.json`` of :meth:`save`; ``None``
        when a part carries no config (it was not built by ``from_sizes``)."""
        vae_config = getattr(self.vae, "config", None)
        mi_config = getattr(self.mi, "config", None)
        if vae_config is None or mi_config is None:
            return None
        config = {"format": FORMAT, "version": VERSION, "vae": vae_config, "mi": mi_config}
        if self.bound != BOUNDS["nwj"]:  # absent: nwj, as in configs written before bounds
            config["bound"] = self.bound.config()
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "InfoMaxVAE":
        """A fresh model with the architecture of ``config`` (:attr:`config`). The builders'
        random initialisation runs under a forked RNG: torch's global generator is left as it
        was. A :class:`SerializationError` names what is wrong with a config it cannot use."""
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise SerializationError(f"not an InfoMaxVAE model config (format {FORMAT!r} expected)")
        if config.get("version") != VERSION:
            raise SerializationError(
                f"model config version {config.get('version')!r} is not supported (this is "
                f"version {VERSION}); was it written by a newer infomax_ext?"
            )
        if memory.count_list_entries(config) > memory.MAX_CONFIG_ENTRIES:
            raise SerializationError(f"the model config has more than {memory.MAX_CONFIG_ENTRIES} "
                                     "list entries (layers): not a model this library builds")

        def build() -> InfoMaxVAE:
            with torch.random.fork_rng(devices=[]):
                return cls(VAE.from_config(config["vae"]), MutualInfoChain.from_config(config["mi"]),
                           bound=config.get("bound", "nwj"))

        try:  # first on the meta device: sizes are checked before any memory is allocated
            shell = memory.on_meta(build)
            short = memory.shortfall(memory.parameter_bytes(shell))
            if short is not None:
                raise SerializationError(
                    f"the model config's sizes (its largest layer {memory.largest_layer(shell)}) "
                    f"give {sum(p.numel() for p in shell.parameters()):,} parameters: the model "
                    f"{short}")
            return build()
        except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
            if isinstance(exc, SerializationError):
                raise
            raise SerializationError(f"cannot rebuild the model from its config: "
                                     f"{' '.join(str(exc).split())}") from None

    def save(self, directory: PathLike) -> None:
        """Write the model (architecture and weights) to ``directory``; see :meth:`load`.

        Files: ``model_config.json`` (:attr:`config`), ``model.pt`` (the state_dict) and
        ``preprocessing.json`` (:attr:`preprocessing`), each written atomically; the weights are stored on the CPU, so a model trained on a GPU loads
        anywhere. Only a model whose encoder, decoder and MI chain were built by ``from_sizes``
        with named activations (``activations.ACTIVATIONS``) can be saved: for any other, a
        custom callable or module as an activation included, a :class:`SerializationError` is
        raised before anything is written (a pickle would need the defining code at load time
        and cannot be read back safely); save ``state_dict()`` with ``torch.save`` and rebuild
        the architecture in code instead."""
        save_model(self, directory)

    @classmethod
    def load(cls, directory: PathLike,
             map_location: str | torch.device | None = None) -> "InfoMaxVAE":
        """The model saved by :meth:`save` in ``directory``, rebuilt exactly.

        Weights keep their saved dtypes (float64 stays float64); ``map_location`` (as in
        ``torch.load``) places them on a device. A clear :class:`SerializationError` for a
        missing directory, a missing or corrupt file, a config entry :meth:`save` does not write
        (an unknown activation name, a parameter on an activation that takes none, a wrong
        type, ...), sizes beyond the machine's memory (checked before allocating), a
        ``model.pt`` that does not match the digest ``model_config.json`` records, or weights
        that do not fit the architecture or are not finite. ``preprocessing.json`` restores
        :attr:`preprocessing` (a directory without it: the identity)."""
        config = read_model_config(directory)
        shell = memory.on_meta(lambda: cls.from_config(config))  # sizes, before allocating
        state = read_model_weights(directory, map_location, config.get(WEIGHTS_DIGEST_KEY))
        check_weights_fit(shell, state, Path(directory) / MODEL_WEIGHTS_FILE)
        model = cls.from_config(config)
        load_model_weights(model, directory, state=state)
        model.preprocessing = read_preprocessing(directory)
        return model


def model_config(model: nn.Module) -> dict[str, Any]:
    """:attr:`InfoMaxVAE.config`, checked for saving: a :class:`SerializationError` saying why
    when a part carries no config, when an activation has no name, or when an entry is not
    JSON."""
    vae, mi = getattr(model, "vae", None), getattr(model, "mi", None)
    if not isinstance(vae, nn.Module) or not isinstance(mi, nn.Module):
        raise SerializationError(
            f"save_model expects an InfoMaxVAE (with .vae and .mi), got {type(model).__name__}"
        )
    vae_config, mi_config = getattr(vae, "config", None), getattr(mi, "config", None)
    missing = []
    if vae_config is None:
        for part in ("encoder", "decoder"):
            if getattr(getattr(vae, part, None), "config", None) is None:
                missing.append(f"vae.{part}")
        missing = missing or ["vae"]
    if mi_config is None:
        missing.append("mi")
    if missing:
        raise SerializationError(
            f"cannot save this InfoMaxVAE: {', '.join(missing)} carries no config (it was not built "
            "by from_sizes), so its architecture cannot be written as JSON. Build it with the "
            "from_sizes builders, or save model.state_dict() with torch.save and rebuild the "
            "architecture in code."
        )
    unnamed = (_unnamed_activation_entries(vae_config, "vae")  # type: ignore[arg-type]  # not None here
               + _unnamed_activation_entries(mi_config, "mi"))  # type: ignore[arg-type]
    if unnamed:
        modules = ", ".join(f"{name} = {module!r}" for name, module in model.named_modules()
                            if _is_unnamed_activation(module))
        raise SerializationError(
            f"cannot save this InfoMaxVAE: activation with no name at {', '.join(unnamed)}"
            + (f" ({modules})" if modules else "")
            + f"; a config can only rebuild the named activations ({', '.join(ACTIVATIONS)})."
            " Build it with named activations, or save model.state_dict() with torch.save and "
            "rebuild the architecture in code."
        )
    # Round-trip through JSON now so an unserialisable entry fails here, not halfway through a save.
    try:
        vae_config = json.loads(json.dumps(vae_config))
        mi_config = json.loads(json.dumps(mi_config))
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"the model's config is not JSON-serialisable: {exc}") from None
    config = {"format": FORMAT, "version": VERSION, "vae": vae_config, "mi": mi_config}
    bound = getattr(model, "bound", None)
    if bound is not None and bound != BOUNDS["nwj"]:  # absent: nwj
        config["bound"] = resolve_bound(bound).config()
    return config


def _unnamed_activation_entries(config: dict[str, Any], path: str) -> list[str]:
    """``"<path>.<key>[i]"`` for each activation entry of a builder config that holds no name."""
    found = []
    for key, value in config.items():
        if isinstance(value, dict):
            found += _unnamed_activation_entries(value, f"{path}.{key}")
        elif key.endswith(("activation", "activations")):
            if isinstance(value, list):
                found += [f"{path}.{key}[{i}]" for i, entry in enumerate(value) if entry is None]
            elif value is None:
                found.append(f"{path}.{key}")
    return found


def _is_unnamed_activation(module: nn.Module) -> bool:
    """Whether ``module`` is a layer of a built model that is an activation without a name."""
    return (next(module.children(), None) is None
            and not isinstance(module, (nn.Linear, nn.Flatten, nn.Unflatten))
            and spec_of_module(module) is None)


def save_model(model: nn.Module, directory: PathLike) -> None:
    """``model.save(directory)`` for an :class:`InfoMaxVAE` built by ``from_sizes``
    (:meth:`InfoMaxVAE.save`); a :class:`SerializationError` for any other model."""
    config = model_config(model)
    preprocessing = getattr(model, "preprocessing", None) or Preprocessing()
    atomic_write_json(Path(directory) / PREPROCESSING_FILE, preprocessing.to_dict())
    write_model_files(directory, config, model.state_dict())


def read_preprocessing(directory: PathLike) -> Preprocessing:
    """The :class:`Preprocessing` in ``directory/preprocessing.json``; the identity when the
    file is absent (a model saved before the file existed); a :class:`SerializationError` when it
    cannot be used."""
    path = Path(directory) / PREPROCESSING_FILE
    if not os.path.lexists(path):  # a broken link or a loop is named by read_json
        return Preprocessing()
    try:
        return Preprocessing.from_dict(read_json(path, "preprocessing"))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SerializationError):
            raise
        raise SerializationError(f"{path}: {exc}") from None


def load_model(directory: PathLike,
               map_location: str | torch.device | None = None) -> InfoMaxVAE:
    """:meth:`InfoMaxVAE.load`: the model saved in ``directory``, rebuilt exactly."""
    return InfoMaxVAE.load(directory, map_location=map_location)


class InfoMaxTerms(NamedTuple):
    """The pieces of :func:`infomaxloss`: ``loss`` and its terms (all 0-dim), the MI chain's
    ``scores`` and the VAE's latent output."""

    loss: torch.Tensor
    loglikelihood: torch.Tensor
    kl: torch.Tensor
    mi: torch.Tensor
    regularization: torch.Tensor | None
    scores: MIScores
    vae_output: VAEOutput


def infomax_terms(
    vae: VAE,
    mi: MutualInfoChain,
    x: torch.Tensor,
    x_out: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    alpha: float = 1.0,
    n_samples: int = 1,
    reconstruction_loglikelihood: Callable[..., torch.Tensor] = decoder_loglikelihood,
    kl_divergence: Callable[..., torch.Tensor] = encoder_kl,
    regularization: Callable[[VAEOutput], torch.Tensor] | None = None,
    reg_strength: float = 1.0,
    seed: int | None = None,
    shuffled_grad: bool = False,
    data_half_cache: DataHalfCache | None = None,
    process_group: ProcessGroup | None = None,
    bound: str | Bound = "nwj",
    negatives: str = "shuffle",
) -> InfoMaxTerms:
    """:func:`infomaxloss` with its terms; the arguments are those of :func:`infomaxloss`."""
    n = check_batch(x, what="infomaxloss")
    if x_out is not None and x_out.shape[0] != n:
        raise ValueError(f"x and x_out batch sizes differ: {n} and {x_out.shape[0]}")
    n_samples = as_count("n_samples", n_samples, "infomaxloss")
    check_weights({"beta": beta, "alpha": alpha, "reg_strength": reg_strength}, "infomaxloss")
    z_rows = None
    try:
        encoder_output = vae.encoder(x)
        z = vae.sample_latent(encoder_output, n_samples)
        z_rows = z.reshape(-1, z.shape[-1])
        decoder_output = vae.decoder(z_rows)
    except RuntimeError as exc:
        widths.explain(exc, {"vae.encoder": (vae.encoder, x), "vae.decoder": (vae.decoder, z_rows)})
        raise
    target = x if x_out is None else x_out
    if n_samples > 1 and reconstruction_loglikelihood is not decoder_loglikelihood:
        target = target.repeat(n_samples, *([1] * (target.dim() - 1)))
    loglik = reconstruction_loglikelihood(target, z_rows, vae.decoder, decoder_output).mean()
    kl = kl_divergence(vae.encoder, encoder_output).mean()
    paired = shuffled_bound(mi, x, z_rows, n_samples, seed, shuffled_grad=shuffled_grad,
                            process_group=process_group, data_half_cache=data_half_cache,
                            bound=bound, negatives=negatives)
    loss = -loglik + beta * kl - alpha * paired.bound
    vae_output = VAEOutput(encoder_output, z, decoder_output)
    reg = None
    if regularization is not None:
        reg = regularization(vae_output)
        loss = loss + reg_strength * reg
    return InfoMaxTerms(loss, loglik, kl, paired.bound, reg,
                        MIScores(paired.joint, paired.shuffled), vae_output)


def infomaxloss(
    vae: VAE,
    mi: MutualInfoChain,
    x: torch.Tensor,
    x_out: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    alpha: float = 1.0,
    n_samples: int = 1,
    reconstruction_loglikelihood: Callable[..., torch.Tensor] = decoder_loglikelihood,
    kl_divergence: Callable[..., torch.Tensor] = encoder_kl,
    regularization: Callable[[VAEOutput], torch.Tensor] | None = None,
    reg_strength: float = 1.0,
    seed: int | None = None,
    shuffled_grad: bool = False,
    data_half_cache: DataHalfCache | None = None,
    process_group: ProcessGroup | None = None,
    bound: str | Bound = "nwj",
    negatives: str = "shuffle",
) -> torch.Tensor:
    """Loss of the VAE in the InfoMax VAE (a 0-dim tensor).

    ``-mean(log p(x_out | z)) + beta * mean(KL(q(z|x) || N(0, I))) - alpha * I(x; z)
    + reg_strength * regularization(VAEOutput(encoder, z, decoder))``, with ``x_out = x`` unless
    given. x (N, ...), N >= 2. Keywords: ``beta=1``, ``alpha=1``, ``n_samples=1`` (latent samples
    per input, drawn in one batch; the reconstruction and MI terms average over them),
    ``reconstruction_loglikelihood=decoder_loglikelihood``, ``kl_divergence=encoder_kl``,
    ``regularization=None``, ``reg_strength=1``, ``seed=None`` (the shuffle's seed),
    ``shuffled_grad=False`` (True: the MI term reaches the encoder through the shuffled codes
    too, as in the paper's code), ``data_half_cache=None`` (a :class:`DataHalfCache` that keeps
    the MI chain's data half for a later evaluation on the same x and MI weights),
    ``process_group=None`` (torch.distributed: x holds this process's rows, the codes are
    shuffled over all processes' rows and the MI term is the mean of the bound's terms over this
    process's rows; see :mod:`infomax_ext.distributed`), ``bound="nwj"`` (the MI bound: a name
    of :data:`~infomax_ext.BOUNDS` or a :class:`~infomax_ext.bounds.Bound`),
    ``negatives="shuffle"`` (or ``"all"``: every pair of the batch; see
    :func:`~infomax_ext.mutual_info.shuffled_bound`).
    """
    return infomax_terms(
        vae, mi, x, x_out, beta=beta, alpha=alpha, n_samples=n_samples,
        reconstruction_loglikelihood=reconstruction_loglikelihood, kl_divergence=kl_divergence,
        regularization=regularization, reg_strength=reg_strength, seed=seed,
        shuffled_grad=shuffled_grad, data_half_cache=data_half_cache, process_group=process_group,
        bound=bound, negatives=negatives,
    ).loss


def miloss(vae: VAE, mi: MutualInfoChain, x: torch.Tensor, *,
           regularization: Callable[[MIScores], torch.Tensor] | None = None,
           reg_strength: float = 1.0, seed: int | None = None,
           data_half_cache: DataHalfCache | None = None,
           process_group: ProcessGroup | None = None, bound: str | Bound = "nwj",
           negatives: str = "shuffle") -> torch.Tensor:
    """Loss of the MI chain: ``-I(x; z) + reg_strength * regularization(MIScores(joint, shuffled))``.

    z is one sample of the VAE's encoder, drawn without building a graph, so the gradient
    reaches only the MI chain. x (N, ...), N >= 2. ``data_half_cache``, ``process_group``,
    ``bound`` and ``negatives`` as in :func:`infomaxloss`.
    """
    check_batch(x, what="miloss")
    check_weight("reg_strength", reg_strength, "miloss")
    with torch.no_grad():
        try:
            z = vae.sample_latent(vae.encoder(x))
        except RuntimeError as exc:
            widths.explain(exc, {"vae.encoder": (vae.encoder, x)})
            raise
    paired = shuffled_bound(mi, x, z, seed=seed, process_group=process_group,
                            data_half_cache=data_half_cache, bound=bound, negatives=negatives)
    loss = -paired.bound
    if regularization is not None:
        loss = loss + reg_strength * regularization(MIScores(paired.joint, paired.shuffled))
    return loss


def _optimizers(opt: Any) -> tuple[Any, Any, tuple[str, str]]:
    """``(vae optimizer, mi optimizer, (their names as the caller wrote them))``."""
    if isinstance(opt, dict) or hasattr(opt, "keys"):
        try:
            return opt["vae"], opt["mi"], ("opt['vae']", "opt['mi']")
        except KeyError:
            pass
    elif hasattr(opt, "vae") and hasattr(opt, "mi"):
        return opt.vae, opt.mi, ("opt.vae", "opt.mi")
    raise TypeError(
        "opt must hold a 'vae' and an 'mi' optimizer: a mapping {'vae': ..., 'mi': ...} or an "
        f"object with attributes vae and mi, got {type(opt).__name__}"
    )


# Per optimizer, the layout that passed _check_optimizers: (model parts, the param lists and
# their lengths). A step whose layout matches skips the check.
_CHECKED_LAYOUTS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _check_optimizers(model: InfoMaxVAE, optimizers: tuple[Any, Any], names: tuple[str, str],
                      param_counts: Any) -> None:
    """A ValueError naming the optimizer when the ``vae`` optimizer holds a parameter that is not
    ``model.vae``'s or the ``mi`` optimizer one that is not ``model.mi``'s (the optimizers
    swapped, or built for another model): its step would change what this step does not train.
    Checked once per layout of the optimizer's parameter groups (cached). Optimizers that are not
    torch optimizers (no ``param_groups`` list) are not checked."""
    parts = {"model.vae": model.vae, "model.mi": model.mi}
    for (own, module), opt, name in zip(parts.items(), optimizers, names):
        groups = getattr(opt, "param_groups", None)
        if not isinstance(groups, list):
            continue
        layout = (id(model.vae), id(model.mi), param_counts,
                  tuple((id(g.get("params")), len(g.get("params", ()))) for g in groups))
        try:
            if _CHECKED_LAYOUTS.get(opt) == layout:
                continue
        except TypeError:  # not weak-referenceable: checked every step
            pass
        owners = {id(p): part for part, m in parts.items() for p in m.parameters()}
        held = [p for g in groups for p in g.get("params", ())]
        foreign = [p for p in held if owners.get(id(p)) != own]
        if foreign:
            others = sorted({owners.get(id(p), "no part of this model") for p in foreign})
            swapped = " (are the two optimizers swapped?)" if "model.mi" in others or \
                "model.vae" in others else ""
            raise ValueError(
                f"train_step: {name} holds {len(foreign)} of its {len(held)} parameters from "
                f"{' and '.join(others)}, not {own}{swapped}; build it over "
                f"{own}.parameters()")
        if not any(owners.get(id(p)) == own and p.requires_grad for p in held):
            raise ValueError(f"train_step: {name} holds no trainable parameter of {own}")
        try:
            _CHECKED_LAYOUTS[opt] = layout
        except TypeError:
            pass


@contextlib.contextmanager
def _frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Parameters temporarily set to requires_grad=False, so no graph is built for them."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _set_grads(loss: torch.Tensor, params: list[nn.Parameter], retain_graph: bool = False) -> None:
    """``p.grad = d loss / d p`` for exactly these parameters (others' .grad untouched)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g


@overload
def train_step(
    model: InfoMaxVAE,
    x: torch.Tensor,
    opt: Mapping[str, torch.optim.Optimizer] | Any,
    x_out: torch.Tensor | None = None,
    *,
    infomaxloss_function: Callable[..., torch.Tensor] = infomaxloss,
    infomaxloss_kwargs: dict[str, Any] | None = None,
    miloss_function: Callable[..., torch.Tensor] = miloss,
    miloss_kwargs: dict[str, Any] | None = None,
    loss_return: Literal[True],
    verbose: bool = False,
    reuse_forward: bool = False,
    shuffled_grad: bool | None = None,
    process_group: ProcessGroup | None = None,
    negatives: str = "global",
    bound: str | Bound | None = None,
) -> tuple[float, float]: ...


@overload
def train_step(
    model: InfoMaxVAE,
    x: torch.Tensor,
    opt: Mapping[str, torch.optim.Optimizer] | Any,
    x_out: torch.Tensor | None = None,
    *,
    infomaxloss_function: Callable[..., torch.Tensor] = infomaxloss,
    infomaxloss_kwargs: dict[str, Any] | None = None,
    miloss_function: Callable[..., torch.Tensor] = miloss,
    miloss_kwargs: dict[str, Any] | None = None,
    loss_return: Literal[False] = False,
    verbose: bool = False,
    reuse_forward: bool = False,
    shuffled_grad: bool | None = None,
    process_group: ProcessGroup | None = None,
    negatives: str = "global",
    bound: str | Bound | None = None,
) -> None: ...


def train_step(
    model: InfoMaxVAE,
    x: torch.Tensor,
    opt: Mapping[str, torch.optim.Optimizer] | Any,
    x_out: torch.Tensor | None = None,
    *,
    infomaxloss_function: Callable[..., torch.Tensor] = infomaxloss,
    infomaxloss_kwargs: dict[str, Any] | None = None,
    miloss_function: Callable[..., torch.Tensor] = miloss,
    miloss_kwargs: dict[str, Any] | None = None,
    loss_return: bool = False,
    verbose: bool = False,
    reuse_forward: bool = False,
    shuffled_grad: bool | None = None,
    process_group: ProcessGroup | None = None,
    negatives: str = "global",
    bound: str | Bound | None = None,
) -> tuple[float, float] | None:
    """One training step of the InfoMax VAE (Julia's ``train!``).

    ``opt`` holds a ``vae`` and an ``mi`` optimizer. (1) The gradient of the InfoMax loss with
    respect to the VAE's parameters only, then the VAE step; (2) a fresh forward pass through the
    updated VAE, the gradient of the MI loss with respect to the MI chain only, then the MI step.
    Neither loss writes the other network's ``.grad``. ``reuse_forward=True`` is the paper's
    cheaper scheme: one forward pass feeds both updates (the MI step uses the pre-update codes and
    the same permutation); it needs the default loss functions. ``shuffled_grad`` (True or False)
    is passed on to the VAE loss, as in ``infomaxloss(..., shuffled_grad=...)``; None leaves it to
    ``infomaxloss_kwargs`` or the loss's default (False: the shuffled codes are constants).
    Returns ``(vae_loss, mi_loss)`` as floats when ``loss_return``.

    ``process_group`` (torch.distributed) makes the step data-parallel: every process passes its
    own rows x and both networks' gradients are averaged over the group before each optimizer
    step (:class:`~infomax_ext.distributed.AveragingOptimizer`), so every process takes the same
    step. ``negatives="global"`` passes the group on to both losses (unless their kwargs name a
    ``process_group``): the codes are shuffled over all processes' rows and the rank average of
    the gradients is the whole-batch gradient. ``"local"``: each process shuffles its own rows
    and no codes travel. The losses returned are this process's. Before the step the processes
    check that they run it with the same settings and weights
    (:func:`~infomax_ext.distributed_step.agree_on_step`): on the first step of a model,
    weights that differ are set to rank 0's; a later difference raises
    :class:`~infomax_ext.distributed.DistributedMismatchError` naming the parameter.

    ``bound`` (a name of :data:`~infomax_ext.BOUNDS` or a :class:`~infomax_ext.bounds.Bound`) is
    passed on to both losses; None takes the model's ``bound`` (:class:`InfoMaxVAE`) when the
    losses are the default functions.
    """
    opt_vae, opt_mi, opt_names = _optimizers(opt)
    vae_kwargs = dict(infomaxloss_kwargs or {})
    mi_kwargs = dict(miloss_kwargs or {})
    # Before any step: a bad weight found by the MI loss would come after the VAE step.
    if infomaxloss_function is infomaxloss:
        check_weights(vae_kwargs, "train_step", "infomaxloss_kwargs")
    if miloss_function is miloss or reuse_forward:
        check_weights({k: v for k, v in mi_kwargs.items() if k == "reg_strength"}, "train_step",
                      "miloss_kwargs")
    if shuffled_grad is not None:
        if not isinstance(shuffled_grad, bool):
            raise TypeError(f"shuffled_grad must be True, False or None, got {shuffled_grad!r}")
        if vae_kwargs.setdefault("shuffled_grad", shuffled_grad) != shuffled_grad:
            raise ValueError(
                f"shuffled_grad={shuffled_grad} contradicts infomaxloss_kwargs['shuffled_grad']="
                f"{vae_kwargs['shuffled_grad']!r}; give it once"
            )
    _pass_bound(model, bound, infomaxloss_function, vae_kwargs, miloss_function, mi_kwargs)
    vae_params = [p for p in model.vae.parameters() if p.requires_grad]
    mi_params = [p for p in model.mi.parameters() if p.requires_grad]
    frozen = [name for name, params in (("model.vae", vae_params), ("model.mi", mi_params))
              if not params]
    if frozen:
        raise ValueError(
            f"train_step: {' and '.join(frozen)} {'has' if len(frozen) == 1 else 'have'} no "
            "trainable parameters (every parameter has requires_grad=False), so there is nothing "
            "to step; unfreeze some parameters"
        )
    if negatives not in ("global", "local"):
        raise ValueError(f"negatives must be 'global' or 'local', got {negatives!r}")
    _check_optimizers(model, (opt_vae, opt_mi), opt_names, (len(vae_params), len(mi_params)))
    if process_group is not None:
        distributed_step.agree_on_step(
            process_group, model, x, reuse_forward=reuse_forward, negatives=negatives,
            shuffled_grad=vae_kwargs.get("shuffled_grad", False),
            n_samples=vae_kwargs.get("n_samples", 1), x_out_given=x_out is not None,
            default_losses=(infomaxloss_function is infomaxloss, miloss_function is miloss),
            objective=[(resolve_bound(kw.get("bound", "nwj")).config(),
                        kw.get("negatives", "shuffle")) for kw in (vae_kwargs, mi_kwargs)])
        for kwargs in (vae_kwargs, mi_kwargs):
            kwargs.setdefault("process_group", process_group if negatives == "global" else None)
        opt_vae = distributed.AveragingOptimizer(opt_vae, process_group)
        opt_mi = distributed.AveragingOptimizer(opt_mi, process_group)
    args = (x,) if x_out is None else (x, x_out)
    if reuse_forward:
        if infomaxloss_function is not infomaxloss or miloss_function is not miloss:
            raise ValueError("reuse_forward=True needs the default infomaxloss and miloss functions")
        vae_loss, mi_loss = _reuse_forward_step(model, args, opt_vae, opt_mi, vae_params,
                                                mi_params, vae_kwargs, mi_kwargs)
    else:
        vae_loss, mi_loss = _alternating_step(model, args, opt_vae, opt_mi, vae_params,
                                              mi_params, infomaxloss_function, vae_kwargs,
                                              miloss_function, mi_kwargs)

    if process_group is not None:
        distributed_step.stepped(process_group, model)
    if verbose:
        print(f"vae_loss = {vae_loss.item():.6g}, mi_loss = {mi_loss.item():.6g}")
    if loss_return:
        return float(vae_loss.detach()), float(mi_loss.detach())
    return None


def _pass_bound(model: InfoMaxVAE, bound: str | Bound | None,
                vae_function: Callable[..., torch.Tensor], vae_kwargs: dict[str, Any],
                mi_function: Callable[..., torch.Tensor], mi_kwargs: dict[str, Any]) -> None:
    """Put train_step's ``bound`` (or, when None, the model's for the default loss functions)
    into both losses' kwargs; a different bound already there is an error."""
    explicit = bound is not None
    if not explicit:
        bound = getattr(model, "bound", None)
        if bound is None or bound == BOUNDS["nwj"]:
            return
    bound = resolve_bound(cast("str | Bound", bound))  # not None: explicit, or returned above
    for name, function, default, kwargs in (("infomaxloss", vae_function, infomaxloss, vae_kwargs),
                                            ("miloss", mi_function, miloss, mi_kwargs)):
        if not explicit and function is not default:
            continue
        if resolve_bound(kwargs.setdefault("bound", bound)) != bound:
            raise ValueError(f"bound={bound!r} contradicts {name}_kwargs['bound']="
                             f"{kwargs['bound']!r}; give it once")


def _alternating_step(model: InfoMaxVAE, args: tuple[torch.Tensor, ...], opt_vae: Any,
                      opt_mi: Any, vae_params: list[nn.Parameter], mi_params: list[nn.Parameter],
                      infomaxloss_function: Callable[..., torch.Tensor], vae_kwargs: dict[str, Any],
                      miloss_function: Callable[..., torch.Tensor], mi_kwargs: dict[str, Any]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step`'s default strategy: (1) the InfoMax loss with the MI chain frozen, its
    gradient for the VAE's parameters, the VAE step; (2) a fresh forward pass through the updated
    VAE, the MI loss with the VAE frozen, its gradient for the MI chain, the MI step. The two
    losses share a :class:`DataHalfCache` when they are the default functions and the VAE step
    leaves the MI weights alone. ``args`` is ``(x,)`` or ``(x, x_out)``. Returns
    ``(vae_loss, mi_loss)``."""
    x = args[0]
    # Both losses see the same x and MI weights: a data half without gradient is computed once.
    cache = _step_cache(model, opt_vae)
    if cache is not None and infomaxloss_function is infomaxloss:
        vae_kwargs = {"data_half_cache": cache, **vae_kwargs}
    if cache is not None and miloss_function is miloss:
        mi_kwargs = {"data_half_cache": cache, **mi_kwargs}
    with _frozen(mi_params):
        vae_loss = infomaxloss_function(model.vae, model.mi, *args, **vae_kwargs)
    _set_grads(vae_loss, vae_params)
    opt_vae.step()
    with _frozen(vae_params):
        mi_loss = miloss_function(model.vae, model.mi, x, **mi_kwargs)
    _set_grads(mi_loss, mi_params)
    opt_mi.step()
    return vae_loss, mi_loss


def _step_cache(model: InfoMaxVAE, opt_vae: Any) -> DataHalfCache | None:
    """A :class:`DataHalfCache` for one alternating step, or None when the VAE step could change
    the MI chain's weights (the VAE optimizer holds some of them, or is not a torch optimizer, so
    what it holds is unknown)."""
    groups = getattr(opt_vae, "param_groups", None)
    if not isinstance(groups, list):
        return None
    stepped = {id(p) for group in groups for p in group.get("params", ())}
    if any(id(p) in stepped for p in model.mi.parameters()):
        return None
    return DataHalfCache()


def _reuse_forward_step(model: InfoMaxVAE, args: tuple[torch.Tensor, ...], opt_vae: Any,
                        opt_mi: Any, vae_params: list[nn.Parameter],
                        mi_params: list[nn.Parameter], vae_kwargs: dict[str, Any],
                        mi_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step` with ``reuse_forward=True`` (the paper's scheme): one forward pass of
    :func:`infomax_terms` feeds both updates; the MI loss uses the pre-update codes and the same
    permutation. ``args`` is ``(x,)`` or ``(x, x_out)``. Returns ``(vae_loss, mi_loss)``."""
    if "seed" not in vae_kwargs:
        vae_kwargs["seed"] = mi_kwargs.get("seed")
    terms = infomax_terms(model.vae, model.mi, *args, **vae_kwargs)
    vae_loss = terms.loss
    mi_loss = -terms.mi
    if mi_kwargs.get("regularization") is not None:
        mi_loss = mi_loss + mi_kwargs.get("reg_strength", 1.0) * mi_kwargs["regularization"](terms.scores)
    alpha = float(vae_kwargs.get("alpha", 1.0))
    if alpha != 0.0 and mi_kwargs.get("regularization") is None:
        # d vae_loss / d theta_mi = -alpha dI / d theta_mi = alpha * d mi_loss / d theta_mi:
        # one backward pass gives both gradients.
        grads = torch.autograd.grad(vae_loss, vae_params + mi_params, allow_unused=True)
        for p, g in zip(vae_params, grads[: len(vae_params)]):
            p.grad = g
        for p, g in zip(mi_params, grads[len(vae_params):]):
            p.grad = None if g is None else g / alpha
    else:
        _set_grads(vae_loss, vae_params, retain_graph=True)
        _set_grads(mi_loss, mi_params)
    opt_vae.step()
    opt_mi.step()
    return vae_loss, mi_loss

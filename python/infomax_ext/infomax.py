"""The InfoMax VAE: the model (with its config, save and load) and its two losses (the training
step is :mod:`infomax_ext.training_step`).

VAE loss:  ``-<log p(x|z)> + beta * KL(q(z|x) || p(z)) - alpha * I(x; z) + reg_strength * reg``;
MI loss:   ``-I(x; z) + reg_strength * reg``, with ``I`` the NWJ bound of the MI chain.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
from torch import nn

from . import memory, widths
from .activations import ACTIVATIONS, spec_of_module
from .bounds import BOUNDS, Bound, resolve_bound
from .mutual_info import (
    DataHalfCache,
    MIScores,
    NEGATIVES,
    MutualInfoChain,
    check_batch,
    shuffled_bound,
)
from .preprocessing import PREPROCESSING_FILE, Preprocessing
from .serialization import (
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    PREPROCESSING_DIGEST_KEY,
    WEIGHTS_DIGEST_KEY,
    SerializationError,
    atomic_write_bytes,
    check_weights_fit,
    is_sha256_hex,
    load_model_weights,
    read_bytes,
    read_model_config,
    read_model_weights,
    sha256_hex,
    write_model_files,
)
from .vae import VAE, VAEOutput, decoder_loglikelihood, encoder_kl
from .validation import as_count, check_weight, check_weights

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

PathLike = str | os.PathLike[str]
"""A file or directory path: a ``str`` or a ``pathlib.Path``."""

__all__ = ["InfoMaxVAE", "InfoMaxVAEOutput", "InfoMaxTerms", "infomaxloss", "infomax_terms",
           "miloss", "model_config", "save_model", "load_model"]

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
    :func:`train_step`'s losses, ``negatives`` (default ``"shuffle"``: each x_i with one shuffled
    code; ``"all"``: with every z_j, j != i; ``"infonce"`` always takes all pairs) how they pair
    the negatives; both are saved with the model's config.

    ``preprocessing`` (:class:`~infomax_ext.preprocessing.Preprocessing`, the identity unless
    set) is how raw data becomes the model's input; :meth:`save` and :meth:`load` keep it.
    """

    def __init__(self, vae: VAE, mi: MutualInfoChain, preprocessing: Preprocessing | None = None,
                 bound: str | Bound = "nwj", negatives: str = "shuffle") -> None:
        super().__init__()
        if not isinstance(vae, nn.Module) or not isinstance(mi, nn.Module):
            raise TypeError("InfoMaxVAE(vae, mi) takes two nn.Modules")
        if not isinstance(negatives, str) or negatives not in NEGATIVES:
            raise ValueError(f"InfoMaxVAE: negatives must be one of "
                             f"{', '.join(map(repr, NEGATIVES))}, got {negatives!r}")
        widths.check_model(vae, mi)
        self.vae, self.mi = vae, mi
        self.preprocessing = Preprocessing() if preprocessing is None else preprocessing
        self.bound = resolve_bound(bound)
        self.negatives = negatives

    def forward(self, x: torch.Tensor, latent: bool = False, seed: int | None = None,
                process_group: ProcessGroup | None = None) -> Any:
        if not latent:
            return self.vae(x)
        check_batch(x)
        out = self.vae(x, latent=True)
        bound = shuffled_bound(self.mi, x, out.z, seed=seed, process_group=process_group,
                               bound=self.bound, negatives=self.negatives).bound
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
        if self.negatives != "shuffle":  # absent: shuffle
            config["negatives"] = self.negatives
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
                           bound=config.get("bound", "nwj"),
                           negatives=config.get("negatives", "shuffle"))

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

        Files: ``preprocessing.json`` (:attr:`preprocessing`), ``model.pt`` (the state_dict)
        and last ``model_config.json`` (:attr:`config` and the digests of the other two), each
        written atomically: a save that fails halfway leaves a set :meth:`load` refuses, never
        a mix. The weights are stored on the CPU, so a model trained on a GPU loads anywhere.
        Only a model whose encoder, decoder and MI chain were built by ``from_sizes`` with named
        activations (``activations.ACTIVATIONS``) can be saved: for any other, a
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
        that do not fit the architecture, are not finite or do not each own exactly their
        memory (aliased, views, expanded). ``preprocessing.json`` restores :attr:`preprocessing`
        (a directory without it: the identity), refused when it does not match the digest
        ``model_config.json`` records (an edited file, or a save that failed halfway; a
        directory saved before that digest was recorded has none to compare)."""
        config = read_model_config(directory)
        preprocessing = read_preprocessing(directory, config.get(PREPROCESSING_DIGEST_KEY))
        shell = memory.on_meta(lambda: cls.from_config(config))  # sizes, before allocating
        state = read_model_weights(directory, map_location, config.get(WEIGHTS_DIGEST_KEY))
        check_weights_fit(shell, state, Path(directory) / MODEL_WEIGHTS_FILE)
        model = cls.from_config(config)
        load_model_weights(model, directory, state=state)
        model.preprocessing = preprocessing
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
    negatives = getattr(model, "negatives", "shuffle")
    if negatives != "shuffle":  # absent: shuffle
        config["negatives"] = negatives
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
    (:meth:`InfoMaxVAE.save`); a :class:`SerializationError` for any other model.

    ``preprocessing.json`` is written first, then ``model.pt``, then ``model_config.json``
    recording both digests: a save that fails before its end leaves a config whose digests
    the new files do not match, which :meth:`InfoMaxVAE.load` refuses (never new preprocessing
    beside old weights)."""
    config = model_config(model)
    preprocessing = getattr(model, "preprocessing", None) or Preprocessing()
    text = json.dumps(preprocessing.to_dict(), indent=2) + "\n"
    data = text.encode("utf-8")
    atomic_write_bytes(Path(directory) / PREPROCESSING_FILE, data)
    write_model_files(directory, {**config, PREPROCESSING_DIGEST_KEY: sha256_hex(data)},
                      model.state_dict())


def read_preprocessing(directory: PathLike, sha256: object = None) -> Preprocessing:
    """The :class:`Preprocessing` in ``directory/preprocessing.json``, whose bytes must match
    ``sha256`` (the digest model_config.json records; None: a directory saved before digests of
    it were recorded, nothing to compare); the identity when the file is absent from a directory
    that records no digest of it (a model saved before the file existed). A
    :class:`SerializationError` when it cannot be used (absent where a digest is recorded
    included)."""
    path = Path(directory) / PREPROCESSING_FILE
    if sha256 is not None and not is_sha256_hex(sha256):
        raise SerializationError(f"{Path(directory) / MODEL_CONFIG_FILE}: "
                                 f"{PREPROCESSING_DIGEST_KEY} is not a SHA-256 digest")
    if not os.path.lexists(path):  # a broken link or a loop is named by read_bytes
        if sha256 is not None:  # saved with one: deleted since, or never completely written
            raise SerializationError(
                f"preprocessing {path} is missing, but {Path(directory) / MODEL_CONFIG_FILE} "
                "records its digest: the model's inputs cannot be prepared as it was trained "
                "(save the model again)")
        return Preprocessing()
    data = read_bytes(path, "preprocessing")
    try:  # plain JSON, safe to read before the digest: a broken file is named as such
        preprocessing = Preprocessing.from_dict(json.loads(data.decode("utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"preprocessing {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise SerializationError(f"preprocessing {path} is not valid JSON (nested too "
                                 "deeply)") from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{path}: {exc}") from None
    if sha256 is not None and sha256_hex(data) != sha256:
        raise SerializationError(
            f"preprocessing {path} does not match the SHA-256 digest recorded in "
            f"{Path(directory) / MODEL_CONFIG_FILE}: it was edited, or a save was interrupted "
            "before it wrote its weights and config; refusing the set (save the model again)")
    return preprocessing


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
    :func:`~infomax_ext.mutual_info.shuffled_bound`). The bound's state is read, not updated
    (:meth:`~infomax_ext.bounds.Bound.without_state_update`: DV's moving average is the
    critic's, updated by :func:`miloss`; :func:`infomax_terms` updates it).
    """
    return infomax_terms(
        vae, mi, x, x_out, beta=beta, alpha=alpha, n_samples=n_samples,
        reconstruction_loglikelihood=reconstruction_loglikelihood, kl_divergence=kl_divergence,
        regularization=regularization, reg_strength=reg_strength, seed=seed,
        shuffled_grad=shuffled_grad, data_half_cache=data_half_cache, process_group=process_group,
        # the critic's loss (miloss) alone updates a bound's state, e.g. DV's moving average
        bound=resolve_bound(bound).without_state_update(), negatives=negatives,
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

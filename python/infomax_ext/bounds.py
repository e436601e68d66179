"""The table of mutual-information lower bounds: one entry per bound, every caller reads it.

A bound turns a critic's scores into an estimate of I(x; z). ``joint`` (M,) are the scores
T(x_i, z_i) of joint pairs, ``negatives`` (K,) the scores on pairs drawn from the product of the
marginals (shuffled pairs, or every x_i with every z_j, j != i). Each entry gives

- ``value(joint, negatives)``: the estimate (a 0-dim tensor), differentiable;
- ``surrogate(joint, negatives)``: the objective whose gradient trains the critic (the value's
  own, unless the bound says otherwise: JS and SMILE train on the Jensen-Shannon bound);
- ``reduction``: how the negatives' term combines over a batch split across processes
  (``"mean"``: a mean of per-pair terms; ``"log_mean_exp"``: a log-mean-exp over all negatives;
  ``"rows"``: InfoNCE's per-row log-sum-exp over all codes).

Calling a bound, ``bound(joint, negatives)``, returns the value with the surrogate's gradient.
The bounds of the C++ table ``csrc/bounds.h`` (``compiled = True``: nwj, dv, js, smile) reduce
the scores with the compiled op ``mi_bound`` (:mod:`infomax_ext.bound_op`) where it applies (the
extension loaded, float32/64, not inside :func:`~infomax_ext.use_reference_path`); the formulas
here are its plain-PyTorch twin (the fallback, and the oracle of the tests).
``BOUNDS`` maps each name to its default instance; :func:`resolve_bound` turns a name, a config
dict or an instance into an instance. InfoNCE needs every pair: :meth:`Bound.from_matrix` takes
the (N, N) score matrix ``S[i, j] = T(x_i, z_j)``.

With T_j the joint scores and T_m the negatives:

==========  ===============================================================  ===================
name        value                                                            gradient of
==========  ===============================================================  ===================
nwj         mean T_j - mean exp(T_m - 1)                                     the value
dv          mean T_j - log mean exp(T_m)                                     the value (or
                                                                             MINE's moving
                                                                             average, option)
js          mean T_j + 1 - mean exp(T_m)   (NWJ of T + 1)                    -mean sp(-T_j)
                                                                             - mean sp(T_m)
smile       mean T_j - log mean exp(clip(T_m, -tau, tau))                    as js
infonce     mean_i [S_ii - logsumexp_j S_ij] + log N                         the value
==========  ===============================================================  ===================

(sp = softplus.)
"""
from __future__ import annotations

import math
from typing import Any, Callable, Protocol, cast

import torch
import torch.nn.functional as F

from . import bound_op

__all__ = ["Bound", "NWJ", "DV", "JS", "SMILE", "InfoNCE", "BOUNDS", "resolve_bound",
           "bound_config", "off_diagonal", "log_mean_exp"]


LogMeanExp = Callable[[torch.Tensor], torch.Tensor]
"""A log-mean-exp of a 1-D tensor's entries (0-dim): :func:`log_mean_exp`, or one over processes."""


def log_mean_exp(t: torch.Tensor) -> torch.Tensor:
    """``log(mean(exp(t)))`` of a 1-D tensor, computed stably (0-dim)."""
    return torch.logsumexp(t, 0) - math.log(t.numel())


def off_diagonal(scores: torch.Tensor) -> torch.Tensor:
    """The N(N - 1) entries ``S[i, j]``, j != i, of an (N, N) matrix, row by row (1-D)."""
    n = scores.shape[0]
    return scores.flatten()[1:].view(n - 1, n + 1)[:, :-1].flatten()


def _off_diagonal_at(rows: torch.Tensor, offset: int) -> torch.Tensor:
    """Entries of ``rows`` (R, C) other than (i, offset + i), row by row (1-D)."""
    r, c = rows.shape
    keep = torch.ones(r, c, dtype=torch.bool, device=rows.device)
    index = torch.arange(r, device=rows.device)
    keep[index, index + offset] = False
    return rows[keep]


def _with_gradient_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value``'s number with ``surrogate``'s gradient: ``value + (s - s)`` adds an exact zero
    (for finite s), so the number is the value's bit for bit."""
    return value.detach() + (surrogate - surrogate.detach())


class _LogMeanExpValue(Protocol):
    """The ``value`` of a ``"log_mean_exp"`` bound: it takes the log-mean-exp to apply."""

    def value(self, joint: torch.Tensor, negatives: torch.Tensor,
              lme: LogMeanExp = ...) -> torch.Tensor: ...


class Bound:
    """One MI lower bound (see the module docstring). Subclasses set ``name`` and ``reduction``
    and define :meth:`value`; :meth:`surrogate` defaults to the value."""

    name: str = ""
    reduction: str = "mean"
    needs_all_pairs: bool = False
    compiled: bool = False
    """The compiled ``mi_bound`` (the table in csrc/bounds.h) computes this bound (a subclass
    that changes the formulas sets it back to False)."""
    param_name: str | None = None
    """The setting passed as ``mi_bound``'s ``param`` (SMILE's ``"clip"``), None: 0."""
    trains_on_js: bool = False
    """The critic trains on the Jensen-Shannon objective (``mi_bound``'s ``objective``)."""

    def op_param(self) -> float | None:
        """``mi_bound``'s ``param`` for this bound, None when the op does not compute it."""
        if not self.compiled:
            return None
        return float(getattr(self, self.param_name)) if self.param_name else 0.0

    def value(self, joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def surrogate(self, joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor | None:
        """The training objective when it differs from the value, else None."""
        return None

    def __call__(self, joint: torch.Tensor, negatives: torch.Tensor, *,
                 lme: LogMeanExp = log_mean_exp) -> torch.Tensor:
        """The value (0-dim) with the training gradient. joint (M,), negatives (K,). ``lme``
        is the log-mean-exp the ``"log_mean_exp"`` bounds take over the negatives (a whole-batch
        one across processes, :mod:`infomax_ext.distributed_bounds`)."""
        _check_scores(self.name, joint, negatives)
        param = self.op_param() if lme is log_mean_exp else None
        if param is not None and bound_op.kernel_applies(joint, negatives):
            value, objective = bound_op.mi_bound(joint, negatives, self.name, param)
            if self.trains_on_js and torch.is_grad_enabled():
                return _with_gradient_of(value, objective)
            return value
        value = cast(_LogMeanExpValue, self).value(joint, negatives, lme) \
            if self.reduction == "log_mean_exp" else self.value(joint, negatives)
        surrogate = self.surrogate(joint, negatives) if torch.is_grad_enabled() else None
        return value if surrogate is None else _with_gradient_of(value, surrogate)

    def from_matrix(self, scores: torch.Tensor) -> torch.Tensor:
        """The bound on all pairs: ``scores`` (N, N) with ``S[i, j] = T(x_i, z_j)``; joint = the
        diagonal, negatives = the N(N - 1) entries off it."""
        _check_matrix(self.name, scores)
        return self(torch.diagonal(scores), off_diagonal(scores))

    def from_rows(self, rows: torch.Tensor, joint: torch.Tensor, offset: int = 0, *,
                  lme: Callable[..., torch.Tensor] = log_mean_exp) -> torch.Tensor:
        """The bound on rows (R, C) of an all-pairs matrix whose entries (i, offset + i) are the
        joint scores ``joint`` (R,) and all others negatives (one process's rows of the whole
        batch's matrix when ``offset`` = its first row)."""
        return self(joint, _off_diagonal_at(rows, offset), lme=lme)

    def config(self) -> dict[str, Any]:
        """JSON-able settings that :func:`resolve_bound` turns back into this bound."""
        return {"name": self.name}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bound) and type(other) is type(self) and other.config() == self.config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.config().items())))

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({extra})"


def _check_scores(name: str, joint: object, negatives: object) -> None:
    for what, t in (("joint", joint), ("negatives", negatives)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() < 1:
            raise ValueError(f"bound {name!r}: {what} must be a non-empty 1-D tensor of scores, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")


def _check_matrix(name: str, scores: object) -> None:
    if (not isinstance(scores, torch.Tensor) or scores.dim() != 2
            or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2):
        raise ValueError(f"bound {name!r}: all-pairs scores must be an (N, N) matrix with N >= 2, "
                         f"got {tuple(getattr(scores, 'shape', ()))}")


class NWJ(Bound):
    """Nguyen-Wainwright-Jordan: ``mean T_j - mean exp(T_m - 1)`` (compiled: ``mi_bound``; the
    value alone: ``nwj_bound``, the same bits)."""

    name, reduction, compiled = "nwj", "mean", True

    def value(self, joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        from . import _ops  # the compiled op (the fused kernel) when it applies

        return _ops.nwj_bound(joint, negatives)


class DV(Bound):
    """Donsker-Varadhan (MINE's estimate): ``mean T_j - log mean exp(T_m)``.

    ``moving_average`` (gamma in [0, 1), None by default): MINE's bias-corrected gradient. The
    gradient of the log term becomes ``grad mean exp(T_m) / ema`` with ``ema = gamma ema + (1 -
    gamma) mean exp(T_m)`` (without gradient, clamped to [1e-4, 1e4], the first batch's mean
    to start; updated on every call that builds a graph). The value is unchanged."""

    name, reduction, compiled = "dv", "log_mean_exp", True

    def __init__(self, moving_average: float | None = None):
        if moving_average is not None:
            if isinstance(moving_average, bool) or not isinstance(moving_average, (int, float)) \
                    or not 0.0 <= float(moving_average) < 1.0:
                raise ValueError(f"dv: moving_average must be a number in [0, 1) or None, got "
                                 f"{moving_average!r}")
            moving_average = float(moving_average)
        self.moving_average = moving_average
        self.ema: torch.Tensor | None = None

    def op_param(self) -> float | None:
        return None if self.moving_average is not None else super().op_param()

    def value(self, joint: torch.Tensor, negatives: torch.Tensor,
              lme: LogMeanExp = log_mean_exp) -> torch.Tensor:
        return joint.mean() - lme(negatives)

    def surrogate(self, joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor | None:
        if self.moving_average is None:
            return None
        exp_neg = torch.exp(negatives)
        with torch.no_grad():
            batch = exp_neg.mean().clamp(1e-4, 1e4)
            if self.ema is None:
                self.ema = batch
            else:
                self.ema = self.moving_average * self.ema + (1 - self.moving_average) * batch
        return joint.mean() - exp_neg.mean() / self.ema

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.moving_average is not None:
            out["moving_average"] = self.moving_average
        return out


def js_objective(joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """The Jensen-Shannon f-GAN bound ``-mean softplus(-T_j) - mean softplus(T_m)``."""
    return -F.softplus(-joint).mean() - F.softplus(negatives).mean()


class JS(Bound):
    """Value NWJ(T + 1) = ``mean T_j + 1 - mean exp(T_m)``, gradient of the JS f-GAN bound
    (Poole et al. 2019)."""

    name, reduction, compiled, trains_on_js = "js", "mean", True, True

    def value(self, joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return joint.mean() + 1 - torch.exp(negatives).mean()

    def surrogate(self, joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return js_objective(joint, negatives)


class SMILE(JS):
    """Song & Ermon (ICLR 2020): value ``mean T_j - log mean exp(clip(T_m, -clip, clip))``,
    gradient of the JS bound. ``clip`` (tau) > 0, default 5."""

    name, reduction, param_name = "smile", "log_mean_exp", "clip"

    def __init__(self, clip: float = 5.0):
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not float(clip) > 0 \
                or not math.isfinite(float(clip)):
            raise ValueError(f"smile: clip must be a positive finite number, got {clip!r}")
        self.clip = float(clip)

    def value(self, joint: torch.Tensor, negatives: torch.Tensor,
              lme: LogMeanExp = log_mean_exp) -> torch.Tensor:
        return joint.mean() - lme(negatives.clamp(-self.clip, self.clip))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "clip": self.clip}


class InfoNCE(Bound):
    """van den Oord et al. 2018: ``mean_i [S_ii - logsumexp_j S_ij] + log N`` over all pairs
    (at most log N)."""

    name, reduction, needs_all_pairs = "infonce", "rows", True

    def value(self, joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        raise ValueError("bound 'infonce' needs every pair: use negatives='all' (it compares each "
                         "x_i with every code of the batch), or Bound.from_matrix")

    def __call__(self, joint: torch.Tensor, negatives: torch.Tensor, *,
                 lme: LogMeanExp = log_mean_exp) -> torch.Tensor:
        return self.value(joint, negatives)

    def from_matrix(self, scores: torch.Tensor) -> torch.Tensor:
        _check_matrix(self.name, scores)
        return self.from_rows(scores, torch.diagonal(scores))

    def from_rows(self, rows: torch.Tensor, joint: torch.Tensor, offset: int = 0, *,
                  lme: Callable[..., torch.Tensor] = log_mean_exp) -> torch.Tensor:
        """The mean over ``rows`` (R, C) of ``joint_i - logsumexp_j rows[i, j]``, + log C
        (the rows of one process when the batch is split: their mean over processes is the
        whole batch's bound; ``rows`` holds the joint scores at (i, offset + i))."""
        return (joint - torch.logsumexp(rows, 1)).mean() + math.log(rows.shape[1])


_CLASSES = {cls.name: cls for cls in (NWJ, DV, JS, SMILE, InfoNCE)}

BOUNDS: dict[str, Bound] = {name: cls() for name, cls in _CLASSES.items()}
"""Every bound by name, with its default settings: nwj, dv, js, smile, infonce."""


def resolve_bound(bound: str | dict[str, Any] | Bound, **settings: Any) -> Bound:
    """A :class:`Bound` from a name of :data:`BOUNDS` (``settings`` are its keywords, e.g.
    ``clip=5`` for smile), a config dict (:meth:`Bound.config`), or a Bound (returned as is)."""
    if isinstance(bound, Bound):
        if settings:
            raise ValueError(f"settings {sorted(settings)} given with a Bound instance; pass them "
                             "to its constructor")
        return bound
    if isinstance(bound, dict):
        settings = {**{k: v for k, v in bound.items() if k != "name"}, **settings}
        bound = cast(Any, bound.get("name"))  # any value: checked next
    if not isinstance(bound, str) or bound not in _CLASSES:
        raise ValueError(f"unknown bound {bound!r}; known: {', '.join(_CLASSES)}")
    if not settings:
        return BOUNDS[bound]
    try:
        return _CLASSES[bound](**settings)
    except TypeError:
        raise ValueError(f"bound {bound!r} takes no setting among {sorted(settings)}") from None


def bound_config(bound: str | dict[str, Any] | Bound) -> dict[str, Any]:
    """The config dict of ``bound`` (anything :func:`resolve_bound` takes)."""
    return resolve_bound(bound).config()

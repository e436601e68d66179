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
Every bound reduces in float32 or float64: bfloat16 and float16 scores are converted to float32
first (:func:`as_reduction_dtype`), so the bound is float32 for them (float64 for float64
scores) and their gradient returns in their own dtype.
The bounds of the C++ table ``csrc/bounds.h`` (``compiled = True``: nwj, dv, js, smile) reduce
the scores with the compiled op ``mi_bound`` (:mod:`infomax_ext.bound_op`) where it applies (the
extension loaded, float32/64, not inside :func:`~infomax_ext.use_reference_path`); the formulas
here are its plain-PyTorch twin (the fallback, and the oracle of the tests). InfoNCE's rows
are reduced alike by ``infonce_rows`` (:mod:`infomax_ext.infonce_op`).
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

from . import bound_op, infonce_op

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
    # Views and a pad only (static shapes for torch.compile, nothing saved for the backward):
    # the joint entries lie at flat positions offset + i (C + 1); after the first one, the
    # entries between two of them are the rows of a (R, C + 1) view, padded at the end.
    flat = rows.reshape(-1)
    between = F.pad(flat[offset + 1:], (0, r + offset + 1)).view(r, c + 1)[:, :c].reshape(-1)
    return torch.cat([flat[:offset], between[:r * c - r - offset]])


def as_reduction_dtype(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the dtype every bound reduces in: float32 for bfloat16 and float16 scores (a
    differentiable conversion: the gradient returns in ``t``'s dtype), ``t`` itself otherwise."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


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

    def without_state_update(self) -> "Bound":
        """This bound using whatever state it keeps without updating it (itself when it keeps
        none; :class:`DV`'s moving average)."""
        return self

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
        joint, negatives = as_reduction_dtype(joint), as_reduction_dtype(negatives)
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
        from . import nwj_bound_op  # the compiled op (the fused kernel) when it applies

        return nwj_bound_op.nwj_bound(joint, negatives)


class DV(Bound):
    """Donsker-Varadhan (MINE's estimate): ``mean T_j - log mean exp(T_m)``.

    ``moving_average`` (gamma in [0, 1), None by default): MINE's bias-corrected gradient. The
    gradient of the log term becomes ``grad mean exp(T_m) / ema`` with ``ema = gamma ema + (1 -
    gamma) mean exp(T_m)`` (without gradient, the batch mean clamped to [1e-4, 1e4], the first
    batch's mean to start). The average is updated on every call that builds a graph, except
    through :meth:`without_state_update` (a view that reads the same average without updating
    it: the VAE's loss, :func:`~infomax_ext.infomaxloss`, uses it, so the critic's loss alone
    updates the average, once per training step, as MINE does). The value is unchanged.
    :meth:`average_state` / :meth:`load_average_state` save and restore the average
    (checkpoints)."""

    name, reduction, compiled = "dv", "log_mean_exp", True

    def __init__(self, moving_average: float | None = None):
        if moving_average is not None:
            if isinstance(moving_average, bool) or not isinstance(moving_average, (int, float)) \
                    or not 0.0 <= float(moving_average) < 1.0:
                raise ValueError(f"dv: moving_average must be a number in [0, 1) or None, got "
                                 f"{moving_average!r}")
            moving_average = float(moving_average)
        self.moving_average = moving_average
        self._average = _RunningAverage()
        self.updates_average = True

    @property
    def ema(self) -> torch.Tensor | None:
        """The running average of ``mean exp(T_m)`` (0-dim, no gradient), None before the first
        update."""
        return self._average.value

    @property
    def average_updates(self) -> int:
        """How many batches the running average has taken in."""
        return self._average.updates

    def without_state_update(self) -> "DV":
        """This bound reading its running average without updating it (the same settings and
        the same average object; ``self`` without a moving average)."""
        if self.moving_average is None:
            return self
        view = DV(self.moving_average)
        view._average = self._average
        view.updates_average = False
        return view

    def update_average(self, batch_mean: torch.Tensor) -> torch.Tensor:
        """Take in one batch's ``mean exp(T_m)`` (0-dim, clamped to [1e-4, 1e4]); returns the
        new average."""
        state, gamma = self._average, cast(float, self.moving_average)
        batch_mean = batch_mean.detach().clamp(1e-4, 1e4)
        state.value = batch_mean if state.value is None else \
            gamma * state.value.to(batch_mean) + (1 - gamma) * batch_mean
        state.updates += 1
        return state.value

    def average_state(self) -> dict[str, Any] | None:
        """``{"average": 0-dim tensor on the CPU, "updates": int}``, None without a moving
        average or before the first update."""
        if self.moving_average is None or self._average.value is None:
            return None
        return {"average": self._average.value.detach().cpu().clone(),
                "updates": self._average.updates}

    def load_average_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`average_state` returned (ValueError naming the entry when it is
        not such a state)."""
        if self.moving_average is None:
            raise ValueError("dv without moving_average keeps no running average to load")
        if not isinstance(state, dict) or set(state) != {"average", "updates"}:
            raise ValueError("dv average state must be a dict with 'average' and 'updates', got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        average, updates = state["average"], state["updates"]
        if not isinstance(average, torch.Tensor) or average.dim() != 0 \
                or not average.is_floating_point() or not 1e-4 <= float(average) <= 1e4:
            raise ValueError("dv average state: 'average' must be a 0-dim floating tensor in "
                             f"[1e-4, 1e4], got {average!r}")
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 1:
            raise ValueError(f"dv average state: 'updates' must be an integer >= 1, got {updates!r}")
        self._average.value = average.detach().clone()
        self._average.updates = updates

    def op_param(self) -> float | None:
        return None if self.moving_average is not None else super().op_param()

    def value(self, joint: torch.Tensor, negatives: torch.Tensor,
              lme: LogMeanExp = log_mean_exp) -> torch.Tensor:
        return joint.mean() - lme(negatives)

    def __call__(self, joint: torch.Tensor, negatives: torch.Tensor, *,
                 lme: LogMeanExp = log_mean_exp,
                 mean_over_group: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> torch.Tensor:
        """As :meth:`Bound.__call__`; ``mean_over_group`` (a batch split across processes with
        equal numbers of negatives: the mean of a 0-dim tensor over the processes) makes the
        batch mean of exp(T_m) that the moving average takes in the whole batch's, so every
        process keeps the same average."""
        if mean_over_group is None or self.moving_average is None:
            return super().__call__(joint, negatives, lme=lme)
        _check_scores(self.name, joint, negatives)
        joint, negatives = as_reduction_dtype(joint), as_reduction_dtype(negatives)
        value = self.value(joint, negatives, lme)
        if not torch.is_grad_enabled():
            return value
        return _with_gradient_of(value, self._corrected(joint, negatives, mean_over_group))

    def surrogate(self, joint: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor | None:
        return None if self.moving_average is None else self._corrected(joint, negatives)

    def _corrected(self, joint: torch.Tensor, negatives: torch.Tensor,
                   mean_over_group: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """MINE's objective ``mean T_j - mean exp(T_m) / average`` (the average taking in this
        batch, or read: see the class docstring)."""
        exp_neg = torch.exp(negatives)
        with torch.no_grad():
            batch = exp_neg.mean()
            if mean_over_group is not None and (self.updates_average
                                                or self._average.value is None):
                batch = mean_over_group(batch)
            if self.updates_average:
                average = self.update_average(batch)
            else:  # before the first update: this batch's mean
                average = self._average.value if self._average.value is not None \
                    else batch.clamp(1e-4, 1e4)
        return joint.mean() - exp_neg.mean() / average.to(exp_neg)

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.moving_average is not None:
            out["moving_average"] = self.moving_average
        return out


class _RunningAverage:
    """The state of :class:`DV`'s moving average, shared by the bound and its
    :meth:`~DV.without_state_update` views."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.updates = 0


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
    (at most log N); reduced by the compiled ``infonce_rows`` (:mod:`infomax_ext.infonce_op`)
    where it applies, by the formula here otherwise."""

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
        infonce_op.check_rows(rows, joint)  # on every path: the formula would broadcast
        rows, joint = as_reduction_dtype(rows), as_reduction_dtype(joint)
        if infonce_op.kernel_applies(rows, joint):
            return infonce_op.infonce_rows_checked(rows, joint)
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

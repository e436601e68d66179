"""The side-by-side table of ``infomax-ext train --compare-vae``."""
from __future__ import annotations

from typing import Any, Sequence

def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


_ROWS = [
    # key, label, higher is better (None: no direction), format digits
    ("mi", "MI estimate I(x; z), nats", True, 3),
    ("active_units", "active units", True, 0),
    ("probe_accuracy", "probe accuracy (logistic regression)", True, 3),
    ("recon_loglik", "reconstruction log-likelihood, nats", True, 2),
    ("kl", "KL to the prior, nats", None, 2),
    ("elbo", "ELBO (recon - KL), nats", True, 2),
]


def comparison_table(infomax: dict[str, Any], vae: dict[str, Any], alpha: float,
                     beta: float) -> str:
    """The side-by-side table of the two runs' held-out metrics (markdown, aligned)."""
    head = ["held-out metric", f"InfoMax VAE (alpha={alpha:g})", "plain VAE (alpha=0)", "better"]
    rows = []
    for key, label, higher, digits in _ROWS:
        a, b = infomax.get(key), vae.get(key)
        if key == "active_units":
            label = (f"active units (of {infomax['latent_dim']}, "
                     f"Var > {infomax['active_unit_threshold']:g})")
            cell_a, cell_b = _fmt(a), _fmt(b)
        else:
            cell_a, cell_b = _fmt(a, digits), _fmt(b, digits)
        if higher is None or a is None or b is None or a == b:
            better = "-" if higher is None else "tie" if a == b and a is not None else "n/a"
        else:
            better = "InfoMax" if (a > b) == higher else "VAE"
        rows.append([label, cell_a, cell_b, better])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out) + f"\n\nSame architecture, seed and epochs; beta = {beta:g} for both.\n"

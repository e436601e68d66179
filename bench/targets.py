"""The targets of issue 20 as bench_cpu.py prints them, each with its bound measured in the same
interleaved rounds.

A target is a ratio of medians (ours against a variant, or against the FLOP floor) with a goal.
Where no implementation of ours could meet a goal, the bound says so:

- ``compile(shared) / ours >= goal``: the **eager floor** is ``skeleton + MLP GEMM replay``
  (``common.skeleton_loss``: the chain's own modules and one trivial autograd node with the
  MLP's inputs, or one that also runs the single-Linear data and latent layers where ours runs
  them inside its node; then ours' MLP GEMMs replayed alone, each layer's weight and input gradients
  through ``linear_grads`` and the latent columns' products through ``mm_pair`` where ours
  runs them so). It leaves out every activation, bias, head
  and bound pass, so no eager call of the shared algorithm is faster, and
  ``compile(shared) / eager floor`` is the most this ratio can be.
- ``ours / FLOP floor <= goal``: ``eager floor / FLOP floor`` is the least it can be.
- ``compile(ours) / ours <= goal``: ``1 + (compile(skeleton) - skeleton) / ours``, what
  torch.compile's per-call runtime (guards, the compiled graph's autograd wrapper) adds to the
  skeleton, the part of the call compile(ours) and ours share, as a fraction of ours. An
  estimate, not a strict bound: ours' own node is not the skeleton's trivial one.
- ``plain eager shared / ours`` and the train_step targets have no bound.

A missed target whose bound fails its goal too prints ``MISSED (bounded)``: out of reach of
any eager implementation whose autograd node is a Python ``autograd.Function``, as the
skeleton's is (any implementation of ours, for compile(ours)) on this machine in this run. A
C++ autograd node runs no Python and may go beyond it (bench/README.md, "Targets").

Each bounded target also gets its **headroom**, the factor by which its bound clears its goal
(``bound / goal`` for a ``>=`` goal, ``goal / bound`` for a ``<=`` one; below 1 the target is
out of reach). For ``compile(shared) / ours`` and ``ours / FLOP floor`` it is the most ours may
take against the eager floor and still meet the goal: headroom 1.02 asks ours to run within 2%
of a floor that does none of the chain's elementwise work.
"""
from __future__ import annotations

TARGET_SIZES = (64, 256, 1024)


def floor_bounds(times: dict, floor_ms: float, stat: str) -> dict:
    """The bound of each bounded ratio from ``times`` ({variant: {stat: ms}}, with "skeleton",
    "MLP replay" and, when compiled variants ran, "compile(skeleton)"), ``floor_ms`` the FLOP
    floor and ``stat`` "median" or "min"."""
    t = {k: v[stat] for k, v in times.items()}
    eager_floor = t["skeleton"] + t["MLP replay"]
    bounds = {"eager floor ms": eager_floor, "ours/floor": eager_floor / floor_ms}
    if "compile(shared)" in t:
        bounds["compile(shared)/ours"] = t["compile(shared)"] / eager_floor
    if "compile(skeleton)" in t:
        bounds["compile(ours)/ours"] = 1 + (t["compile(skeleton)"] - t["skeleton"]) / t["ours"]
    return bounds


def _met(value: float | None, op: str, goal: float) -> bool | None:
    if value is None:
        return None
    return value >= goal if op == ">=" else value <= goal


def _headroom(bound: float | None, op: str, goal: float) -> float | None:
    """The factor by which ``bound`` clears ``goal`` (below 1: it does not)."""
    if bound is None:
        return None
    return bound / goal if op == ">=" else goal / bound


def evaluate_targets(mi_results: list, train: dict | None) -> list:
    """The targets for every (mode, chain, N) of part 1 at N = 64, 256, 1024 and the train_step
    part; a configuration that was not run is left out. Each ratio is of medians of one
    interleaved run; its bound (medians too) where :func:`floor_bounds` gives one."""
    targets = []

    def add(name, result, key, op, goal):
        value = result["ratios"].get(key)
        bound = result.get("bounds", {}).get(key)
        met = _met(value, op, goal)
        status = {True: "met", False: "MISSED", None: "-"}[met]
        if met is False and _met(bound, op, goal) is False:
            status = "MISSED (bounded)"
        targets.append({"target": name, "value": value,
                        "value_from_minima": result["ratios_min"].get(key),
                        "goal": f"{op} {goal}", "bound": bound,
                        "headroom": _headroom(bound, op, goal), "met": met, "status": status})

    for r in mi_results:
        n = r["n"]
        if n not in TARGET_SIZES:
            continue
        label = f"sg={r['shuffled_grad']} {r['chain']} N={n}"
        add(f"{label}: plain eager shared / ours", r, "shared/ours", ">=", 1.0)
        add(f"{label}: compile(shared) / ours", r, "compile(shared)/ours", ">=",
            1.15 if n == 64 else 1.0)
        add(f"{label}: compile(ours) / ours", r, "compile(ours)/ours", "<=", 1.05)
        if n >= 256:
            add(f"{label}: ours / FLOP floor", r, "ours/floor", "<=", 1.20)
    if train is not None:
        label = f"train_step P N={train['n']}"
        add(f"{label}: two-call eager / ours", train, "two-call eager/ours", ">=", 1.3)
        add(f"{label}: compile(naive two-call) / ours", train, "compile(naive two-call)/ours",
            ">=", 1.3)
    return targets


def target_rows(targets: list) -> tuple[list, list]:
    """Headers and rows of the printed target table."""
    def num(v):
        return "-" if v is None else f"{v:.3f}"

    rows = [[t["target"], num(t["value"]), num(t["value_from_minima"]), t["goal"],
             num(t["bound"]), num(t["headroom"]), t["status"]] for t in targets]
    return ["target", "value (medians)", "(from minima)", "goal", "bound (medians)",
            "headroom", "status"], rows


def summary_line(targets: list) -> str:
    """``k of n evaluated met; m missed with room under their bound; b missed and bounded``
    (a target of a variant not run, such as compile(...) under ``--no-compile``, is not
    evaluated)."""
    evaluated = [t for t in targets if t["met"] is not None]
    met = sum(t["met"] is True for t in evaluated)
    bounded = sum(t["status"] == "MISSED (bounded)" for t in evaluated)
    missed = len(evaluated) - met - bounded
    return (f"{met} of {len(evaluated)} evaluated targets met; {missed} missed with room under "
            f"their bound; {bounded} missed and bounded (out of reach on this machine in this run)")

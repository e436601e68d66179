"""Fuzz: damaged and crafted run files never crash, never give a traceback, never load wrongly.

A tiny run (one epoch on 40 random samples) is made once. Each case copies its directory and
damages one of ``model/model.pt``, ``model/model_config.json``, ``checkpoint.pt`` or
``config.json``: a random truncation, one to three flipped bits, or a field substitution
(an entry deleted, added, or replaced by a value of another type, shape, dtype or size).
Tensor files are, for most cases, "re-signed" afterwards (the digest in the companion file
recomputed, as an attacker would), so that the checks behind the digest are reached too.

The cases run in a few subprocesses (several cases each, so torch is imported a few times
only): a saved model is loaded with ``InfoMaxVAE.load``, a run is resumed with ``infomax-ext
train --resume``. Every outcome must be one of:

- the same load as the undamaged files' (same weights, same history after the resumed epoch);
- a clear error: ``SerializationError`` with a one-line message, or exit code 1 with a single
  ``infomax-ext train: error: ...`` line on stderr;
- for a re-signed file that is still a valid one (e.g. a changed weight value), a load of that
  file: it is what the digest vouches for.

A signal death, a traceback or any other exception fails the test, naming the case.
"""
import copy
import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infomax_ext.cli import main
from tiny_runs import resign_checkpoint, resign_model

CASES_PER_TARGET = 75
WORKERS = 3
TARGETS = ("model/model.pt", "model/model_config.json", "checkpoint.pt", "config.json")
RUN = ["--epochs", "1", "--latent-dim", "2", "--encoder-neurons", "8", "--decoder-neurons", "8",
       "--mi-neurons", "8", "--eval-mi-steps", "5", "--batch-size", "8", "--quiet", "--no-plots"]
RESUME = ["--epochs", "2", "--quiet", "--no-plots"]

WORKER = r'''
import contextlib, io, json, sys, traceback
import torch
torch.set_num_threads(1)
from infomax_ext import InfoMaxVAE
from infomax_ext.cli import main
from infomax_ext.serialization import SerializationError

RESUME = json.loads(sys.argv[2])

def model_result(directory):
    try:
        model = InfoMaxVAE.load(directory + "/model")
    except SerializationError as exc:
        return {"kind": "error", "message": str(exc)}
    return {"kind": "loaded", "config": model.config,
            "state": {k: v.clone() for k, v in model.state_dict().items()}}

def resume_result(directory):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(["train", "--resume", "--out", directory, *RESUME])
        except SystemExit as exc:
            rc = exc.code
    if rc != 0:
        return {"kind": "exit", "rc": rc, "stderr": err.getvalue()}
    state = torch.load(f"{directory}/checkpoint.pt", weights_only=True)
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in state["history"]]
    return {"kind": "loaded", "config": state["config"], "state": state["model"],
            "history": history}

def same(a, b):
    if a["kind"] != "loaded" or b["kind"] != "loaded" or a["config"] != b["config"]:
        return False
    if a.get("history") != b.get("history") or a["state"].keys() != b["state"].keys():
        return False
    return all(a["state"][k].dtype == b["state"][k].dtype and torch.equal(a["state"][k], b["state"][k])
               for k in a["state"])

cases = json.loads(open(sys.argv[1]).read())
reference = {}
for case in cases:
    print("START", case["id"], flush=True)
    try:
        run = model_result if case["mode"] == "model" else resume_result
        result = run(case["dir"])
        if case["id"].startswith("control"):
            reference[case["mode"]] = result
            outcome = {"outcome": "identical" if result["kind"] == "loaded" else "control failed",
                       "detail": result.get("stderr", result.get("message", ""))}
        elif result["kind"] == "loaded":
            outcome = {"outcome": "identical" if same(result, reference[case["mode"]]) else "different"}
        elif result["kind"] == "error":
            outcome = {"outcome": "error", "detail": result["message"]}
        else:
            outcome = {"outcome": "exit", "rc": result["rc"], "detail": result["stderr"]}
    except BaseException as exc:
        outcome = {"outcome": "exception",
                   "detail": "".join(traceback.format_exception(exc))[-1500:]}
    print("DONE", case["id"], json.dumps(outcome), flush=True)
'''


# ----------------------------------------------------------------------------- mutations

WEIRD = [None, -1, 0, 1, 3, 2 ** 70, -2 ** 63, 1.5, 1e308, float("nan"), float("inf"), "3", "",
         "relu", True, False, [], {}, [1, 2], {"a": 1}]
JSON_WEIRD = [None, -1, 0, 1, 2, 3, 8, 200000, 2 ** 70, 0.5, 1e308, -1e-300, "x", "", "relu",
              "tanh", "none", "digits", True, False, [], {}, [8, 8], [0], {"name": "elu"}]


def _paths(obj, prefix=()):
    """Every path into a nested dict/list/tuple (the root excluded)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def _set(obj, path, value, delete=False):
    holder = _get(obj, path[:-1])
    if isinstance(holder, tuple):  # Adam's betas: rebuild the tuple
        items = list(holder)
        if delete:
            del items[path[-1]]
        else:
            items[path[-1]] = value
        _set(obj, path[:-1], tuple(items))
    elif delete:
        del holder[path[-1]]
    else:
        holder[path[-1]] = value


def _tensor_variant(t: torch.Tensor, rng: random.Random):
    choices = [
        lambda: torch.zeros(*t.shape, 2, dtype=t.dtype),  # another shape
        lambda: t.flatten()[:-1].clone() if t.numel() > 1 else torch.zeros(3, dtype=t.dtype),
        lambda: torch.zeros(0, dtype=t.dtype),
        lambda: torch.tensor(1.0, dtype=t.dtype) if t.is_floating_point() else torch.tensor(1),
        lambda: t.to(torch.float64),  # another dtype
        lambda: t.to(torch.int64),
        lambda: t.to(torch.float16),
        lambda: t.to(torch.bool),
        lambda: torch.full_like(t, float("nan")) if t.is_floating_point() else t + 1,
        lambda: torch.full_like(t, float("inf")) if t.is_floating_point() else t - 1,
        lambda: t.t().clone().t() if t.dim() == 2 and min(t.shape) > 1 else t.flip(0),
        lambda: t.clone().requires_grad_(True) if t.is_floating_point() else t.clone(),
        lambda: t.tolist() if t.numel() < 50 else t.shape,
        lambda: -t if t.is_floating_point() else t.clone(),
    ]
    return rng.choice(choices)()


def _substitute(obj, rng: random.Random, weird):
    """``obj`` (a deep copy) with one entry deleted, added or replaced."""
    obj = copy.deepcopy(obj)
    paths = list(_paths(obj))
    path = rng.choice(paths)
    value = _get(obj, path)
    op = rng.random()
    if op < 0.15 and isinstance(_get(obj, path[:-1]), (dict, list)):
        _set(obj, path, None, delete=True)
    elif op < 0.22:
        holder = _get(obj, path[:-1])
        if isinstance(holder, dict):
            holder[rng.choice(["extra", "params", "state", 7])] = rng.choice(weird)
        else:
            _set(obj, path, rng.choice(weird))
    elif isinstance(value, torch.Tensor):
        _set(obj, path, _tensor_variant(value, rng))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and rng.random() < 0.5:
        _set(obj, path, rng.choice([value + 1, value * 2, -value, value * 1000]))
    else:
        _set(obj, path, rng.choice(weird))
    return obj


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(0, len(data))]


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def make_case(base: Path, directory: Path, target: str, rng: random.Random) -> dict:
    """Copy ``base`` to ``directory`` and damage ``target`` there; the case's description."""
    shutil.copytree(base, directory)
    path = directory / target
    data = path.read_bytes()
    kind = rng.choice(["truncate", "flip", "substitute", "substitute"])
    resign = target != "config.json" and rng.random() < 0.75
    if kind == "truncate":
        new = _truncate(data, rng)
    elif kind == "flip":
        new = _flip(data, rng)
    elif target.endswith(".pt"):
        state = torch.load(path, weights_only=True)
        new = _torch_bytes(_substitute(state, rng, WEIRD))
    else:
        new = json.dumps(_substitute(json.loads(data), rng, JSON_WEIRD)).encode()
    path.write_bytes(new)
    if resign:
        if target.startswith("model/"):
            try:
                resign_model(directory / "model")
            except (ValueError, UnicodeDecodeError, TypeError):  # not a JSON object any more
                pass
        else:
            resign_checkpoint(path)
    return {"dir": str(directory), "target": target, "kind": kind, "resigned": resign,
            "mode": "model" if target.startswith("model/") else "resume"}


# ----------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    np.save(root / "x.npy", np.random.default_rng(0).random((40, 4)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data", str(root / "x.npy"), "--out", str(root / "base"),
                     *RUN]) == 0
    finally:
        torch.set_num_threads(threads)
    (root / "base" / ".lock").unlink()
    return root


def _one_line_error(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("infomax-ext train: error: ") \
        and "Traceback" not in text


def test_damaged_and_crafted_files_give_an_identical_load_or_a_clear_error(base_run):
    rng = random.Random(20261203)
    cases = []
    for target in TARGETS:
        for k in range(CASES_PER_TARGET):
            case = make_case(base_run / "base", base_run / f"{target.replace('/', '_')}-{k}",
                             target, rng)
            cases.append({**case, "id": f"{target}#{k}"})
    by_id = {case["id"]: case for case in cases}
    chunks = [cases[w::WORKERS] for w in range(WORKERS)]
    jobs = []
    for w, chunk in enumerate(chunks):
        controls = []
        for mode in ("model", "resume"):
            control = base_run / f"control-{w}-{mode}"
            shutil.copytree(base_run / "base", control)
            controls.append({"id": f"control-{w}-{mode}", "dir": str(control), "mode": mode})
        plan = base_run / f"plan-{w}.json"
        plan.write_text(json.dumps(controls + chunk))
        jobs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(plan), json.dumps(RESUME)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    problems, counts = [], {}
    for w, job in enumerate(jobs):
        out, _ = job.communicate(timeout=600)
        started = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("START ")]
        done = {}
        for line in out.splitlines():
            if line.startswith("DONE "):
                case_id, outcome = line[5:].split(" ", 1)
                done[case_id] = json.loads(outcome)
        if job.returncode != 0:
            problems.append(f"worker {w} ended with {job.returncode} during case "
                            f"{started[-1] if started else '?'} "
                            f"({by_id.get(started[-1]) if started else ''}): {out[-2000:]}")
            continue
        for case_id, result in done.items():
            outcome = result["outcome"]
            case = by_id.get(case_id, {"resigned": False})
            counts[outcome] = counts.get(outcome, 0) + 1
            fine = outcome == "identical" \
                or (outcome == "error" and "\n" not in result["detail"]) \
                or (outcome == "exit" and result["rc"] == 1 and _one_line_error(result["detail"])) \
                or (outcome == "different" and case["resigned"])
            if not fine:
                problems.append(f"{case_id} {case}: {outcome} {result.get('rc', '')} "
                                f"{result.get('detail', '')[-1500:]}")
        assert len(done) == len(chunks[w]) + 2 or job.returncode != 0
    assert not problems, "\n\n".join(problems[:8]) + f"\n({len(problems)} problems; {counts})"
    assert counts.get("identical", 0) >= 2 * WORKERS  # the controls at least
    assert counts.get("error", 0) + counts.get("exit", 0) > len(cases) // 2

"""The ``infomax-ext`` command (also ``python -m infomax_ext``).

``infomax-ext train`` trains an InfoMax VAE on scikit-learn's handwritten digits (or on a
``.npy`` / ``.npz`` / ``.pt`` file), evaluates it on a held-out split and writes a run directory::

    DIR/config.json        the data (absolute path, --normalize) and every training option
    DIR/checkpoint.pt      written atomically after every epoch (--resume continues from it,
                           from any working directory)
    DIR/checkpoint.sha256.json  the checkpoint's SHA-256 digest (a file that does not match is
                           refused)
    DIR/metrics.jsonl      one JSON object per epoch
    DIR/metrics.json       final held-out metrics: mi, active_units, probe_accuracy,
                           recon_loglik, kl, elbo, ...
    DIR/model/             the trained model (InfoMaxVAE.load(DIR/model))
    DIR/*.png              training curves, latent space, reconstructions, prior samples,
                           active units
    DIR/.lock              held (flock) by the run in progress, with its pid: a second run
                           into DIR stops at once

Every file a run reads back is untrusted input: a checkpoint or model whose digest does not
match, any entry of the wrong type, shape, dtype or size, non-finite weights, or a path that is a
directory or a symlink loop is refused with one line naming the file and the entry. ``--resume``
checks, before it writes anything, that every checkpoint, config.json and the command line agree
(every training option but --epochs and --device, the model, the data's fingerprint) and names
the field and both values when they do not; a data file that moved may be given again with
``--data`` (its fingerprint decides). Sizes that need more memory than the machine has are
refused naming the option, and a fresh run that fails before its first checkpoint leaves no
config.json (or metrics.jsonl) behind. A fresh run's --out may hold none of the files a run
writes (model/, metrics.json, ...: named, never overwritten); the commands for a trained model
check every file they write before any work (never over their own --data or --labels).

With ``--compare-vae`` the same architecture is also trained with ``alpha = 0`` (a plain VAE)
under the same seed and budget: DIR/infomax/ and DIR/vae/ are two such run directories, and
DIR/comparison.md, DIR/comparison.json and DIR/comparison.png set them side by side.

Started by torchrun (``torchrun --nproc-per-node K -m infomax_ext train ...``), the processes
train one model data-parallel (:mod:`infomax_ext.distributed`): rank 0 alone decides and writes
the run directory (config.json records ``world_size`` and the backend), reads what --resume
continues and sends it to the others, prints, and evaluates; a ``.npy`` file is memory-mapped
and each process reads the rows of its batches. A restart by ``torchrun --max-restarts``
resumes the run in --out from its last checkpoint. Every process must be given the same options
(``--device``, ``--threads``, ``--quiet``, ``--log-interval`` and ``--dist-timeout`` excepted)
and see the same data (each checks a SHA-256 of what it reads): else every process stops with
the same error. A process that stops answering ends the job after ``--dist-timeout`` seconds
(default 300; rank 0's own work, reading the data and evaluating, is awaited longer): the
others exit with one line naming the silent rank (exit code 1).

Commands for a trained model (a run directory, or a model directory of ``InfoMaxVAE.save``), each
taking data in the units of the training data and applying the model's saved normalisation
(:mod:`infomax_ext.preprocessing`): ``evaluate`` (the held-out metrics on new data, as JSON and
plots), ``encode`` (latent codes as ``.npy``), ``reconstruct`` and ``sample`` (``.npy`` and PNG).
``infomax-ext --version`` names the version, torch's, and whether the compiled ops loaded. Data
files may be ``.npy``, ``.npz``, ``.pt``, ``.csv`` or ``.tsv`` (:mod:`infomax_ext.csv_data`).

Exit codes: 0 done, 1 the data, the run directory or a saved run cannot be used, or training
diverged (message says why), 2 bad command-line options, 130 interrupted (the last checkpoint is
intact; ``--resume`` continues).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any
from typing import Sequence

from .common import JOINED_A_JOB, PROG, CommandError
from .parser import build_parser

__all__ = ["main", "run", "build_parser", "PROG", "CommandError"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``infomax-ext`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    import torch
    import torch.distributed as dist

    from ..data import DataError
    from ..distributed import DistributedMismatchError
    from ..distributed_failures import LostContactError, is_lost_contact
    from ..serialization import SerializationError
    from ..trainer import TrainingError

    try:
        stdout = contextlib.nullcontext() if sys.stdout is None else \
            contextlib.redirect_stdout(_NamedStdout(sys.stdout))
        with stdout:
            code: int = args.func(args, getattr(args, "command_parser", parser))
            return code
    except (CommandError, DataError, DistributedMismatchError, LostContactError,
            SerializationError, TrainingError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)) as exc:
        return _out_of_memory(args.command, exc)  # before RuntimeError: CUDA's is one
    except (dist.DistError, RuntimeError) as exc:  # another process of a torchrun job stopped
        if _is_allocator_failure(exc):
            return _out_of_memory(args.command, exc)
        if not is_lost_contact(exc):
            raise
        print(f"{PROG} {args.command}: error: lost contact with another process of the job "
              f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
              "torchrun's summary names the process that stopped; the last checkpoint is intact",
              file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # a full disk, a vanished directory, a full stdout, ...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG} {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr,
              flush=True)
        return 1
    except KeyboardInterrupt:
        if args.command != "train":
            print(f"\n{PROG} {args.command}: interrupted", file=sys.stderr, flush=True)
            return 130
        out = getattr(args, "out", None)
        hint = f" --out {out}" if out else " --out DIR"
        print(f"\n{PROG}: interrupted. Completed epochs are in the last checkpoint; continue "
              f"with: {PROG} train --resume{hint}", file=sys.stderr, flush=True)
        return 130


# What to make smaller when a command runs out of memory.
_MEMORY_HINTS = {"train": "choose smaller sizes or --batch-size", "sample": "choose a smaller --n"}


def _is_allocator_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's allocator failing: a RuntimeError, not a MemoryError, on the
    CPU (``DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes``)."""
    text = str(exc)
    return "can't allocate memory" in text or "not enough memory: you tried to allocate" in text


def _out_of_memory(command: str, exc: BaseException) -> int:
    """Say that ``command`` ran out of memory (the first line of ``exc``) and what to make
    smaller; exit code 1."""
    text = str(exc).strip().splitlines()
    hint = _MEMORY_HINTS.get(command, "give less data at a time")
    print(f"{PROG} {command}: error: out of memory ({text[0][:200] if text else 'no detail'}); "
          f"{hint}", file=sys.stderr, flush=True)
    return 1


def run() -> None:
    """The ``infomax-ext`` executable: :func:`main`, then exit with its code. A process of a
    torchrun job ends with ``os._exit`` once its output is flushed: gloo's worker threads can
    still hold work (tensors) of a collective that a failure interrupted, and releasing them
    during interpreter finalization aborts the process (SIGABRT) on recent torch versions,
    turning a clean one-line error into a signal death. Every file the command writes is
    complete (written and renamed) before this point."""
    code = main()
    if JOINED_A_JOB[0]:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


class _NamedStdout:
    """Standard output while a command runs: an OSError from writing to it or flushing it (a
    full disk behind ``> file``, ``> /dev/full``) names it as its file."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _named(self, exc: OSError) -> OSError:
        return OSError(exc.errno, exc.strerror or str(exc), "standard output")

    def write(self, text: str) -> Any:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise self._named(exc) from None

    def flush(self) -> Any:
        try:
            return self._stream.flush()
        except OSError as exc:
            raise self._named(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


if __name__ == "__main__":  # pragma: no cover
    run()

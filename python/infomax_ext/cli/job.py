"""What ``infomax-ext train`` does when torchrun started it, one of the processes of a job: the
process group, the check that every process was given the same options, SIGTERM as an error,
and standard output of rank 0 alone."""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .common import JOINED_A_JOB, PROG
from .run_dir import _holds_run

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


def _process_group(args: argparse.Namespace) -> ProcessGroup | None:
    """The process group when torchrun started this process (None otherwise), its collectives
    waiting ``--dist-timeout`` seconds for a silent process, every process given the same
    options (checked); a restart by ``torchrun --max-restarts`` continues the run in --out
    (``args.resume``)."""
    import torch

    from ..distributed import from_rank0, init_from_env

    device = args.device or "cpu"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    group = init_from_env(args.dist_backend, torch.device(device),
                          _dt.timedelta(seconds=args.dist_timeout))
    if group is not None:
        JOINED_A_JOB[0] = True
        try:
            _check_same_options(group, args)
        except BaseException:
            import torch.distributed as dist

            dist.destroy_process_group()
            raise
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if group is not None and restarts > 0 and not args.resume and args.out is not None:
        if from_rank0(group, lambda: _holds_run(Path(args.out))):
            args.resume = True
    return group


# Options that may differ between the processes of a job: each process's own resources and
# what rank 0 alone prints.
_PER_PROCESS_OPTIONS = {"device", "threads", "quiet", "log_interval", "dist_timeout", "func",
                        "command_parser"}


def _check_same_options(group: ProcessGroup | None, args: argparse.Namespace) -> None:
    """The same :class:`DistributedMismatchError` on every process unless all were given the
    same options (``--resume`` on some only, another ``--out``, ...)."""
    from ..distributed import check_same

    def plain(value: object) -> bool:  # the options' values, not the parser's bookkeeping
        return value is None or isinstance(value, (str, int, float, bool)) or (
            isinstance(value, (list, tuple)) and all(plain(v) for v in value))

    check_same(group, f"{PROG} train", {
        f"--{dest.replace('_', '-')} option": value for dest, value in sorted(vars(args).items())
        if dest not in _PER_PROCESS_OPTIONS and plain(value)})


@contextlib.contextmanager
def _sigterm_as_error(group: ProcessGroup | None) -> Iterator[None]:
    """Within a job (``group``), SIGTERM (torchrun's agent stopping the other processes after
    one failed) raises :class:`~infomax_ext.distributed_failures.JobStopped`: one line on stderr instead of a silent
    death; checkpoints are written atomically, so the last one stays intact."""
    import signal
    import threading

    import torch.distributed as dist

    from ..distributed_failures import JobStopped

    if group is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    rank = dist.get_rank(group)

    def stop(signum: int, frame: object) -> None:
        raise JobStopped(
            f"rank {rank} lost contact with the job: it was stopped by SIGTERM (torchrun stops "
            "every process when one fails; its summary names that one); the last checkpoint is "
            "intact")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _only_rank0_prints(group: ProcessGroup | None) -> Iterator[None]:
    """Standard output of every process but rank 0 discarded (errors still go to stderr)."""
    import torch.distributed as dist

    if group is None or dist.get_rank(group) == 0:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield

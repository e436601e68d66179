"""When a process of a data-parallel job stops: recognising the failure, naming the silent ranks.

A collective waits for every rank of its group. When one rank stops answering (killed, stopped
by SIGSTOP, hung, its machine gone) the others' collective fails: at once with "connection
closed" when the rank's process is gone, else after the group's timeout (``init_from_env``'s
``timeout``, the command's ``--dist-timeout``). gloo reports both as a plain RuntimeError and
NCCL as a ``torch.distributed.DistError``; :func:`is_lost_contact` recognises them.

:func:`lost_contact` turns such an error into a :class:`LostContactError` whose one-line message
names the ranks that did not answer a roll call through the job's key-value store (the
store :func:`~infomax_ext.distributed.init_from_env` connected to, held by torchrun's agent or
by rank 0): every rank that is still running writes its key and waits a few seconds for the
others' keys; the ranks whose keys never come are the silent ones.
"""
from __future__ import annotations

import datetime
import re
import time
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["LostContactError", "JobStopped", "is_lost_contact", "lost_contact", "set_roll_call_store"]

# How long a rank waits for the others' answers to the roll call (at most; the ranks whose
# collective failed on the same step answer within this).
ROLL_CALL_SECONDS = 10.0

_STORE: dict[str, Any] = {}


class LostContactError(RuntimeError):
    """A process of the job stopped answering; the message names it when the roll call could."""


class JobStopped(LostContactError):
    """This process was told to stop (SIGTERM from torchrun's agent) while the job ran."""


def set_roll_call_store(store: Any, rank: int, world_size: int) -> None:
    """Use ``store`` (a ``torch.distributed.Store`` shared by the job's ranks) for the roll call
    of :func:`lost_contact`."""
    _STORE.update(store=dist.PrefixStore("roll-call", store),  # type: ignore[attr-defined]
                  rank=rank, world=world_size)


_GLOO_WORDS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
               "/gloo/", "Broken pipe", "monitoredBarrier")


def is_lost_contact(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's failure because another process stopped answering."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc) for w in _GLOO_WORDS)


def _silent_ranks(seconds: float) -> list[int] | None:
    """The ranks that did not write their roll-call key within ``seconds`` (this one writes its
    own first); None when there is no store or it cannot be reached."""
    if not _STORE:
        return None
    store, rank, world = _STORE["store"], _STORE["rank"], _STORE["world"]
    try:
        store.set_timeout(datetime.timedelta(seconds=max(seconds, 1.0)))
        store.set(str(rank), "answered")
        missing = set(range(world)) - {rank}
        deadline = time.monotonic() + seconds
        while missing:
            missing = {r for r in missing if not store.check([str(r)])}
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return sorted(missing)
    except JobStopped:
        raise
    except (RuntimeError, OSError):  # DistStoreError, DistNetworkError: the store is gone too
        return None


def _cause(exc: BaseException, timeout_s: float | None) -> str:
    """How the collective failed, as words that follow "lost contact with another process"."""
    text = str(exc).strip()
    if "Timed out" in text or "timed out" in text:
        return (f" after --dist-timeout {timeout_s:g} s" if timeout_s is not None
                else " (a collective timed out)")
    if "closed by peer" in text or "reset by peer" in text or "Broken pipe" in text:
        return " (its connection closed)"
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else type(exc).__name__)
    return f" ({first[:160]})"


def lost_contact(exc: BaseException, group: ProcessGroup | None, timeout_s: float | None = None,
                 seconds: float = ROLL_CALL_SECONDS) -> LostContactError:
    """The :class:`LostContactError` for the collective failure ``exc`` in ``group``, after a
    roll call of at most ``seconds`` and ``timeout_s`` (the group's timeout, named in the
    message)."""
    rank = f"rank {dist.get_rank(group)}" if dist.is_initialized() else "this process"
    silent = _silent_ranks(seconds if timeout_s is None else min(seconds, timeout_s))
    if not _STORE:
        named = "torchrun's summary names the process that stopped"
    elif silent:
        who = (f"rank {silent[0]} did" if len(silent) == 1 else
               f"ranks {', '.join(map(str, silent))} did")
        named = f"{who} not answer (stopped, hung or gone)"
    elif silent is None:
        named = ("the job's store cannot be reached either: rank 0 or the torchrun agent that "
                 "holds it is gone")
    else:
        named = "every rank answered a roll call afterwards"
    return LostContactError(
        f"{rank} lost contact with another process of the job{_cause(exc, timeout_s)}: "
        f"{named}; the last checkpoint is intact")

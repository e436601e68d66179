"""What every command of ``infomax-ext`` shares: its name, its error type, printing."""
from __future__ import annotations

PROG = "infomax-ext"


# True once this process joined a torchrun job (its process group was created): :func:`run`
# then ends the process without interpreter finalization (see there).
JOINED_A_JOB = [False]


class CommandError(Exception):
    """A problem reported as ``infomax-ext COMMAND: error: ...`` with exit code 1."""


def _say(text: str = "") -> None:
    print(text, flush=True)

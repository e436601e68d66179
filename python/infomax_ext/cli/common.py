"""What every command of ``infomax-ext`` shares: its name, its error type, printing."""
from __future__ import annotations

PROG = "infomax-ext"


class CommandError(Exception):
    """A problem reported as ``infomax-ext COMMAND: error: ...`` with exit code 1."""


def _say(text: str = "") -> None:
    print(text, flush=True)

"""``python -m infomax_ext ...``: the ``infomax-ext`` command (see :mod:`infomax_ext.cli`)."""
from .cli import run

run()

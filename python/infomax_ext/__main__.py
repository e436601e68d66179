"""``python -m infomax_ext ...``: the ``infomax-ext`` command (see :mod:`infomax_ext.cli`)."""
import sys

from .cli import main

sys.exit(main())

"""Command line ``siibra-anchor``: a thin layer over the library, one module per command group (each with
``register(subparsers)`` and ``main(args=None)``, as nibabel's ``cmdline/``).

Errors of siibra-anchor become one line on stderr and exit code 2; an unexpected error one line and exit
code 1 (``--debug`` shows the traceback); progress bars go to stderr and are off with ``--quiet``.
Nothing in the library imports this package; it is the entry point.
"""

from __future__ import annotations

from . import anchor, benchmark, export, reference, regions, series, view
from ._common import run

__all__ = ["main", "COMMAND_GROUPS"]

#: the command modules, in the order ``siibra-anchor --help`` lists their commands
COMMAND_GROUPS = (anchor, series, regions, export, view, reference, benchmark)


def main(argv: list[str] | None = None) -> int:
    """Run ``siibra-anchor`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return run([m.register for m in COMMAND_GROUPS], argv)

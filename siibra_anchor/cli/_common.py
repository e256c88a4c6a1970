"""What every command module shares: global options, the anchoring hints, output, and the one place where
errors become one line on stderr and an exit code (2: bad input, a typed error; 1: unexpected; 130: ^C)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["emit", "add_anchor_options", "build_parser", "run", "quiet_dask"]

Register = Callable[[Any], None]


def emit(*a: Any) -> None:
    """Print one line of a command's output on stdout."""
    sys.stdout.write(" ".join(str(x) for x in a) + "\n")


def add_anchor_options(p: argparse.ArgumentParser) -> None:
    """Options of every command that anchors: space, seed, patches and the three hints."""
    p.add_argument("--space", default="mni152", help="reference space (default: mni152, embedded)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--n-patches", type=int, default=None, help="about how many section patches to use")
    p.add_argument(
        "--device", default=None, help="torch device of the encoder and the search: cpu (default), cuda, cuda:1"
    )
    p.add_argument(
        "--hemisphere",
        choices=["left", "right"],
        default=None,
        help="hint: section holds only this hemisphere",
    )
    p.add_argument(
        "--cut",
        choices=["coronal", "sagittal", "axial"],
        default=None,
        help="hint: section was cut near this plane of the reference space (placements more than 30 degrees "
        "off it are rejected)",
    )
    fl = p.add_mutually_exclusive_group()
    fl.add_argument("--flipped", dest="flipped", action="store_true", default=None, help="section is mounted face down")
    fl.add_argument("--not-flipped", dest="flipped", action="store_false", help="section is mounted face up")


def build_parser(registers: Iterable[Register], prog: str = "siibra-anchor", description: str = "") -> Any:
    """A parser with the global options and the subcommands that ``registers`` add (each sets ``run``)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--quiet", action="store_true", help="no progress bars, only warnings and results")
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for register in registers:
        register(sub)
    return ap


def run(registers: Iterable[Register], argv: list[str] | None = None, prog: str = "siibra-anchor") -> int:
    """Parse ``argv`` and run the chosen command; errors become one line on stderr and an exit code."""
    from ..errors import AnchorError, AnchorWarning

    ns = build_parser(registers, prog=prog, description=_DESCRIPTION).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        with warnings.catch_warnings():
            if not ns.debug:  # the library logs each of its warnings as one line already
                warnings.filterwarnings("ignore", category=AnchorWarning)
            return int(ns.run(ns) or 0)
    except AnchorError as exc:
        if ns.debug:
            raise
        sys.stderr.write(f"siibra-anchor: error: {_one_line(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("siibra-anchor: interrupted\n")
        return 130
    except Exception as exc:  # a bug or an environment problem: one line, the traceback only on request
        if ns.debug:
            raise
        sys.stderr.write(
            f"siibra-anchor: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
            "(run again with --debug for the traceback and report it)\n"
        )
        return 1


_DESCRIPTION = "Place histological sections of the human brain in a 3D reference space."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def quiet_dask(ns: argparse.Namespace) -> None:
    """Dask's scheduler logs every connection at INFO; show its warnings only (unless --verbose)."""
    if ns.verbose:
        return
    try:
        import distributed  # noqa: F401  (sets its loggers' levels on import)
    except ImportError:
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)

"""``siibra-anchor reference build``: build (and cache) the reference index of a space."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import emit, run

__all__ = ["register", "main"]


def register(sub: Any) -> None:
    p = sub.add_parser("reference", help="reference indexes")
    rsub = p.add_subparsers(dest="rcmd", required=True)
    b = rsub.add_parser("build", help="build (and cache) the reference of a space")
    b.add_argument("--space", default="mni152")
    b.add_argument("--n-sections", type=int, default=30, help="reference sections per orientation")
    b.add_argument("--axis", nargs="+", default=["coronal", "sagittal", "axial"])
    b.add_argument("--out", default=None, help="also save the reference to this .zarr folder")
    p.set_defaults(run=build_cmd)


def build_cmd(ns: argparse.Namespace) -> int:
    import time

    import siibra_anchor as sa

    t = time.perf_counter()
    ref = sa.Reference.from_space(ns.space, n_sections=ns.n_sections, axis=ns.axis, progress=not ns.quiet)
    emit(f"{ref} ready in {time.perf_counter() - t:.1f} s")
    if ns.out:
        emit(f"saved {ref.save(ns.out)}")
    return 0


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.cli.reference reference build ...``."""
    return run([register], args)

"""``siibra-anchor export RESULT.json... --quint series.json [--xml] [--points points.csv] [--matches matches.csv]
[--explorer annotations.zip]``

Hands anchoring results to the tools people already use: a QUINT series for QuickNII, VisuAlign, DeepSlice
and PyNutil (:func:`siibra_anchor.io.quint.export_quint`), and CSV tables of anchored points and patch
matches (:mod:`siibra_anchor.io.tables`), and point annotations for siibra-explorer
(:mod:`siibra_anchor.io.explorer`). Errors of siibra-anchor become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["get_parser", "main"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siibra-anchor export", description="write anchoring results as QUINT JSON/XML and CSV tables"
    )
    p.add_argument("results", nargs="+", metavar="RESULT.json", help="result JSON files written by 'anchor'")
    p.add_argument("--quint", metavar="SERIES.json", default=None, help="QUINT series for QuickNII/VisuAlign/...")
    p.add_argument("--xml", action="store_true", help="also write QuickNII's XML next to the --quint file")
    p.add_argument(
        "--target",
        default=None,
        help="template whose voxels the QUINT anchoring refers to: 'mni152' (default for MNI152 results) "
        "or a NIfTI path",
    )
    p.add_argument("--name", default=None, help="series name (default: the --quint file's stem)")
    p.add_argument("--points", metavar="POINTS.csv", default=None, help="section pixels and their world mm")
    p.add_argument(
        "--step", type=int, default=None, help="pixel step of the --points grid (default: at most 64 per side)"
    )
    p.add_argument(
        "--regions",
        nargs="?",
        const="julich",
        default=None,
        metavar="PARCELLATION",
        help="add the most probable region of each point (default parcellation: julich, offline map)",
    )
    p.add_argument("--online", action="store_true", help="look regions up through siibra (network)")
    p.add_argument("--matches", metavar="MATCHES.csv", default=None, help="patch matches of every result")
    p.add_argument(
        "--explorer",
        metavar="ANNOTATIONS.zip",
        default=None,
        help="outline corners, centre and inlier patch centres as siibra-explorer point annotations (SANDS)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def main(args: list[str] | None = None) -> int:
    """Run the command; 0 on success, 2 on bad input (one line on stderr)."""
    from .errors import AnchorError

    ns = get_parser().parse_args(args)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if not (ns.quint or ns.points or ns.matches):
            raise _Usage(
                "nothing to export: give --quint SERIES.json, --points POINTS.csv and/or --matches MATCHES.csv"
            )
        if ns.xml and not ns.quint:
            raise _Usage("--xml writes next to the QUINT series: give --quint SERIES.json too")
        if ns.regions is not None and not ns.points:
            raise _Usage("--regions adds a column to the points table: give --points POINTS.csv too")
        from .result import AnchoringResult

        results = [AnchoringResult.load(p) for p in ns.results]
        if ns.quint:
            from .io.quint import export_quint

            out = export_quint(results, ns.quint, target=ns.target, name=ns.name, xml=ns.xml)
            print(f"QUINT series: {out}" + (f" and {out.with_suffix('.xml')}" if ns.xml else ""))
        if ns.points:
            from .io.tables import write_points_csv

            out = write_points_csv(
                results, ns.points, step=ns.step, parcellation=ns.regions, online=True if ns.online else False
            )
            print(f"points: {out}")
        if ns.matches:
            from .io.tables import write_matches_csv

            print(f"matches: {write_matches_csv(results, ns.matches)}")
        if ns.explorer:
            from .io.explorer import write_explorer_annotations

            print(f"siibra-explorer annotations: {write_explorer_annotations(results, ns.explorer)}")
    except (AnchorError, _Usage) as exc:
        sys.stderr.write(f"siibra-anchor: error: {' '.join(str(exc).split())}\n")
        return 2
    return 0


class _Usage(Exception):
    """A bad combination of options (exit code 2)."""


if __name__ == "__main__":
    sys.exit(main())

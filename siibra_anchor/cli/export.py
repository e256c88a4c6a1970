"""``siibra-anchor export RESULT.json... --quint series.json [--xml] [--points points.csv] [--matches matches.csv]
[--explorer annotations.zip]``

Hands anchoring results to the tools people already use: a QUINT series for QuickNII, VisuAlign, DeepSlice
and PyNutil (:func:`siibra_anchor.io.quint.export_quint`), and CSV tables of anchored points and patch
matches (:mod:`siibra_anchor.io.tables`), and point annotations for siibra-explorer
(:mod:`siibra_anchor.io.explorer`). Errors of siibra-anchor become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InvalidParameterError
from ._common import emit, run

__all__ = ["register", "main"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="write results as QUINT JSON/XML (QuickNII, VisuAlign, DeepSlice, PyNutil) and CSV"
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
        help="add the most probable region of each point (default: julich, Julich-Brain through siibra, online "
        "or cached; fsl-juelich is the bundled offline atlas)",
    )
    p.add_argument("--offline", action="store_true", help="never use the network for --regions")
    p.add_argument("--matches", metavar="MATCHES.csv", default=None, help="patch matches of every result")
    p.add_argument(
        "--explorer",
        metavar="ANNOTATIONS.zip",
        default=None,
        help="outline corners, centre and inlier patch centres as siibra-explorer point annotations (SANDS)",
    )
    p.set_defaults(run=export_cmd)


def export_cmd(ns: argparse.Namespace) -> int:
    if not (ns.quint or ns.points or ns.matches or ns.explorer):
        raise InvalidParameterError(
            "nothing to export: give --quint SERIES.json, --points POINTS.csv, --matches MATCHES.csv "
            "and/or --explorer ANNOTATIONS.zip"
        )
    if ns.xml and not ns.quint:
        raise InvalidParameterError("--xml writes next to the QUINT series: give --quint SERIES.json too")
    if ns.regions is not None and not ns.points:
        raise InvalidParameterError("--regions adds a column to the points table: give --points POINTS.csv too")
    from ..result import AnchoringResult

    results = [AnchoringResult.load(p) for p in ns.results]
    if ns.quint:
        from ..io.quint import export_quint

        out = export_quint(results, ns.quint, target=ns.target, name=ns.name, xml=ns.xml)
        emit(f"QUINT series: {out}" + (f" and {out.with_suffix('.xml')}" if ns.xml else ""))
    if ns.points:
        from ..io.tables import write_points_csv

        out = write_points_csv(
            results, ns.points, step=ns.step, parcellation=ns.regions, online=False if ns.offline else None
        )
        emit(f"points: {out}")
    if ns.matches:
        from ..io.tables import write_matches_csv

        emit(f"matches: {write_matches_csv(results, ns.matches)}")
    if ns.explorer:
        from ..io.explorer import write_explorer_annotations

        emit(f"siibra-explorer annotations: {write_explorer_annotations(results, ns.explorer)}")
    return 0


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.cli.export export RESULT.json ... --quint series.json``."""
    return run([register], args)

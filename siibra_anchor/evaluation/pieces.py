"""Small pieces of tissue: how the anchoring and its confidence do on pieces 16-60 mm across.

    python -m siibra_anchor.evaluation.pieces [--seed 2031] [--n 48] [--json FILE]

Users mount small pieces: a block around a structure, a biopsy-sized piece, what is left of a damaged
section. No benchmark tier holds one (the smallest block of the tiers is about a third of a section, 50 mm
or more). This command cuts a square window of tissue (16-60 mm across, tissue filling at least 70 % of it,
4 mm of background around it, :func:`~siibra_anchor.evaluation.simulate.tissue_piece`) out of each section
of a draw of the template-family generator and anchors it as the tier anchors its sections (the cached
MNI152 reference, the default encoder, the tier's hints). It prints, per band of size: how many pieces,
how many within 10 mm, refusals, false alarms and confident failures. A piece a few centimetres across
holds too little of the brain's layout for a whole-brain search; what matters is that the confidence
says so. :data:`TEST_SEED` is a draw nothing chooses on (the calibration set's pieces use seed 5157).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PIECE_SIDES_MM",
    "TEST_SEED",
    "BANDS_MM",
    "PieceCase",
    "piece_cases",
    "make_piece",
    "piece_hints",
    "run_pieces",
    "main",
]

#: the range the sides of the pieces are drawn from (mm)
PIECE_SIDES_MM = (16.0, 60.0)
#: the draw this command reports (nothing trains, calibrates or chooses on it)
TEST_SEED = 2031
#: bands of piece size the report is split into (mm, lower bound inclusive; the last holds its upper bound too)
BANDS_MM = ((16.0, 24.0), (24.0, 36.0), (36.0, 60.0))


@dataclass(frozen=True)
class PieceCase:
    """A benchmark-like section (``case``) and the piece cut from it: about ``side_mm`` across, the window
    drawn with ``seed``."""

    case: Any
    side_mm: float
    seed: int


def piece_cases(n: int, seed: int) -> list[PieceCase]:
    """``n`` pieces: the sections of ``simulated_set(n, seed)``, a side drawn from :data:`PIECE_SIDES_MM`
    for each."""
    from .benchmark import simulated_set

    rng = np.random.default_rng(seed)
    return [
        PieceCase(c, float(rng.uniform(*PIECE_SIDES_MM)), int(rng.integers(2**31))) for c in simulated_set(n, seed=seed)
    ]


def piece_hints(pc: PieceCase, sim: Any) -> dict[str, Any]:
    """What the user knows of piece ``sim`` of ``pc``: the tier's hints for the section it was cut from
    (the mounting; the hemisphere of a hemisection, or of a one-sided sagittal section)."""
    from dataclasses import replace

    from .benchmark import user_hints

    return user_hints(replace(pc.case, partial=sim.params["partial"]), sim)


def make_piece(pc: PieceCase) -> Any:
    """The :class:`~siibra_anchor.evaluation.simulate.SimulatedSection` of piece ``pc``. A hemisection or
    block whose plane holds no tissue of its part (the generator's offsets are drawn for whole sections) is
    cut from the whole section instead."""
    from dataclasses import replace

    from ..errors import InvalidParameterError
    from .benchmark import make_section
    from .simulate import tissue_piece

    try:
        sim = make_section(pc.case)
    except InvalidParameterError:
        sim = make_section(replace(pc.case, partial=None))
    return tissue_piece(sim, pc.side_mm, np.random.default_rng(pc.seed))


def _band_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from .benchmark import FAIL_MM, calibration_report

    err = [r["error_mm"] for r in rows]
    cal = calibration_report([r["confidence"] for r in rows], err) if rows else {}
    wrong = [r["confidence"] for r in rows if not r["error_mm"] <= FAIL_MM]
    return {
        "n": len(rows),
        "within_10mm": int(sum(e <= FAIL_MM for e in err)),
        "refusals": int(sum(r["refused"] is not None for r in rows)),
        "false_alarms": int(cal.get("successes_with_confidence_lt_0.5", 0)),
        "confident_failures": int(cal.get("failures_with_confidence_ge_0.5", 0)),
        "max_confidence_wrong": float(max(wrong)) if wrong else None,
        "median_error_mm": float(np.median(err)) if rows else None,
    }


def run_pieces(seed: int = TEST_SEED, n: int = 48) -> dict[str, Any]:
    """Anchor the ``n`` pieces of draw ``seed``: ``{"seed", "n", "cases": [...], "bands": {label: row},
    "all": row}``; a row holds how many pieces, how many within 10 mm, refusals, false alarms (within 10 mm,
    confidence < 0.5), confident failures (wrong, >= 0.5), the highest confidence of a wrong one and the
    median error."""
    import siibra_anchor as sa

    from .benchmark import anchor_scored

    ref = sa.Reference.from_space("mni152")
    cases: list[dict[str, Any]] = []
    for i, pc in enumerate(piece_cases(n, seed)):
        sim = make_piece(pc)
        a = anchor_scored(sim, ref, piece_hints(pc, sim))
        cases.append(
            {
                "index": i,
                "volume": pc.case.volume,
                "orientation": pc.case.orientation,
                "contrast": pc.case.contrast,
                "side_mm": float(sim.params["piece_mm"]),
                **{k: a[k] for k in ("error_mm", "confidence", "refused", "time_s")},
            }
        )
    last = BANDS_MM[-1]
    bands = {
        f"{lo:.0f}-{hi:.0f} mm": _band_row(
            [c for c in cases if lo <= c["side_mm"] < hi or ((lo, hi) == last and c["side_mm"] >= hi)]
        )
        for lo, hi in BANDS_MM
    }
    return {"seed": int(seed), "n": int(n), "cases": cases, "bands": bands, "all": _band_row(cases)}


def format_pieces(rep: dict[str, Any]) -> str:
    """The Markdown table of :func:`run_pieces`' report: one row per band of size, then all pieces."""
    lines = [
        f"Pieces of tissue, draw {rep['seed']} ({rep['n']} pieces; default encoder, MNI152, the tier's hints).",
        "",
        "| piece side | n | within 10 mm | refusals | false alarms | confident failures | highest confidence "
        "of a wrong one | median error mm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in [*rep["bands"].items(), ("**all**", rep["all"])]:
        top = "-" if r["max_confidence_wrong"] is None else f"{r['max_confidence_wrong']:.2f}"
        med = "-" if r["median_error_mm"] is None else f"{r['median_error_mm']:.1f}"
        lines.append(
            f"| {name} | {r['n']} | {r['within_10mm']} | {r['refusals']} | {r['false_alarms']} | "
            f"{r['confident_failures']} | {top} | {med} |"
        )
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m siibra_anchor.evaluation.pieces", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=TEST_SEED, help="the draw (default: the test draw)")
    ap.add_argument("--n", type=int, default=48, help="pieces")
    ap.add_argument("--json", default=None, help="also write the whole report (every piece) to this file")
    ns = ap.parse_args(args)
    if ns.n < 1:
        ap.error("--n must be at least 1")
    logging.disable(logging.WARNING)
    rep = run_pieces(ns.seed, ns.n)
    from .benchmark import emit_report

    emit_report(format_pieces(rep), rep, ns.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The histology-geometry block of the benchmark: template-family sections distorted as histology distorts.

Sections are cut as the template-family tier cuts them (:func:`~siibra_anchor.evaluation.simulate.simulate_section`,
volumes other than the reference, tilt up to 12 degrees, any in-plane rotation, 0.5-1.0 mm/px, whole
sections, hemisections and blocks) and then given histology's geometry
(:class:`~siibra_anchor.evaluation.simulate.HistologyGeometry`: independent shrinkage per in-plane axis, shear,
smooth warps of a few mm, frame-filling crops, missing pieces, folds, staining gradients). The error is
measured against the true position of every pixel (warp included); the affine floor beside it is the error
of the best affine (least squares over the tissue), which no affine anchoring can beat.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np

__all__ = ["histology_sections", "run_histology_block", "format_histology_block"]

_VOLUMES = ("fsl-mni152-t1", "mni152-2009a-t1")
_PARTIALS = (None, "left", "right", "block", "block")


def _geometry() -> Any:
    """The block's geometry: anisotropic shrinkage 0.75-1.0, shear up to 5 degrees, warps up to 3 mm, half
    the sections cropped to their tissue (blocks: inside it, so the tissue fills the frame)."""
    from .simulate import HistologyGeometry

    return HistologyGeometry(shrink=(0.75, 1.0), frame_fill=0.5)


def histology_sections(n: int, seed: int = 2026, geometry: Any = None) -> list[Any]:
    """``n`` seeded :class:`~siibra_anchor.evaluation.simulate.SimulatedSection` with histology geometry."""
    from .simulate import simulate_section

    geo = geometry or _geometry()
    rng = np.random.default_rng(seed)
    out: list[Any] = []
    while len(out) < n:
        orientation = ("coronal", "sagittal", "axial")[len(out) % 3]
        partial = _PARTIALS[int(rng.integers(len(_PARTIALS)))]
        if orientation == "sagittal" and partial in ("left", "right"):
            partial = None
        try:
            out.append(
                simulate_section(
                    volume=_VOLUMES[int(rng.integers(len(_VOLUMES)))],
                    orientation=orientation,
                    tilt_deg=float(rng.uniform(0, 12)),
                    rotation_deg=float(rng.uniform(0, 360)),
                    spacing_mm=float(rng.uniform(0.5, 1.0)),
                    partial=partial,
                    contrast=("as-is", "inverted")[int(rng.integers(2))],
                    seed=int(rng.integers(2**31)),
                    histology=geo,
                    name=f"histology-{len(out)}",
                )
            )
        except ValueError:  # a plane with almost no tissue: draw another
            continue
    return out


def _hemisphere_hint(sim: Any) -> str | None:
    """What the user knows of the hemisphere, as in the other tiers: that of a hemisection, and that of a
    sagittal section whose tissue lies all on one side of the midline (more than 2 mm from it)."""
    partial = sim.params["partial"]
    if partial in ("left", "right"):
        return str(partial)
    if sim.params["orientation"] == "sagittal" and sim.true_points is not None:
        from .simulate import one_side_of_midline

        return one_side_of_midline(sim.true_points[sim.section.mask][:, 0])
    return None


def run_histology_block(
    n: int = 12,
    seed: int = 2026,
    reference: Any = None,
    encoder: Any = None,
    encoder_name: str | None = None,
    mounting_known: bool = True,
    raw_baseline: bool = True,
    cut_known: bool = False,
) -> dict[str, Any]:
    """Anchor :func:`histology_sections` with the default encoder and the raw-pixel baseline.

    The user's hints are those of the other tiers: the hemisphere of a hemisection or of a sagittal section
    that lies in one hemisphere and, with
    ``mounting_known``, the mounting (these sections are mounted face up: ``flipped=False``).
    ``encoder`` (``reference`` built with it): another encoder in the "default" column, named
    ``encoder_name``; ``raw_baseline`` False skips the raw-pixel column. ``cut_known``: also anchor each
    section with the default encoder told the cutting plane (``anchor(cut=...)``, the template plane it was
    cut along before its tilt): the "cut_known" column, as in the real-anatomy tier.

    Returns ``{"n", "seed", "geometry", "default": summary, "raw_pixel": summary, "cut_known": summary
    ({"n": 0} when not run), "affine_floor_mm": median, "frame_filling": summary of the default on
    frame-filling sections, "cases": [...]}``; summaries as
    :func:`~siibra_anchor.evaluation.real_tier.run_real_tier` gives them (refusals count as failures).
    """
    import siibra_anchor as sa

    from ..errors import AnchorError, LowConfidenceWarning
    from .real_tier import _default_name, _summary, failure_kind, tier_methods

    geo = _geometry()
    sims = histology_sections(n, seed, geo)
    methods = tier_methods(reference, encoder, raw_baseline)
    if cut_known:  # the default encoder again, told the cutting plane
        methods["cut_known"] = methods["default"]
    rows = []
    for s in sims:
        drawn = s.params["histology"]["drawn"]
        hemi = _hemisphere_hint(s)
        row: dict[str, Any] = {
            "name": s.section.name,
            "partial": s.params["partial"],
            "orientation": s.params["orientation"],
            "shrink": drawn["shrink"],
            "shear_deg": drawn["shear_deg"],
            "warp_mm": drawn["warp_mm"],
            "frame_fill": drawn["frame_fill"],
            "hemisphere_hint": hemi,
            "affine_floor_mm": s.error(s.true_affine),
        }
        for key, (r, e) in methods.items():
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", LowConfidenceWarning)
                    res = sa.anchor(s.section, reference=r, encoder=e, seed=0, hemisphere=hemi,
                                    flipped=False if mounting_known else None,
                                    cut=s.params["orientation"] if key == "cut_known" else None)  # fmt: skip
                err, why = s.error(res.affine), None
                row[f"{key}_confidence"] = float(res.confidence)
                row[f"{key}_outcome"] = failure_kind(res.affine, s.true_affine, s.section.mask)
            except AnchorError as exc:
                err, why = float("inf"), f"{type(exc).__name__}: {exc}"
                row[f"{key}_confidence"] = 0.0
                row[f"{key}_outcome"] = "refused"
            row[f"{key}_error_mm"] = err
            row[f"{key}_refused"] = why
            row[f"{key}_time_s"] = time.perf_counter() - t0
        rows.append(row)

    def stats(sel: list[dict[str, Any]], key: str) -> dict[str, Any]:
        if key not in methods:
            return {"n": 0}
        return _summary(
            [r[f"{key}_error_mm"] for r in sel],
            [r[f"{key}_refused"] is not None for r in sel],
            [r[f"{key}_time_s"] for r in sel],
        )

    return {
        "n": n,
        "seed": seed,
        "hints": "hemisphere and mounting" if mounting_known else "hemisphere only",
        "encoder_name": encoder_name or ("(given encoder)" if encoder is not None else _default_name()),
        "geometry": asdict(geo),
        "default": stats(rows, "default"),
        "raw_pixel": stats(rows, "raw_pixel"),
        "cut_known": stats(rows, "cut_known"),
        "affine_floor_mm": float(np.median([r["affine_floor_mm"] for r in rows])),
        "frame_filling": stats([r for r in rows if r["frame_fill"]], "default"),
        "cases": [
            {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows
        ],
    }


def _failed(case: dict[str, Any], key: str) -> bool:
    """Whether column ``key`` of a case failed: refused (no error) or further than 10 mm."""
    e = case[f"{key}_error_mm"]
    return not (e is not None and e <= 10.0)


def _outcome(case: dict[str, Any], key: str) -> str:
    """Column ``key``'s outcome, error and confidence of a case, as the failure lines print them."""
    e = case[f"{key}_error_mm"]
    err = "refused" if e is None else f"{e:.1f} mm"
    return f"{case.get(f'{key}_outcome', '?')}, {err}, confidence {case.get(f'{key}_confidence', float('nan')):.2f}"


def format_histology_block(report: dict[str, Any]) -> str:
    """A markdown table of :func:`run_histology_block`'s figures (all sections, frame-filling ones) and one
    line per failure."""

    from .real_tier import summary_cells as cell

    g = report["geometry"]
    lines = [
        f"Histology-geometry block ({report['n']} sections, seed {report['seed']}; encoder "
        f"{report.get('encoder_name', 'default')}; hints: {report.get('hints', 'hemisphere only')}; shrinkage "
        f"{g['shrink'][0]:g}-{g['shrink'][1]:g} per axis, shear up to {g['shear_deg']:g} deg, warps up to "
        f"{g['warp_mm']:g} mm). Errors in mm against every pixel's true position; failures: > 10 mm or "
        f"refused; median affine floor {report['affine_floor_mm']:.2f} mm.",
        "",
        "| sections | default median | p90 | failures | refusals | s/section | raw-pixel median | p90 | failures "
        "| refusals | s/section |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| all | {cell(report['default'])} | {cell(report['raw_pixel'])} |",
        f"| frame-filling | {cell(report['frame_filling'])} | - | - | - | - | - |",
    ]
    cut_run = bool(report.get("cut_known", {}).get("n"))
    if cut_run:
        lines.append(f"| all, cutting plane known | {cell(report['cut_known'])} | - | - | - | - | - |")
    bad = [c for c in report["cases"] if _failed(c, "default")]
    if bad:
        lines += ["", "Failures: " + "; ".join(
            f"{c['name']} ({c['orientation']} {c['partial'] or 'whole'}, {_outcome(c, 'default')})" for c in bad
        )]  # fmt: skip
    if cut_run:
        bad_cut = [f"{c['name']} ({_outcome(c, 'cut_known')})" for c in report["cases"] if _failed(c, "cut_known")]
        lines += ["", "Failures with the cutting plane known: " + ("; ".join(bad_cut) or "none")]
    return "\n".join(lines)

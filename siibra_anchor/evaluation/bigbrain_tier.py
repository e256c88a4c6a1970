"""BigBrain sections through siibra, anchored in MNI152: real histology against a nonlinear truth (online).

siibra serves BigBrain's cell-body stained sections ("selected 1 micron scans of BigBrain histological
sections", about 145 coronal sections) each with its place in the BigBrain space, and links that space to
MNI152 2009c by its spatial-transformation service (a nonlinear warp). This block of the real-anatomy tier
fetches ``n`` of the sections, evenly spread over the series, at ``resolution_mm``, in their histological
geometry (BigBrain is shrunk by about 1.12 / 1.23 / 1.44 along x / y / z relative to MNI), and anchors each
in MNI152 with the default encoder and the raw-pixel baseline.

The truth of a pixel is its BigBrain position warped by the service (:func:`~siibra_anchor.adapters.
siibra_transforms.warp_points`), on a grid of tissue pixels every ``step_mm``; a section's error is the mean
distance over those pixels between where the anchoring's affine and the warp put them. No affine can follow
a nonlinear warp exactly: the *affine floor* beside each error is the mean residual of the least-squares
affine of the warped points (what no affine anchoring can beat), and the truth's in-plane scale per pixel
axis (true mm per stated mm, the shrinkage the section shows) is reported beside the anchored one.

Everything here needs siibra online (or a local configuration that serves the sections and the service,
as the test mirror does); without it :func:`run_bigbrain_tier` raises
:class:`~siibra_anchor.errors.SpaceUnavailableError` and the benchmark reports the block as not measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "select_bigbrain_sections",
    "bigbrain_truth",
    "affine_of_points",
    "run_bigbrain_tier",
    "format_bigbrain_tier",
]

log = logging.getLogger(__name__)

#: the service's grid of truth points: a tissue pixel every this many mm along rows and columns
TRUTH_STEP_MM = 1.5


def _number(name: str) -> int:
    """The section number of a siibra BigBrain section name ("#1001: selected 1 micron scans ..." -> 1001)."""
    m = re.match(r"\s*#(\d+)", str(name))
    return int(m.group(1)) if m else 10**9


def select_bigbrain_sections(n: int, online: bool | None = None, timeout_s: float = 120.0) -> list[str]:
    """Names of ``n`` of siibra's BigBrain cell-body sections, evenly spread over the series (by section
    number, first and last included); all of them when siibra lists fewer. A configuration that lists none
    (siibra's offline one) raises :class:`~siibra_anchor.errors.SpaceUnavailableError`."""
    from ..adapters.siibra_config import siibra_mode
    from ..adapters.siibra_sections import bigbrain_section_features
    from ..errors import SpaceUnavailableError

    names = sorted((str(f.name) for f in bigbrain_section_features(online=online, timeout_s=timeout_s)), key=_number)
    if not names:
        raise SpaceUnavailableError(
            f"the siibra configuration in use ({siibra_mode()}) lists no BigBrain cell-body sections; they come "
            "from siibra online: connect to the network (and unset SIIBRA_ANCHOR_OFFLINE)"
        )
    if n >= len(names):
        return names
    return [names[int(i)] for i in np.unique(np.round(np.linspace(0, len(names) - 1, n)).astype(int))]


def bigbrain_truth(
    section: Any,
    bigbrain_affine: NDArray,
    step_mm: float = TRUTH_STEP_MM,
    online: bool | None = None,
    timeout_s: float = 120.0,
) -> tuple[NDArray, NDArray]:
    """``(rc, xyz)``: (N, 2) tissue pixels of ``section`` on a grid every ``step_mm`` and (N, 3) where siibra's
    transformation service puts them in MNI152 2009c (from their BigBrain position by ``bigbrain_affine``,
    pixel (row, col, 0, 1) -> BigBrain mm)."""
    from ..adapters.siibra_transforms import warp_points
    from ..errors import InvalidSectionError

    sp = np.asarray(section.spacing_mm, float)
    stride = np.maximum(1, np.round(step_mm / sp)).astype(int)
    mask = np.asarray(section.mask, bool)
    rr, cc = np.nonzero(mask[:: stride[0], :: stride[1]])
    if len(rr) < 10:
        raise InvalidSectionError(f"section {section.name!r} has {len(rr)} tissue pixels on a {step_mm} mm grid")
    rc = np.stack([rr * stride[0], cc * stride[1]], axis=1).astype(float)
    a = np.asarray(bigbrain_affine, float)
    bb = rc @ a[:3, :2].T + a[:3, 3]
    _, xyz = warp_points(bb, "bigbrain", "mni152", online=online, timeout_s=timeout_s)
    return rc, xyz


def affine_of_points(rc: NDArray, xyz: NDArray) -> tuple[NDArray, NDArray]:
    """Least-squares (4, 4) section affine (pixel (row, col, 0, 1) -> mm; the third column the unit normal)
    of pixels ``rc`` (N, 2) onto points ``xyz`` (N, 3), and the (N,) residuals (mm)."""
    from ..planes import section_affine

    x = np.column_stack([rc, np.ones(len(rc))])
    coef, *_ = np.linalg.lstsq(x, xyz, rcond=None)
    lin, t = coef[:2].T, coef[2]
    res = np.linalg.norm(x @ coef - xyz, axis=1)
    return section_affine(lin, t, 1.0), res


def _error(affine: NDArray, rc: NDArray, xyz: NDArray) -> float:
    a = np.asarray(affine, float)
    return float(np.linalg.norm(rc @ a[:3, :2].T + a[:3, 3] - xyz, axis=1).mean())


def _axis_scales(affine: NDArray, spacing: Any) -> list[float]:
    """mm per stated mm along rows and along columns of a section affine."""
    a = np.asarray(affine, float)
    return (np.linalg.norm(a[:3, :2], axis=0) / np.asarray(spacing, float)).tolist()


def run_bigbrain_tier(
    n: int = 8,
    resolution_mm: float = 0.32,
    reference: Any = None,
    encoder: Any = None,
    encoder_name: str | None = None,
    raw_baseline: bool = True,
    mounting_known: bool = True,
    online: bool | None = None,
    timeout_s: float = 300.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Anchor ``n`` BigBrain sections fetched through siibra in MNI152; errors against the service's warp.

    Parameters
    ----------
    n : sections, evenly spread over the series siibra lists; resolution_mm : their pixel spacing as fetched.
    reference, encoder, encoder_name, raw_baseline : as :func:`~siibra_anchor.evaluation.real_tier.run_real_tier`.
    mounting_known : pass the mounting the truth shows (``flipped``), as the other tiers do; a section that
        lies in one hemisphere also gets that hemisphere as its hint.
    online, timeout_s : siibra's mode (:func:`~siibra_anchor.adapters.siibra_config.get_siibra`) and the bound
        on each network call.

    Returns a JSON-safe dict ``{"n", "resolution_mm", "truth", "default", "raw_pixel", "affine_floor_mm",
    "cases": [...]}`` (summaries as the real-anatomy tier's). Raises
    :class:`~siibra_anchor.errors.SpaceUnavailableError` when siibra cannot list or fetch the sections or warp
    their points (offline).
    """
    import siibra_anchor as sa

    from ..adapters.siibra_sections import bigbrain_sections
    from ..affine_fit import SectionMap
    from ..anchoring.hypotheses import mounting_mirrored
    from ..errors import AnchorError, LowConfidenceWarning
    from .real_tier import _default_name, _summary, tier_methods
    from .simulate import one_side_of_midline

    names = select_bigbrain_sections(n, online=online, timeout_s=min(timeout_s, 120.0))
    pairs = bigbrain_sections(limit=None, resolution_mm=resolution_mm, names=names, online=online,
                              timeout_s=timeout_s)  # fmt: skip
    pairs = sorted(pairs, key=lambda p: _number(p[0].name))
    methods = tier_methods(reference, encoder, raw_baseline)
    items: Any = pairs
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(pairs, desc="BigBrain sections", unit="section")
    rows = []
    for sec, bb_aff in items:
        rc, xyz = bigbrain_truth(sec, bb_aff, online=online, timeout_s=timeout_s)
        fit, resid = affine_of_points(rc, xyz)
        flipped = mounting_mirrored(SectionMap(fit[:3, :2], fit[:3, 3])) if mounting_known else None
        hemi = one_side_of_midline(xyz[:, 0])
        row: dict[str, Any] = {
            "name": sec.name,
            "number": _number(sec.name),
            "shape": list(sec.shape),
            "spacing_mm": [float(s) for s in np.broadcast_to(sec.spacing_mm, (2,))],
            "truth_points": len(rc),
            "affine_floor_mm": float(resid.mean()),
            "truth_scale": _axis_scales(fit, sec.spacing_mm),
            "flipped_hint": flipped,
            "hemisphere_hint": hemi,
        }
        for key, (r, e) in methods.items():
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", LowConfidenceWarning)
                    res = sa.anchor(sec, reference=r, encoder=e, seed=0, hemisphere=hemi, flipped=flipped)
                err, why = _error(res.affine, rc, xyz), None
                row[f"{key}_confidence"] = float(res.confidence)
                row[f"{key}_scale"] = _axis_scales(res.affine, sec.spacing_mm)
                row[f"{key}_affine"] = np.asarray(res.affine, float).tolist()
            except AnchorError as exc:
                err, why = float("inf"), f"{type(exc).__name__}: {exc}"
                row[f"{key}_confidence"] = 0.0
                row[f"{key}_scale"] = None
                row[f"{key}_affine"] = None
            row[f"{key}_error_mm"] = err
            row[f"{key}_refused"] = why
            row[f"{key}_time_s"] = time.perf_counter() - t0
        rows.append(row)

    def stats(key: str) -> dict[str, Any]:
        if key not in methods or not rows:
            return {"n": 0}
        return _summary([r[f"{key}_error_mm"] for r in rows], [r[f"{key}_refused"] is not None for r in rows],
                        [r[f"{key}_time_s"] for r in rows])  # fmt: skip

    return {
        "n": len(rows),
        "resolution_mm": float(resolution_mm),
        "truth": "siibra's spatial-transformation service, BigBrain -> MNI152 2009c (nonlinear), "
        f"tissue pixels every {TRUTH_STEP_MM:g} mm",
        "hints": "mounting (and hemisphere of one-sided sections)" if mounting_known else "hemisphere only",
        "encoder_name": encoder_name or ("(given encoder)" if encoder is not None else _default_name()),
        "default": stats("default"),
        "raw_pixel": stats("raw_pixel"),
        "affine_floor_mm": float(np.median([r["affine_floor_mm"] for r in rows])) if rows else float("nan"),
        "cases": [
            {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows
        ],
    }


def format_bigbrain_tier(report: dict[str, Any]) -> str:
    """A markdown table of :func:`run_bigbrain_tier` (default beside raw pixels) and one line per section;
    or the reason it was not measured (``{"skipped": reason}``)."""
    from .real_tier import summary_cells as cell

    if report.get("skipped"):
        return f"BigBrain sections through siibra: not measured ({report['skipped']})."
    lines = [
        f"BigBrain sections through siibra ({report['n']} cell-body stained sections at "
        f"{report['resolution_mm']:g} mm/px, in their histological geometry; encoder {report['encoder_name']}; "
        f"hints: {report['hints']}). Errors in mm against {report['truth']}; failures: > 10 mm or refused; "
        f"affine floor: mean residual of the best affine of the warped points (median {report['affine_floor_mm']:.2f} mm).",
        "",
        "| sections | default median | p90 | failures | refusals | s/section | raw-pixel median | p90 | failures "
        "| refusals | s/section |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| all | {cell(report['default'])} | {cell(report['raw_pixel'])} |",
        "",
        "| section | affine floor mm | true scale rows / cols | default mm | confidence | anchored scale rows / cols |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        err = c["default_error_mm"]
        sc = c.get("default_scale")
        lines.append(
            f"| #{c['number']} | {c['affine_floor_mm']:.2f} | {c['truth_scale'][0]:.2f} / {c['truth_scale'][1]:.2f} | "
            f"{'refused' if err is None else format(err, '.1f')} | {c['default_confidence']:.2f} | "
            f"{'-' if sc is None else format(sc[0], '.2f') + ' / ' + format(sc[1], '.2f')} |"
        )
    return "\n".join(lines)


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.evaluation.bigbrain_tier [--n 8] [--resolution-mm 0.32] [--out JSON]``."""
    ap = argparse.ArgumentParser(prog="python -m siibra_anchor.evaluation.bigbrain_tier", description=__doc__)
    ap.add_argument("--n", type=int, default=8, help="sections, evenly spread over the series")
    ap.add_argument("--resolution-mm", type=float, default=0.32)
    ap.add_argument("--no-raw", action="store_true", help="skip the raw-pixel baseline")
    ap.add_argument("--out", type=Path, help="write the report (JSON) here")
    a = ap.parse_args(args)
    rep = run_bigbrain_tier(a.n, a.resolution_mm, raw_baseline=not a.no_raw, progress=True)
    if a.out is not None:
        from ..cache import atomic_write_text

        atomic_write_text(a.out, json.dumps(rep, indent=1))
    sys.stdout.write(format_bigbrain_tier(rep) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

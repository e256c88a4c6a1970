"""Benchmark of series anchoring on simulated series with exact ground truth.

``siibra-anchor benchmark-series`` cuts parallel series from volumes other than the reference template
(:func:`~siibra_anchor.evaluation.simulate.simulate_section`): one tilt and in-plane rotation per series (plus a few
degrees of mounting jitter per section), one pixel-scale error, evenly numbered sections with gaps
(missing sections), and damaged sections (tears, strong noise, cropped to a fragment). Every series is
anchored once; the independent placements (the first pass of :func:`~siibra_anchor.anchoring.series.anchor_series`)
and the joint ones are both scored, so the baseline is measured in the same run on the same sections.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidParameterError
from ..section import Section
from .simulate import SimulatedSection, section_error, simulate_section

log = logging.getLogger(__name__)

__all__ = ["SeriesSpec", "simulated_series", "damage", "run_series_benchmark", "format_series_table"]

FAIL_MM = 10.0


@dataclass(frozen=True)
class SeriesSpec:
    """How one simulated series is cut (see :func:`simulated_series`)."""

    volume: str
    orientation: str
    n_cut: int
    thickness_known: bool
    contrast: str = "as-is"
    tilt_deg: float = 8.0
    rotation_deg: float = 0.0
    jitter_deg: float = 4.0
    scale_error: float = 1.0
    p_missing: float = 0.15
    p_damaged: float = 0.3
    cut_thickness_mm: float = 0.05
    seed: int = 0


def damage(sim: SimulatedSection, kind: str, rng: np.random.Generator) -> SimulatedSection:
    """A damaged copy of a simulated section.

    kind : "tear" (a band about a tenth of the tissue wide, at a random angle, torn out), "noise"
        (Gaussian noise of 0.35 of the tissue range) or "crop" (only a random block of 35-55% of the
        tissue's extent is left; the affine's origin moves with the crop).
    """
    img = np.asarray(sim.section.image, np.float32).copy()
    msk = sim.section.mask.copy()
    aff = sim.true_affine.copy()
    rr, cc = np.nonzero(msk)
    if kind == "tear":
        a = rng.uniform(0, np.pi)
        c = np.array([rr.mean(), cc.mean()]) + rng.normal(0, 0.15, 2) * [np.ptp(rr), np.ptp(cc)]
        ii, jj = np.mgrid[: img.shape[0], : img.shape[1]]
        dist = np.abs((ii - c[0]) * np.cos(a) + (jj - c[1]) * np.sin(a))
        band = dist < 0.05 * max(np.ptp(rr), np.ptp(cc))
        msk &= ~band
        img[band] = float(np.median(img[~sim.section.mask])) if (~sim.section.mask).any() else 0.0
    elif kind == "noise":
        img = img + rng.normal(0, 0.35, img.shape).astype(np.float32)
    elif kind == "crop":
        fh, fw = rng.uniform(0.35, 0.55, size=2)
        bh, bw = int(np.ptp(rr) * fh), int(np.ptp(cc) * fw)
        r0 = int(rng.integers(rr.min(), max(rr.min() + 1, rr.max() - bh)))
        c0 = int(rng.integers(cc.min(), max(cc.min() + 1, cc.max() - bw)))
        img, msk = img[r0 : r0 + bh, c0 : c0 + bw], msk[r0 : r0 + bh, c0 : c0 + bw]
        aff[:3, 3] = aff[:3, :2] @ np.array([r0, c0], float) + aff[:3, 3]
    else:
        raise InvalidParameterError(f"damage kind must be 'tear', 'noise' or 'crop', got {kind!r}")
    if msk.sum() < 100:
        return sim
    sec = Section(
        img, spacing_mm=sim.section.spacing_mm, mask=msk, modality=sim.section.modality, name=sim.section.name
    )
    return SimulatedSection(sec, aff, {**sim.params, "damage": kind})


def simulated_series(spec: SeriesSpec) -> tuple[list[SimulatedSection], list[int], float]:
    """Cut a series: ``spec.n_cut`` parallel planes evenly spread over the central 70% of the brain, some
    missing, some damaged. Returns (sections in cutting order, their section numbers, the distance between
    consecutive numbers along the normal in mm)."""
    from ..planes import AXIS_OF_PLANE, world_bbox
    from ..reference import volume_brain_mask
    from ..templates import load_volume

    rng = np.random.default_rng(spec.seed)
    data, vaff = load_volume(spec.volume)
    lo, hi = world_bbox(volume_brain_mask(data), vaff)
    ext = float(hi[AXIS_OF_PLANE[spec.orientation]] - lo[AXIS_OF_PLANE[spec.orientation]])
    # section numbers as in a real series: every `every`-th of cut_thickness_mm sections kept
    step_mm = 0.7 * ext / max(spec.n_cut - 1, 1)
    every = max(1, int(round(step_mm / spec.cut_thickness_mm)))
    first = int(rng.integers(100, 400))
    numbers = [first + every * i for i in range(spec.n_cut)]
    keep = rng.random(spec.n_cut) >= spec.p_missing
    tilt_seed = int(rng.integers(1 << 30))
    cos_t = float(np.cos(np.deg2rad(spec.tilt_deg)))
    mid = (numbers[0] + numbers[-1]) / 2.0
    sims, nums = [], []
    for num, kept in zip(numbers, keep, strict=True):
        if not kept:
            rng.random()  # keep the draws of later sections independent of which ones are missing
            continue
        # planes through points along the canonical axis; their distance along the tilted normal is
        # (number difference) * cut thickness
        off = (num - mid) * spec.cut_thickness_mm / cos_t
        try:
            sim = simulate_section(
                volume=spec.volume,
                orientation=spec.orientation,
                offset_mm=off,
                tilt_deg=spec.tilt_deg,
                rotation_deg=spec.rotation_deg + float(rng.uniform(-spec.jitter_deg, spec.jitter_deg)),
                spacing_mm=0.5,
                scale_error=spec.scale_error,
                contrast=spec.contrast,
                seed=tilt_seed,  # the same tilt axis (and stain remap) for the whole series
                name=f"s{num:05d}",
            )
        except ValueError:
            continue
        if rng.random() < spec.p_damaged:
            sim = damage(sim, ["tear", "noise", "crop"][int(rng.integers(3))], rng)
        sims.append(sim)
        nums.append(num)
    return sims, nums, spec.cut_thickness_mm


def series_set(quick: bool = False, seed: int = 2026) -> list[SeriesSpec]:
    """The benchmark's series (the same seed gives the same set)."""
    rng = np.random.default_rng(seed)
    rows = [
        ("fsl-mni152-t1", "coronal", "as-is", True),
        ("mni152-2009a-t1", "sagittal", "remap", False),
        ("mni152-2009a-gm", "axial", "inverted", True),
    ]
    if quick:
        rows = rows[:1]
    return [
        SeriesSpec(
            volume=v,
            orientation=o,
            n_cut=10 if quick else 20,
            thickness_known=known,
            contrast=c,
            tilt_deg=float(rng.uniform(3, 12)),
            rotation_deg=float(rng.uniform(0, 360)),
            scale_error=float(rng.uniform(0.9, 1.1)),
            seed=int(rng.integers(1 << 30)),
        )
        for v, o, c, known in rows
    ]


def _stats(errors: list[float]) -> dict[str, float]:
    e = np.asarray(errors, float)
    return {
        "median_mm": float(np.nanmedian(e)),
        "p90_mm": float(np.nanpercentile(e, 90)),
        "failure_rate": float(np.mean(~(e <= FAIL_MM))),
        "n": int(e.size),
    }


def _registration(volume: str) -> NDArray | None:
    """Affine map of ``volume``'s world onto the reference's anatomy (None without SimpleITK)."""
    from ..errors import SitkUnavailableError
    from .baselines.template_floor import register_volumes

    try:
        return register_volumes(volume, "mni152")
    except SitkUnavailableError as exc:
        log.warning("no template floor: %s", exc)
        return None


def _registered_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Errors against the registered truth and the template floor, when they were measured."""
    if not rows or "template_floor_mm" not in rows[0]:
        return {}
    return {
        "template_floor": _stats([r["template_floor_mm"] for r in rows]),
        "independent_registered": _stats([r["error_independent_registered_mm"] for r in rows]),
        "joint_registered": _stats([r["error_joint_registered_mm"] for r in rows]),
    }


def run_series_benchmark(
    quick: bool = False,
    out: str | Path | None = None,
    seed: int = 2026,
    scheduler: Any = None,
    n_workers: int = 2,
    progress: bool = True,
    template_floor: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; returns (and writes to ``out``/series_benchmark.json) every figure.

    template_floor : also score every placement against the truth moved by an affine registration of the
        series' source volume onto the reference, and report the distance between the two truths (the
        template floor, :mod:`siibra_anchor.evaluation.baselines.template_floor`); needs SimpleITK, skipped without.
    """
    from ..anchoring.series import anchor_series
    from ..encoders import load_default_encoder
    from ..reference import Reference
    from .baselines.template_floor import template_floor_mm

    enc = load_default_encoder()
    ref = Reference.from_space("mni152", encoder=enc)
    rows: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    specs = series_set(quick, seed)
    it: Any = specs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(specs, desc="series", unit="series")
    for si, spec in enumerate(it):
        sims, nums, thick = simulated_series(spec)
        t = time.perf_counter()
        res = anchor_series(
            [s.section for s in sims],
            reference=ref,
            encoder=enc,
            order=nums,
            thickness_mm=thick if spec.thickness_known else None,
            flipped=False,
            scheduler=scheduler,
            n_workers=n_workers,
        )
        dt = time.perf_counter() - t
        tim = res.diagnostics["timings"]
        reg = _registration(spec.volume) if template_floor else None
        for sim, r, num in zip(sims, res, nums, strict=True):
            ind = r.diagnostics["series"].get("independent_affine")
            e_ind = section_error(np.asarray(ind), sim.true_affine, sim.section.mask) if ind is not None else np.inf
            floor: dict[str, float] = {}
            if reg is not None:
                t_reg = reg @ sim.true_affine
                floor = {
                    "template_floor_mm": template_floor_mm(sim.true_affine, sim.section.mask, reg),
                    "error_independent_registered_mm": float(
                        section_error(np.asarray(ind), t_reg, sim.section.mask) if ind is not None else np.inf
                    ),
                    "error_joint_registered_mm": section_error(r.affine, t_reg, sim.section.mask),
                }
            rows.append(
                {
                    **floor,
                    "series": si,
                    "number": num,
                    "damage": sim.params.get("damage"),
                    "error_independent_mm": float(e_ind),
                    "error_joint_mm": section_error(r.affine, sim.true_affine, sim.section.mask),
                    "confidence": r.confidence,
                    "own_confidence": r.diagnostics["series"]["own_confidence"],
                    "flags": r.diagnostics.get("flags", []),
                }
            )
        mdl = res.model.to_dict() if res.model is not None else None
        series_rows.append(
            {
                **asdict(spec),
                "n_sections": len(sims),
                "numbers": nums,
                "time_s": dt,
                "time_independent_s": tim["independent_s"],
                "time_per_section_independent_s": tim["independent_s"] / len(sims),
                "time_per_section_joint_s": dt / len(sims),
                "confidence": res.confidence,
                "model": mdl,
                "independent": _stats([r["error_independent_mm"] for r in rows if r["series"] == si]),
                "joint": _stats([r["error_joint_mm"] for r in rows if r["series"] == si]),
                **_registered_stats([r for r in rows if r["series"] == si]),
                "diagnostics": {k: v for k, v in res.diagnostics.items() if k != "timings"},
            }
        )
    report: dict[str, Any] = {
        "command": "siibra-anchor benchmark-series" + (" --quick" if quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
        "engine": "in-process" if scheduler is None else f"dask {scheduler} ({n_workers} workers)",
        "independent": _stats([r["error_independent_mm"] for r in rows]),
        "joint": _stats([r["error_joint_mm"] for r in rows]),
        "damaged_independent": _stats([r["error_independent_mm"] for r in rows if r["damage"]]),
        "damaged_joint": _stats([r["error_joint_mm"] for r in rows if r["damage"]]),
        **_registered_stats(rows),
        "time_per_section_independent_s": float(sum(s["time_independent_s"] for s in series_rows) / max(1, len(rows))),
        "time_per_section_joint_s": float(sum(s["time_s"] for s in series_rows) / max(1, len(rows))),
        "series": series_rows,
        "sections": rows,
    }
    flagged = [r for r in rows if "disagrees-with-series" in r["flags"]]
    report["flagged_disagree"] = {
        "n": len(flagged),
        "failures_flagged": int(sum(r["error_joint_mm"] > FAIL_MM for r in flagged)),
        "failures_total": int(sum(r["error_joint_mm"] > FAIL_MM for r in rows)),
    }
    if out is not None:
        from ..cache import atomic_write_text

        p = Path(out)
        p.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p / "series_benchmark.json", json.dumps(report, indent=1))
    return report


def _stats_line(name: str, s: dict[str, Any]) -> str:
    return f"{name:<28}{s['median_mm']:>10.2f}{s['p90_mm']:>10.2f}{s['failure_rate']:>10.0%}{s['n']:>6}"


def format_series_table(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run_series_benchmark`'s report."""
    lines = [
        f"{'':<28}{'median mm':>10}{'p90 mm':>10}{'fail>10mm':>11}{'n':>5}{'s/section':>11}",
    ]
    for key, name, tkey in (
        ("independent", "independent anchoring", "time_per_section_independent_s"),
        ("joint", "joint series anchoring", "time_per_section_joint_s"),
    ):
        lines.append(_stats_line(name, report[key]) + f"{report[tkey]:>10.2f}")
    for key, name in (
        ("damaged_independent", "  damaged only, independent"),
        ("damaged_joint", "  damaged only, joint"),
    ):
        lines.append(_stats_line(name, report[key]))
    if "template_floor" in report:
        lines.append("")
        lines.append("against the registered truth (the truth moved by an affine registration of the series' volume")
        lines.append("onto the reference; the template floor is the distance between the two truths):")
        for key, name in (
            ("template_floor", "template floor"),
            ("independent_registered", "independent anchoring"),
            ("joint_registered", "joint series anchoring"),
        ):
            lines.append(_stats_line(name, report[key]))
    lines.append("")
    lines.append("series: volume/plane/contrast, thickness known, sections, independent | joint median mm, fail; conf")
    for s in report["series"]:
        a, b = s["independent"], s["joint"]
        lines.append(
            f"  {s['volume']}/{s['orientation']}/{s['contrast']:<9} {'yes' if s['thickness_known'] else 'no ':<4}"
            f"{s['n_sections']:>3}   {a['median_mm']:.2f} {a['failure_rate']:.0%} | {b['median_mm']:.2f} "
            f"{b['failure_rate']:.0%}; series confidence {s['confidence']:.2f}"
            + (f"; template floor {s['template_floor']['median_mm']:.2f}" if "template_floor" in s else "")
        )
    f = report["flagged_disagree"]
    lines.append(
        f"flagged 'disagrees-with-series': {f['n']} sections; joint failures {f['failures_total']}, "
        f"of them flagged {f['failures_flagged']}"
    )
    lines.append(f"engine: {report['engine']}")
    return "\n".join(lines)

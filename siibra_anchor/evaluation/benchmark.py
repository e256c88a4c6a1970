"""Benchmark of whole-section anchoring on simulated sections with exact ground truth.

``siibra-anchor benchmark`` prints a table and writes JSON and PNG figures. Sections are cut from volumes
*other* than the reference template (FSL's MNI152 T1, the 2009a T1 and grey-matter maps, also inverted or
remapped), at arbitrary in-plane rotation, up to 15 degrees tilt, 0.8-1.2 errors in the stated spacing,
whole, hemisections and blocks, some torn or noisy. Hints a user would give are passed: the mounting (not
flipped) and, for hemisections, the hemisphere. The set is generated from a seed and saved with the
results (``sections.json`` + ``sections.npz``), so every run measures the same sections.

One run measures, side by side on the same sections:

* the default pipeline and its baselines: raw-pixel embeddings through the same matcher, no intensity
  refinement, and the placement before any affine (best single patch match, centroid of the matches);
* patch level, as in the method's poster: top-k accuracy, patch errors, outliers (figures A-C);
* confidence calibration: error and failure rate by confidence bin, Spearman correlation;
* reference density: the same sections against 5 ... 104 reference sections along their own axis and
  against the dense 3D reference;
* a classical intensity-based slice-to-volume registration (SimpleITK, multi-start), error and time;
* ambiguity: hints (hemisphere, mounting) and the intensity refinement on and off, on sagittal sections
  away from the midline, hemisections and mirrored mountings; mirrored placements counted apart.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from .simulate import SimulatedSection, one_side_of_midline, section_error, simulate_section

__all__ = [
    "CaseSpec",
    "BenchConfig",
    "FULL",
    "QUICK",
    "simulated_set",
    "calibration_report",
    "ece_if_calibrated",
    "calibration_lines",
    "plot_reliability",
    "make_section",
    "user_hints",
    "anchor_scored",
    "emit_report",
    "ambiguity_set",
    "save_set",
    "load_set",
    "run_benchmark",
    "format_table",
    "format_markdown",
    "plot_report",
]

log = logging.getLogger(__name__)

FAIL_MM = 10.0
N_CLEAN = 36  # the first cases of the set: as they were before tears and noise were simulated
CONFIDENCE_BINS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
FIGURES = {
    "patch_level": "patch_level.png",
    "before_after": "before_after.png",
    "calibration": "calibration.png",
    "density": "density.png",
    "ambiguity": "ambiguity.png",
}


@dataclass(frozen=True)
class CaseSpec:
    """How one test section is simulated (arguments of :func:`~siibra_anchor.evaluation.simulate.simulate_section`)."""

    volume: str
    orientation: str
    rotation_deg: float
    tilt_deg: float
    scale_error: float
    partial: str | None
    contrast: str
    seed: int
    tears: int = 0
    noise: float = 0.0
    flip: bool = False
    offset_mm: float | None = None
    kind: str = "main"


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures (:data:`FULL`, :data:`QUICK`, or smaller for tests).

    cases : indices into ``simulated_set(n_total)``. memory_every : trace peak memory on every n-th case.
    patch_encoders : encoders of the patch-level figures ("default", "raw-pixel", "classical").
    density_counts : reference sections along the test section's axis; density_cases : how many of the
    cases (seeded subset) the density study measures. sitk_cases, sitk_budget_s, sitk_params : the same
    for the SimpleITK baseline (its wall-time budget per section; None params: its defaults).
    ambiguity_per_kind : sections per ambiguity kind; ambiguity_kinds : which kinds.
    histology_n : sections of the histology-geometry block (0: not run).
    """

    name: str
    cases: tuple[int, ...]
    n_total: int = 48
    memory_every: int = 6
    patch_encoders: tuple[str, ...] = ("default", "raw-pixel", "classical")
    density_counts: tuple[int, ...] = (5, 10, 26, 52, 104)
    density_cases: int = 12
    sitk_cases: int = 8
    sitk_budget_s: float = 60.0
    sitk_params: dict[str, Any] | None = None
    ambiguity_per_kind: int = 4
    ambiguity_kinds: tuple[str, ...] = ("sagittal-off-midline", "hemisection", "mirrored-mounting")
    histology_n: int = 0


FULL = BenchConfig(name="full", cases=tuple(range(48)), histology_n=24)
QUICK = BenchConfig(
    name="quick",
    cases=(0, 1, 2, 3, 36, 37, 38, 39),
    density_counts=(5, 26),
    density_cases=2,
    sitk_cases=1,
    sitk_budget_s=30.0,
    ambiguity_per_kind=1,
    histology_n=3,
)


def simulated_set(n: int = 48, seed: int = 2026, contrasts: bool = True) -> list[CaseSpec]:
    """The benchmark's sections: ``n`` cases drawn from a seed (the same seed gives the same set).

    The first :data:`N_CLEAN` (36) cases are clean and unchanged since the first benchmark; the cases
    after them are damaged in turn: torn, noisy, torn and noisy, remapped intensities and torn; every
    other grey-matter case among them is cut from the white-matter map instead.
    """
    rng = np.random.default_rng(seed)
    dmg = np.random.default_rng([seed, 1])  # a separate stream keeps the geometry of every case stable
    vols = ["fsl-mni152-t1", "mni152-2009a-t1"] + (["mni152-2009a-gm"] if contrasts else [])
    out = []
    for i in range(n):
        vol = vols[i % len(vols)]
        contrast = "as-is"
        if contrasts and i % 6 == 5:
            contrast = "inverted"
        partial = [None, None, "left", "right", "block"][int(rng.integers(5))]
        case = CaseSpec(
            volume=vol,
            orientation=["coronal", "sagittal", "axial"][int(rng.integers(3))],
            rotation_deg=float(rng.uniform(0, 360)),
            tilt_deg=float(rng.uniform(0, 15)),
            scale_error=float(rng.uniform(0.8, 1.2)),
            partial=partial,
            contrast=contrast,
            seed=int(rng.integers(1 << 30)),
        )
        if i >= N_CLEAN:
            if vol == "mni152-2009a-gm" and (i // 3) % 2 == 0:
                case = replace(case, volume="mni152-2009a-wm")  # white matter: another contrast unlike T1
            j = (i - N_CLEAN) % 4
            tears = int(dmg.integers(1, 4)) if j in (0, 2, 3) else 0
            noise = float(dmg.uniform(0.05, 0.15)) if j in (1, 2) else 0.0
            case = replace(case, tears=tears, noise=noise, contrast="remap" if j == 3 and contrasts else contrast)
        out.append(case)
    return out


def ambiguity_set(n_per_kind: int = 4, seed: int = 2027, kinds: tuple[str, ...] | None = None) -> list[CaseSpec]:
    """Sections where a mirrored answer is plausible (issue #11).

    "sagittal-off-midline": whole sagittal sections 20-45 mm from the brain's centre (one hemisphere);
    "hemisection": coronal/axial halves; "mirrored-mounting": sections mounted face down (the image
    mirrored, the true affine composed accordingly), whole, hemisections or sagittal.
    """
    kinds = kinds or ("sagittal-off-midline", "hemisection", "mirrored-mounting")
    rng = np.random.default_rng(seed)
    vols = ["fsl-mni152-t1", "mni152-2009a-t1", "mni152-2009a-gm"]
    out = []
    for kind in ("sagittal-off-midline", "hemisection", "mirrored-mounting"):
        for i in range(n_per_kind):
            common: dict[str, Any] = {
                "volume": vols[i % 3],
                "rotation_deg": float(rng.uniform(0, 360)),
                "tilt_deg": float(rng.uniform(0, 15)),
                "scale_error": float(rng.uniform(0.8, 1.2)),
                "contrast": "as-is",
                "seed": int(rng.integers(1 << 30)),
                "kind": kind,
            }
            side = float(rng.choice([-1.0, 1.0]))
            off = float(side * rng.uniform(20, 45))
            if kind == "sagittal-off-midline":
                case = CaseSpec(orientation="sagittal", partial=None, offset_mm=off, **common)
            elif kind == "hemisection":
                o = ["coronal", "axial"][i % 2]
                case = CaseSpec(orientation=o, partial="left" if side < 0 else "right", **common)
            else:
                o, part = [("coronal", None), ("axial", "left"), ("sagittal", None), ("coronal", "right")][i % 4]
                case = CaseSpec(
                    orientation=o, partial=part, flip=True, offset_mm=off if o == "sagittal" else None, **common
                )
            if kind in kinds:
                out.append(case)
    return out


def make_section(case: CaseSpec) -> SimulatedSection:
    """The simulated section of ``case`` (cut from its volume with its pose, crop and contrast)."""
    # a few planes near the brain's edge hold no tissue once cropped; move inwards
    for k in range(6):
        try:
            return simulate_section(
                volume=case.volume,
                orientation=case.orientation,
                offset_mm=None if case.offset_mm is None else case.offset_mm * (1 - 0.1 * k),
                rotation_deg=case.rotation_deg,
                tilt_deg=case.tilt_deg,
                scale_error=case.scale_error,
                partial=case.partial,
                contrast=case.contrast,
                noise=case.noise,
                tears=case.tears,
                spacing_mm=0.5,
                seed=case.seed + k,
                flip=case.flip,
            )
        except ValueError:
            continue
    raise InvalidParameterError(
        f"could not simulate {case}: its plane holds no tissue at any of 6 offsets; change the case"
    )


def save_set(cases: list[CaseSpec], sims: list[SimulatedSection], out: str | Path, name: str = "sections") -> None:
    """Write the simulated sections to ``out/<name>.json`` (how they were made, true affines) and
    ``out/<name>.npz`` (images, masks, true affines, stated spacings), atomically."""
    from ..cache import atomic_file, atomic_write_text

    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    meta = [
        {
            "case": asdict(c),
            "params": s.params,
            "true_affine": s.true_affine.tolist(),
            "spacing_mm": list(s.section.spacing_mm),
            "shape": list(s.section.shape),
        }
        for c, s in zip(cases, sims, strict=True)
    ]
    arrays: dict[str, np.ndarray] = {}
    for i, s in enumerate(sims):
        arrays[f"image_{i}"] = np.asarray(s.section.image, np.float32)
        arrays[f"mask_{i}"] = np.asarray(s.section.mask, bool)
        arrays[f"affine_{i}"] = np.asarray(s.true_affine, float)
        arrays[f"spacing_{i}"] = np.asarray(s.section.spacing_mm, float)
    with atomic_file(p / f"{name}.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    atomic_write_text(p / f"{name}.json", json.dumps({"version": 1, "sections": meta}, indent=1))


def load_set(folder: str | Path, name: str = "sections") -> tuple[list[CaseSpec], list[SimulatedSection]]:
    """Read a set written by :func:`save_set`: the same sections, pixel for pixel."""
    from ..errors import CorruptFileError, SectionFileNotFoundError
    from ..section import Section

    p = Path(folder)
    if not (p / f"{name}.json").is_file() or not (p / f"{name}.npz").is_file():
        raise SectionFileNotFoundError(
            f"no saved benchmark set in {p} ({name}.json + {name}.npz); run `siibra-anchor benchmark --out {p}` first"
        )
    try:
        meta = json.loads((p / f"{name}.json").read_text())["sections"]
        z = np.load(p / f"{name}.npz")
    except (ValueError, KeyError, OSError) as exc:
        raise CorruptFileError(f"benchmark set in {p} is unreadable ({exc}); write it again with --out") from exc
    cases, sims = [], []
    for i, m in enumerate(meta):
        case = CaseSpec(**m["case"])
        sec = Section(
            z[f"image_{i}"],
            spacing_mm=tuple(float(v) for v in z[f"spacing_{i}"]),
            mask=z[f"mask_{i}"],
            modality=case.contrast,
            name=f"sim-{case.orientation}-{case.volume}",
        )
        cases.append(case)
        sims.append(SimulatedSection(sec, z[f"affine_{i}"], m["params"]))
    return cases, sims


def _tissue_points(sim: SimulatedSection, max_points: int = 20000) -> np.ndarray:
    rr, cc = np.nonzero(sim.section.mask)
    step = max(1, len(rr) // max_points)
    a = sim.true_affine
    return np.stack([rr[::step], cc[::step]], 1) @ a[:3, :2].T + a[:3, 3]


def _before_affine(sim: SimulatedSection, ref: Any, enc: Any) -> dict[str, float]:
    """Errors before any affine: the best single patch match, and every tissue pixel at the centroid
    of the matches (global top-1 of each patch over all in-plane views, no knowledge of the truth)."""
    from .patch_eval import global_top1

    g = global_top1(sim, ref, enc)
    if len(g["similarity"]) == 0:
        return {"best_patch": float("nan"), "centroid": float("nan"), "patch_median": float("nan")}
    err = np.linalg.norm(g["matched_mm"] - g["true_mm"], axis=1)
    c = g["matched_mm"].mean(axis=0)
    return {
        "best_patch": float(err[int(np.argmax(g["similarity"]))]),
        "centroid": float(np.linalg.norm(_tissue_points(sim) - c, axis=1).mean()),
        "patch_median": float(np.median(err)),
    }


def _stats(errors: list[float]) -> dict[str, float]:
    e = np.asarray(errors, float)
    if e.size == 0:
        return {"median_mm": float("nan"), "p90_mm": float("nan"), "failure_rate": float("nan"), "n": 0}
    return {
        "median_mm": float(np.nanmedian(e)),
        "p90_mm": float(np.nanpercentile(e, 90)),
        "failure_rate": float(np.mean(~(e <= FAIL_MM))),
        "n": int(e.size),
    }


def _tenths(c: np.ndarray) -> list[np.ndarray]:
    """Membership masks of the 10 equal confidence bins [0, 0.1), ..., [0.9, 1] (the reliability diagram's)."""
    return [(c >= k / 10) & ((c < (k + 1) / 10) | (k == 9)) for k in range(10)]


def _ece(c: np.ndarray, ok: np.ndarray) -> float:
    """Expected calibration error: 10 equal confidence bins, the bin-size-weighted mean of |mean confidence
    - observed share correct|."""
    ece = 0.0
    for sel in _tenths(c):
        if sel.any():
            ece += sel.sum() / max(len(c), 1) * abs(float(c[sel].mean()) - float(ok[sel].mean()))
    return float(ece)


#: outcome draws of the consistency resampling (:func:`ece_if_calibrated`)
ECE_DRAWS = 2000


def ece_if_calibrated(
    conf: Any, observed: float | None = None, draws: int = ECE_DRAWS, seed: int = 0
) -> dict[str, float]:
    """The ECE a *perfectly calibrated* confidence would show on these sections: outcomes drawn as
    Bernoulli(confidence) ``draws`` times (consistency resampling, Broecker & Smith 2007, "Increasing the
    reliability of reliability diagrams"). On a few dozen sections the ECE of a calibrated confidence is
    itself several hundredths, so an observed ECE is read against this: ``median`` and ``p90`` of the
    calibrated ECEs, and ``p_value``, the share of them at least ``observed`` (small: miscalibrated beyond
    what the sample size explains). Seeded: the same confidences give the same figures."""
    c = np.asarray(conf, float)
    if c.size == 0:
        return {"median": float("nan"), "p90": float("nan"), "p_value": float("nan"), "draws": 0}
    rng = np.random.default_rng(seed)
    outcomes = rng.random((int(draws), c.size)) < c  # one draw per row (the stream :func:`_ece` per draw would see)
    null = np.zeros(int(draws))
    for sel in _tenths(c):  # the bins and their mean confidence do not change between draws
        if sel.any():
            null += sel.sum() / c.size * np.abs(float(c[sel].mean()) - outcomes[:, sel].mean(axis=1))
    out = {"median": float(np.median(null)), "p90": float(np.percentile(null, 90)), "draws": int(draws)}
    out["p_value"] = float(np.mean(null >= observed - 1e-12)) if observed is not None else float("nan")
    return out


def calibration_report(conf: list[float], err: list[float]) -> dict[str, Any]:
    """How far the confidence can be trusted, as a probability of being within :data:`FAIL_MM`.

    conf : confidences in [0, 1]; err : section errors in mm (a refused section counts as inf with
    confidence 0). Returns error and failure rate per confidence bin, the reliability diagram (10 equal
    bins: mean confidence against the observed share within 10 mm), the expected calibration error (ECE,
    the bin-size-weighted mean of their gaps) beside the ECE a calibrated confidence would show on the same
    sections (:func:`ece_if_calibrated`), false alarms (correct placements below 0.5, as a share of
    the correct ones) and confident failures (wrong at or above 0.5), and Spearman(confidence, error).
    """
    from scipy.stats import spearmanr

    c, e = np.asarray(conf, float), np.asarray(err, float)
    bins = []
    edges = np.asarray(CONFIDENCE_BINS)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (c >= lo) & ((c < hi) | (hi == edges[-1]))
        bins.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "n": int(sel.sum()),
                "mean_confidence": float(c[sel].mean()) if sel.any() else float("nan"),
                "median_mm": float(np.median(e[sel])) if sel.any() else float("nan"),
                "failure_rate": float(np.mean(e[sel] > FAIL_MM)) if sel.any() else float("nan"),
            }
        )
    ok = e <= FAIL_MM
    ece = _ece(c, ok)
    diagram = []
    for k, sel in enumerate(_tenths(c)):
        diagram.append(
            {
                "lo": k / 10,
                "hi": (k + 1) / 10,
                "n": int(sel.sum()),
                "mean_confidence": float(c[sel].mean()) if sel.any() else float("nan"),
                "observed_correct": float(ok[sel].mean()) if sel.any() else float("nan"),
            }
        )
    rho = (
        float(spearmanr(c, e).statistic)
        if len(c) > 2 and np.ptp(c) > 0 and np.ptp(e[np.isfinite(e)]) > 0
        else float("nan")
    )
    return {
        "bins": bins,
        "reliability_diagram": diagram,
        "ece": float(ece) if len(c) else float("nan"),
        "ece_if_calibrated": ece_if_calibrated(c, ece if len(c) else None),
        "spearman_confidence_vs_error": rho,
        "mean_confidence_success": float(c[ok].mean()) if ok.any() else float("nan"),
        "mean_confidence_failure": float(c[~ok].mean()) if (~ok).any() else float("nan"),
        "failures_with_confidence_ge_0.5": int(((c >= 0.5) & ~ok).sum()),
        "successes_with_confidence_lt_0.5": int(((c < 0.5) & ok).sum()),
        "false_alarm_rate": float(((c < 0.5) & ok).sum() / ok.sum()) if ok.any() else float("nan"),
        "n": int(len(c)),
    }


def calibration_lines(cal: dict[str, Any]) -> list[str]:
    """Text lines of :func:`calibration_report` (the benchmark's table and the real-anatomy tier's)."""
    lines = [
        f"confidence (probability of <= {FAIL_MM:.0f} mm): ECE {_f(cal.get('ece'), '.3f')}, "
        f"false alarms {cal['successes_with_confidence_lt_0.5']} ({_f(cal.get('false_alarm_rate'), '.0%')} of correct "
        f"placements below 0.5), confident failures {cal['failures_with_confidence_ge_0.5']} (wrong at >= 0.5); "
        f"mean {_f(cal['mean_confidence_success'], '.2f')} on successes, {_f(cal['mean_confidence_failure'], '.2f')} "
        f"on failures; Spearman(confidence, error) {_f(cal['spearman_confidence_vs_error'], '.2f')}",
        f"{'confidence bin':<16}{'n':>4}{'median mm':>11}{'fail':>7}",
    ]
    null = cal.get("ece_if_calibrated")
    if null and null.get("draws"):
        lines.insert(
            1,
            f"ECE a calibrated confidence would show on these {cal['n']} sections (consistency resampling, "
            f"{null['draws']} draws): median {_f(null['median'], '.3f')}, p90 {_f(null['p90'], '.3f')}; "
            f"share at least the observed {_f(cal.get('ece'), '.3f')}: {_f(null['p_value'], '.2f')}",
        )
    for b in cal["bins"]:
        lines.append(
            f"{b['lo']:.2f}-{b['hi']:.2f}{'':<7}{b['n']:>4}{_f(b['median_mm'], '.2f'):>11}"
            f"{_f(b['failure_rate'], '.0%'):>7}"
        )
    return lines


def plot_reliability(ax: Any, cal: dict[str, Any], label: str = "") -> None:
    """Reliability diagram of :func:`calibration_report` on a matplotlib axis: the observed share of
    placements within 10 mm against the mean confidence, per confidence tenth (marker size ~ n)."""
    d = [b for b in cal.get("reliability_diagram", []) if b["n"]]
    x = [b["mean_confidence"] for b in d]
    y = [b["observed_correct"] for b in d]
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.scatter(x, y, s=[20 + 8 * b["n"] for b in d], alpha=0.7, label=label or None)
    ax.plot(x, y, lw=1)
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="confidence (mean per tenth)")
    ax.set(ylabel=f"observed share within {FAIL_MM:.0f} mm")
    ax.set_title(f"reliability diagram, ECE {_f(cal.get('ece'), '.3f')} (n {cal.get('n', '?')})")


def user_hints(case: CaseSpec, sim: SimulatedSection) -> dict[str, Any]:
    """What the user knows: the mounting, and which hemisphere a one-hemisphere section holds."""
    hemi = case.partial if case.partial in ("left", "right") else None
    if hemi is None and case.kind != "main" and case.orientation == "sagittal":
        hemi = one_side_of_midline(_tissue_points(sim)[:, 0])
    return {"flipped": bool(case.flip), "hemisphere": hemi}


def anchor_scored(sim: SimulatedSection, reference: Any, hints: dict[str, Any]) -> dict[str, Any]:
    """Anchor ``sim`` on ``reference`` with the user's ``hints`` as a tier does (warnings silenced) and score
    it: ``{"result", "error_mm", "confidence", "refused", "time_s"}``. A refusal (an ``AnchorError``) is a
    failure of the tier: result None, error inf, confidence 0 and the error's type in ``refused``."""
    import warnings

    import siibra_anchor as sa

    from ..errors import AnchorError

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = sa.anchor(sim.section, reference=reference, **hints)
        except AnchorError as exc:
            return {"result": None, "error_mm": float("inf"), "confidence": 0.0, "refused": type(exc).__name__,
                    "time_s": time.perf_counter() - t0}  # fmt: skip
    seconds = time.perf_counter() - t0
    return {"result": res, "error_mm": float(sim.error(res.affine)), "confidence": float(res.confidence),
            "refused": None, "time_s": seconds}  # fmt: skip


def _mirror_errors(affine: np.ndarray, sim: SimulatedSection) -> dict[str, float]:
    """Errors against the truth and against its mirror images: across the mid-sagittal plane (x -> -x),
    the mirrored mounting (image flipped left-right) and both."""
    t = sim.true_affine
    mask = sim.section.mask
    w = mask.shape[1]
    d = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, w - 1.0
    return {
        "true": section_error(affine, t, mask),
        "midline": section_error(affine, d @ t, mask),
        "mounting": section_error(affine, t @ flip, mask),
        "both": section_error(affine, d @ t @ flip, mask),
    }


def _outcome(e: dict[str, float]) -> str:
    if e["true"] <= FAIL_MM:
        return "correct"
    best = min(("midline", "mounting", "both"), key=lambda k: e[k])
    return f"mirrored-{best}" if e[best] <= FAIL_MM else "wrong"


AMBIGUITY_CONDITIONS = (
    ("hints, refine", True, True),
    ("hints, no refine", True, False),
    ("no hints, refine", False, True),
    ("no hints, no refine", False, False),
)


def emit_report(table: str, report: dict[str, Any], json_path: str | None = None) -> None:
    """What an evaluation command prints: ``table`` on standard output and, given ``json_path``, the whole
    ``report`` there as strict JSON (written atomically)."""
    import sys

    from ..cache import atomic_write_text

    sys.stdout.write(table)
    if json_path:
        atomic_write_text(json_path, json.dumps(_json_safe(report), indent=1) + "\n")


def _json_safe(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python: the report is strict JSON."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _default_name() -> str:
    from ..encoders import default_manifest

    return str(default_manifest()["default"])


def training_volumes(encoder_name: str) -> list[str]:
    """Keys of the volumes a shipped encoder was trained on (from ``weights/default.json``; [] if none).

    Synthetic renderings (domain randomisation) are not volumes a section can be cut from: they are left
    out here (:func:`trained_on_synthetic` says whether there were any)."""
    from ..encoders import default_manifest

    entry = default_manifest()["encoders"].get(encoder_name, {})
    return [str(v).split()[0] for v in entry.get("training_volumes", []) if not str(v).startswith("synthetic")]


def trained_on_synthetic(encoder_name: str) -> str | None:
    """The manifest's description of the synthetic brains an encoder was trained on (None: none)."""
    from ..encoders import default_manifest

    entry = default_manifest()["encoders"].get(encoder_name, {})
    return next((str(v) for v in entry.get("training_volumes", []) if str(v).startswith("synthetic")), None)


def run_benchmark(
    quick: bool = False,
    out: str | Path | None = None,
    seed: int = 2026,
    progress: bool = True,
    config: BenchConfig | None = None,
    reference: Any = None,
    sections: str | Path | None = None,
    real_data: str | Path | None = None,
    real_mounting_known: bool = True,
    bigbrain: int = 0,
    bigbrain_resolution_mm: float = 0.32,
) -> dict[str, Any]:
    """Run the benchmark; returns (and writes to ``out``) every figure.

    ``real_data``: also run the real-anatomy tier (:func:`~siibra_anchor.evaluation.real_tier.run_real_tier`)
    on the volumes of that folder, checked against the manifest (docs/real-anatomy.md), each section also
    with the cutting-plane hint (``cut_known``).
    ``bigbrain``: also anchor that many BigBrain sections fetched through siibra
    (:func:`~siibra_anchor.evaluation.bigbrain_tier.run_bigbrain_tier`, at ``bigbrain_resolution_mm``); needs
    siibra online: without it the report says why the block was not measured (``{"skipped": reason}``).

    Parameters
    ----------
    quick : use :data:`QUICK` (a handful of sections, tiny density study, SimpleITK on one section).
    out : folder for ``benchmark.json``, the PNG figures and the section set (``sections.json/.npz``).
    config : what to measure (overrides ``quick``); reference : a prebuilt default-encoder
        ``Reference.from_space("mni152")`` to reuse (its build is then not timed).
    sections : folder of a set saved by an earlier run: measure exactly those sections.
    """
    import siibra_anchor as sa

    from ..anchoring import AnchorParams, peak_memory_of
    from ..encoders import RawPixelEncoder, load_default_encoder
    from ..errors import AnchorError
    from ..reference import Reference

    cfg = config or (QUICK if quick else FULL)
    t_run = time.perf_counter()
    enc = load_default_encoder()
    build_s = float("nan")
    if reference is None:
        t0 = time.perf_counter()
        ref = Reference.from_space("mni152", encoder=enc, cache=False)
        build_s = time.perf_counter() - t0
    else:
        ref = reference
    raw = RawPixelEncoder()
    ref_raw = Reference.from_space("mni152", encoder=raw)
    import torch

    from ..encoders import CPU_BATCH, embedding_cost_ms

    embed_cost = {
        "default": embedding_cost_ms(enc),
        "raw_pixel": embedding_cost_ms(raw),
        "torch_threads": torch.get_num_threads(),
        "batch_size": min(2048, CPU_BATCH),  # what embed_patches runs on a CPU when asked for 2048
    }
    if sections is not None:
        cases, sims = load_set(sections)
    else:
        all_cases = simulated_set(cfg.n_total, seed=seed)
        cases = [all_cases[i] for i in cfg.cases]
        sims = [make_section(c) for c in cases]
    amb_cases = ambiguity_set(cfg.ambiguity_per_kind, seed=seed + 1, kinds=cfg.ambiguity_kinds)
    amb_sims = [make_section(c) for c in amb_cases]

    def bar(items: list[Any], desc: str) -> Any:
        if not progress:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, unit="section")

    base_params = AnchorParams()
    no_refine = replace(base_params, refine=False)
    rows: list[dict[str, Any]] = []
    for i, (case, sim) in enumerate(bar(list(zip(cases, sims, strict=True)), "benchmark sections")):
        hints = user_hints(case, sim)
        t = time.perf_counter()
        res = sa.anchor(sim.section, reference=ref, encoder=enc, seed=0, **hints)
        dt = time.perf_counter() - t
        # tracemalloc slows numpy down: measure memory on a separate run of some sections
        peak = float("nan")
        if cfg.memory_every and i % cfg.memory_every == 0:
            _, peak = peak_memory_of(sa.anchor, sim.section, reference=ref, encoder=enc, seed=0, **hints)
        res_nr = sa.anchor(sim.section, reference=ref, encoder=enc, seed=0, params=no_refine, **hints)
        res_raw = sa.anchor(sim.section, reference=ref_raw, encoder=raw, seed=0, **hints)
        before = _before_affine(sim, ref, enc)
        rows.append(
            {
                **asdict(case),
                "n_patches": res.diagnostics["n_patches"],
                "time_s": dt,
                "peak_traced_mib": peak,
                "error_mm": section_error(res.affine, sim.true_affine, sim.section.mask),
                "error_no_refine_mm": section_error(res_nr.affine, sim.true_affine, sim.section.mask),
                "error_best_patch_mm": before["best_patch"],
                "error_centroid_mm": before["centroid"],
                "patch_median_mm": before["patch_median"],
                "error_raw_pixel_mm": section_error(res_raw.affine, sim.true_affine, sim.section.mask),
                "confidence_raw_pixel": res_raw.confidence,
                "time_raw_pixel_s": res_raw.diagnostics["timings"]["total_s"],
                "confidence": res.confidence,
                "consistency": res.diagnostics["consistency"],
                "nmi_gain": res.diagnostics["nmi_gain"],
                "n_encoded_views": res.diagnostics["n_encoded_views"],
                "stage_s": {k: float(v) for k, v in res.diagnostics["timings"].items()},
                "retried_wider": "retried_wider" in res.diagnostics,
            }
        )
    report: dict[str, Any] = {
        "command": "siibra-anchor benchmark" + (" --quick" if cfg.name == "quick" else ""),
        "config": asdict(cfg),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "encoder": getattr(enc, "config", {}),
        "encoder_name": _default_name(),
        "reference": {"n_sections": ref.n_sections, "n_patches": ref.n_patches, "build_s": build_s},
        "time_per_section_s": {
            "median": float(np.median([r["time_s"] for r in rows])),
            "p90": float(np.percentile([r["time_s"] for r in rows], 90)),
            "max": float(np.max([r["time_s"] for r in rows])),
            "retried_wider": int(sum(r["retried_wider"] for r in rows)),
            "stages_median": {
                k: float(np.median([r["stage_s"].get(k, 0.0) for r in rows])) for k in rows[0]["stage_s"]
            },
        },
        "patches_per_section_median": float(np.median([r["n_patches"] for r in rows])),
        "embed_ms_per_patch": embed_cost,
        "peak_traced_mib_max": float(np.nanmax([r["peak_traced_mib"] for r in rows]))
        if any(np.isfinite(r["peak_traced_mib"]) for r in rows)
        else float("nan"),
        "default": _stats([r["error_mm"] for r in rows]),
        "baseline_no_refine": _stats([r["error_no_refine_mm"] for r in rows]),
        "baseline_raw_pixel": _stats([r["error_raw_pixel_mm"] for r in rows]),
        "baseline_best_patch": _stats([r["error_best_patch_mm"] for r in rows]),
        "baseline_centroid": _stats([r["error_centroid_mm"] for r in rows]),
        "by_contrast": {},
        "by_damage": {},
        "calibration": calibration_report([r["confidence"] for r in rows], [r["error_mm"] for r in rows]),
        "cases": rows,
    }
    keys = sorted({(r["volume"], r["contrast"]) for r in rows})
    for key in keys:
        grp = [r for r in rows if (r["volume"], r["contrast"]) == key]
        report["by_contrast"][f"{key[0]}/{key[1]}"] = _stats([r["error_mm"] for r in grp])
    report["by_contrast_raw_pixel"] = {
        f"{k[0]}/{k[1]}": _stats([r["error_raw_pixel_mm"] for r in rows if (r["volume"], r["contrast"]) == k])
        for k in keys
    }
    for name, sel in (
        ("clean", lambda r: not r["tears"] and not r["noise"]),
        ("tears", lambda r: r["tears"] > 0),
        ("noise", lambda r: r["noise"] > 0),
        ("whole", lambda r: r["partial"] is None),
        ("hemisection", lambda r: r["partial"] in ("left", "right")),
        ("block", lambda r: r["partial"] == "block"),
    ):
        report["by_damage"][name] = _stats([r["error_mm"] for r in rows if sel(r)])

    # -- patch level (the poster's figures A-C) --------------------------------------------------------
    from .patch_eval import patch_metrics

    encs: dict[str, tuple[Any, Any]] = {"default": (ref, enc), "raw-pixel": (ref_raw, raw)}
    if "classical" in cfg.patch_encoders:
        from ..encoders import ClassicalFeatureEncoder

        classical = ClassicalFeatureEncoder()
        encs["classical"] = (Reference.from_space("mni152", encoder=classical), classical)
    report["patch_level"] = {name: patch_metrics(sims, *encs[name]) for name in cfg.patch_encoders}
    # the same figures without the sections cut from a volume the default encoder was trained on
    seen = training_volumes(report["encoder_name"])
    held = [i for i, c in enumerate(cases) if c.volume not in seen]
    report["held_out"] = {
        "training_volumes": seen,
        "cases": held,
        "default": _stats([rows[i]["error_mm"] for i in held]),
        "baseline_raw_pixel": _stats([rows[i]["error_raw_pixel_mm"] for i in held]),
    }
    for m in report["patch_level"].values():
        in_held = np.isin(np.asarray(m["section"], int), held)
        m["median_mm_held_out"] = (
            float(np.median(np.asarray(m["errors_mm"])[in_held])) if in_held.any() else float("nan")
        )
        m["n_held_out"] = int(in_held.sum())

    # -- reference density: the same sections against sections along their own axis --------------------
    rng = np.random.default_rng(seed + 7)
    sub = np.sort(rng.choice(len(cases), min(cfg.density_cases, len(cases)), replace=False))
    dens_refs: dict[tuple[int, str], Any] = {}
    curve = []
    for n_sec in cfg.density_counts:
        errs, secs = [], []
        for i in bar(list(sub), f"density {n_sec} sections"):
            case, sim = cases[i], sims[i]
            key = (n_sec, case.orientation)
            if key not in dens_refs:
                dens_refs[key] = Reference.from_space("mni152", n_sections=n_sec, axis=case.orientation, encoder=enc)
            r = dens_refs[key]
            try:
                res = sa.anchor(sim.section, reference=r, encoder=enc, seed=0, **user_hints(case, sim))
                errs.append(section_error(res.affine, sim.true_affine, sim.section.mask))
            except AnchorError as exc:  # too sparse a reference can leave no consistent placement
                log.info("density %d, case %d: %s", n_sec, i, exc)
                errs.append(float("inf"))
            secs.append(r.n_sections)
        curve.append({"n_sections": int(n_sec), "errors_mm": errs, **_stats(errs)})
    report["density"] = {
        "axis": "each test section's own orientation (the poster's references lie along one axis)",
        "cases": [int(i) for i in sub],
        "curve": curve,
        "dense_3d": {
            "n_sections": ref.n_sections,
            "errors_mm": [rows[i]["error_mm"] for i in sub],
            **_stats([rows[i]["error_mm"] for i in sub]),
        },
    }

    # -- classical baseline: SimpleITK slice-to-volume registration, on a seeded subset ----------------
    report["baseline_sitk"] = _sitk_block(cfg, cases, sims, rows, seed, bar)

    # -- ambiguity (issue #11): hints and refinement on/off; mirrored placements counted apart ---------
    amb_rows = []
    for case, sim in bar(list(zip(amb_cases, amb_sims, strict=True)), "ambiguity sections"):
        hints = user_hints(case, sim)
        for label, use_hints, refine in AMBIGUITY_CONDITIONS:
            kw = hints if use_hints else {"flipped": None, "hemisphere": None}
            res = sa.anchor(
                sim.section, reference=ref, encoder=enc, seed=0, params=base_params if refine else no_refine, **kw
            )
            e = _mirror_errors(res.affine, sim)
            amb_rows.append(
                {
                    **asdict(case),
                    "condition": label,
                    "hints": kw,
                    "error_mm": e["true"],
                    "error_vs_mirror_mm": {k: v for k, v in e.items() if k != "true"},
                    "outcome": _outcome(e),
                    "confidence": res.confidence,
                }
            )
    report["ambiguity"] = {"summary": _ambiguity_summary(amb_rows), "cases": amb_rows}
    if real_data is not None:
        from .real_tier import run_real_tier

        report["real_anatomy"] = run_real_tier(
            real_data, quick=cfg.name == "quick", seed=seed, reference=ref, mounting_known=real_mounting_known,
            cut_known=True,
        )  # fmt: skip
    if bigbrain > 0:
        from ..errors import NetworkError, SpaceUnavailableError
        from .bigbrain_tier import run_bigbrain_tier

        try:
            report["bigbrain"] = run_bigbrain_tier(
                bigbrain, bigbrain_resolution_mm, reference=ref, encoder=enc, encoder_name=report["encoder_name"],
                mounting_known=real_mounting_known, progress=progress,
            )  # fmt: skip
        except (SpaceUnavailableError, NetworkError) as exc:
            log.warning("BigBrain sections not measured: %s", exc)
            report["bigbrain"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    if cfg.histology_n > 0:
        from .histology_block import run_histology_block

        report["histology"] = run_histology_block(
            cfg.histology_n, seed=seed, reference=ref, encoder=enc, encoder_name=report["encoder_name"], cut_known=True
        )
    report["targets"] = _targets(report)
    report["total_s"] = time.perf_counter() - t_run
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    report = _json_safe(report)
    if out is not None:
        from ..cache import atomic_write_text

        p = Path(out)
        p.mkdir(parents=True, exist_ok=True)
        if sections is None:
            save_set(cases, sims, p)
            save_set(amb_cases, amb_sims, p, name="ambiguity_sections")
        report["figures"] = plot_report(report, p)
        atomic_write_text(p / "benchmark.json", json.dumps(report, indent=1, allow_nan=False))
    return report


def _sitk_block(cfg: BenchConfig, cases: list[CaseSpec], sims: list[Any], rows: list[dict], seed: int, bar: Any):
    """SimpleITK multi-start registration on a seeded subset, beside the default on the same sections."""
    try:
        from ..errors import SitkUnavailableError
        from .baselines.sitk import SitkParams, sitk_register
    except ImportError as exc:  # pragma: no cover - the module itself has no hard dependency
        return {"skipped": str(exc)}
    if cfg.sitk_cases <= 0:
        return {"skipped": "not in this configuration"}
    params = SitkParams(**cfg.sitk_params) if cfg.sitk_params else SitkParams()
    rng = np.random.default_rng(seed + 11)
    sub = np.sort(rng.choice(len(cases), min(cfg.sitk_cases, len(cases)), replace=False))
    per = []
    for i in bar(list(sub), "SimpleITK baseline"):
        try:
            hemi = user_hints(cases[i], sims[i])["hemisphere"]  # the hint the default pipeline gets
            aff, info = sitk_register(
                sims[i].section, budget_s=cfg.sitk_budget_s, params=params, seed=seed, hemisphere=hemi
            )
        except SitkUnavailableError as exc:
            return {"skipped": str(exc)}
        per.append(
            {
                "case": int(i),
                "error_mm": section_error(aff, sims[i].true_affine, sims[i].section.mask),
                "time_s": info["time_s"],
                "n_starts": info["n_starts"],
                "n_optimised": info["n_optimised"],
                "budget_exhausted": info["budget_exhausted"],
                "error_default_mm": rows[i]["error_mm"],
                "time_default_s": rows[i]["time_s"],
            }
        )
    t_s = float(np.median([r["time_s"] for r in per]))
    t_d = float(np.median([r["time_default_s"] for r in per]))
    return {
        "method": "SimpleITK Similarity3D + Mattes MI, multi-start over 3 orientations x in-plane rotations x "
        "positions, pyramid " + ", ".join(f"{v:g}" for v in params.levels_mm) + " mm",
        "budget_s_per_section": cfg.sitk_budget_s,
        "params": asdict(params),
        "cases": per,
        "sitk": {**_stats([r["error_mm"] for r in per]), "median_time_s": t_s},
        "default_same_sections": {**_stats([r["error_default_mm"] for r in per]), "median_time_s": t_d},
        "speedup_median_time": t_s / t_d if t_d > 0 else float("nan"),
    }


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets for the default model, each with its measured value and whether it is met."""
    d = report["default"]
    out: dict[str, Any] = {
        "median_le_2mm": {"value": d["median_mm"], "met": bool(d["median_mm"] <= 2.0)},
        "p90_le_4mm": {"value": d["p90_mm"], "met": bool(d["p90_mm"] <= 4.0)},
        "failure_rate_le_5pct": {"value": d["failure_rate"], "met": bool(d["failure_rate"] <= 0.05)},
    }
    sk = report.get("baseline_sitk", {})
    if "skipped" not in sk and sk.get("cases"):
        ratio = sk["speedup_median_time"]
        equal_or_better = sk["default_same_sections"]["median_mm"] <= sk["sitk"]["median_mm"]
        out["10x_faster_than_classical_at_equal_or_better_median"] = {
            "value": ratio,
            "met": bool(np.isfinite(ratio) and ratio >= 10.0 and equal_or_better),
        }
    return out


def _ambiguity_summary(amb_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    kinds = sorted({r["kind"] for r in amb_rows})
    for kind in [*kinds, "all"]:
        for label, _, _ in AMBIGUITY_CONDITIONS:
            sel = [r for r in amb_rows if r["condition"] == label and (kind == "all" or r["kind"] == kind)]
            if not sel:
                continue
            oc = [r["outcome"] for r in sel]
            out.append(
                {
                    "kind": kind,
                    "condition": label,
                    **_stats([r["error_mm"] for r in sel]),
                    "mirrored_midline": float(np.mean([o == "mirrored-midline" for o in oc])),
                    "mirrored_mounting": float(np.mean([o == "mirrored-mounting" for o in oc])),
                    "mirrored_both": float(np.mean([o == "mirrored-both" for o in oc])),
                    "wrong_other": float(np.mean([o == "wrong" for o in oc])),
                }
            )
    return out


def plot_report(report: dict[str, Any], folder: str | Path) -> dict[str, str]:
    """Write every figure of a report as PNG into ``folder``; returns {figure: file name} (empty without
    matplotlib). Names: :data:`FIGURES`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no figures (pip install 'siibra-anchor[plots]')")
        return {}
    from .patch_eval import plot_patch_metrics

    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def save(fig: Any, key: str) -> None:
        from ..cache import atomic_file

        fig.tight_layout()
        with atomic_file(p / FIGURES[key], suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
        written[key] = FIGURES[key]

    if report.get("patch_level"):
        from ..cache import atomic_file

        with atomic_file(p / FIGURES["patch_level"], suffix=".png") as tmp:
            plot_patch_metrics(report["patch_level"], str(tmp))
        written["patch_level"] = FIGURES["patch_level"]

    def arr(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] is None else r[key] for r in report["cases"]], float)

    floor = 0.1  # log axes: errors below 0.1 mm are drawn at 0.1 mm
    after = np.maximum(arr("error_mm"), floor)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    series = {
        "best single patch": arr("error_best_patch_mm"),
        "centroid of matches": arr("error_centroid_mm"),
        "affine, no refinement": arr("error_no_refine_mm"),
        "affine (default)": arr("error_mm"),
    }
    ax[0].boxplot([np.maximum(v[np.isfinite(v)], floor) for v in series.values()], whis=(0, 90), showfliers=True)
    ax[0].set_xticks(range(1, len(series) + 1), list(series), rotation=12)
    ax[0].set_yscale("log")
    ax[0].axhline(FAIL_MM, color="r", ls=":", lw=1)
    ax[0].set(ylabel="section error (mm)", title="before / after the affine (whiskers at p90)")
    for name, marker in (("best single patch", "o"), ("centroid of matches", "s")):
        ax[1].scatter(np.maximum(series[name], floor), after, marker=marker, alpha=0.7, label=name)
    lim = [floor, 300]
    ax[1].plot(lim, lim, "k--", lw=0.8)
    ax[1].axhline(FAIL_MM, color="r", ls=":", lw=1)
    ax[1].set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="error before the affine (mm)")
    ax[1].set(ylabel="error after the affine (mm)", title="per section")
    ax[1].legend()
    save(fig, "before_after")

    cal = report["calibration"]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    plot_reliability(ax[0], cal)
    ax[1].scatter(arr("confidence"), after, alpha=0.7)
    ax[1].axhline(FAIL_MM, color="r", ls=":", lw=1)
    rho = cal["spearman_confidence_vs_error"]
    ax[1].set(yscale="log", xlabel="confidence", ylabel="section error (mm)", xlim=(-0.02, 1.02))
    ax[1].set_title("confidence vs error, Spearman " + ("n/a" if rho is None else f"{rho:.2f}"))
    save(fig, "calibration")

    dens = report["density"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ns = [c["n_sections"] for c in dens["curve"]]

    def val(d: dict[str, Any], k: str) -> float:
        return np.nan if d[k] is None else d[k]

    ax.plot(ns, [val(c, "median_mm") for c in dens["curve"]], "o-", label="median")
    ax.plot(ns, [val(c, "p90_mm") for c in dens["curve"]], "s--", label="p90")
    d3 = dens["dense_3d"]
    ax.axhline(val(d3, "median_mm"), color="g", lw=1, label=f"dense 3D ({d3['n_sections']} sections), median")
    ax.axhline(val(d3, "p90_mm"), color="g", ls="--", lw=1, label="dense 3D, p90")
    ax.set(xscale="log", yscale="log", xlabel="reference sections along the section's axis")
    ax.set(ylabel="section error (mm)", title=f"reference density ({len(dens['cases'])} sections)")
    ax2 = ax.twinx()
    ax2.plot(ns, [val(c, "failure_rate") for c in dens["curve"]], "r:", marker="x", label="failure rate")
    ax2.set(ylabel="failure rate", ylim=(0, 1))
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.legend(loc="lower left", fontsize=8)
    save(fig, "density")

    summ = [s for s in report["ambiguity"]["summary"] if s["kind"] == "all"]
    if summ:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        parts = ("correct", "mirrored_midline", "mirrored_mounting", "mirrored_both", "wrong_other")
        bottom = np.zeros(len(summ))
        for part in parts:
            if part == "correct":
                v = np.array([1.0 - (s["failure_rate"] or 0.0) for s in summ])
            else:
                v = np.array([s[part] or 0.0 for s in summ])
            ax.bar(range(len(summ)), v, bottom=bottom, label=part.replace("_", " "))
            bottom += v
        ax.set_xticks(range(len(summ)), [s["condition"] for s in summ])
        ax.set(ylabel="fraction of sections", ylim=(0, 1), title="ambiguous sections: outcome by condition")
        ax.legend(fontsize=8)
        save(fig, "ambiguity")
    return written


def _f(v: Any, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def _row(name: str, s: dict[str, Any], width: int = 36) -> str:
    return (
        f"{name:<{width}}{_f(s['median_mm'], '.2f'):>10}{_f(s['p90_mm'], '.2f'):>10}"
        f"{_f(s['failure_rate'], '.0%'):>11}{s['n']:>5}"
    )


def _row_vs_baseline(name: str, s: dict[str, Any], b: dict[str, Any]) -> str:
    """:func:`_row` of ``s`` followed by the median, p90 and failure rate of the baseline ``b``."""
    return (
        _row(name, s)
        + f"   | {_f(b['median_mm'], '.2f'):>7}{_f(b['p90_mm'], '.2f'):>8}{_f(b['failure_rate'], '.0%'):>7}"
    )


def format_table(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run_benchmark`'s report."""
    ref = report["reference"]
    lines = [
        f"reference: {ref['n_sections']} sections, {ref['n_patches']} patches, "
        + (f"built in {ref['build_s']:.1f} s" if ref.get("build_s") is not None else "prebuilt"),
        f"time per section: median {report['time_per_section_s']['median']:.2f} s, "
        f"p90 {_f(report['time_per_section_s'].get('p90'), '.2f')} s, "
        f"max {report['time_per_section_s']['max']:.2f} s "
        f"({report['patches_per_section_median']:.0f} patches median); peak traced memory "
        f"{_f(report['peak_traced_mib_max'], '.0f')} MiB, process peak RSS {report['peak_rss_mib']:.0f} MiB",
        *(
            [
                f"embedding cost: {ec['default']:.3f} ms per patch (CPU, batches of {ec['batch_size']}, "
                f"{ec['torch_threads']} torch threads); raw-pixel baseline {ec['raw_pixel']:.3f} ms"
            ]
            if (ec := report.get("embed_ms_per_patch"))
            else []
        ),
        *(
            [
                "stages (median s): "
                + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in st.items())
                + f"; wider second search on {report['time_per_section_s'].get('retried_wider', 0)} sections"
            ]
            if (st := report["time_per_section_s"].get("stages_median"))
            else []
        ),
        "",
        f"{'method':<36}{'median mm':>10}{'p90 mm':>10}{'fail>10mm':>11}{'n':>5}",
    ]
    for key, name in (
        ("default", "default pipeline"),
        ("baseline_raw_pixel", "baseline: raw-pixel encoder"),
        ("baseline_no_refine", "baseline: no intensity refinement"),
        ("baseline_best_patch", "before affine: best single patch"),
        ("baseline_centroid", "before affine: centroid of matches"),
    ):
        lines.append(_row(name, report[key]))
    lines.append("")
    lines.append("by test volume/contrast (default | raw-pixel baseline):")
    for k, s in report["by_contrast"].items():
        b = report["by_contrast_raw_pixel"][k]
        lines.append(_row_vs_baseline("  " + k, s, b))
    if ho := report.get("held_out"):
        lines.append(
            f"held-out volumes only (not {', '.join(ho['training_volumes']) or '-'}, which the encoder was "
            "trained on; default | raw-pixel baseline):"
        )
        lines.append(_row_vs_baseline("  held-out", ho["default"], ho["baseline_raw_pixel"]))
    lines.append("by section kind (default):")
    for k, s in report.get("by_damage", {}).items():
        if s["n"]:
            lines.append(_row("  " + k, s))
    if report.get("patch_level"):
        lines.append("")
        lines.append("patch level (top-1 patch error; top-k accuracy vs the closest reference patch):")
        lines.append(
            f"{'encoder':<14}{'median mm':>10}{'p90 mm':>9}{'top-1':>7}{'top-5':>7}{'top-10':>8}{'top-50':>8}{'n':>7}"
        )
        for name, m in report["patch_level"].items():
            tk = m["topk"]
            lines.append(
                f"{name:<14}{_f(m['median_mm'], '.1f'):>10}{_f(m['p90_mm'], '.1f'):>9}{tk[0]:>7.2f}{tk[4]:>7.2f}"
                f"{tk[9]:>8.2f}{tk[-1]:>8.2f}{m['n']:>7}"
            )
        for name, m in report["patch_level"].items():
            if "median_mm_by_orientation" in m:
                by = ", ".join(f"{k} {v:.1f}" for k, v in m["median_mm_by_orientation"].items())
                lines.append(
                    f"  {name}: median by orientation {by} mm; "
                    f"{_f(m['median_mm_mirror_tolerant'], '.1f')} mm if the mirror across the midline counts"
                )
        held = {name: m for name, m in report["patch_level"].items() if "median_mm_held_out" in m}
        if held:
            lines.append(
                "  held-out volumes only (sections cut from a volume the encoder was not trained on): "
                + ", ".join(f"{name} {_f(m['median_mm_held_out'], '.1f')} mm" for name, m in held.items())
                + f" (n {next(iter(held.values()))['n_held_out']})"
            )
    lines += ["", *calibration_lines(report["calibration"])]
    dens = report.get("density")
    if dens:
        lines += ["", f"reference density (sections along the test section's axis; {len(dens['cases'])} sections):"]
        lines.append(f"{'reference':<36}{'median mm':>10}{'p90 mm':>10}{'fail>10mm':>11}{'n':>5}")
        for c in dens["curve"]:
            lines.append(_row(f"{c['n_sections']} sections, one axis", c))
        lines.append(_row(f"dense 3D ({dens['dense_3d']['n_sections']} sections, 3 axes)", dens["dense_3d"]))
    sk = report.get("baseline_sitk")
    if sk and "skipped" not in sk:
        s, d = sk["sitk"], sk["default_same_sections"]
        lines += [
            "",
            f"classical baseline on {s['n']} sections (seeded subset; budget {sk['budget_s_per_section']:.0f} s"
            " per section):",
            f"{'method':<36}{'median mm':>10}{'p90 mm':>10}{'fail>10mm':>11}{'n':>5}{'time s':>9}",
            _row("SimpleITK multi-start MI", s) + f"{s['median_time_s']:>9.1f}",
            _row("default pipeline, same sections", d) + f"{d['median_time_s']:>9.1f}",
            f"median time per section, SimpleITK / default: {_f(sk['speedup_median_time'], '.1f')}",
        ]
    elif sk:
        lines += ["", f"classical baseline skipped: {sk['skipped']}"]
    tg = report.get("targets")
    if tg:
        lines += [
            "",
            "targets (default model): "
            + "; ".join(f"{k} {_f(v['value'], '.2f')} {'met' if v['met'] else 'NOT met'}" for k, v in tg.items()),
        ]
    amb = report.get("ambiguity")
    if amb and amb["summary"]:
        lines += [
            "",
            "ambiguity (mirrored placements counted apart: across the midline / mirrored mounting / both):",
            f"{'kind':<22}{'condition':<21}{'median mm':>10}{'fail':>6}{'mid':>6}{'mount':>6}{'both':>6}{'n':>4}",
        ]
        for r in amb["summary"]:
            lines.append(
                f"{r['kind']:<22}{r['condition']:<21}{_f(r['median_mm'], '.2f'):>10}{_f(r['failure_rate'], '.0%'):>6}"
                f"{r['mirrored_midline']:>6.0%}{r['mirrored_mounting']:>6.0%}{r['mirrored_both']:>6.0%}{r['n']:>4}"
            )
    if report.get("real_anatomy"):
        from .real_tier import format_real_tier

        lines += ["", "real-anatomy tier (individual brains, truth by registration; docs/real-anatomy.md):"]
        lines.append(format_real_tier(report["real_anatomy"]))
    if report.get("bigbrain"):
        from .bigbrain_tier import format_bigbrain_tier

        lines += ["", "BigBrain sections (real histology, truth by siibra's nonlinear warp; docs/real-anatomy.md):"]
        lines.append(format_bigbrain_tier(report["bigbrain"]))
    if report.get("histology"):
        from .histology_block import format_histology_block

        lines += ["", "histology-geometry block (template sections shrunk, sheared, warped, cropped):"]
        lines.append(format_histology_block(report["histology"]))
    return "\n".join(lines)


def format_markdown(report: dict[str, Any], figures_prefix: str = "benchmark-") -> str:
    """docs/benchmarks.md content for a report: command, machine, date, the tables, the figures, the cases.

    Figures are referenced as ``<figures_prefix><name>.png`` next to the Markdown file (the CLI's ``--doc``
    writes them there)."""
    m = report["machine"]
    load = m.get("load_average_at_start")
    fig = {k: figures_prefix + v.replace("_", "-") for k, v in FIGURES.items()}
    head = [
        "# Benchmarks",
        "",
        "Generated by `"
        + report["command"]
        + " --doc docs/benchmarks.md` on "
        + report["date"]
        + f" ({m['platform']}, {m['cpus']} CPUs"
        + (f", load average {load[0]:.1f} at the start" if load else "")
        + f"; the run took {report['total_s'] / 60:.1f} min). Every figure below was measured in that one run;",
        "the baselines ran on the same sections in the same run. The sections are saved with the results",
        "(`sections.json` + `sections.npz` in `--out`); `--sections DIR` measures a saved set again.",
        "",
        "This is the template-family tier. Sections of real individual brains (the real-anatomy tier,",
        "`--real-data DIR`) are in [real-anatomy.md](real-anatomy.md), the confidence's calibration on both",
        "tiers in [confidence.md](confidence.md).",
        "",
        "Sections are simulated with exact ground truth (`siibra_anchor.evaluation.simulate`): cut from volumes other",
        "than the reference template (FSL MNI152 T1, MNI152 2009a T1, 2009a grey- and white-matter maps, also",
        "inverted like a brightfield stain or remapped), at any in-plane rotation, up to 15 degrees tilt, 0.8-1.2",
        "errors in the stated spacing, whole sections, hemisections and blocks (0.5 mm/px); the last 12 of the",
        "48 are torn (1-3 cracks 0.5-2 mm wide), noisy (5-15%), or both. The anchoring reference is the",
        "MNI152 2009c template. Hints passed: mounting known (not flipped); hemisphere for hemisections.",
        "Section error = mean distance over the tissue between where the result and the truth put each pixel.",
        "Before the affine: the single patch match with the highest similarity, and every tissue pixel put at",
        "the centroid of all patches' best matches (global search over all in-plane angles, no truth used).",
        "",
        f"Encoder: `{report.get('encoder_name') or report['encoder']}` (`{report['encoder']}`)."
        + (
            f" It was trained on {', '.join(report['held_out']['training_volumes'])}"
            + (
                f" (and {trained_on_synthetic(report['encoder_name'])})"
                if report.get("encoder_name") and trained_on_synthetic(report["encoder_name"])
                else ""
            )
            + "; the *held-out* lines leave out the sections cut from those volumes."
            if report.get("held_out", {}).get("training_volumes")
            else ""
        ),
        "",
        "```",
        format_table(report),
        "```",
        "",
        f"![Patch level: (A) top-k accuracy, (B) top-1 patch errors, whiskers at p90, (C) outliers]({fig['patch_level']})",
        "",
        f"![Before / after the affine]({fig['before_after']})",
        "",
        f"![Confidence calibration]({fig['calibration']})",
        "",
        f"![Reference density]({fig['density']})",
        "",
        f"![Ambiguous sections: outcomes with and without hints and refinement]({fig['ambiguity']})",
        "",
        "![The section with the median error, placed by its affine inside the MNI152 template"
        " (Neuroglancer, rendered offline by `siibra-anchor view --screenshot`)](benchmark-example.png)",
        "",
        "Density study: the same sections (a seeded subset) anchored against references of N planes cut",
        "along the test section's own axis (`Reference.from_space('mni152', n_sections=N, axis=...)`), the",
        "way the poster's 26 reference sections lie along one axis, and against the default 3D reference.",
        "Classical baseline: `siibra_anchor.evaluation.baselines.sitk.sitk_register` (SimpleITK similarity transform,",
        "Mattes mutual information over the tissue and 6 mm around it, gradient descent; 1260 starts: the 3",
        "canonical orientations x 12 in-plane rotations x 7 positions along the normal x 5 in-plane shifts",
        "(centred in the hinted hemisphere for hemisections), every start optimised at 8 mm, the best 24 / 6 /",
        "1 refined at 4 / 2 / 1 mm, within a wall-time budget per section; starts in random order, so a",
        "budget spent early still covers every orientation).",
        "",
        "| volume | contrast | plane | partial | tears | noise | rot deg | tilt deg | scale | patches | error mm"
        " | raw-pixel mm | no-refine mm | best patch mm | confidence | time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        head.append(
            f"| {r['volume']} | {r['contrast']} | {r['orientation']} | {r['partial'] or '-'} | {r['tears']} | "
            f"{r['noise']:.2f} | {r['rotation_deg']:.0f} | {r['tilt_deg']:.1f} | {r['scale_error']:.2f} | "
            f"{r['n_patches']} | {_f(r['error_mm'], '.2f')} | {_f(r['error_raw_pixel_mm'], '.2f')} | "
            f"{_f(r['error_no_refine_mm'], '.2f')} | {_f(r['error_best_patch_mm'], '.1f')} | "
            f"{r['confidence']:.2f} | {r['time_s']:.2f} |"
        )
    head += [
        "",
        "## Scaling",
        "",
        "Time and peak memory against the number of sections, section size (including 100k x 100k px images",
        "read lazily) and reference size (exact vs faiss search) come from a separate command,",
        "`siibra-anchor benchmark-scaling --out DIR --doc docs/scaling.md`: see [scaling.md](scaling.md).",
        "",
        "![Scaling: time and memory vs sections, section size and reference size](scaling.png)",
        "",
        "Joint series anchoring against independent anchoring: `siibra-anchor benchmark-series`, see",
        "[series.md](series.md).",
    ]
    return "\n".join(head) + "\n"


def example_figure(report: dict[str, Any], out_png: str | Path, seed: int = 0) -> Path | None:
    """Render the case with the median error, anchored again, through the Neuroglancer viewer.

    Returns the PNG path, or None (with a warning) where headless Chromium is not available.
    """
    import siibra_anchor as sa

    from ..errors import AnchorError

    cases = report["cases"]
    errs = np.array([np.inf if c["error_mm"] is None else c["error_mm"] for c in cases])
    i = int(np.argsort(errs)[len(errs) // 2])
    fields = CaseSpec.__dataclass_fields__
    case = CaseSpec(**{k: cases[i][k] for k in fields})
    sim = make_section(case)
    res = sa.anchor(sim.section, seed=seed, **user_hints(case, sim))
    try:
        from ..viewer.screenshot import screenshot

        return screenshot(res, sim.section.image, out_png, size=(900, 600))
    except (AnchorError, ImportError, OSError) as exc:
        log.warning("no example figure: %s", exc)
        return None

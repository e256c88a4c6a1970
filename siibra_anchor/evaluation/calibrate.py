"""Fit the confidence models (``weights/confidence.json``) on a calibration set no benchmark tier uses.

The calibration set: template-family sections drawn like the benchmark's (:func:`simulated_set`,
:func:`ambiguity_set`) but from seeds the benchmark and ``training.compare`` never use, sections whose
stated spacing is badly wrong, and images of no brain at all (always wrong). Each section is anchored in
both passes the pipeline can run (the first search and the wider second one) and, for the
``"no-volume"`` model, against the same reference without its template volume; every pass is one row:
its features (:data:`siibra_anchor.confidence.FEATURES`) and whether it lies within 10 mm of the truth.
A logistic regression (scikit-learn) on standardised features is the model.

    python -m siibra_anchor.evaluation.calibrate --n 60 --rows calib.jsonl --out siibra_anchor/weights/confidence.json

Rows are appended to ``--rows`` as they come (a stopped run resumes where it was).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import siibra_anchor as sa

from ..anchoring.pipeline import wider_params
from ..anchoring.stages import STAGES, Run, assemble
from ..cache import atomic_write_text
from ..confidence import FEATURES, WITHIN_MM, ConfidenceModel, feature_vector
from ..encoders import encoder_hash, load_default_encoder
from ..errors import AnchorError
from .benchmark import ambiguity_set, make_section, simulated_set, user_hints
from .simulate import section_error

__all__ = ["run_pass", "CALIBRATION_SEEDS", "calibration_cases", "collect", "fit_models", "main"]

log = logging.getLogger(__name__)

#: seeds of the calibration draws (the benchmark uses 2026, its ambiguity set and compare's fresh set 2027)
CALIBRATION_SEEDS = {
    "sections": 5150,
    "ambiguity": 5151,
    "wrong_spacing": 5152,
    "non_brain": 5153,
    "ambiguity_nohint": 5154,
}

VOLUME_FEATURES = (
    "consistency", "inlier_share", "match_similarity", "nmi_gain", "margin", "mirror_margin",
    "log_patches", "log_area_mm2", "log_scale", "anisotropy",
)  # fmt: skip
NO_VOLUME_FEATURES = tuple(f for f in VOLUME_FEATURES if f not in ("nmi_gain", "mirror_margin"))


def calibration_cases(n: int) -> list[tuple[str, Any]]:
    """(kind, case) of the calibration set: ``n`` sections like the benchmark's, n/4 ambiguous ones, n/6
    with a stated spacing off by a factor 1.6-1.9 or 0.5-0.6 (the seeds differ from every test set's)."""
    out: list[tuple[str, Any]] = [("sections", c) for c in simulated_set(n, seed=CALIBRATION_SEEDS["sections"])]
    out += [("ambiguity", c) for c in ambiguity_set(max(1, n // 12), seed=CALIBRATION_SEEDS["ambiguity"])]
    rng = np.random.default_rng(CALIBRATION_SEEDS["wrong_spacing"])
    for c in simulated_set(max(1, n // 6), seed=CALIBRATION_SEEDS["wrong_spacing"]):
        factor = float(rng.uniform(1.6, 1.9)) if rng.random() < 0.5 else float(rng.uniform(0.5, 0.6))
        out.append(("wrong_spacing", replace(c, scale_error=factor)))
    return out


def _non_brain(n: int) -> list[sa.Section]:
    """Images of no brain: smooth noise blobs, stripes, a disk with texture (always wrong)."""
    from scipy import ndimage

    rng = np.random.default_rng(CALIBRATION_SEEDS["non_brain"])
    out = []
    for i in range(n):
        h, w = int(rng.integers(140, 260)), int(rng.integers(140, 260))
        img = ndimage.gaussian_filter(rng.random((h, w)), float(rng.uniform(2, 8)))
        yy, xx = np.mgrid[:h, :w]
        blob = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
        if i % 3 == 1:
            img = img + 0.3 * np.sin(xx / float(rng.uniform(3, 9)))
        img = np.where(blob, img - img.min() + 0.2, 0.0)
        out.append(sa.Section(img, spacing_mm=float(rng.uniform(0.5, 1.0)), name=f"non-brain-{i}"))
    return out


def collect(n: int, rows_path: str | Path, progress: bool = True) -> list[dict[str, Any]]:
    """Anchor the calibration set (both passes, with and without the template volume) and append one row
    per pass to ``rows_path`` (JSON lines); rows already there are kept and their sections skipped."""
    rows_path = Path(rows_path)
    rows = [json.loads(x) for x in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {r["key"] for r in rows}
    enc = load_default_encoder()
    ref = sa.Reference.from_space("mni152", encoder=enc)
    novol = replace(ref, volume=None)
    base = sa.AnchorParams()
    items: list[tuple[str, Any]] = calibration_cases(n) + [("non_brain", s) for s in _non_brain(max(2, n // 8))]
    # ambiguous sections anchored without hints, as users often do (added last: earlier keys stay valid)
    items += [
        ("ambiguity_nohint", c) for c in ambiguity_set(max(1, n // 8), seed=CALIBRATION_SEEDS["ambiguity_nohint"])
    ]
    with rows_path.open("a") as fh:
        for i, (kind, item) in enumerate(items):
            key = f"{kind}-{i}"
            if key + "-first" in done:
                continue
            t0 = time.perf_counter()
            if kind == "non_brain":
                section, truth, hints = item, None, {}
            else:
                sim = make_section(item)
                hints = {} if kind == "ambiguity_nohint" else user_hints(item, sim)
                section, truth = sim.section, sim
            for pass_name, reference, params in (
                ("first", ref, base),
                ("wide", ref, wider_params(base)),
                ("novol", novol, base),
            ):
                row = _row(key, kind, pass_name, section, truth, reference, enc, params, hints)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                rows.append(row)
            if progress:
                log.warning("calibration %d/%d %s (%.1f s)", i + 1, len(items), key, time.perf_counter() - t0)
    return rows


def run_pass(section: Any, ref: Any, enc: Any, params: sa.AnchorParams, hints: dict[str, Any], reuse: Any = None):
    """One pass of the stages (without the confidence): (Run, affine, seconds)."""
    t0 = time.perf_counter()
    r = Run(section, ref, enc, params, 0, hints.get("hemisphere"), hints.get("flipped"), reuse_views=reuse)
    for stage in STAGES[:-1]:
        stage(r)
    r.confidence = float("nan")
    return r, assemble(r).affine, time.perf_counter() - t0


def _row(key, kind, pass_name, section, truth, reference, enc, params, hints) -> dict[str, Any]:
    row: dict[str, Any] = {"key": f"{key}-{pass_name}", "kind": kind, "pass": pass_name}
    try:
        r, affine, _ = run_pass(section, reference, enc, params, hints)
    except AnchorError as exc:  # refused: no row of features (the pipeline raises, it reports no confidence)
        row.update(refused=type(exc).__name__)
        return row
    err = float("inf") if truth is None else section_error(affine, truth.true_affine, truth.section.mask)
    row.update(features=r.features, error_mm=err if np.isfinite(err) else None, correct=bool(err <= WITHIN_MM))
    return row


def fit_models(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Logistic models ("volume": first and wide passes with the template; "no-volume") from ``rows``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, log_loss

    models = {}
    for kind, names, passes in (
        ("volume", VOLUME_FEATURES, ("first", "wide")),
        ("no-volume", NO_VOLUME_FEATURES, ("novol",)),
    ):
        use = [r for r in rows if r["pass"] in passes and "features" in r]
        x = np.array([feature_vector(r["features"], names) for r in use])
        y = np.array([r["correct"] for r in use], int)
        mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
        clf = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / scale, y)
        m = ConfidenceModel(
            kind=kind,
            names=names,
            mean=tuple(map(float, mean)),
            scale=tuple(map(float, scale)),
            coef=tuple(map(float, clf.coef_[0])),
            intercept=float(clf.intercept_[0]),
            provenance={
                **meta,
                "passes": list(passes),
                "n_rows": len(use),
                "n_correct": int(y.sum()),
                "fit": "sklearn LogisticRegression(C=1.0) on standardised features (margins as log10(margin + 0.005))",
            },
        )
        p = np.array([m(r["features"]) for r in use])
        m.provenance.update(
            train_log_loss=float(log_loss(y, p, labels=[0, 1])), train_brier=float(brier_score_loss(y, p))
        )
        models[kind] = m.to_dict()
    return {"within_mm": WITHIN_MM, "features": FEATURES, "models": models}


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m siibra_anchor.evaluation.calibrate", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--n", type=int, default=60, help="benchmark-like calibration sections (more are added, see docs)")
    ap.add_argument("--rows", default="calibration-rows.jsonl", help="JSON lines of the anchored passes (resumable)")
    ap.add_argument(
        "--out", default=None, help="write the fitted models here (e.g. siibra_anchor/weights/confidence.json)"
    )
    ap.add_argument("--fit-only", action="store_true", help="fit on the rows already collected")
    ns = ap.parse_args(args)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.simplefilter("ignore")
    rows = [json.loads(x) for x in Path(ns.rows).read_text().splitlines()] if ns.fit_only else collect(ns.n, ns.rows)
    enc = load_default_encoder()
    meta = {
        "command": "python -m siibra_anchor.evaluation.calibrate "
        + " ".join(args if args is not None else sys.argv[1:]),
        "calibration_seeds": CALIBRATION_SEEDS,
        "n_sections": ns.n,
        "volumes": sorted({c.volume for _, c in calibration_cases(ns.n)}) + ["synthetic non-brain images"],
        "encoder": encoder_hash(enc),
        "date": time.strftime("%Y-%m-%d"),
        "disjoint_from": "benchmark simulated_set seed 2026, ambiguity_set seed 2027, compare --seed 2027, real-anatomy test subjects",
    }
    out = fit_models(rows, meta)
    for kind, m in out["models"].items():
        pv = m["provenance"]
        sys.stdout.write(
            f"{kind}: {pv['n_rows']} rows, {pv['n_correct']} correct, log loss {pv['train_log_loss']:.3f}\n"
        )
    if ns.out:
        atomic_write_text(ns.out, json.dumps(out, indent=1) + "\n")
        sys.stdout.write(f"wrote {ns.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fit the confidence models (``weights/confidence.json``) on a calibration set no benchmark tier uses.

The calibration set: template-family sections drawn like the benchmark's (:func:`simulated_set`,
:func:`ambiguity_set`) but from seeds the benchmark and ``training.compare`` never use, sections whose
stated spacing is badly wrong, images of no brain at all (always wrong), and sections of synthetic
brains (:mod:`siibra_anchor.training.synth`: another anatomy by a random smooth deformation, a random
contrast; seeds no training run or validation set draws), which stand for other subjects in other
contrasts, the real-anatomy tier's case, without using any of its subjects. Each section is anchored in
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
from .benchmark import CaseSpec, ambiguity_set, make_section, simulated_set, user_hints
from .pieces import PIECE_SIDES_MM, make_piece, piece_cases, piece_hints
from .simulate import section_error

__all__ = [
    "run_pass",
    "CALIBRATION_SEEDS",
    "calibration_cases",
    "synth_cases",
    "synth_brain_file",
    "untrusted_volumes",
    "real_calibration_sections",
    "read_rows",
    "collect",
    "fit_models",
    "evaluate_rows",
    "cross_check",
    "main",
]

log = logging.getLogger(__name__)

#: seeds of the calibration draws (the benchmark uses 2026, its ambiguity set and compare's fresh set 2027)
CALIBRATION_SEEDS = {
    "sections": 5150,
    "ambiguity": 5151,
    "wrong_spacing": 5152,
    "non_brain": 5153,
    "ambiguity_nohint": 5154,
    "synth": 5155,
    "real": 5156,
    "piece": 5157,
}

#: renderings of the calibration's synthetic brains: a larger deformation than training draws (3 mm)
SYNTH_CALIBRATION = {"deform_mm": 6.0}
#: sections cut from each synthetic brain
SYNTH_SECTIONS_PER_BRAIN = 4
#: sections cut from each real calibration volume (the manifest's ``calibration`` split)
REAL_SECTIONS_PER_VOLUME = 24
#: a real calibration volume is used only if its two truth registrations agree this well (mean mm over the
#: template's brain): a label "within 10 mm" needs a truth good to a few mm
MAX_TRUTH_SPREAD_MM = 2.0

VOLUME_FEATURES = (
    "consistency", "inlier_share", "match_similarity", "nmi_gain", "margin", "mirror_margin",
    "log_patches", "log_area_mm2", "log_scale", "anisotropy",
)  # fmt: skip
NO_VOLUME_FEATURES = tuple(f for f in VOLUME_FEATURES if f not in ("nmi_gain", "mirror_margin"))
#: which passes' rows each model is fitted (and evaluated) on
MODEL_PASSES = {"volume": ("first", "wide"), "no-volume": ("novol",)}


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


def synth_brain_file(index: int, folder: str | Path | None = None) -> Path:
    """The NIfTI file of calibration brain ``index`` (rendered once into the cache, then reused): the
    reference rendered by :func:`siibra_anchor.training.synth.render` with seed
    ``CALIBRATION_SEEDS["synth"] * 1000 + index`` (training draws seed lists, validation 900001-900002)."""
    import nibabel as nib

    from ..cache import atomic_file, cache_dir
    from ..training.synth import SynthParams, synth_volume

    seed = CALIBRATION_SEEDS["synth"] * 1000 + int(index)
    path = Path(folder) if folder is not None else cache_dir("calibration-synth")
    path.mkdir(parents=True, exist_ok=True)
    out = path / f"synth-{seed}-deform{SYNTH_CALIBRATION['deform_mm']:g}.nii.gz"
    if not out.exists():
        vol = synth_volume(f"synth:{seed}", SynthParams(**SYNTH_CALIBRATION))
        img = nib.Nifti1Image(np.asarray(vol.data, np.float32), np.asarray(vol.affine, float))
        with atomic_file(out, suffix=".tmp.nii.gz") as tmp:
            nib.save(img, str(tmp))
    return out


def synth_cases(n: int, folder: str | Path | None = None) -> list[CaseSpec]:
    """``n`` sections like the benchmark's (whole, hemisections, blocks; tilt up to 15 degrees, stated
    spacing off by up to 20 %) cut from synthetic brains, :data:`SYNTH_SECTIONS_PER_BRAIN` per brain."""
    rng = np.random.default_rng(CALIBRATION_SEEDS["synth"])
    out = []
    for i in range(n):
        vol = str(synth_brain_file(i // SYNTH_SECTIONS_PER_BRAIN, folder))
        out.append(
            CaseSpec(
                volume=vol,
                orientation=["coronal", "sagittal", "axial"][int(rng.integers(3))],
                rotation_deg=float(rng.uniform(0, 360)),
                tilt_deg=float(rng.uniform(0, 15)),
                scale_error=float(rng.uniform(0.8, 1.2)),
                partial=[None, None, "left", "right", "block"][int(rng.integers(5))],
                contrast="as-is",
                seed=int(rng.integers(1 << 30)),
            )
        )
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


def untrusted_volumes(volumes: dict[str, Any], max_spread_mm: float = MAX_TRUTH_SPREAD_MM) -> dict[str, str]:
    """``{name: why}`` for the volumes (``real_sections``' ``info["volumes"]``) whose two truth registrations
    disagree by more than ``max_spread_mm`` on average (or whose spread is not a number)."""
    out = {}
    for name, v in volumes.items():
        spread = float(v["registration_spread"]["mean_mm"])
        if not spread <= max_spread_mm:
            out[name] = (
                f"its two truth registrations disagree by {spread:.1f} mm on average (at most {max_spread_mm:g} mm "
                "is used)"
            )
    return out


def real_calibration_sections(
    real_data: str | Path, n_per_volume: int = REAL_SECTIONS_PER_VOLUME
) -> tuple[list[Any], dict[str, str]]:
    """Sections of the real calibration subjects (the manifest's ``calibration`` split: other people than
    the real-anatomy tier's), cut like the tier's (:func:`~siibra_anchor.evaluation.real_tier.real_sections`)
    from seed ``CALIBRATION_SEEDS["real"]``, with their registered truth. Every calibration volume must be
    in ``real_data`` (a missing one raises :class:`~siibra_anchor.errors.RealDataMissingError`).

    Returns (sections, skipped): the sections of the volumes whose truth is trustworthy (the two
    registrations agree within :data:`MAX_TRUTH_SPREAD_MM` on average), and ``{volume: why}`` for the others.
    """
    from .real_tier import real_sections

    sections, info = real_sections(
        real_data, split="calibration", n_per_volume=n_per_volume, seed=CALIBRATION_SEEDS["real"], require_all=True
    )
    skipped = untrusted_volumes(info["volumes"])
    for name, why in skipped.items():
        log.warning("real calibration volume %s not used: %s", name, why)
    return [s for s in sections if s.case.volume not in skipped], skipped


def read_rows(path: str | Path | list[str | Path]) -> list[dict[str, Any]]:
    """The rows of a calibration rows file (JSON lines, as :func:`collect` appends them), or of several in
    turn."""
    if isinstance(path, (list, tuple)):
        return [r for p in path for r in read_rows(p)]
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def collect(
    n: int,
    rows_path: str | Path | list[str | Path],
    progress: bool = True,
    n_synth: int | None = None,
    encoder: str | None = None,
    real_data: str | Path | None = None,
    n_real: int = REAL_SECTIONS_PER_VOLUME,
) -> list[dict[str, Any]]:
    """Anchor the calibration set (both passes, with and without the template volume) and append one row
    per pass to ``rows_path`` (JSON lines); rows already there are kept and their sections skipped. Given
    several files, the rows of all of them count as done and new rows go to the last.

    n_synth : sections of synthetic brains (default ``n // 2``); encoder : a shipped or lineage encoder
    name (default: the default encoder); real_data : the folder of the real-anatomy volumes: adds
    ``n_real`` sections of each real calibration subject (hemisphere and mounting hints as the real tier
    gives them)."""
    paths = [Path(p) for p in (rows_path if isinstance(rows_path, (list, tuple)) else [rows_path])]
    rows = read_rows([p for p in paths if p.exists()])
    rows_path = paths[-1]
    done = {r["key"] for r in rows}
    enc = load_default_encoder(encoder)
    ref = sa.Reference.from_space("mni152", encoder=enc)
    novol = replace(ref, volume=None)
    base = sa.AnchorParams()
    items: list[tuple[str, Any]] = calibration_cases(n) + [("non_brain", s) for s in _non_brain(max(2, n // 8))]
    # ambiguous sections anchored without hints, as users often do (added last: earlier keys stay valid)
    items += [
        ("ambiguity_nohint", c) for c in ambiguity_set(max(1, n // 8), seed=CALIBRATION_SEEDS["ambiguity_nohint"])
    ]
    items += [("synth", c) for c in synth_cases(n // 2 if n_synth is None else n_synth)]
    if real_data is not None:  # last again: the keys of the rows above stay valid
        items += [("real", rs) for rs in real_calibration_sections(real_data, n_real)[0]]
    # small pieces of tissue (16-60 mm across, evaluation.pieces), added 2026-12-05: last, so that the keys
    # above stay valid (their indices follow the real sections when --real-data is given)
    items += [("piece", pc) for pc in piece_cases(max(1, n // 2), seed=CALIBRATION_SEEDS["piece"])]
    with rows_path.open("a") as fh:
        for i, (kind, item) in enumerate(items):
            key = f"{kind}-{i}"
            if key + "-first" in done:
                continue
            t0 = time.perf_counter()
            if kind == "non_brain":
                section, truth, hints = item, None, {}
            elif kind == "real":
                section, truth, hints = item.section, item, {"hemisphere": item.hemisphere, "flipped": False}
            elif kind == "piece":
                sim = make_piece(item)
                section, truth, hints = sim.section, sim, piece_hints(item, sim)
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
                if kind == "real":
                    row.update(volume=item.case.volume, subject=item.subject, contrast=item.contrast)
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


def fit_models(rows: list[dict[str, Any]], meta: dict[str, Any], without: tuple[str, ...] = ()) -> dict[str, Any]:
    """Logistic models ("volume": first and wide passes with the template; "no-volume") from ``rows``;
    ``without``: features left out of both (a candidate, e.g. ``("match_similarity",)``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, log_loss

    from ..errors import InvalidParameterError

    unknown = sorted(set(without) - set(FEATURES))
    if unknown:
        raise InvalidParameterError(f"unknown confidence features {unknown}; the features are {list(FEATURES)}")
    models = {}
    for kind, all_names in (("volume", VOLUME_FEATURES), ("no-volume", NO_VOLUME_FEATURES)):
        names = tuple(f for f in all_names if f not in without)
        passes = MODEL_PASSES[kind]
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


def evaluate_rows(rows: list[dict[str, Any]], models: dict[str, Any] | None = None) -> dict[str, Any]:
    """How the *shipped* models (``weights/confidence.json``), or ``models`` (a dict as :func:`fit_models`
    returns), do on anchored rows they were not fitted on (e.g. a new real calibration subject's):
    ``{"volume": calibration_report, "no-volume": ...}``, the "volume" model on the first and wide passes,
    "no-volume" on the novol ones; refused rows are left out (the pipeline reports no confidence for them),
    rows of no brain count as wrong."""
    from sklearn.metrics import log_loss

    from ..confidence import confidence_model
    from .benchmark import calibration_report

    out = {}
    for kind, passes in MODEL_PASSES.items():
        use = [r for r in rows if r.get("pass") in passes and "features" in r]
        if use:
            m = confidence_model(kind) if models is None else ConfidenceModel.from_dict(models["models"][kind])
            err = [float("inf") if r["error_mm"] is None else float(r["error_mm"]) for r in use]
            p = np.array([m(r["features"]) for r in use])
            out[kind] = calibration_report(p.tolist(), err)
            out[kind]["log_loss"] = float(log_loss([bool(r["correct"]) for r in use], p, labels=[False, True]))
    return out


def cross_check(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Whether the real calibration rows help the fit, on rows no fit saw: for each real calibration
    volume V, the models fitted on every row but V's, beside the models fitted on no real row at all, both
    evaluated on V's rows (:func:`evaluate_rows`). Volumes of one subject hold out a contrast, not a person.

    Returns ``{V: {"without_real": {...}, "with_other_real": {...}}}`` (each ``{model kind: report}``)."""
    real = sorted({r["volume"] for r in rows if r.get("kind") == "real"})
    base = fit_models([r for r in rows if r.get("kind") != "real"], {})
    out = {}
    for v in real:
        held = [r for r in rows if r.get("kind") == "real" and r["volume"] == v]
        others = fit_models([r for r in rows if not (r.get("kind") == "real" and r["volume"] == v)], {})
        out[v] = {"without_real": evaluate_rows(held, base), "with_other_real": evaluate_rows(held, others)}
    return out


def _real_volume_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per real calibration volume the rows use: its name, sections, source and sha256."""
    from .real_data import real_volumes

    counts: dict[str, int] = {}
    for r in rows:
        if r.get("kind") == "real" and r.get("pass") == "first":
            counts[r["volume"]] = counts.get(r["volume"], 0) + 1
    by_name = {v.name: v for v in real_volumes("calibration")}
    return [
        f"{counts[name]} sections of real calibration volume {name} ({by_name[name].contrast}, subject "
        f"{by_name[name].subject}; {by_name[name].file}, sha256 {by_name[name].sha256}; seed {CALIBRATION_SEEDS['real']})"
        for name in sorted(counts)
    ]


def _piece_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The provenance line of the pieces of tissue among ``rows`` (none when there are none)."""
    n = len({r["key"].rsplit("-", 1)[0] for r in rows if r.get("kind") == "piece"})
    if not n:
        return []
    lo, hi = PIECE_SIDES_MM
    return [
        f"{n} pieces of tissue {lo:.0f}-{hi:.0f} mm across cut from sections of the template volumes above "
        f"(evaluation.pieces, seed {CALIBRATION_SEEDS['piece']})"
    ]


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m siibra_anchor.evaluation.calibrate", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--n", type=int, default=60, help="benchmark-like calibration sections (more are added, see docs)")
    ap.add_argument(
        "--rows",
        nargs="+",
        default=["calibration-rows.jsonl"],
        help="JSON lines of the anchored passes (resumable; several files are read in turn, new rows go to the last)",
    )
    ap.add_argument(
        "--out", default=None, help="write the fitted models here (e.g. siibra_anchor/weights/confidence.json)"
    )
    ap.add_argument("--fit-only", action="store_true", help="fit on the rows already collected")
    ap.add_argument(
        "--evaluate",
        action="store_true",
        help="print how the shipped models do on --rows (only the kind given by --kind), fit nothing",
    )
    ap.add_argument("--kind", default=None, help="with --evaluate: only rows of this kind (e.g. real)")
    ap.add_argument(
        "--cross-check",
        action="store_true",
        help="print, for each real calibration volume in --rows, the models fitted without it (with and "
        "without the other real rows) on its rows; fit nothing",
    )
    ap.add_argument(
        "--without",
        nargs="+",
        default=[],
        metavar="FEATURE",
        help="fit the models without these features (a candidate; e.g. match_similarity)",
    )
    ap.add_argument("--synth", type=int, default=None, help="sections of synthetic brains (default: n // 2)")
    ap.add_argument("--encoder", default=None, help="a shipped or lineage encoder name (default: the default)")
    ap.add_argument(
        "--real-data",
        default=None,
        metavar="DIR",
        help="folder of the real-anatomy volumes: add sections of the real calibration subjects",
    )
    ap.add_argument("--real", type=int, default=REAL_SECTIONS_PER_VOLUME, help="sections per real calibration volume")
    ns = ap.parse_args(args)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.simplefilter("ignore")
    if ns.evaluate:
        from .benchmark import calibration_lines

        rows = [r for r in read_rows(ns.rows) if ns.kind is None or r.get("kind") == ns.kind]
        for kind, rep in evaluate_rows(rows).items():
            sys.stdout.write(
                f"{kind} model, {rep['n']} rows of {' '.join(ns.rows)}"
                + (f" (kind {ns.kind})" if ns.kind else "")
                + ":\n"
            )
            sys.stdout.write("\n".join(calibration_lines(rep)) + "\n")
        return 0
    if ns.cross_check:
        from .benchmark import calibration_lines

        for v, fits in cross_check(read_rows(ns.rows)).items():
            for fit, reps in fits.items():
                for kind, rep in reps.items():
                    sys.stdout.write(
                        f"{v}, {kind} model fitted {fit.replace('_', ' ')} rows ({rep['n']} rows, "
                        f"log loss {rep['log_loss']:.3f}):\n"
                    )
                    sys.stdout.write("\n".join(calibration_lines(rep)[:1]) + "\n")
        return 0
    rows = (
        read_rows(ns.rows)
        if ns.fit_only
        else collect(ns.n, ns.rows, n_synth=ns.synth, encoder=ns.encoder, real_data=ns.real_data, n_real=ns.real)
    )
    enc = load_default_encoder(ns.encoder)
    n_synth = ns.n // 2 if ns.synth is None else ns.synth
    meta = {
        "command": "python -m siibra_anchor.evaluation.calibrate "
        + " ".join(args if args is not None else sys.argv[1:]),
        "calibration_seeds": CALIBRATION_SEEDS,
        "n_sections": ns.n,
        "volumes": sorted({c.volume for _, c in calibration_cases(ns.n)})
        + ["synthetic non-brain images"]
        + [
            f"{n_synth} sections of {-(-n_synth // SYNTH_SECTIONS_PER_BRAIN)} synthetic brains rendered from mni152 "
            f"(training/synth.py, {SYNTH_CALIBRATION}, seeds {CALIBRATION_SEEDS['synth']}000 + i)"
        ]
        + _real_volume_lines(rows)
        + _piece_lines(rows),
        "encoder": encoder_hash(enc),
        "date": time.strftime("%Y-%m-%d"),
        "disjoint_from": "benchmark simulated_set seed 2026, ambiguity_set seed 2027, compare --seed 2027, "
        "real-anatomy test subjects, template_draws seeds 2028-2030, pieces test seed 2031",
    }
    if ns.without:
        meta["without"] = list(ns.without)
    try:
        out = fit_models(rows, meta, without=tuple(ns.without))
    except AnchorError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
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

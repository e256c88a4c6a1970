"""The real-anatomy tier of the benchmark: sections of individual brains, in contrasts other than T1.

Sections are cut from the manifest's single-subject volumes (:mod:`.real_data`) at random planes: a
canonical orientation of the *template* tilted by up to 12 degrees about a random in-plane axis, any
in-plane rotation, 0.5-1.0 mm/px, whole sections, hemisections and blocks. The plane is chosen in template
space and carried into the subject by the inverse of its registration (:mod:`.real_truth`), where it is
cut rigidly at the stated spacing; the truth of every pixel is the registration applied to its place in
the subject, so the true (4, 4) section affine is ``T @ A_subject``. The section keeps only the brain:
the template's brain mask carried by the same registration (eroded by 1 mm), within the volume's field
of view (and, for brain-extracted volumes, where the volume is not zero).

Each section is anchored with :func:`siibra_anchor.anchor` (hemisphere hint passed for hemisections and
one-sided sagittal sections) by the default encoder and, in the same run, by the raw-pixel baseline. A
section that raises an :class:`~siibra_anchor.errors.AnchorError` is refused, and counts as a failure.
Beside each error the truth's own uncertainty is given: the distance between the placements of the two
independent registrations over the section's tissue.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation

__all__ = [
    "RealCase",
    "RealSection",
    "FAIL_MM",
    "real_cases",
    "cut_real_section",
    "real_sections",
    "volume_truth",
    "registration_qc",
    "run_real_tier",
    "tier_methods",
    "summarise_real_tier",
    "failure_kind",
    "truth_confirmed",
    "TRUTH_PEAK_MM",
    "format_real_tier",
    "failure_rows",
    "failure_figure",
]

log = logging.getLogger(__name__)

#: A section placed further than this (mean over its tissue, mm) from the truth is a failure.
FAIL_MM = 10.0
#: A volume's truth is *confirmed by the template* when the NMI of the truth-mapped volume with the template
#: peaks within this distance of the truth along every template axis (:func:`_template_shift`; two steps of
#: its 2 mm grid). The tier's figures count every volume; the confirmed volumes' figures are printed beside
#: them, not instead.
TRUTH_PEAK_MM = 4.0
#: Kinds of section and how often each is drawn (sagittal sections are never hemisections).
PARTIALS = (None, None, "left", "right", "block")
ORIENTATIONS = ("coronal", "sagittal", "axial")


@dataclass(frozen=True)
class RealCase:
    """How one real-anatomy section is cut (all angles in degrees, offsets in template mm)."""

    volume: str
    orientation: str
    offset_mm: float
    tilt_deg: float
    tilt_axis_deg: float
    rotation_deg: float
    spacing_mm: float
    partial: str | None
    seed: int


@dataclass
class RealSection:
    """A section cut from a real volume and its truth.

    true_affine : (4, 4) pixel (row, col, 0, 1) -> template mm by the truth registration (run A);
    second_affine : the same by the second, independent registration (run B);
    subject_affine : (4, 4) pixel -> the subject volume's own world mm.
    """

    section: Any
    true_affine: NDArray
    second_affine: NDArray
    subject_affine: NDArray
    case: RealCase
    contrast: str
    subject: str
    hemisphere: str | None


def real_cases(volumes: list[str], n_per_volume: int, seed: int = 2026) -> list[RealCase]:
    """``n_per_volume`` random cases per volume name (seeded; the same names and seed give the same cases)."""
    rng = np.random.default_rng(seed)
    out = []
    for vol in volumes:
        for k in range(n_per_volume):
            orientation = ORIENTATIONS[(k + int(rng.integers(3))) % 3]
            partial = PARTIALS[int(rng.integers(len(PARTIALS)))]
            if orientation == "sagittal" and partial in ("left", "right"):
                partial = None
            out.append(
                RealCase(
                    volume=vol,
                    orientation=orientation,
                    offset_mm=float(rng.uniform(-0.3, 0.3)),
                    tilt_deg=float(rng.uniform(0.0, 12.0)),
                    tilt_axis_deg=float(rng.uniform(0.0, 360.0)),
                    rotation_deg=float(rng.uniform(0.0, 360.0)),
                    spacing_mm=float(rng.uniform(0.5, 1.0)),
                    partial=partial,
                    seed=int(rng.integers(2**31)),
                )
            )
    return out


def _template() -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """The reference template's brain mask (float32), its affine, and the bounding box (lo, hi) in mm."""
    from ..planes import world_bbox
    from ..reference import volume_brain_mask
    from ..templates import load_volume

    data, aff = load_volume("mni152")
    m = volume_brain_mask(data)
    lo, hi = world_bbox(m, np.asarray(aff, float))
    return m.astype(np.float32), np.asarray(aff, float), lo, hi


def _is_brain_extracted(data: NDArray) -> bool:
    """True when more than 35 % of the volume is exactly zero (a skull-stripped or masked volume)."""
    return float(np.mean(np.asarray(data) == 0)) > 0.35


def cut_real_section(
    volume_path: str | Path,
    truth: dict[str, Any],
    case: RealCase,
    contrast: str = "unknown",
    subject: str = "unknown",
) -> RealSection:
    """Cut the section ``case`` describes from a real volume (see the module docstring).

    truth : :func:`~siibra_anchor.evaluation.real_truth.real_truth` of the volume.

    Raises :class:`~siibra_anchor.errors.InvalidParameterError` when the plane holds almost no brain.
    """
    from ..errors import InvalidParameterError
    from ..planes import AXIS_OF_PLANE, CANONICAL_PLANES, cut_plane, plane_affine
    from ..section import Section
    from ..templates import load_volume
    from .simulate import one_side_of_midline, partial_mask

    rng = np.random.default_rng(case.seed)
    data, vaff = load_volume(volume_path)
    vaff = np.asarray(vaff, float)
    t_a = np.asarray(truth["moving_to_fixed"], float)
    t_b = np.asarray(truth["second"], float)
    tmask, taff, lo, hi = _template()
    centre = (lo + hi) / 2.0
    ax = AXIS_OF_PLANE[case.orientation]
    centre[ax] += case.offset_mm * (hi[ax] - lo[ax])
    row_dir, col_dir = (v.copy() for v in CANONICAL_PLANES[case.orientation])
    normal = np.cross(row_dir, col_dir)
    phi = np.deg2rad(case.tilt_axis_deg)
    rot = Rotation.from_rotvec(np.deg2rad(case.tilt_deg) * (np.cos(phi) * row_dir + np.sin(phi) * col_dir))
    row_dir, col_dir, normal = rot.apply(row_dir), rot.apply(col_dir), rot.apply(normal)
    rot = Rotation.from_rotvec(np.deg2rad(case.rotation_deg) * normal)
    row_dir, col_dir = rot.apply(row_dir), rot.apply(col_dir)
    # the template plane carried into the subject, cut there rigidly (Gram-Schmidt in plane_affine)
    inv = np.linalg.inv(t_a)
    c_s = inv[:3, :3] @ centre + inv[:3, 3]
    r_s, k_s = inv[:3, :3] @ row_dir, inv[:3, :3] @ col_dir
    extent = float(np.linalg.norm(hi - lo)) * 0.8 / float(abs(np.linalg.det(t_a[:3, :3])) ** (1 / 3))
    n = int(np.ceil(extent / case.spacing_mm))
    a_s = plane_affine(c_s, r_s, k_s, case.spacing_mm, (n, n), thickness_mm=case.spacing_mm)
    truth_a = t_a @ a_s
    img = cut_plane(data, vaff, a_s, (n, n))
    fov = cut_plane(np.ones(data.shape, np.float32), vaff, a_s, (n, n)) > 0.99
    msk = (cut_plane(tmask, taff, truth_a, (n, n)) > 0.5) & fov
    if _is_brain_extracted(data):
        msk &= img > 0
    msk = ndimage.binary_erosion(msk, iterations=max(1, int(round(1.0 / case.spacing_mm))))
    rr, cc = np.nonzero(msk)
    if len(rr) < 400:
        raise InvalidParameterError(f"case {case} holds almost no brain ({len(rr)} px); choose another plane")
    hemisphere = case.partial if case.partial in ("left", "right") else None
    msk = partial_mask(msk, case.partial, truth_a, rng)
    msk = ndimage.binary_opening(msk, iterations=1)
    rr, cc = np.nonzero(msk)
    if len(rr) < 400:
        raise InvalidParameterError(f"case {case} holds almost no brain after cutting; choose another plane")
    if hemisphere is None and case.orientation == "sagittal":
        hemisphere = one_side_of_midline(truth_a[0, 0] * rr + truth_a[0, 1] * cc + truth_a[0, 3])
    pad = max(4, int(0.05 * max(np.ptp(rr), np.ptp(cc))))
    r0, c0 = max(int(rr.min()) - pad, 0), max(int(cc.min()) - pad, 0)
    r1, c1 = min(int(rr.max()) + pad + 1, n), min(int(cc.max()) + pad + 1, n)
    img, msk = img[r0:r1, c0:c1], msk[r0:r1, c0:c1]
    shift = np.eye(4)
    shift[:2, 3] = (r0, c0)
    a_s = a_s @ shift
    lo_v, hi_v = np.percentile(img[msk], [1, 99])
    img = np.clip((img - lo_v) / max(hi_v - lo_v, 1e-6), 0, 1)
    img[~msk] = 0.0
    name = f"{case.volume}-{case.orientation}-{case.partial or 'whole'}-{case.seed % 10000}"
    sec = Section(img.astype(np.float32), spacing_mm=case.spacing_mm, mask=msk, modality=contrast, name=name)
    return RealSection(sec, t_a @ a_s, t_b @ a_s, a_s, case, contrast, subject, hemisphere)


def volume_truth(volume: Any, path: str | Path, real_data_dir: str | Path | None = None) -> dict[str, Any]:
    """The registered truth of manifest ``volume`` (a :class:`~siibra_anchor.evaluation.real_data.RealVolume`
    whose file is ``path``) as its entry says: through its ``register_via`` volume (skull-stripped as that
    entry says) when that file is in ``real_data_dir`` or committed, else directly; skull-stripped
    ``truth_mask_iterations`` times (:func:`~siibra_anchor.evaluation.real_truth.real_truth`)."""
    from ..errors import RealDataMissingError
    from .real_data import real_volume, real_volume_path
    from .real_truth import real_truth

    via, via_masks = None, 0
    if volume.register_via:
        via_volume = real_volume(volume.register_via)
        try:
            via = real_volume_path(via_volume, real_data_dir)
            via_masks = via_volume.truth_mask_iterations
        except RealDataMissingError:
            log.warning("%s: %s is missing, registering %s directly", volume.name, volume.register_via, volume.name)
    return real_truth(path, via=via, mask_iterations=volume.truth_mask_iterations, via_mask_iterations=via_masks)


def registration_qc(
    real_data_dir: str | Path | None, out_png: str | Path, split: str | None = None
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The registration QC figure (:func:`~siibra_anchor.evaluation.real_truth.registration_figure`) of every
    manifest volume of ``split`` (all when None) that is in ``real_data_dir`` or committed, each by the
    truth the tiers use (:func:`volume_truth`). Returns (the PNG, ``{name: truth}``); missing volumes are
    left out with a warning."""
    from ..errors import InvalidParameterError, RealDataMissingError
    from .real_data import real_volume_path, real_volumes
    from .real_truth import registration_figure

    paths: dict[str, str | Path] = {}
    truths: dict[str, dict[str, Any]] = {}
    for v in real_volumes(split):
        try:
            paths[v.name] = real_volume_path(v, real_data_dir)
        except RealDataMissingError:
            log.warning("%s is not in %s: left out of the figure", v.name, real_data_dir)
            continue
        truths[v.name] = volume_truth(v, paths[v.name], real_data_dir)
    if not paths:
        raise InvalidParameterError(f"no volume of split {split!r} is in {real_data_dir!r} or committed")
    return registration_figure(paths, out_png, truths=truths), truths


def real_sections(
    real_data_dir: str | Path | None,
    split: str = "test",
    n_per_volume: int = 3,
    seed: int = 2026,
    require_all: bool = False,
    volumes: list[str] | None = None,
) -> tuple[list[RealSection], dict[str, Any]]:
    """Cut ``n_per_volume`` sections from every volume of ``split`` that is available.

    Volumes missing from ``real_data_dir`` (and not committed) are skipped and listed in the returned
    info (``require_all=True`` raises :class:`~siibra_anchor.errors.RealDataMissingError` instead); a
    file whose sha256 differs from the manifest always raises. Planes with almost no brain are redrawn.

    volumes : names of the volumes to use (default: all of the split).

    Returns (sections, info) with info ``{"volumes": {name: registration figures}, "missing": {name: how}}``.
    """
    from ..errors import InvalidParameterError, RealDataMissingError
    from .real_data import real_volume_path, real_volumes

    vols = [v for v in real_volumes(split) if volumes is None or v.name in volumes]
    info: dict[str, Any] = {"volumes": {}, "missing": {}}
    out: list[RealSection] = []
    for v in vols:
        try:
            path = real_volume_path(v, real_data_dir)
        except RealDataMissingError as exc:
            if require_all:
                raise
            info["missing"][v.name] = str(exc)
            continue
        truth = volume_truth(v, path, real_data_dir)
        info["volumes"][v.name] = {
            "subject": v.subject,
            "contrast": v.contrast,
            "split": v.split,
            "file": str(path),
            "registered_via": truth.get("via"),
            "registration_metric": truth["metric"],
            "registration_spread": truth["spread"],
            "scale": float(abs(np.linalg.det(np.asarray(truth["moving_to_fixed"], float)[:3, :3])) ** (1 / 3)),
            "template_shift": _template_shift(str(path), truth),
        }
        k = 0
        for case in real_cases([v.name], 4 * n_per_volume, seed=seed + sum(map(ord, v.name))):
            if k == n_per_volume:
                break
            try:
                out.append(cut_real_section(path, truth, case, v.contrast, v.subject))
                k += 1
            except InvalidParameterError as exc:
                log.info("%s", exc)
    return out, info


_SHIFTS: dict[tuple[str, bytes], dict[str, Any]] = {}


def _template_shift(path: str, truth: dict[str, Any]) -> dict[str, Any]:
    """:func:`~siibra_anchor.evaluation.real_truth.template_shift_check` of a truth, once per process."""
    from .real_truth import template_shift_check

    m = np.asarray(truth["moving_to_fixed"], float)
    key = (path, m.tobytes())
    if key not in _SHIFTS:
        _SHIFTS[key] = template_shift_check(path, m)
    return _SHIFTS[key]


def _summary(errors: list[float], refused: list[bool], times: list[float]) -> dict[str, Any]:
    e = np.asarray(errors, float)
    if e.size == 0:
        return {"n": 0}
    fin = e[np.isfinite(e)]
    # refused sections (inf) rank last; a percentile that falls among them is inf, not NaN
    big = np.where(np.isfinite(e), e, 1e12)
    return {
        "n": int(e.size),
        "median_mm": _inf_above(float(np.median(big))),
        "p90_mm": _inf_above(float(np.percentile(big, 90))),
        "median_placed_mm": float(np.median(fin)) if fin.size else float("nan"),
        "failures": int(np.sum(~(e <= FAIL_MM))),
        "failure_rate": float(np.mean(~(e <= FAIL_MM))),
        "refusals": int(np.sum(refused)),
        "time_median_s": float(np.median(times)),
    }


def tier_methods(reference: Any, encoder: Any, raw_baseline: bool = True) -> dict[str, tuple[Any, Any]]:
    """What a tier anchors with: ``{"default": (reference, encoder)}`` (the shipped default encoder and its
    MNI152 reference where None is given) and, with ``raw_baseline``, ``"raw_pixel"``: the raw-pixel encoder
    with its own MNI152 reference."""
    from ..encoders import RawPixelEncoder, load_default_encoder
    from ..reference import Reference

    enc = encoder if encoder is not None else load_default_encoder()
    ref = reference if reference is not None else Reference.from_space("mni152", encoder=enc)
    methods = {"default": (ref, enc)}
    if raw_baseline:
        raw = RawPixelEncoder()
        methods["raw_pixel"] = (Reference.from_space("mni152", encoder=raw), raw)
    return methods


def refinement_floor(
    section: Any, true_affine: NDArray, reference: Any, encoder: Any, seed: int = 0, params: Any = None
) -> dict[str, float]:
    """Where the pipeline's own intensity refinement puts ``section`` when it starts exactly on its
    (registered) truth ``true_affine``: ``floor_mm`` (the refined placement's error against the truth), ``gain_truth`` and
    ``gain_refined`` (NMI gains of the truth and of the refined placement). No search can bring the
    refinement closer to the truth than the objective's own optimum near it, so ``floor_mm`` is what an
    affine registration's truth leaves unexplained to an anchoring that ends in this refinement: the
    subject's own anatomy against the template's, the contrast, EPI distortion, and the truth's error.
    ``params`` (:class:`~siibra_anchor.AnchorParams`, default the default) sets the refinement's evaluations
    (``refine_evals``) and sample points."""
    from ..anchoring.params import AnchorParams
    from ..anchoring.stages import Run, original_affine, placement_gain, prepare, refine_from, working_map
    from .simulate import section_error

    r = Run(section, reference, encoder, params or AnchorParams(), seed, None, None, None, None, None)
    prepare(r)
    t = np.asarray(true_affine, float)
    truth = working_map(r, t)
    best = refine_from(r, truth)
    return {
        "floor_mm": section_error(original_affine(r, best.placement), t, section.mask),
        "gain_truth": float(placement_gain(r, truth)),
        "gain_refined": float(best.score),
    }


def run_real_tier(
    real_data_dir: str | Path | None,
    quick: bool = False,
    seed: int = 2026,
    split: str = "test",
    n_per_volume: int | None = None,
    progress: bool = False,
    reference: Any = None,
    require_all: bool = False,
    volumes: list[str] | None = None,
    encoder: Any = None,
    encoder_name: str | None = None,
    raw_baseline: bool = True,
    mounting_known: bool = True,
    refinement_floors: bool = True,
    params: Any = None,
    cut_known: bool = False,
) -> dict[str, Any]:
    """Anchor the real-anatomy sections with the default encoder and the raw-pixel baseline.

    Parameters
    ----------
    real_data_dir : folder holding the manifest's files (None: only the committed ones).
    quick : 3 sections per volume instead of 12 (``n_per_volume`` overrides both).
    split : "test" (the scored tier) or "calibration" (the disjoint set kept for fitting the confidence).
    reference : a prebuilt default-encoder ``Reference.from_space("mni152")`` to reuse.
    volumes : names of the manifest volumes to use (default: all of the split).
    encoder : another encoder in the "default" column (``reference`` must then be built with it), named
        ``encoder_name`` in the report; raw_baseline False skips the raw-pixel column (its figures are NaN).
    mounting_known : what the user knows, as in the template-family tier (``benchmark.user_hints``): the
        hemisphere of a one-hemisphere section and the mounting (these sections are cut face up:
        ``flipped=False``). False gives only the hemisphere hint: a whole section then has two nearly
        symmetric placements, the right one and its mirror across the midline.
    refinement_floors : also refine each section's truth with the pipeline's own intensity refinement
        (:func:`refinement_floor`, about 0.3 s a section): the "refine floor" of the report, how far from
        the registered truth the objective itself lies.
    params : :class:`~siibra_anchor.AnchorParams` of the "default" column's anchoring and of the refine floor
        (default: the defaults); the raw-pixel baseline always runs with the defaults.
    cut_known : also anchor each section with the default encoder and the cutting-plane hint
        (``anchor(cut=...)``: the template plane it was cut along, before its tilt of up to 12 degrees): the
        "cut_known" column, what a user who says "coronal" gets.

    Returns a JSON-safe dict: ``{"split", "n_per_volume", "seed", "volumes", "missing", "default",
    "raw_pixel", "by_contrast": {contrast: {"default", "raw_pixel", "truth_uncertainty_mm"}},
    "truth_uncertainty_mm", "cases": [...]}``; errors of refused sections are ``inf`` in the summaries
    and ``None`` in the cases.
    """
    import siibra_anchor as sa

    from ..errors import AnchorError, LowConfidenceWarning
    from .simulate import section_error

    n = n_per_volume if n_per_volume is not None else (3 if quick else 12)
    sections, info = real_sections(
        real_data_dir, split=split, n_per_volume=n, seed=seed, require_all=require_all, volumes=volumes
    )
    methods = tier_methods(reference, encoder, raw_baseline)
    ref, enc = methods["default"]
    if cut_known:  # the default encoder again, told the cutting plane
        methods["cut_known"] = methods["default"]
    items: Any = sections
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(sections, desc="real-anatomy sections", unit="section")
    rows = []
    for rs in items:
        mask = rs.section.mask
        row: dict[str, Any] = {
            **asdict(rs.case),
            "name": rs.section.name,
            "contrast": rs.contrast,
            "subject": rs.subject,
            "hemisphere_hint": rs.hemisphere,
            "shape": list(rs.section.shape),
            "truth_uncertainty_mm": section_error(rs.second_affine, rs.true_affine, mask),
        }
        if refinement_floors:
            fl = refinement_floor(rs.section, rs.true_affine, ref, enc, params=params)
            row.update({"refine_floor_mm": fl["floor_mm"], "truth_nmi_gain": fl["gain_truth"],
                        "refined_truth_nmi_gain": fl["gain_refined"]})  # fmt: skip
        for key in ("default", "raw_pixel", *(("cut_known",) if cut_known else ())):
            if key not in methods:
                row.update({f"{key}_error_mm": float("nan"), f"{key}_confidence": float("nan"), f"{key}_refused": None,
                            f"{key}_time_s": float("nan"), f"{key}_affine": None, f"{key}_outcome": "not run"})  # fmt: skip
                continue
            r, e = methods[key]
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():  # the confidence is recorded; no warning per section
                    warnings.simplefilter("ignore", LowConfidenceWarning)
                    res = sa.anchor(rs.section, reference=r, encoder=e, seed=0, hemisphere=rs.hemisphere,
                                    flipped=False if mounting_known else None,
                                    params=params if key != "raw_pixel" else None,
                                    cut=rs.case.orientation if key == "cut_known" else None)  # fmt: skip
                err, conf, why = section_error(res.affine, rs.true_affine, mask), float(res.confidence), None
                row[f"{key}_affine"] = np.asarray(res.affine, float).tolist()
                row[f"{key}_outcome"] = failure_kind(res.affine, rs.true_affine, mask)
                row[f"{key}_hints_unmet"] = bool(res.diagnostics.get("hints_unmet"))
            except AnchorError as exc:
                err, conf, why = float("inf"), 0.0, f"{type(exc).__name__}: {exc}"
                row[f"{key}_affine"] = None
                row[f"{key}_outcome"] = "refused"
            row[f"{key}_error_mm"] = err
            row[f"{key}_confidence"] = conf
            row[f"{key}_refused"] = why
            row[f"{key}_time_s"] = time.perf_counter() - t0
        rows.append(row)

    report = summarise_real_tier(rows, info, split=split, n_per_volume=n, seed=seed)
    report["hints"] = "hemisphere and mounting" if mounting_known else "hemisphere only"
    if cut_known:
        report["hints_cut_known"] = report["hints"] + ", and the cutting plane"
    if encoder is not None:
        report["encoder_name"] = encoder_name or "(given encoder)"
    return report


def summarise_real_tier(
    rows: list[dict[str, Any]], info: dict[str, Any], split: str, n_per_volume: int, seed: int
) -> dict[str, Any]:
    """The report of :func:`run_real_tier` from its per-section rows (``report["cases"]`` of one or more
    runs: refused sections may carry ``None`` errors) and the volumes' info."""
    rows = [{k: (float("inf") if k.endswith("_error_mm") and v is None else v) for k, v in r.items()} for r in rows]
    # the columns: default and raw pixels always (NaN where skipped); "cut_known" where the run measured it
    keys = ("default", "raw_pixel", *(("cut_known",) if any("cut_known_error_mm" in r for r in rows) else ()))

    def stats(sel: list[dict[str, Any]], key: str) -> dict[str, Any]:
        sel = [r for r in sel if r.get(f"{key}_outcome") != "not run"]  # a column skipped in the run
        return _summary(
            [r[f"{key}_error_mm"] for r in sel],
            [r[f"{key}_refused"] is not None for r in sel],
            [r[f"{key}_time_s"] for r in sel],
        )

    report: dict[str, Any] = {
        "split": split,
        "n_per_volume": n_per_volume,
        "seed": seed,
        "fail_mm": FAIL_MM,
        "encoder_name": _default_name(),
        "volumes": info["volumes"],
        "missing": info["missing"],
        **{key: stats(rows, key) for key in keys},
        "truth_uncertainty_mm": _median([r["truth_uncertainty_mm"] for r in rows]),
        "refine_floor_mm": _floor_median(rows),
        "outcomes": {
            key: {
                o: sum(r.get(f"{key}_outcome") == o for r in rows)
                for o in sorted({str(r.get(f"{key}_outcome")) for r in rows})
            }
            for key in keys
        },
        "by_contrast": {},
    }

    def group(sel: list[dict[str, Any]]) -> dict[str, Any]:  # a row of the table: a subset's figures
        return {
            **{key: stats(sel, key) for key in keys},
            "truth_uncertainty_mm": _median([r["truth_uncertainty_mm"] for r in sel]),
            "refine_floor_mm": _floor_median(sel),
        }

    confirmed = truth_confirmed(info["volumes"])
    on_confirmed = [r for r in rows if r.get("volume") in confirmed]
    report["truth_confirmed"] = {"volumes": confirmed, "max_peak_mm": TRUTH_PEAK_MM, **group(on_confirmed)}
    for c in sorted({r["contrast"] for r in rows}):
        report["by_contrast"][c] = group([r for r in rows if r["contrast"] == c])
    from .benchmark import calibration_report

    for key, name in (("default", "calibration"), ("cut_known", "calibration_cut_known")):
        if key in keys:
            report[name] = calibration_report(
                [r[f"{key}_confidence"] for r in rows], [r[f"{key}_error_mm"] for r in rows]
            )
    if on_confirmed:
        report["truth_confirmed"]["calibration"] = calibration_report(
            [r["default_confidence"] for r in on_confirmed], [r["default_error_mm"] for r in on_confirmed]
        )
    report["cases"] = [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows
    ]
    return report


def truth_confirmed(volumes: dict[str, Any]) -> list[str]:
    """The volumes (of :func:`real_sections`' info) whose truth the template confirms: the template NMI
    peaks within :data:`TRUTH_PEAK_MM` of it along every axis (sorted names; a volume without the check
    is not confirmed)."""
    return sorted(
        name
        for name, v in volumes.items()
        if v.get("template_shift") and max(abs(float(x)) for x in v["template_shift"]["shift_mm"]) <= TRUTH_PEAK_MM
    )


def failure_kind(affine: NDArray, true_affine: NDArray, mask: NDArray) -> str:
    """What a placement got wrong: "correct" (<= FAIL_MM), else the nearest of "turned-180" (the plane right,
    the image rotated by 180 degrees in it), "mirrored-midline" (across x = 0), "mirrored-mounting"
    (the image flipped left-right) when within FAIL_MM of it, else "wrong-plane"."""
    from .simulate import section_error

    if section_error(affine, true_affine, mask) <= FAIL_MM:
        return "correct"
    h, w = mask.shape
    turn = np.diag([-1.0, -1.0, 1.0, 1.0])
    turn[:2, 3] = (h - 1, w - 1)
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, w - 1.0
    t = np.asarray(true_affine, float)
    alts = {
        "turned-180": t @ turn,
        "mirrored-midline": np.diag([-1.0, 1.0, 1.0, 1.0]) @ t,
        "mirrored-mounting": t @ flip,
    }
    errs = {k: section_error(affine, a, mask) for k, a in alts.items()}
    best = min(errs, key=lambda k: errs[k])
    return best if errs[best] <= FAIL_MM else "wrong-plane"


def _inf_above(x: float, limit: float = 1e11) -> float:
    return float("inf") if x >= limit else x


def _median(x: list[float]) -> float:
    return float(np.median(x)) if len(x) else float("nan")


def _floor_median(rows: list[dict[str, Any]]) -> float:
    """Median refinement floor of the rows that have one (NaN when none: a run without floors)."""
    return _median([r["refine_floor_mm"] for r in rows if r.get("refine_floor_mm") is not None])


def _default_name() -> str:
    from ..encoders import default_manifest

    return str(default_manifest()["default"])


def summary_cells(s: dict[str, Any]) -> str:
    """Five markdown cells of a :func:`_summary`: median | p90 | failures/n | refusals | s per section."""
    if not s.get("n"):
        return "- | - | - | - | -"
    return (
        f"{s['median_mm']:.1f} | {s['p90_mm']:.1f} | {s['failures']}/{s['n']} | {s['refusals']} | "
        f"{s['time_median_s']:.1f}"
    )


def format_real_tier(report: dict[str, Any]) -> str:
    """A markdown table of :func:`run_real_tier`'s figures: per contrast and overall, default beside raw pixels."""

    lines = [
        f"Real-anatomy tier ({report['split']} split, {report['n_per_volume']} sections per volume, seed "
        f"{report['seed']}; encoder {report['encoder_name']}; hints: {report.get('hints', 'hemisphere only')}). "
        "Errors in mm against the registered truth; "
        f"failures: > {report['fail_mm']:g} mm or refused; truth unc.: median distance between two "
        "independent registrations over the section; refine floor: median distance from the truth of the "
        "truth itself after the pipeline's intensity refinement (the objective's own optimum near it).",
        "",
        "| contrast | n | truth unc. | refine floor | default median | p90 | failures | refusals | s/section "
        "| raw-pixel median | p90 | failures | refusals | s/section |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = [*report["by_contrast"].items(), ("**all**", report)]
    tc: dict[str, Any] = report.get("truth_confirmed") or {}
    confirmed_row: list[tuple[str, dict[str, Any]]] = []
    if tc and tc["default"].get("n") and len(tc["volumes"]) < len(report["volumes"]):
        n_vol = len(tc["volumes"])
        confirmed_row = [(f"all, truth confirmed by the template ({n_vol} volume{'s' * (n_vol != 1)})", tc)]
    for name, g in [*groups, *confirmed_row]:
        n = g["default"].get("n", 0)
        fl = g.get("refine_floor_mm", float("nan"))
        floor = f"{fl:.2f}" if fl is not None and np.isfinite(fl) else "-"
        lines.append(
            f"| {name} | {n} | {g['truth_uncertainty_mm']:.2f} | {floor} | {summary_cells(g['default'])} | "
            f"{summary_cells(g['raw_pixel'])} |"
        )
    if report["volumes"]:
        lines += [
            "",
            "| volume | subject | contrast | registration metric (A / B) | spread A-B mean / max mm | scale "
            "| template NMI peaks at x / y / z mm |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, v in report["volumes"].items():
            m = v["registration_metric"]
            sp = v["registration_spread"]
            ts = v.get("template_shift")
            shift = " / ".join(f"{x:+.0f}" for x in ts["shift_mm"]) if ts else "-"
            lines.append(
                f"| {name} | {v['subject']} | {v['contrast']} | {m[0]:.3f} / {m[1]:.3f} | "
                f"{sp['mean_mm']:.2f} / {sp['max_mm']:.2f} | {v['scale']:.3f} | {shift} |"
            )
        lines += [
            "",
            "Template NMI peak: the truth shifted along each template axis (+-16 mm, 2 mm steps) against the "
            "template directly (`real_truth.template_shift_check`); 0 where the template agrees with the truth. "
            "A peak several mm away says the truth itself may be off by that much, which the spread between "
            "the two registrations cannot show.",
        ]
        if confirmed_row:
            left = sorted(set(report["volumes"]) - set(tc["volumes"]))
            lines[-1] += (
                f' The row "truth confirmed by the template" counts only the volumes whose peak lies within '
                f"{tc['max_peak_mm']:g} mm on every axis (not {', '.join(left)}); the tier's figures are the "
                "**all** row."
            )
            cal = tc.get("calibration")
            if cal:
                lines[-1] += (
                    f" On those volumes the default's confidence: ECE {cal['ece']:.3f}, false alarms "
                    f"{cal['successes_with_confidence_lt_0.5']}, confident failures {cal['failures_with_confidence_ge_0.5']}."
                )
    for key, counts in report.get("outcomes", {}).items():
        known = {o: n for o, n in counts.items() if o != "None"}
        if known:
            lines += ["", f"Outcomes ({key}): " + ", ".join(f"{o} {n}" for o, n in known.items())]
    if report.get("calibration"):
        from .benchmark import calibration_lines

        lines += ["", "```", *calibration_lines(report["calibration"]), "```"]
    if "cut_known" in report:
        lines += [
            "",
            f"With the cutting plane known too (`anchor(cut=...)`, hints: {report.get('hints_cut_known', '')}; the "
            "same sections, default encoder):",
            "",
            "| contrast | n | median | p90 | failures | refusals | s/section | without the hint: median | failures |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, g in [*groups, *confirmed_row]:
            d, c = g["default"], g["cut_known"]
            lines.append(
                f"| {name} | {c.get('n', 0)} | {summary_cells(c)} | {d['median_mm']:.1f} | {d['failures']}/{d['n']} |"
            )
        if report.get("calibration_cut_known"):
            from .benchmark import calibration_lines

            lines += ["", "```", *calibration_lines(report["calibration_cut_known"]), "```"]
    if report["missing"]:
        lines += ["", "Missing volumes (not scored): " + ", ".join(sorted(report["missing"]))]
    return "\n".join(lines)


def failure_rows(report: dict[str, Any], key: str = "default") -> list[dict[str, Any]]:
    """The cases of a real-tier report that ``key`` ("default" or "raw_pixel") failed: placed further than
    :data:`FAIL_MM` from the truth or refused, by the outcome :func:`failure_kind` gave each (a column that
    was not run has no failures)."""
    return [c for c in report["cases"] if c.get(f"{key}_outcome") not in ("correct", "not run")]


def failure_figure(
    report: dict[str, Any],
    real_data_dir: str | Path | None,
    out_png: str | Path,
    key: str = "default",
    cases: list[dict[str, Any]] | None = None,
) -> Path:
    """QC figure of the sections a real-tier run failed (or of ``cases``): three panels per section (two
    sections to a line): the section as cut, the template on its true plane and the template where the anchoring put it, with the
    error, the confidence and the kind of failure.

    The sections are cut again from ``real_data_dir`` with the report's seed and counts (the same cases
    come back: :func:`real_sections` is deterministic); the anchored placement is the report's stored
    affine, so nothing is anchored again. Needs matplotlib; writes ``out_png`` atomically and returns it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..cache import save_figure
    from ..errors import InvalidParameterError
    from ..planes import cut_plane
    from ..templates import load_volume

    rows = failure_rows(report, key) if cases is None else list(cases)
    if not rows:
        raise InvalidParameterError(f"no {key} failures in this report: nothing to draw")
    wanted = {r["name"] for r in rows}
    vols = sorted({r["volume"] for r in rows})
    sections, _ = real_sections(
        real_data_dir, split=report["split"], n_per_volume=report["n_per_volume"], seed=report["seed"], volumes=vols
    )
    by_name = {s.section.name: s for s in sections if s.section.name in wanted}
    missing = wanted - set(by_name)
    if missing:
        raise InvalidParameterError(
            f"sections {sorted(missing)} are not cut from {real_data_dir!r} with seed {report['seed']}: "
            "pass the data folder the report was made from"
        )
    td, ta = load_volume("mni152")
    per_line = 2 if len(rows) > 1 else 1  # two sections side by side: (section, true, anchored) x 2
    n_lines = -(-len(rows) // per_line)
    fig, axs = plt.subplots(n_lines, 3 * per_line, figsize=(7.5 * per_line, 2.5 * n_lines), squeeze=False)
    for ax in axs.ravel()[3 * len(rows) :]:
        ax.axis("off")
    for i, row in enumerate(rows):
        ax_row = axs[i // per_line, 3 * (i % per_line) : 3 * (i % per_line) + 3]
        rs = by_name[row["name"]]
        img, mask = np.asarray(rs.section.gray, float), rs.section.mask
        shape = mask.shape
        panels = [
            ("section", np.where(mask, img, np.nan)),
            ("template, true plane", cut_plane(td, ta, rs.true_affine, shape)),
        ]
        if row.get(f"{key}_affine") is not None:
            panels.append(("template, anchored", cut_plane(td, ta, np.asarray(row[f"{key}_affine"], float), shape)))
        else:
            panels.append(("refused", np.full(shape, np.nan)))
        err = row.get(f"{key}_error_mm")
        panels[0] = (
            f"{row['name']}\n{'refused' if err is None else f'{err:.1f} mm'}, conf {row.get(f'{key}_confidence', 0.0):.2f}, "
            f"{row.get(f'{key}_outcome', '?')}",
            panels[0][1],
        )
        for j, (ax, (title, im)) in enumerate(zip(ax_row, panels, strict=True)):
            ax.imshow(im, cmap="gray")
            if j:  # the template panels: the section's outline on them
                ax.contour(mask, levels=[0.5], colors="r", linewidths=0.5)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    return save_figure(fig, out_png, dpi=70)


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.evaluation.real_tier failures REPORT.json --real-data DIR --out PNG``: the QC
    figure of a run's failures (REPORT: a benchmark JSON with its ``real_anatomy`` tier, or a tier's own).
    ``python -m siibra_anchor.evaluation.real_tier registration --real-data DIR --out PNG [--split S]``: the
    QC figure of the volumes' truth registrations."""
    import argparse
    import json
    import sys

    from ..errors import AnchorError

    ap = argparse.ArgumentParser(prog="python -m siibra_anchor.evaluation.real_tier", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("failures", help="QC figure of the sections a real-tier run failed")
    f.add_argument("report", help="benchmark.json (with real_anatomy) or a real-tier report JSON")
    f.add_argument(
        "--real-data", default=None, metavar="DIR", help="the folder of the volumes (default: committed only)"
    )
    f.add_argument("--out", required=True, help="PNG to write")
    f.add_argument("--key", default="default", choices=("default", "raw_pixel"))
    g = sub.add_parser("registration", help="QC figure of the volumes' truth registrations")
    g.add_argument(
        "--real-data", default=None, metavar="DIR", help="the folder of the volumes (default: committed only)"
    )
    g.add_argument("--out", required=True, help="PNG to write")
    g.add_argument("--split", default=None, choices=("test", "calibration"), help="one split only (default: all)")
    ns = ap.parse_args(args)
    if ns.cmd == "registration":
        try:
            png, truths = registration_qc(ns.real_data, ns.out, split=ns.split)
        except AnchorError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        sys.stdout.write(f"wrote {png} ({len(truths)} volumes: {', '.join(truths)})\n")
        from .real_data import real_volume, real_volume_path

        for name, truth in truths.items():
            ts = _template_shift(str(real_volume_path(real_volume(name), ns.real_data)), truth)
            sys.stdout.write(
                f"  {name}: spread {truth['spread']['mean_mm']:.2f} mm; template NMI peaks at "
                f"{' / '.join(f'{x:+.0f}' for x in ts['shift_mm'])} mm (x / y / z) from the truth\n"
            )
        return 0
    try:
        doc = json.loads(Path(ns.report).read_text())
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"error: cannot read the report {ns.report}: {exc}\n")
        return 2
    report = doc.get("real_anatomy", doc)
    if not isinstance(report, dict) or "cases" not in report:
        sys.stderr.write(f"error: {ns.report} holds no real-anatomy tier (run the benchmark with --real-data DIR)\n")
        return 2
    rows = failure_rows(report, ns.key)
    try:
        out = failure_figure(report, ns.real_data, ns.out, key=ns.key, cases=rows)
    except AnchorError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(f"wrote {out} ({len(rows)} failed sections)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

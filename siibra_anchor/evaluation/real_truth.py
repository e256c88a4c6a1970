"""Truth for real brains: a 12-dof mutual-information affine of each volume onto the reference template.

An individual brain is not the template, so the "true" place of one of its sections in MNI space is what
a registration says it is. :func:`register_to_template` estimates that affine (SimpleITK, Mattes mutual
information, a similarity transform first, then the full 12-parameter affine, coarse to fine; only the
template's brain and a margin around it count, so the skull and neck of whole-head scans do not pull).
:func:`real_truth` runs two *independent* registrations (different start, histogram bins, sampling, seed
and margin around the brain that the metric sees) and reports both, the metric of each (the residual: how well the volume matches the template after
the affine), and their disagreement over the template's brain (the truth's own uncertainty). An affine
leaves the subject's nonlinear differences, so errors of a few mm against it are within its reach.

Results are cached on disk (the user cache, key = the volume's sha256 and the parameters).
SimpleITK is optional (``pip install siibra-anchor[benchmark]``); it is imported when called.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "RegistrationRun",
    "RUNS",
    "register_to_template",
    "register_rigid",
    "real_truth",
    "brain_masked",
    "affine_spread_mm",
    "template_shift_check",
    "registration_figure",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrationRun:
    """How one registration is set up.

    init : "moments" (centres of intensity mass matched) or "foreground" (centres of the foreground masks
        matched: a start that does not weight bright tissue); bins : Mattes histogram bins;
    sampling : fraction of voxels sampled at random; seed : of that sampling;
    levels : shrink factors of the pyramid (coarse to fine); iterations : per level and stage;
    margin_mm : the metric samples the template's brain grown by this much (for a whole-head scan the
        margin decides how much of the dark CSF, skull and scalp around the brain the metric sees).
    """

    init: str = "moments"
    bins: int = 32
    sampling: float = 0.2
    seed: int = 1
    levels: tuple[int, ...] = (4, 2, 1)
    iterations: int = 200
    margin_mm: float = 8.0


#: The two independent registrations whose spread measures the truth's uncertainty. They differ in start,
#: histogram, sampling *and* the region the metric sees: two runs that differed only in the first three
#: agreed to 0.6 mm on the calibration subjects' whole-head scans while their shared mask pulled both to
#: the same wrong scale (0.87, against 1.10 with a 3 mm margin); see docs/real-anatomy.md.
RUNS = (
    RegistrationRun(init="moments", bins=32, sampling=0.2, seed=1, margin_mm=8.0),
    RegistrationRun(init="foreground", bins=48, sampling=0.3, seed=7, margin_mm=3.0),
)


def _normalised(data: NDArray) -> NDArray:
    d = np.asarray(data, np.float32)
    pos = d[d > 0]
    hi = float(np.percentile(pos, 99.5)) if pos.size else 1.0
    return np.clip(d / max(hi, 1e-6), 0.0, 1.5).astype(np.float32)


def _registration_method(sitk: Any, r: Any, fixed_mask: Any = None) -> Any:
    """A SimpleITK Mattes-MI registration of run ``r``'s settings (bins, sampling, seed, iterations,
    pyramid levels), the metric restricted to ``fixed_mask`` when given."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(r.bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(r.sampling, r.seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, r.iterations, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(r.levels))
    reg.SetSmoothingSigmasPerLevel([max(0.0, lv / 2.0) for lv in r.levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _start(sitk: Any, kind: Any, init: str, fimg: Any, mimg: Any, fixed: tuple, moving: tuple) -> Any:
    """The registration's starting transform of class ``kind``: centred by image moments (``init`` ==
    "moments") or by the centres of the two volumes' foregrounds. fixed, moving: (data, affine)."""
    if init == "moments":
        return sitk.CenteredTransformInitializer(fimg, mimg, kind(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    start = kind()
    cf = _foreground_centre(fixed[0], np.asarray(fixed[1], float))
    cm = _foreground_centre(moving[0], np.asarray(moving[1], float))
    start.SetCenter(tuple(float(v) for v in cf))
    start.SetTranslation(tuple(float(v) for v in cm - cf))
    return start


def _foreground_centre(data: NDArray, aff: NDArray) -> NDArray:
    """World mm centre of the voxels above 10 % of the robust maximum."""
    d = _normalised(data)
    ijk = np.argwhere(d > 0.1).astype(float)
    c = ijk.mean(axis=0) if len(ijk) else (np.asarray(d.shape, float) - 1) / 2
    return np.asarray(aff, float)[:3, :3] @ c + np.asarray(aff, float)[:3, 3]


def _to_matrix(tx: Any) -> NDArray:
    """(4, 4) of a SimpleITK transform (fixed -> moving points), read off by least squares (exact)."""
    pts = np.random.default_rng(0).uniform(-90.0, 90.0, (200, 3))
    img = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in pts])
    sol, *_ = np.linalg.lstsq(np.c_[pts, np.ones(len(pts))], img, rcond=None)
    m = np.eye(4)
    m[:3, :] = sol.T
    return m


def register_to_template(
    moving: str | Path | tuple[NDArray, NDArray],
    fixed: str = "mni152",
    run: RegistrationRun | None = None,
    margin_mm: float | None = None,
) -> dict[str, Any]:
    """12-dof affine of ``moving`` onto ``fixed`` by Mattes mutual information.

    moving : NIfTI/MGH path, or ``(data (I, J, K), affine (4, 4) voxel -> mm)``; fixed : a key of
    :data:`siibra_anchor.templates.VOLUMES` or a path (a brain-extracted template).
    margin_mm : the metric samples the template's brain grown by this much (default: ``run.margin_mm``).

    Returns ``{"moving_to_fixed": (4, 4) list, "metric": float (lower is better), "time_s": float,
    "run": dict}``; ``T @ [x, y, z, 1]`` is where the structure at ``(x, y, z)`` of ``moving`` lies in
    ``fixed``.
    """
    from ..templates import load_volume
    from .baselines.sitk import _sitk, _volume_image

    r = run or RUNS[0]
    margin_mm = r.margin_mm if margin_mm is None else float(margin_mm)
    if r.init not in ("moments", "foreground"):
        from ..errors import InvalidParameterError

        raise InvalidParameterError(f"run.init must be 'moments' or 'foreground', got {r.init!r}")
    sitk = _sitk()
    t0 = time.perf_counter()
    fd, fa = load_volume(fixed)
    md, ma = moving if isinstance(moving, tuple) else load_volume(moving)
    fimg = _volume_image(sitk, _normalised(fd), np.asarray(fa, float))
    mimg = _volume_image(sitk, _normalised(md), np.asarray(ma, float))
    fm = _volume_image(sitk, _grown_brain(fixed, margin_mm).astype(np.float32), np.asarray(fa, float))
    fm = sitk.Cast(fm, sitk.sitkUInt8)

    start = _start(sitk, sitk.Similarity3DTransform, r.init, fimg, mimg, (fd, fa), (md, ma))

    reg = _registration_method(sitk, r, fm)
    reg.SetInitialTransform(start, inPlace=False)
    sim = reg.Execute(fimg, mimg)
    aff = sitk.AffineTransform(3)
    sim_m = _to_matrix(sim)
    aff.SetMatrix(tuple(float(v) for v in sim_m[:3, :3].ravel()))
    aff.SetTranslation(tuple(float(v) for v in sim_m[:3, 3]))
    reg = _registration_method(sitk, r, fm)
    reg.SetInitialTransform(aff, inPlace=False)
    tx = reg.Execute(fimg, mimg)  # maps fixed points to moving points
    metric = float(reg.GetMetricValue())
    out = np.linalg.inv(_to_matrix(tx))
    return {
        "moving_to_fixed": out.tolist(),
        "metric": metric,
        "time_s": time.perf_counter() - t0,
        "run": asdict(r),
    }


def affine_spread_mm(a: NDArray, b: NDArray, fixed: str = "mni152", step: int = 4) -> dict[str, float]:
    """How far two moving -> fixed affines put the same anatomy apart, over the template's brain.

    Every ``step``-th brain voxel of ``fixed`` is mapped back by ``a`` into the moving volume and forward
    again by ``b``; returns the mean, 90th percentile and max of the distances (mm).
    """
    from ..reference import volume_brain_mask
    from ..templates import load_volume

    fd, fa = load_volume(fixed)
    ijk = np.argwhere(volume_brain_mask(fd))[::step].astype(float)
    pts = ijk @ np.asarray(fa, float)[:3, :3].T + np.asarray(fa, float)[:3, 3]
    m = np.asarray(b, float) @ np.linalg.inv(np.asarray(a, float))
    d = np.linalg.norm(pts @ m[:3, :3].T + m[:3, 3] - pts, axis=1)
    return {"mean_mm": float(d.mean()), "p90_mm": float(np.percentile(d, 90)), "max_mm": float(d.max())}


def template_shift_check(
    moving: str | Path, moving_to_fixed: NDArray, fixed: str = "mni152", max_mm: float = 16.0, step_mm: float = 2.0
) -> dict[str, Any]:
    """A check of a truth that owes nothing to anchoring or to the registration's own runs: the volume is
    mapped onto the template by ``moving_to_fixed`` shifted along each template axis in turn (-``max_mm``
    to +``max_mm``, every ``step_mm``), and the shift where the NMI with the template (over every
    eighth voxel of its brain) peaks is returned per axis.

    A truth the template agrees with peaks at 0 (within a voxel or two); two registrations that agree with
    each other can still both be off, which the spread between them cannot show.

    Returns ``{"shift_mm": [x, y, z], "max_abs_mm", "nmi_at_truth", "nmi_at_peak": [x, y, z]}``.
    """
    from ..reference import volume_brain_mask
    from ..refine import nmi
    from ..templates import load_volume

    fd, fa = load_volume(fixed)
    data, moving_affine = load_volume(moving)
    data = _normalised(data)  # once, as the registrations scale it (nmi puts values above 1 in its last bin)
    ijk = np.argwhere(volume_brain_mask(fd))[::8]  # every eighth brain voxel
    pts = ijk @ np.asarray(fa, float)[:3, :3].T + np.asarray(fa, float)[:3, 3]
    ref = _normalised(fd)[tuple(ijk.T)]
    to_vox = np.linalg.inv(moving_affine) @ np.linalg.inv(np.asarray(moving_to_fixed, float))

    def score(shift: NDArray) -> float:
        vox = (pts - shift) @ to_vox[:3, :3].T + to_vox[:3, 3]
        return nmi(ref, ndimage.map_coordinates(data, vox.T, order=1, mode="constant", cval=0.0))

    at_truth = score(np.zeros(3))
    steps = np.arange(-max_mm, max_mm + 1e-9, step_mm)
    best, peaks = [], []
    for axis in range(3):
        vals = []
        for d in steps:
            shift = np.zeros(3)
            shift[axis] = d
            vals.append(at_truth if d == 0 else score(shift))
        k = int(np.argmax(vals))
        best.append(float(steps[k]))
        peaks.append(float(vals[k]))
    return {
        "shift_mm": best,
        "max_abs_mm": float(np.max(np.abs(best))),
        "nmi_at_truth": float(at_truth),
        "nmi_at_peak": peaks,
    }


def register_rigid(moving: str | Path, fixed: str | Path, run: RegistrationRun | None = None) -> dict[str, Any]:
    """6-dof (rigid) Mattes mutual-information registration of two volumes of the *same* subject.

    Returns ``{"moving_to_fixed": (4, 4) list, "metric": float, "time_s": float, "run": dict}`` as
    :func:`register_to_template` does; the whole of ``fixed`` is sampled (both are heads or both brains).
    """
    from ..templates import load_volume
    from .baselines.sitk import _sitk, _volume_image

    r = run or RUNS[0]
    sitk = _sitk()
    t0 = time.perf_counter()
    fd, fa = load_volume(fixed)
    md, ma = load_volume(moving)
    fimg = _volume_image(sitk, _normalised(fd), np.asarray(fa, float))
    mimg = _volume_image(sitk, _normalised(md), np.asarray(ma, float))
    start = _start(sitk, sitk.Euler3DTransform, r.init, fimg, mimg, (fd, fa), (md, ma))
    reg = _registration_method(sitk, r)
    reg.SetInitialTransform(start, inPlace=False)
    tx = reg.Execute(fimg, mimg)
    return {
        "moving_to_fixed": np.linalg.inv(_to_matrix(tx)).tolist(),
        "metric": float(reg.GetMetricValue()),
        "time_s": time.perf_counter() - t0,
        "run": asdict(r),
    }


@lru_cache(maxsize=4)
def _grown_brain(fixed: str, grow_mm: float) -> NDArray:
    """The brain mask of template ``fixed`` grown by ``grow_mm`` (read-only; its voxels are ``fixed``'s):
    the region a registration's metric samples, and the region :func:`brain_masked` keeps."""
    from ..reference import volume_brain_mask
    from ..templates import load_volume

    fd, fa = load_volume(fixed)
    vsp = float(np.mean(np.linalg.norm(np.asarray(fa, float)[:3, :3], axis=0)))
    out = ndimage.binary_dilation(volume_brain_mask(fd), iterations=max(1, int(round(grow_mm / vsp))))
    out.setflags(write=False)
    return out


def brain_masked(
    data: NDArray, affine: NDArray, moving_to_fixed: NDArray, fixed: str = "mni152", grow_mm: float = 3.0
) -> NDArray:
    """``data`` (a subject volume, voxel -> mm ``affine``) with every voxel zeroed that ``moving_to_fixed``
    does not put inside the template's brain grown by ``grow_mm``: a skull strip by the current estimate of
    the registration, for whole-head scans whose skull and neck pull a brain-to-brain registration."""
    from ..planes import sample_volume
    from ..templates import load_volume

    ta = load_volume(fixed)[1]
    brain = _grown_brain(fixed, float(grow_mm))
    d = np.asarray(data, np.float32)
    ii = np.stack(np.meshgrid(*[np.arange(n) for n in d.shape], indexing="ij"), -1).reshape(-1, 3).astype(float)
    a, t = np.asarray(affine, float), np.asarray(moving_to_fixed, float)
    world = ii @ a[:3, :3].T + a[:3, 3]
    inside = sample_volume(brain.astype(np.float32), ta, world @ t[:3, :3].T + t[:3, 3], order=0).reshape(d.shape)
    return np.where(inside > 0.5, d, 0.0).astype(np.float32)


def real_truth(
    path: str | Path,
    fixed: str = "mni152",
    cache: bool = True,
    via: str | Path | None = None,
    mask_iterations: int = 0,
    via_mask_iterations: int = 0,
) -> dict[str, Any]:
    """The registered truth of one volume, with its own uncertainty (cached on disk).

    via : a volume of the same subject whose registration to the template is more reliable (a whole-brain
        T1 for a PD or T2 volume with a short field of view): the truth is then the rigid registration of
        ``path`` onto ``via`` followed by ``via``'s truth, run A after A and run B after B.
    mask_iterations : for a whole-head scan, register again this many times with the volume skull-stripped
        by the run's own previous estimate (:func:`brain_masked`). Runs A and B iterate apart, each from its
        own start, so their spread still measures the truth's uncertainty.
    via_mask_iterations : ``mask_iterations`` of ``via``'s own truth (its manifest entry's).

    Returns ``{"moving_to_fixed": (4, 4) list (run A, the truth), "second": (4, 4) list (run B),
    "metric": [A, B], "spread": {"mean_mm", "p90_mm", "max_mm"} (A vs B over the template's brain),
    "time_s": [A, B], "runs": [...], "via": file name or None}``.
    """
    from ..cache import atomic_write_text, cache_dir, cache_key, file_sha256

    p = Path(path)
    params = {"sha256": file_sha256(p), "fixed": fixed, "runs": [asdict(r) for r in RUNS], "v": 1}
    if via is not None:
        params["via"] = file_sha256(via)
    if mask_iterations:
        params["mask_iterations"] = int(mask_iterations)
    if via is not None and via_mask_iterations:
        params["via_mask_iterations"] = int(via_mask_iterations)
    entry = cache_dir("real-truth") / f"{cache_key(params)}.json"
    if cache and entry.is_file():
        try:
            doc = json.loads(entry.read_text())
            np.asarray(doc["moving_to_fixed"], float).reshape(4, 4)
            return dict(doc)
        except (ValueError, KeyError):  # a damaged entry is recomputed and rewritten
            log.warning("ignoring damaged cache entry %s", entry)
    if via is None:
        a = register_to_template(p, fixed, RUNS[0])
        b = register_to_template(p, fixed, RUNS[1])
    else:
        base = real_truth(via, fixed, cache, mask_iterations=via_mask_iterations)
        a = register_rigid(p, via, RUNS[0])
        b = register_rigid(p, via, RUNS[1])
        a["moving_to_fixed"] = (np.asarray(base["moving_to_fixed"]) @ np.asarray(a["moving_to_fixed"])).tolist()
        b["moving_to_fixed"] = (np.asarray(base["second"]) @ np.asarray(b["moving_to_fixed"])).tolist()
    if mask_iterations and via is None:
        from ..templates import load_volume

        md, ma = load_volume(p)
        for _ in range(int(mask_iterations)):
            a = register_to_template(
                (brain_masked(md, ma, np.asarray(a["moving_to_fixed"]), fixed), ma), fixed, RUNS[0]
            )
            b = register_to_template(
                (brain_masked(md, ma, np.asarray(b["moving_to_fixed"]), fixed), ma), fixed, RUNS[1]
            )
    doc = {
        "volume": p.name,
        "fixed": fixed,
        "via": None if via is None else Path(via).name,
        "moving_to_fixed": a["moving_to_fixed"],
        "second": b["moving_to_fixed"],
        "metric": [a["metric"], b["metric"]],
        "spread": affine_spread_mm(np.asarray(a["moving_to_fixed"]), np.asarray(b["moving_to_fixed"]), fixed),
        "time_s": [a["time_s"], b["time_s"]],
        "runs": [a["run"], b["run"]],
        "mask_iterations": int(mask_iterations) if via is None else 0,
    }
    if cache:
        atomic_write_text(entry, json.dumps(doc, indent=1))
    log.info(
        "registered %s onto %s: metric %.4f / %.4f, spread %.2f mm",
        p.name,
        fixed,
        *doc["metric"],
        doc["spread"]["mean_mm"],
    )
    return doc


def registration_figure(
    paths: dict[str, str | Path],
    out_png: str | Path,
    fixed: str = "mni152",
    truths: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """QC figure: each volume resampled into ``fixed`` by its truth (grey), the template's outline (red).

    paths : {label: volume path}; one row per volume, an axial and a coronal plane through the template.
    truths : {label: a :func:`real_truth` result} to draw (a truth through another volume, or skull-stripped,
        as the manifest says: :func:`siibra_anchor.evaluation.real_tier.volume_truth`); without it each
        volume is registered directly.
    Needs matplotlib; writes ``out_png`` atomically and returns its path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..cache import save_figure
    from ..planes import sample_volume
    from ..templates import load_volume

    td, ta = load_volume(fixed)
    ta = np.asarray(ta, float)
    fig, axs = plt.subplots(len(paths), 2, figsize=(4.0, 2.0 * len(paths)), squeeze=False)
    for i, (label, p) in enumerate(paths.items()):
        truth = truths[label] if truths is not None else real_truth(p, fixed)
        inv = np.linalg.inv(np.asarray(truth["moving_to_fixed"], float))
        data, aff = load_volume(p)
        for j, (axis, k) in enumerate(((2, td.shape[2] * 3 // 8), (1, td.shape[1] // 2))):
            idx: list[Any] = [slice(None)] * 3
            idx[axis] = k
            tsl = np.asarray(td[tuple(idx)], float)
            rest = [q for q in range(3) if q != axis]
            ii, jj = np.meshgrid(np.arange(tsl.shape[0]), np.arange(tsl.shape[1]), indexing="ij")
            vox = np.zeros(ii.shape + (3,))
            vox[..., rest[0]], vox[..., rest[1]], vox[..., axis] = ii, jj, k
            world = vox @ ta[:3, :3].T + ta[:3, 3]
            img = sample_volume(data, aff, world @ inv[:3, :3].T + inv[:3, 3])
            ax = axs[i, j]
            ax.imshow(np.rot90(img), cmap="gray")
            ax.contour(np.rot90(tsl), [0.35 * float(tsl.max())], colors="r", linewidths=0.4)
            ax.set_axis_off()
            ax.set_title(label, fontsize=7)
    return save_figure(fig, out_png, dpi=70)

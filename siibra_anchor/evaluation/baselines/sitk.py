"""Classical intensity-based slice-to-volume registration with SimpleITK (benchmark baseline).

What a user without siibra-anchor would try: register the 2D section (as a one-slice 3D image) to the
3D template with a similarity transform (rotation, isotropic scale, translation) and Mattes mutual
information, from many starts (3 canonical orientations x in-plane rotations x positions along the
normal), each optimised at the coarsest level, the best going on through a coarse-to-fine pyramid,
within a wall-time budget per section.

SimpleITK is optional (``pip install siibra-anchor[benchmark]``); it is imported when called.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from siibra_anchor.errors import SitkUnavailableError
from siibra_anchor.planes import CANONICAL_PLANES, section_affine
from siibra_anchor.section import Section

__all__ = ["SitkParams", "SitkUnavailableError", "sitk_register"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SitkParams:
    """Multi-start search and pyramid of :func:`sitk_register`.

    levels_mm : pixel spacings of the pyramid (coarse to fine); the volume is smoothed to match.
    n_rotations : in-plane rotations tried per orientation; offsets_mm : starts along the plane normal;
    shifts_mm : starts also shifted by this much along each in-plane axis (0: none).
    keep : starts optimised at each level (the best by metric value go on to the next level; 0: all).
    mask_margin_mm : the metric samples the tissue and this much background around it (the outline
    counts, empty slide does not); None samples the whole image.
    iterations : optimiser iterations per start and level.
    """

    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0)
    orientations: tuple[str, ...] = ("coronal", "sagittal", "axial")
    n_rotations: int = 12
    offsets_mm: tuple[float, ...] = (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0)
    shifts_mm: float = 20.0
    keep: tuple[int, ...] = (0, 24, 6, 1)
    iterations: int = 40
    bins: int = 32
    mask_margin_mm: float | None = 6.0


def _sitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SitkUnavailableError(
            "the SimpleITK baseline needs SimpleITK; install it with: pip install 'siibra-anchor[benchmark]'"
        ) from exc
    return sitk


def _volume_image(sitk: Any, data: NDArray, vaff: NDArray) -> Any:
    """A SimpleITK image whose physical space is the volume's world mm (RAS, as the affine says)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0)))
    sp = np.linalg.norm(vaff[:3, :3], axis=0)
    img.SetSpacing(tuple(float(s) for s in sp))
    img.SetOrigin(tuple(float(v) for v in vaff[:3, 3]))
    img.SetDirection(tuple(float(v) for v in (vaff[:3, :3] / sp).ravel()))
    return img


def _start_rotation(orientation: str, angle: float) -> NDArray:
    """(3, 3) rotation mapping section physical axes (x = column, y = row, z) to world mm."""
    row, col = (np.asarray(v, float) for v in CANONICAL_PLANES[orientation])
    normal = np.cross(row, col)
    rot = Rotation.from_rotvec(angle * normal)
    row, col = rot.apply(row), rot.apply(col)
    return np.stack([col, row, np.cross(col, row)], axis=1)


@lru_cache(maxsize=2)
def _prepared(volume: str) -> dict[str, Any]:
    """The template scaled to [0, 1] inside the brain, its affine, brain centre; moving images per level."""
    from siibra_anchor.planes import world_bbox
    from siibra_anchor.reference import volume_brain_mask
    from siibra_anchor.templates import load_volume

    data, vaff = load_volume(volume)
    bmask = volume_brain_mask(data)
    lo, hi = world_bbox(bmask, vaff)
    vol = np.where(bmask, data / max(float(np.percentile(data[bmask], 99)), 1e-6), 0.0).astype(np.float32)
    return {
        "volume": vol,
        "affine": np.asarray(vaff, float),
        "spacing": np.linalg.norm(vaff[:3, :3], axis=0),
        "centre": (lo + hi) / 2.0,
        "levels": {},
    }


def sitk_register(
    section: Section,
    volume: str = "mni152",
    budget_s: float = 60.0,
    params: SitkParams | None = None,
    seed: int = 0,
    hemisphere: str | None = None,
) -> tuple[NDArray, dict[str, Any]]:
    """Register ``section`` to a template volume; returns its (4, 4) affine (DESIGN.md convention) and info.

    Parameters
    ----------
    section : the section (its stated ``spacing_mm`` sets the initial scale; the scale is optimised).
    volume : key of :data:`siibra_anchor.templates.VOLUMES` or a NIfTI path.
    budget_s : wall-time budget; no new start is optimised once it is spent (the best so far is returned).
    seed : seeds the metric's random sampling and the order of the starts.
    hemisphere : "left"/"right" if the section holds only that hemisphere (the same hint
        :func:`~siibra_anchor.anchor` gets): the starts are centred 30 mm into that hemisphere.

    Returns
    -------
    affine : (4, 4) pixel (row, col, 0, 1) -> world mm; info : ``{"metric", "time_s", "n_starts",
    "n_optimised", "budget_exhausted"}``.
    """
    from scipy import ndimage

    if hemisphere not in (None, "left", "right"):
        from siibra_anchor.errors import InvalidSectionError

        raise InvalidSectionError(f"hemisphere must be None, 'left' or 'right', got {hemisphere!r}")
    sitk = _sitk()
    p = params or SitkParams()
    t_start = time.perf_counter()
    prep = _prepared(str(volume))
    s = float(np.mean(section.spacing_mm))  # the stated spacing: what the user knows
    rr, cc = np.nonzero(section.mask)
    fixed_centre = np.array([cc.mean() * section.spacing_mm[1], rr.mean() * section.spacing_mm[0], 0.0])

    def fixed_image(level_mm: float) -> tuple[Any, Any]:
        img, msk, scale = section.at_spacing(level_mm)
        f = sitk.GetImageFromArray(np.asarray(img, np.float32)[None])
        f.SetSpacing((float(scale[1] * section.spacing_mm[1]), float(scale[0] * section.spacing_mm[0]), s))
        if p.mask_margin_mm is None:
            return f, None
        grown = ndimage.binary_dilation(msk, iterations=max(1, int(np.ceil(p.mask_margin_mm / level_mm))))
        fm = sitk.GetImageFromArray(grown[None].astype(np.uint8))
        fm.CopyInformation(f)
        return f, fm

    def moving_image(level_mm: float) -> Any:
        if level_mm not in prep["levels"]:
            # smoothed and subsampled to the level (cached per volume and level)
            vsp = prep["spacing"]
            step = np.maximum(np.floor(level_mm / vsp), 1).astype(int)
            sig = np.maximum(level_mm / vsp - 1.0, 0.0) / 2.0
            v = ndimage.gaussian_filter(prep["volume"], sig) if np.any(sig > 0) else prep["volume"]
            v = v[:: step[0], :: step[1], :: step[2]]
            prep["levels"][level_mm] = _volume_image(sitk, v, prep["affine"] @ np.diag([*step.astype(float), 1.0]))
        return prep["levels"][level_mm]

    def make_method(n_iter: int, fmask: Any, level_mm: float) -> Any:
        reg = sitk.ImageRegistrationMethod()
        if fmask is not None:
            reg.SetMetricFixedMask(fmask)
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=p.bins)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.5, seed)
        reg.SetInterpolator(sitk.sitkLinear)
        # gradients at the sample points only: a gradient image of the whole volume per start is slow
        reg.SetMetricUseMovingImageGradientFilter(False)
        reg.SetMetricUseFixedImageGradientFilter(False)
        # a learning rate estimated once per start, steps capped at half a pixel of the level: the regular
        # step optimiser overshoots here (it leaves even the true pose, the metric getting worse)
        reg.SetOptimizerAsGradientDescent(
            learningRate=1.0,
            numberOfIterations=n_iter,
            estimateLearningRate=reg.Once,
            maximumStepSizeInPhysicalUnits=level_mm / 2.0,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        return reg

    # -- starts: orientations x in-plane rotations x positions along the normal (x in-plane shifts) ----
    starts = []
    target = prep["centre"] + np.array([{"left": -30.0, "right": 30.0}.get(str(hemisphere), 0.0), 0.0, 0.0])
    for o in p.orientations:
        normal = np.cross(np.asarray(CANONICAL_PLANES[o][0], float), np.asarray(CANONICAL_PLANES[o][1], float))
        for k in range(p.n_rotations):
            rmat = _start_rotation(o, 2.0 * np.pi * k / p.n_rotations)
            shifts = [np.zeros(3)]
            if p.shifts_mm:
                shifts += [sg * p.shifts_mm * rmat[:, j] for j in (0, 1) for sg in (-1.0, 1.0)]
            for d in p.offsets_mm:
                for sh in shifts:
                    tr = sitk.Similarity3DTransform()
                    tr.SetCenter(tuple(float(v) for v in fixed_centre))
                    tr.SetMatrix(tuple(float(v) for v in rmat.ravel()))
                    tr.SetTranslation(tuple(float(v) for v in target + d * normal + sh - fixed_centre))
                    starts.append(tr)
    # in random order: if the budget runs out at the coarsest level, every orientation was still tried
    order = np.random.default_rng(seed).permutation(len(starts))
    scored: list[tuple[float, Any]] = [(0.0, starts[int(j)]) for j in order]
    exhausted = False
    n_opt = 0
    for li, level in enumerate(p.levels_mm):
        (fixed, fmask), moving = fixed_image(level), moving_image(level)
        nxt: list[tuple[float, Any]] = []
        keep = p.keep[min(li, len(p.keep) - 1)] or len(scored)
        # the coarsest level (every start) may spend half the budget; the finer ones the rest
        limit = budget_s / 2 if li == 0 else budget_s
        for _, tr in scored[:keep]:
            if time.perf_counter() - t_start > limit and nxt:
                exhausted = True
                break
            reg = make_method(p.iterations, fmask, level)
            reg.SetInitialTransform(sitk.Similarity3DTransform(tr), inPlace=True)
            try:
                out = reg.Execute(fixed, moving)
                val = float(reg.GetMetricValue())
                nxt.append((val, sitk.Similarity3DTransform(out)))
                n_opt += 1
            except RuntimeError as exc:
                log.debug("start failed at %.1f mm: %s", level, exc)
        if not nxt:
            break
        scored = sorted(nxt, key=lambda x: x[0])
        # past the budget: each finer level refines only the best start
    if not scored:
        from siibra_anchor.errors import AnchoringFailedError

        raise AnchoringFailedError(f"SimpleITK found no start overlapping the volume for section {section.name!r}")
    best_val, best = scored[0]
    a = np.asarray(best.GetMatrix(), float).reshape(3, 3)
    c = np.asarray(best.GetCenter(), float)
    t = np.asarray(best.GetTranslation(), float)
    b = -a @ c + c + t
    lin = np.stack([a[:, 1] * section.spacing_mm[0], a[:, 0] * section.spacing_mm[1]], axis=1)
    affine = section_affine(lin, b, s)
    info = {
        "metric": best_val,
        "time_s": time.perf_counter() - t_start,
        "n_starts": len(starts),
        "n_optimised": n_opt,
        "budget_exhausted": exhausted,
    }
    return affine, info

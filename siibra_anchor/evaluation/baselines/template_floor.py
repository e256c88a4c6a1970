"""How far apart two templates of "the same" space are: the floor under any anchoring error measured on them.

The benchmarks cut test sections from volumes other than the reference (FSL's MNI152, the 2009a
templates) and score an anchoring against the section's *nominal* coordinates in its source volume. Two
MNI templates do not put the same anatomy at the same coordinates: FSL's brain is 1.5-2.7% larger than
the 2009c reference, and the 2009a templates differ from 2009c by a rotation of about 1 degree about the
vertical axis. An anchoring that matches the reference's anatomy exactly is therefore still some distance
from the nominal truth.

:func:`register_volumes` measures that with a classical 12-parameter affine registration of the whole
source volume onto the reference (Mattes mutual information, coarse to fine, from the identity: both are
in the same nominal space). :func:`template_floor_mm` is the anchoring error (mean over the section's
tissue, as everywhere in the benchmarks) between the nominal truth and the truth moved by that affine.
An affine cannot capture local differences of anatomy, so this is a lower estimate of the floor, and the
registered truth is a second reference point, not a better truth.

SimpleITK is optional (``pip install siibra-anchor[benchmark]``); it is imported when called.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .sitk import _sitk, _volume_image

__all__ = ["register_volumes", "template_floor_mm"]

log = logging.getLogger(__name__)

Volume = str | Path | tuple[NDArray, NDArray]


def _load(v: Volume) -> tuple[NDArray, NDArray]:
    from siibra_anchor.templates import load_volume

    if isinstance(v, tuple):
        data, aff = v
        return np.asarray(data, np.float32), np.asarray(aff, float)
    return load_volume(v)


def _cache_path(moving: Volume, fixed: Volume, params: dict[str, Any]) -> Path | None:
    """Cache entry for two volumes named by key or path (arrays are not cached)."""
    from siibra_anchor.cache import cache_dir, cache_key
    from siibra_anchor.templates import VOLUMES

    ident = []
    for v in (moving, fixed):
        if isinstance(v, tuple):
            return None
        key = str(v)
        if key in VOLUMES:
            ident.append(key)
        else:
            p = Path(key).resolve()
            st = p.stat()
            ident.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return cache_dir("template-affines") / f"{cache_key({'volumes': ident, **params})}.json"


def register_volumes(
    moving: Volume,
    fixed: Volume = "mni152",
    levels: tuple[int, ...] = (4, 2),
    iterations: int = 300,
    seed: int = 1,
    cache: bool = True,
) -> NDArray:
    """12-parameter affine registration of volume ``moving`` onto ``fixed`` by mutual information.

    moving, fixed : a key of :data:`siibra_anchor.templates.VOLUMES`, a NIfTI path, or ``(data, affine)``.
    levels : shrink factors of the pyramid (coarse to fine; the images are smoothed to match). The default
        ends at half resolution: a known rigid motion of the 1 mm MNI152 volume comes back within 0.03 mm
        (tests/test_benchmark.py), and the full-resolution level takes five times as long.
    cache : keep the result in the user cache (volumes given by key or path only).

    Returns the (4, 4) map from ``moving``'s world mm to ``fixed``'s world mm that puts the same anatomy on
    the same point: ``T @ [x, y, z, 1]`` is where the structure at ``(x, y, z)`` of ``moving`` lies in
    ``fixed``.
    """
    params = {"levels": list(levels), "iterations": iterations, "seed": seed, "v": 1}
    path = _cache_path(moving, fixed, params) if cache else None
    if path is not None and path.is_file():
        try:
            return np.asarray(json.loads(path.read_text())["moving_to_fixed"], float)
        except (ValueError, KeyError):  # a damaged entry is recomputed and rewritten
            log.warning("ignoring damaged cache entry %s", path)
    sitk = _sitk()
    fd, fa = _load(fixed)
    md, ma = _load(moving)
    fimg = _volume_image(sitk, fd / max(float(np.percentile(fd, 99.5)), 1e-6), fa)
    mimg = _volume_image(sitk, md / max(float(np.percentile(md, 99.5)), 1e-6), ma)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-5, iterations)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels))
    reg.SetSmoothingSigmasPerLevel([max(0.0, lv / 2.0) for lv in levels])
    reg.SetInitialTransform(sitk.AffineTransform(3), inPlace=False)
    tx = reg.Execute(fimg, mimg)  # maps fixed points to moving points
    # the 4x4 of the result, read off by least squares on points (exact for an affine)
    pts = np.random.default_rng(0).uniform(-90.0, 90.0, (200, 3))
    img = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in pts])
    sol, *_ = np.linalg.lstsq(np.c_[pts, np.ones(len(pts))], img, rcond=None)
    fixed_to_moving = np.eye(4)
    fixed_to_moving[:3, :] = sol.T
    out = np.linalg.inv(fixed_to_moving)
    if path is not None:
        from siibra_anchor.cache import atomic_write_text

        atomic_write_text(
            path, json.dumps({"moving_to_fixed": out.tolist(), "metric": float(reg.GetMetricValue()), **params})
        )
    names = ["array" if isinstance(v, tuple) else str(v) for v in (moving, fixed)]
    log.info("registered %s onto %s: metric %.4f", names[0], names[1], reg.GetMetricValue())
    return out


def template_floor_mm(true_affine: NDArray, mask: NDArray, moving_to_fixed: NDArray) -> float:
    """Anchoring error between a section's nominal truth and the truth moved by ``moving_to_fixed``."""
    from ..simulate import section_error

    t = np.asarray(true_affine, float)
    return section_error(np.asarray(moving_to_fixed, float) @ t, t, mask)

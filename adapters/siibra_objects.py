"""An anchored section as siibra objects: point clouds of its outline and patch centres, and a siibra volume.

:func:`result_to_siibra` (``AnchoringResult.to_siibra``) returns a :class:`SiibraSection`:

* ``outline`` -- ``siibra.PointCloud`` of the tissue outline (or the image border without a mask), mm;
* ``patches`` -- ``siibra.PointCloud`` of the matched patch centres, placed by the fitted affine;
* ``volume`` -- the section as a siibra ``Volume`` (``siibra.volumes.from_array``): the image (or tissue
  mask) as an (H, W, 1) array whose affine is ``result.affine``, so siibra can assign it to maps,
  intersect it with locations, or fetch it as NIfTI;
* ``space`` -- the siibra ``Space`` the locations are in.

``space=`` another space warps the point clouds there with siibra's spatial-transformation service
(online; MNI152 <-> Colin27 <-> BigBrain), and the volume is placed there by ``result.transform.to_space``
(an affine fitted to warped section points; its residual is ``transform.fit_residual_mm``): every object
of a :class:`SiibraSection` is in ``space``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["SiibraSection", "result_to_siibra", "outline_pixels"]


@dataclass
class SiibraSection:
    """siibra objects of one anchored section (see the module docstring)."""

    outline: Any
    patches: Any
    volume: Any
    space: Any
    transform: Any = None

    def __iter__(self):  # allows ``outline, patches, volume, space = result.to_siibra()``
        return iter((self.outline, self.patches, self.volume, self.space))


def outline_pixels(mask: NDArray | None, shape: tuple[int, int], max_points: int = 400) -> NDArray:
    """(N, 2) float (row, col) along the outline of the largest tissue region, or of the image border.

    ``max_points`` bounds N (the contour is subsampled evenly).
    """
    h, w = int(shape[0]), int(shape[1])
    pts: NDArray | None = None
    if mask is not None and np.asarray(mask).any():
        from skimage import measure

        m = np.pad(np.asarray(mask, bool), 1).astype(np.float32)  # closes contours at the image border
        contours = measure.find_contours(m, 0.5)
        if contours:
            pts = max(contours, key=len) - 1.0
    if pts is None:
        r = np.linspace(0, h - 1, max(2, min(h, max_points // 4)))
        c = np.linspace(0, w - 1, max(2, min(w, max_points // 4)))
        pts = np.concatenate(
            [
                np.stack([np.zeros_like(c), c], 1),
                np.stack([r, np.full_like(r, w - 1)], 1),
                np.stack([np.full_like(c, h - 1), c[::-1]], 1),
                np.stack([r[::-1], np.zeros_like(r)], 1),
            ]
        )
    if len(pts) > max_points:
        pts = pts[np.linspace(0, len(pts) - 1, max_points).round().astype(int)]
    return np.asarray(pts, float)


def _section_array(result: Any, max_size: int, affine: NDArray | None = None) -> tuple[NDArray, NDArray]:
    """(H', W', 1) array of the section (image, else tissue mask, else ones) and its (4, 4) affine
    (``affine``, default ``result.affine``, adjusted for the subsampling)."""
    h, w = (int(s) for s in result.section["shape"][:2])
    img = getattr(result, "image", None)
    msk = getattr(result, "mask", None)
    if img is not None:
        arr = np.asarray(img, np.float32)
        if arr.ndim == 3:
            arr = arr.mean(axis=2)
    elif msk is not None:
        arr = np.asarray(msk, np.uint8)
    else:
        arr = np.ones((h, w), np.uint8)
    step = max(1, int(np.ceil(max(arr.shape[:2]) / float(max_size))))
    arr = arr[::step, ::step]
    aff = np.array(result.affine if affine is None else affine, float)
    aff[:3, :2] *= step
    return np.ascontiguousarray(arr[..., None]), aff


def result_to_siibra(
    result: Any, space: Any = None, max_size: int = 1024, online: bool | None = None, timeout_s: float = 120.0
) -> SiibraSection:
    """siibra objects of an anchored section, in the result's space or warped to ``space``.

    Parameters
    ----------
    result : AnchoringResult.
    space : None (the result's space) or another space name / siibra Space to warp the point clouds to.
    max_size : the volume is subsampled so that its larger side has at most this many pixels.
    online : None = whatever siibra configuration is active or reachable; False = offline configuration.
    timeout_s : deadline for each siibra call that may use the network.
    """
    from .siibra_config import get_siibra
    from .siibra_spaces import resolve_space, siibra_space
    from .siibra_transforms import warp_points

    siibra, _ = get_siibra(online=online, timeout_s=timeout_s)
    src = siibra_space(result.space, online=online, timeout_s=timeout_s)
    shape = tuple(int(s) for s in result.section["shape"][:2])
    rc = outline_pixels(getattr(result, "mask", None), shape)  # type: ignore[arg-type]
    outline = siibra.PointCloud(result.to_points(rc[:, 0], rc[:, 1]), space=src)
    m = result.matches
    if len(m):
        centres = result.to_points(m["row"].to_numpy(), m["col"].to_numpy())
        patches = siibra.PointCloud(centres, space=src, labels=[int(bool(v)) for v in m["inlier"]])
    else:
        patches = None
    name = f"section {result.section.get('name', '')}".strip()
    if space is None or resolve_space(space, online=online) == result.space:
        arr, aff = _section_array(result, max_size)
        volume = siibra.volumes.from_array(arr, aff, space=src, name=name)
        return SiibraSection(outline, patches, volume, src, result.transform)
    tgt = siibra_space(space, online=online, timeout_s=timeout_s)

    def warp(pc: Any) -> Any:
        """The point cloud in the target space, through the transformation service (typed errors)."""
        if pc is None:
            return None
        _, pts = warp_points(pc.coordinates, result.space, space, online=online, timeout_s=timeout_s)
        return siibra.PointCloud(pts, space=tgt, labels=pc.labels)

    outline_t, patches_t = warp(outline), warp(patches)
    tr = result.transform.to_space(space, online=online, timeout_s=timeout_s)
    arr, aff = _section_array(result, max_size, tr.matrix)
    volume = siibra.volumes.from_array(arr, aff, space=tgt, name=name)
    return SiibraSection(outline_t, patches_t, volume, tgt, tr)

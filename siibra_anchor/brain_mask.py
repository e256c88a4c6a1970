"""Brain masks of whole-head T1 templates: a morphological skull-stripping step.

Patches must come from the brain only: a whole-head template (siibra's Colin27 is the 1998 whole-head T1)
would otherwise give reference patches of scalp and skull. :func:`skull_strip` is the documented step used
when siibra's configuration has no brain mask for a space:

1. smooth the volume (Gaussian, ``smooth_mm``) and threshold it at Otsu's level of the non-zero voxels
   (brain and scalp are bright in T1, CSF, skull and air dark);
2. erode by ``erode_mm`` to cut the thin bridges between brain and scalp (optic nerves, vessels, noise);
3. keep the connected component that fills most of the central third of the head (the brain; the scalp
   is a shell around it), dilate it back by ``erode_mm`` within the threshold mask, and fill its holes
   (ventricles, dark nuclei).

It needs a T1-like contrast with a dark band between brain and scalp of more than ``2 * erode_mm``; a
brain-extracted volume passes through unchanged but for its dark interior holes being filled.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .errors import InvalidParameterError

__all__ = ["skull_strip"]


def skull_strip(data: NDArray, affine: NDArray, smooth_mm: float = 1.0, erode_mm: float = 3.0) -> NDArray[np.bool_]:
    """(I, J, K) bool brain mask of a whole-head T1 volume ``data`` with voxel -> mm ``affine``.

    Examples
    --------
    >>> import numpy as np
    >>> zz, yy, xx = np.mgrid[-30:31, -30:31, -30:31]
    >>> r = np.sqrt(xx**2 + yy**2 + zz**2)
    >>> head = np.where(r < 15, 100.0, np.where((r > 22) & (r < 27), 120.0, 0.0))  # brain + scalp shell
    >>> mask = skull_strip(head, np.eye(4))
    >>> bool(mask[30, 30, 30]), bool(mask[30, 30, 40]), bool(mask[30, 30, 55])
    (True, True, False)
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    vol = np.asarray(data, np.float32)
    if vol.ndim != 3:
        raise InvalidParameterError(f"skull_strip needs a 3D volume, got shape {vol.shape}")
    if smooth_mm < 0 or erode_mm <= 0:
        raise InvalidParameterError(f"smooth_mm must be >= 0 and erode_mm > 0, got {smooth_mm!r}, {erode_mm!r}")
    vox = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))  # voxel size (mm) per axis
    if smooth_mm > 0:
        vol = ndimage.gaussian_filter(vol, smooth_mm / vox)
    nz = vol[vol > 0]
    if nz.size == 0:
        raise InvalidParameterError("skull_strip got an empty volume (no voxel > 0)")
    fg = vol > threshold_otsu(nz)
    radius = np.maximum(np.round(erode_mm / vox).astype(int), 1)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / max(r, 1)) ** 2 for g, r in zip(grid, radius, strict=True)) <= 1.0
    core = ndimage.binary_erosion(fg, structure=ball)
    labels, n = ndimage.label(core)
    if n == 0:
        return ndimage.binary_fill_holes(fg)
    idx = np.argwhere(fg)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    third = (hi - lo) / 3.0
    centre = tuple(slice(int(a + t), int(b - t) + 1) for a, b, t in zip(lo, hi, third, strict=True))
    counts = np.bincount(labels[centre].ravel(), minlength=n + 1)
    counts[0] = 0
    best = int(np.argmax(counts)) if counts.any() else int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    brain = ndimage.binary_dilation(labels == best, structure=ball) & fg
    return ndimage.binary_fill_holes(brain)

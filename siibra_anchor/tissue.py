"""Tissue masks for section images (dark-on-bright stains and bright-on-dark images alike)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.filters import threshold_otsu

__all__ = ["tissue_mask"]


def tissue_mask(gray: NDArray, min_object_fraction: float = 0.002) -> NDArray:
    """Foreground (tissue) mask of a 2D grayscale image.

    gray : (H, W) float, finite. Returns (H, W) bool.

    The Otsu threshold splits the image in two classes; the tissue is the class that covers *less* of
    the image border (a section is surrounded by background, whether the background is bright glass
    or a dark field). Small specks are removed and holes filled.
    """
    g = np.asarray(gray, np.float32)
    if g.ndim != 2 or g.size == 0:
        return np.zeros(g.shape[:2], bool)
    lo, hi = float(g.min()), float(g.max())
    if hi <= lo:
        return np.zeros(g.shape, bool)
    t = threshold_otsu(g)
    bright = g > t
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    fg = ~bright if border.mean() > 0.5 else bright
    fg = ndimage.binary_opening(fg, iterations=1)
    fg = ndimage.binary_fill_holes(fg)
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum_labels(fg, lab, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= max(1.0, min_object_fraction * fg.size)
        fg = keep[lab]
    return fg

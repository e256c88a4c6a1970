"""Tissue masks for section images: dark tissue on bright glass, bright tissue on a dark field, RGB stains.

The idea: a section is surrounded by background, so the image border tells what the background looks like
(its grey value or colour, and its noise). Tissue is whatever differs from that background by clearly more
than the noise, in either direction and in any colour channel. This covers Nissl/brightfield (dark on
bright), fluorescence and MRI (bright on dark), 3D-PLI transmittance (either) and coloured stains (a
purple cell-body stain differs from white glass mostly in saturation, which a distance in RGB sees).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.filters import threshold_otsu

from .errors import InvalidSectionError

__all__ = ["tissue_mask", "background_distance", "border_is_tissue", "border_texture"]

logger = logging.getLogger(__name__)

#: Width of the border frame that samples the background, as a fraction of the short side.
BORDER_FRACTION = 0.03
#: Background pixels lie within this many noise standard deviations of the background value.
NOISE_SIGMAS = 4.0
#: The threshold never exceeds this fraction of the Otsu split between background and tissue, so faint
#: tissue (white matter in a Nissl stain, CSF-rich cortex in MRI) stays in the mask.
OTSU_FRACTION = 0.5
#: A border pixel is textured (tissue, not glass or an empty field) when it differs from a plane fitted
#: robustly to the border by more than this fraction of the image's range (after smoothing away noise).
TEXTURE_THRESHOLD = 0.04
#: The border is taken for tissue (the section fills the frame) when at least this fraction of it is
#: textured; otherwise its majority is background, as for any section with glass around it.
TEXTURED_BORDER_FRACTION = 0.5


def tissue_mask(
    gray: NDArray,
    min_object_fraction: float = 0.002,
    *,
    rgb: NDArray | None = None,
    max_side: int = 1024,
) -> NDArray:
    """Foreground (tissue) mask of a 2D section image.

    Parameters
    ----------
    gray : (H, W) real array, finite
        Grayscale image (any range, any polarity).
    min_object_fraction : float
        Connected tissue pieces smaller than this fraction of the image area are dropped (dust, labels).
    rgb : (H, W, C) array with C >= 3, optional
        The colour image ``gray`` came from. When given, the distance to the background is measured in
        RGB (alpha ignored), so a stain that differs from glass mainly by colour is found.
    max_side : int
        The mask is computed on a block-averaged copy whose long side is at most ``max_side`` pixels and
        upsampled (nearest) to (H, W); large sections stay cheap.

    Returns
    -------
    (H, W) bool
        True on tissue. All False for a constant image (no foreground to find). All True when the tissue
        fills the frame: the image border is mostly textured (see :func:`border_is_tissue`), so there is no
        background to tell tissue from.

    Raises
    ------
    InvalidSectionError
        ``gray`` is not 2D, or ``rgb`` does not match its shape.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((64, 64), 230.0); img[16:48, 20:44] = 90.0     # dark tissue on bright glass
    >>> m = tissue_mask(img)
    >>> int(m.sum()), bool(m[32, 32]), bool(m[2, 2])
    (768, True, False)
    """
    g = np.asarray(gray, np.float32)
    if g.ndim != 2:
        raise InvalidSectionError(f"tissue_mask needs a 2D (H, W) image, got shape {g.shape}")
    if g.size == 0:
        return np.zeros(g.shape, bool)
    if rgb is not None:
        c = np.asarray(rgb)
        if c.ndim != 3 or c.shape[:2] != g.shape or c.shape[2] < 3:
            raise InvalidSectionError(f"rgb must be (H, W, C>=3) matching gray {g.shape}, got shape {c.shape}")
        feats = c[..., :3]  # stays in its dtype until block-averaged: big RGB scans are not copied
    else:
        feats = g[..., None]
    if float(feats.max()) <= float(feats.min()):
        return np.zeros(g.shape, bool)

    factor = max(1, math.ceil(max(g.shape) / max(int(max_side), 8)))
    small = _block_mean(feats, factor)
    texture = border_texture(small)
    if texture >= TEXTURED_BORDER_FRACTION:
        return np.ones(g.shape, bool)
    d, noise = background_distance(small, smooth_px=0)
    if _threshold_value(d, noise)[1] == "noise":
        # noise, not contrast, decides the threshold: smooth first (costs about a pixel of edge sharpness)
        d, noise = background_distance(small)
    t, _ = _threshold_value(d, noise)
    fg = d > t
    fg = _clean(fg, min_object_fraction)
    if not fg.any() and texture >= TEXTURED_BORDER_FRACTION / 2:
        # nothing stands out from a border that is partly textured: the tissue fills the frame
        return np.ones(g.shape, bool)
    if factor == 1:
        return fg
    rows = np.minimum(np.arange(g.shape[0]) // factor, fg.shape[0] - 1)
    cols = np.minimum(np.arange(g.shape[1]) // factor, fg.shape[1] - 1)
    return fg[np.ix_(rows, cols)]


def border_is_tissue(features: NDArray) -> bool:
    """Whether the image border is mostly tissue (a block cropped inside the tissue), not background.

    features : (H, W, K) float (K = 1 grey or 3 RGB). See :func:`border_texture`.
    """
    return border_texture(features) >= TEXTURED_BORDER_FRACTION


def border_texture(features: NDArray) -> float:
    """Fraction of the image border that is textured (tissue) rather than flat background.

    features : (H, W, K) float. Glass and dark fields are one value along the whole border, up to pixel
    noise (removed first by a Gaussian of 2 px) and a slow illumination gradient. So a plane (in row,
    column) is fitted to the channel mean on the border frame, robustly (refitted three times on the 60 %
    of pixels closest to it); a border pixel is textured when it lies further than
    :data:`TEXTURE_THRESHOLD` of the image's robust (0.5-99.5 percentile) range from that plane (or 3.5
    times the pixel noise left after the Gaussian, if more: pure noise is not texture).
    Returns 0.0 for images smaller than 8 px or constant.
    """
    f = np.asarray(features, np.float32)
    if f.ndim == 2:
        f = f[..., None]
    h, w = f.shape[:2]
    if h < 8 or w < 8:
        return 0.0
    lo, hi = np.percentile(f, [0.5, 99.5])
    scale = float(hi - lo)
    if scale <= 0:
        return 0.0
    raw = (f.mean(axis=2) - lo) / scale
    v = ndimage.gaussian_filter(raw, sigma=2.0, mode="nearest")
    # pixel noise left after the Gaussian (white noise: sigma / (2 sqrt(pi) * 2)), from row differences
    noise = 1.4826 * float(np.median(np.abs(np.diff(raw, axis=1)))) / np.sqrt(2.0) / (4.0 * np.sqrt(np.pi))
    threshold = max(TEXTURE_THRESHOLD, 3.5 * noise)
    ring = np.zeros((h, w), bool)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
    rr, cc = np.nonzero(ring)
    vals = v[rr, cc].astype(float)
    design = np.stack([np.ones_like(vals), rr / h, cc / w], axis=1)
    keep = np.ones(vals.size, bool)
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(design[keep], vals[keep], rcond=None)
        res = np.abs(vals - design @ coef)
        keep = res <= np.percentile(res, 60)
    return float(np.mean(res > threshold))


def background_distance(features: NDArray, smooth_px: float | None = None) -> tuple[NDArray, float]:
    """Distance of every pixel from the background value sampled on the image border.

    Parameters
    ----------
    features : (H, W, K) float
        K = 1 (grey) or 3 (RGB) values per pixel.
    smooth_px : float, optional
        Gaussian sigma in pixels applied first (noise suppression); 0 for none; default grows with the
        image, 1 px up to 400 px, 2.5 px at 1024 px.

    Returns
    -------
    distance : (H, W) float32
        Euclidean distance to the background value, in units of the image's robust (0.5-99.5 percentile)
        range: 0 is background, about 1 the strongest contrast in the image.
    noise : float
        Robust standard deviation of the (smoothed) background, per channel (root mean square over
        channels), same units as ``distance``.
    """
    f = np.asarray(features, np.float32)
    lo, hi = np.percentile(f, [0.5, 99.5])
    scale = float(hi - lo)
    if scale <= 0:
        scale = float(f.max() - f.min()) or 1.0
    f = (f - lo) / scale
    if smooth_px is None:
        smooth_px = max(1.0, max(f.shape[:2]) / 400.0)
    if smooth_px > 0:
        f = ndimage.gaussian_filter(f, sigma=(smooth_px, smooth_px, 0), mode="nearest")
    ring = _border(f)
    # the background is the border's majority: a median is not pulled by tissue that touches the border
    bg = np.median(ring, axis=0)
    mad = np.median(np.abs(ring - bg), axis=0)
    noise = float(np.sqrt(np.mean((1.4826 * mad) ** 2)))
    return np.sqrt(((f - bg) ** 2).sum(axis=2)).astype(np.float32), noise


def _threshold_value(d: NDArray, noise: float) -> tuple[float, str]:
    """Threshold on the (H, W) background distance and what set it ("noise" or "otsu").

    The threshold clears the background noise and is at most half the Otsu split between background and
    tissue; +inf when the distance is constant (nothing stands out).
    """
    try:
        t_otsu = float(threshold_otsu(d))
    except ValueError:
        return math.inf, "otsu"
    t_noise = NOISE_SIGMAS * noise
    logger.debug("tissue threshold: noise %.4f, half otsu %.4f", t_noise, OTSU_FRACTION * t_otsu)
    if t_noise >= OTSU_FRACTION * t_otsu:
        return t_noise, "noise"
    return OTSU_FRACTION * t_otsu, "otsu"


def _clean(fg: NDArray, min_object_fraction: float) -> NDArray:
    """Remove specks, close small cracks, fill holes, drop pieces below ``min_object_fraction``."""
    fg = ndimage.binary_opening(fg, structure=np.ones((3, 3), bool))  # a square keeps corners
    # "| fg": closing erodes at the image edge; tissue that touches the border must keep its edge pixels
    fg = ndimage.binary_closing(fg, iterations=1) | fg
    fg = ndimage.binary_fill_holes(fg)
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum_labels(fg, lab, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= max(1.0, min_object_fraction * fg.size)
        fg = keep[lab]
    return np.asarray(fg, bool)


def _border(a: NDArray) -> NDArray:
    """(H, W, K) -> (N, K) pixels of the border frame (a few percent of the short side wide)."""
    h, w = a.shape[:2]
    b = max(1, int(round(BORDER_FRACTION * min(h, w))))
    b = min(b, max(1, h // 2), max(1, w // 2))
    parts = [a[:b].reshape(-1, a.shape[2]), a[-b:].reshape(-1, a.shape[2])]
    if h > 2 * b:
        parts += [a[b:-b, :b].reshape(-1, a.shape[2]), a[b:-b, -b:].reshape(-1, a.shape[2])]
    return np.concatenate(parts, axis=0)


def _block_mean(a: NDArray, factor: int) -> NDArray:
    """(H, W, K) -> (ceil(H/f), ceil(W/f), K) block means; the last partial blocks are edge-padded."""
    if factor <= 1:
        return np.asarray(a, np.float32)
    h, w = a.shape[:2]
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hh, ww = a.shape[0] // factor, a.shape[1] // factor
    return a.reshape(hh, factor, ww, factor, a.shape[2]).mean(axis=(1, 3), dtype=np.float32)

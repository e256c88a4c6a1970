"""Intensity-based comparison and refinement of a section plane against the template volume.

Patch matches give a coarse placement; mutual information between the section and the template
resampled on the candidate plane (a) ranks candidate placements and (b) refines the winner with a
9-parameter 2D->3D affine. Mutual information does not care how the contrasts relate, so it works for
stains unlike the template's T1 contrast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from .planes import sample_volume

__all__ = ["SamplePoints", "sample_points", "nmi", "nmi_smooth", "plane_nmi", "nmi_gain", "outside_share", "refine_map"]


@dataclass
class SamplePoints:
    """Section pixels used for intensity comparison: rc (N, 2) working pixels, values (N,) in [0, 1]; the
    first ``n_tissue`` are tissue (None: all), the others background just outside it."""

    rc: NDArray
    values: NDArray
    n_tissue: int | None = None


def sample_points(image: NDArray, mask: NDArray, n: int, rng: np.random.Generator) -> SamplePoints:
    """Up to ``n`` random tissue pixels of a (H, W) image, plus a ring of background just outside it.

    The background ring (about a fifth of the points) lets the similarity see the tissue outline.
    """
    m = np.asarray(mask, bool)
    ring = ndimage.binary_dilation(m, iterations=3) & ~m
    rr, cc = np.nonzero(m)
    k = min(n, len(rr))
    sel = rng.choice(len(rr), k, replace=False)
    br, bc = np.nonzero(ring)
    kb = min(n // 4, len(br))
    selb = rng.choice(len(br), kb, replace=False) if kb else np.zeros(0, int)
    rc = np.concatenate([np.stack([rr[sel], cc[sel]], 1), np.stack([br[selb], bc[selb]], 1)]).astype(float)
    vals = np.asarray(image, np.float32)[rc[:, 0].astype(int), rc[:, 1].astype(int)]
    return SamplePoints(rc, vals, int(k))


def outside_share(
    pts: SamplePoints, linear: NDArray, t: NDArray, brain: NDArray, vol_affine: NDArray, max_points: int = 500
) -> float:
    """Share of the section's tissue points that (linear, t) puts outside the template's brain (``brain``: a
    soft [0, 1] mask on the template's grid): about 0 for a placement whose outline the brain holds, more
    for one drawn larger than the brain or off its edge. Read on about ``max_points`` of them at most."""
    rc = pts.rc if pts.n_tissue is None else pts.rc[: pts.n_tissue]
    rc = rc[:: max(1, len(rc) // max_points)]  # the points are drawn at random: every k-th is a random subset
    if len(rc) == 0:
        return 0.0
    return float(1.0 - sample_volume(brain, vol_affine, rc @ linear.T + t).mean())


def nmi(a: NDArray, b: NDArray, bins: int = 24) -> float:
    """Normalised mutual information (H(A) + H(B)) / H(A, B) of two [0, 1] samples, in [1, 2]."""
    ia = np.clip((np.asarray(a) * bins).astype(int), 0, bins - 1)
    ib = np.clip((np.asarray(b) * bins).astype(int), 0, bins - 1)
    return _nmi_of_joint(np.bincount(ia * bins + ib, minlength=bins * bins).astype(float), bins)


def _entropy(p: NDArray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _nmi_of_joint(joint: NDArray, bins: int) -> float:
    """(H(A) + H(B)) / H(A, B) of a flat (bins * bins) joint histogram of counts or weights (1 when empty)."""
    total = float(joint.sum())
    joint = joint / total if total > 0 else joint
    pa, pb = joint.reshape(bins, bins).sum(1), joint.reshape(bins, bins).sum(0)
    hj = _entropy(joint)
    return (_entropy(pa) + _entropy(pb)) / hj if hj > 0 else 1.0


def nmi_smooth(a: NDArray, b: NDArray, bins: int = 24) -> float:
    """:func:`nmi` from a histogram with linear (partial-volume) binning: each sample spreads its weight
    over the two nearest bin centres of each variable, so the value changes continuously with the samples
    (the hard-binned :func:`nmi` is a step function of them, on which an optimiser stops early)."""
    out = []
    for v in (a, b):
        x = np.clip(np.asarray(v, np.float64) * bins - 0.5, 0.0, bins - 1.0)
        lo = np.minimum(x.astype(int), bins - 2)
        out.append((lo, x - lo))
    (ia, fa), (ib, fb) = out
    joint = np.zeros(bins * bins)
    for da, wa in ((0, 1.0 - fa), (1, fa)):
        for db, wb in ((0, 1.0 - fb), (1, fb)):
            joint += np.bincount((ia + da) * bins + ib + db, weights=wa * wb, minlength=bins * bins)
    return _nmi_of_joint(joint, bins)


def plane_nmi(
    pts: SamplePoints, linear: NDArray, t: NDArray, volume: NDArray, vol_affine: NDArray, smooth: bool = False
) -> float:
    """NMI between section values and the template sampled where (linear, t) puts the points (by
    :func:`nmi_smooth` when ``smooth``)."""
    xyz = pts.rc @ linear.T + t
    return (nmi_smooth if smooth else nmi)(pts.values, sample_volume(volume, vol_affine, xyz))


def nmi_gain(
    pts: SamplePoints, linear: NDArray, t: NDArray, volume: NDArray, vol_affine: NDArray, shift_mm: float = 15.0
) -> float:
    """NMI of the section with ``volume`` on the placement ``x = linear @ (row, col) + t`` minus its local
    null level: the median NMI on the six planes shifted by ``shift_mm`` along the normal and in-plane.

    Near 0 when nothing in the image relates to the template at that place; a correctly placed section
    gains about 0.1-0.3. linear : (3, 2) mm per working pixel; t : (3,) mm.
    """
    n = np.cross(linear[:, 0], linear[:, 1])
    n = n / np.linalg.norm(n)
    e1 = linear[:, 0] / np.linalg.norm(linear[:, 0])
    e2 = np.cross(n, e1)
    shifted = [plane_nmi(pts, linear, t + shift_mm * d, volume, vol_affine) for d in (n, -n, e1, -e1, e2, -e2)]
    return plane_nmi(pts, linear, t, volume, vol_affine) - float(np.median(shifted))


def _compose(p: NDArray, lin0: NDArray, t0: NDArray, c_px: NDArray) -> tuple[NDArray, NDArray]:
    """Parameters -> (linear, t): rotation vector (3, about the section centre), translation (3, mm),
    log scales (2) and shear (1) of the in-plane axes."""
    rot = Rotation.from_rotvec(p[:3] * 0.1).as_matrix()  # parameter unit = 0.1 rad
    s = np.array([[np.exp(p[6] * 0.05), p[8] * 0.05], [0.0, np.exp(p[7] * 0.05)]])
    lin = rot @ lin0 @ s
    centre0 = lin0 @ c_px + t0
    t = centre0 + p[3:6] - lin @ c_px
    return lin, t


def refine_map(
    pts: SamplePoints,
    linear: NDArray,
    t: NDArray,
    volume: NDArray,
    vol_affine: NDArray,
    smooth_sigmas: tuple[float, ...] = (2.0, 0.0),
    max_evals: int = 300,
    smoothed: dict[float, NDArray] | None = None,
    smooth_nmi: bool = False,
    brain: NDArray | None = None,
    outside_weight: float = 0.0,
) -> tuple[NDArray, NDArray, float]:
    """Maximise NMI over a 9-parameter 2D->3D affine, coarse to fine.

    Returns (linear (3, 2), t (3,), nmi at the end on the unsmoothed volume, hard-binned).
    ``smoothed`` caches volumes smoothed by each sigma (voxels) between calls; ``smooth_nmi``: the optimiser
    climbs :func:`nmi_smooth` instead of :func:`nmi`; ``brain`` (a soft [0, 1] brain mask on the volume's
    grid) with ``outside_weight`` > 0: it climbs the NMI less ``outside_weight`` times :func:`outside_share`.
    """
    lin, tt = np.asarray(linear, float), np.asarray(t, float)
    c_px = pts.rc.mean(axis=0)
    cache = smoothed if smoothed is not None else {}
    for sig in smooth_sigmas:
        if sig not in cache:
            cache[sig] = ndimage.gaussian_filter(volume, sig) if sig > 0 else volume
        vol = cache[sig]

        def cost(p: NDArray, vol: NDArray = vol, lin0: NDArray = lin, t0: NDArray = tt) -> float:
            li, ti = _compose(p, lin0, t0, c_px)
            pen = outside_weight * outside_share(pts, li, ti, brain, vol_affine) if brain is not None else 0.0
            return -plane_nmi(pts, li, ti, vol, vol_affine, smooth=smooth_nmi) + pen

        res = optimize.minimize(
            cost,
            np.zeros(9),
            method="Powell",
            options={"maxfev": max_evals, "xtol": 1e-2, "ftol": 1e-5},
        )
        lin, tt = _compose(res.x, lin, tt, c_px)
    return lin, tt, plane_nmi(pts, lin, tt, volume, vol_affine)

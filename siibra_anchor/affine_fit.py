"""Robust 2D->3D affine estimation from point pairs (section pixel -> world mm).

A section is a plane: its pixels ``p = (row, col)`` map to world points ``x = L @ p + t`` with a (3, 2)
linear part ``L`` and translation ``t`` (mm). For a physically plausible section ``L`` is close to a
scaled rotation: ``L = s * R[:, :2]`` with ``R`` a 3D rotation and ``s`` the pixel spacing times an
unknown scale error. The pieces here follow scikit-image's ``measure.ransac`` design (models with
``estimate``/``residuals``, seeded ``rng``) but are vectorised over many hypotheses at once.

* :func:`similarity_fit` -- weighted Umeyama fit of ``s R`` (batched over stacked problems).
* :func:`affine_fit` -- plain weighted least squares of the full (3, 2) + t map.
* :func:`ransac_section` -- seeded RANSAC over candidate pairs grouped by section patch, with a scale
  prior, returning the best distinct hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidPointsError

__all__ = [
    "SectionMap",
    "similarity_fit",
    "affine_fit",
    "ransac_section",
    "constrain_affine",
]


@dataclass
class SectionMap:
    """A 2D->3D map ``x = linear @ (row, col) + translation``; linear (3, 2), translation (3,), mm."""

    linear: NDArray
    translation: NDArray
    score: float = 0.0
    inliers: NDArray = field(default_factory=lambda: np.zeros(0, bool))

    def apply(self, rc: ArrayLike) -> NDArray:
        """(N, 2) pixel (row, col) -> (N, 3) mm."""
        return np.asarray(rc, float) @ self.linear.T + self.translation

    def residuals(self, rc: ArrayLike, xyz: ArrayLike) -> NDArray:
        """(N,) euclidean distance in mm between mapped pixels and their 3D partners."""
        return np.linalg.norm(self.apply(rc) - np.asarray(xyz, float), axis=1)

    @property
    def scales(self) -> NDArray:
        """(2,) singular values of ``linear`` (mm per pixel along the principal in-plane directions)."""
        return np.linalg.svd(self.linear, compute_uv=False)

    @property
    def normal(self) -> NDArray:
        n = np.cross(self.linear[:, 0], self.linear[:, 1])
        return n / np.linalg.norm(n)


def _check_pairs(src: ArrayLike, dst: ArrayLike, weights: ArrayLike | None, min_n: int) -> tuple[NDArray, ...]:
    """src (..., N, 2), dst (..., N, 3), weights (..., N) as float arrays, or :class:`InvalidPointsError`."""
    try:
        s2 = np.asarray(src, float)
        d3 = np.asarray(dst, float)
        w = np.ones(s2.shape[:-1]) if weights is None else np.asarray(weights, float)
    except (TypeError, ValueError) as exc:
        raise InvalidPointsError(f"point pairs must be numeric arrays ({exc})") from exc
    if s2.ndim < 2 or s2.shape[-1] != 2 or d3.shape != s2.shape[:-1] + (3,):
        raise InvalidPointsError(
            f"need src (..., N, 2) pixels and dst (..., N, 3) mm of the same N, got {s2.shape} and {d3.shape}"
        )
    if w.shape != s2.shape[:-1]:
        raise InvalidPointsError(f"weights must have shape {s2.shape[:-1]}, got {w.shape}")
    if s2.shape[-2] < min_n:
        raise InvalidPointsError(f"need at least {min_n} point pairs to fit, got {s2.shape[-2]}")
    if not (np.all(np.isfinite(s2)) and np.all(np.isfinite(d3)) and np.all(np.isfinite(w))):
        raise InvalidPointsError("point pairs or weights contain NaN/inf; drop those pairs before fitting")
    if max(float(np.abs(s2).max(initial=0.0)), float(np.abs(d3).max(initial=0.0))) > 1e12:
        raise InvalidPointsError("point coordinates exceed 1e12 (pixels or mm); check their units")
    if np.any(w < 0):
        raise InvalidPointsError(f"weights must be non-negative, got minimum {float(w.min())}")
    return s2, d3, w


def similarity_fit(
    src: ArrayLike, dst: ArrayLike, weights: ArrayLike | None = None
) -> tuple[NDArray, NDArray, NDArray]:
    """Weighted least-squares similarity ``dst ~ s R [src, 0] + t`` (Umeyama 1991), batched.

    Parameters
    ----------
    src : (..., N, 2) pixel coordinates; dst : (..., N, 3) mm; weights : (..., N) non-negative.

    Returns
    -------
    linear : (..., 3, 2) = s * R[:, :2]; translation : (..., 3); scale : (...,) s.
    With the 2D points embedded at z = 0 a proper 3D rotation can also realise an in-plane mirror, so
    sections mounted face-down are fitted like any other.
    """
    s2, d3, w = _check_pairs(src, dst, weights, min_n=2)
    w = w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-12)
    mu_s = np.einsum("...n,...nk->...k", w, s2)
    mu_d = np.einsum("...n,...nk->...k", w, d3)
    sc = s2 - mu_s[..., None, :]
    dc = d3 - mu_d[..., None, :]
    cov = np.einsum("...n,...ni,...nj->...ij", w, dc, sc)  # (..., 3, 2)
    cov3 = np.concatenate([cov, np.zeros(cov.shape[:-1] + (1,))], axis=-1)  # (..., 3, 3)
    if not np.all(np.isfinite(cov3)):
        raise InvalidPointsError("point coordinates are too large to fit (overflow); use mm and pixel units")
    u, sv, vt = np.linalg.svd(cov3)
    det = np.linalg.det(u) * np.linalg.det(vt)
    dfix = np.ones(sv.shape)
    dfix[..., 2] = np.sign(det + (det == 0))
    rot = np.einsum("...ij,...j,...jk->...ik", u, dfix, vt)
    var_s = np.einsum("...n,...nk->...", w, sc**2)
    scale = (sv * dfix).sum(axis=-1) / np.maximum(var_s, 1e-12)
    linear = scale[..., None, None] * rot[..., :, :2]
    t = mu_d - np.einsum("...ij,...j->...i", linear, mu_s)
    return linear, t, scale


def affine_fit(src: ArrayLike, dst: ArrayLike, weights: ArrayLike | None = None) -> tuple[NDArray, NDArray]:
    """Weighted linear least squares of ``dst ~ L @ src + t``: src (N, 2), dst (N, 3) -> L (3, 2), t (3,)."""
    s2, d3, w = _check_pairs(src, dst, weights, min_n=3)
    if s2.ndim != 2:
        raise InvalidPointsError(f"affine_fit takes src (N, 2) and dst (N, 3), got src {s2.shape}")
    a = np.concatenate([s2, np.ones((len(s2), 1))], axis=1) * np.sqrt(w)[:, None]
    b = d3 * np.sqrt(w)[:, None]
    try:
        sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    except np.linalg.LinAlgError as exc:
        raise InvalidPointsError(f"affine fit did not converge ({exc}); coordinates too large or degenerate") from exc
    if not np.all(np.isfinite(sol)):
        raise InvalidPointsError("affine fit overflowed: point coordinates are too large; use mm and pixel units")
    return sol[:2].T, sol[2]


def constrain_affine(
    linear: NDArray, spacing: float, scale_range: tuple[float, float], max_anisotropy: float = 1.15
) -> NDArray:
    """Project a (3, 2) linear map onto the prior: its mean scale (the geometric mean of the two singular
    values) within ``spacing * scale_range`` and their ratio at most ``max_anisotropy``. One axis can so
    reach ``scale_range[1] * sqrt(max_anisotropy)`` times the spacing (1.63 with the defaults): a BigBrain
    section in its histological geometry needs 1.44 along z against 1.12 along x. (Before 2026-12-03 each
    singular value was clipped to the range, which cut that z scale to 1.4.) A similarity (equal singular
    values) is clipped as before."""
    u, s, vt = np.linalg.svd(linear, full_matrices=False)
    lo, hi = spacing * scale_range[0], spacing * scale_range[1]
    g = float(np.clip(np.sqrt(s[0] * s[1]), lo, hi))
    # s[0] >= s[1] >= 0; a degenerate map (a fit to collinear or coincident points) gets the largest ratio
    # along its one direction, or none when it has no direction at all
    ratio = min(float(s[0] / s[1]), max_anisotropy) if s[1] > 0 else (max_anisotropy if s[0] > 0 else 1.0)
    s = np.array([g * np.sqrt(ratio), g / np.sqrt(ratio)])
    return (u * s) @ vt


def _from_terms(per_h: NDArray, per_pair: NDArray) -> NDArray:
    """(h, M) squared distances ``|lin[h] @ rc[m] + t[h] - xyz[m]|^2`` of every pair under every hypothesis,
    as one (h, 16) x (16, M) product: the square expanded into terms of the hypothesis
    (:func:`_hypothesis_terms`) times terms of the pair (:func:`_pair_terms`); no (h, M, 3) array. The
    terms are a few hundred mm^2 at most, so float64 keeps far more than the sub-mm^2 a threshold needs."""
    return np.maximum(per_h @ per_pair, 0.0)


def _hypothesis_terms(lin: NDArray, t: NDArray) -> NDArray:
    """(h, 16): what :func:`_from_terms` needs of each hypothesis (lin^T lin, lin^T t, lin, |t|^2, t, 1)."""
    btb = np.einsum("hij,hik->hjk", lin, lin)  # (h, 2, 2): lin^T lin
    at = np.einsum("hij,hi->hj", lin, t)  # (h, 2): lin^T t
    return np.concatenate(
        [
            btb[:, 0, 0, None],
            btb[:, 0, 1, None],
            btb[:, 1, 1, None],
            at,
            lin.reshape(len(lin), 6),
            (t * t).sum(axis=1, keepdims=True),
            t,
            np.ones((len(lin), 1)),
        ],
        axis=1,
    )


def _pair_terms(rc: NDArray, xyz: NDArray) -> NDArray:
    """(16, M): what :func:`_from_terms` needs of each pair, in :func:`_hypothesis_terms`' order."""
    r0, r1 = rc[:, 0], rc[:, 1]
    return np.concatenate(
        [
            (r0 * r0)[None],
            (2.0 * r0 * r1)[None],
            (r1 * r1)[None],
            2.0 * rc.T,
            (-2.0 * xyz[:, :, None] * rc[:, None, :]).reshape(len(rc), 6).T,
            np.ones((1, len(rc))),
            -2.0 * xyz.T,
            (xyz * xyz).sum(axis=1)[None],
        ],
        axis=0,
    )


def _group_min(res: NDArray, group_start: NDArray) -> NDArray:
    """Per-group minimum along the last axis; pairs sorted by group, ``group_start`` their first indices."""
    return np.minimum.reduceat(res, group_start, axis=-1)


def ransac_section(
    rc: NDArray,
    xyz: NDArray,
    group: NDArray,
    sim: NDArray,
    spacing: float,
    rng: np.random.Generator,
    residual_threshold: float = 6.0,
    scale_range: tuple[float, float] = (0.7, 1.4),
    n_trials: int = 3000,
    n_hypotheses: int = 5,
    min_pixel_spread: float = 8.0,
    distinct_mm: float = 12.0,
    batch: int = 500,
) -> list[SectionMap]:
    """Seeded RANSAC for the section map over candidate pairs, several candidates per section patch.

    Parameters
    ----------
    rc : (M, 2) section pixel coordinates of the candidate pairs (working pixels).
    xyz : (M, 3) matched reference centres (mm).
    group : (M,) section-patch id of each pair; a patch counts once as an inlier whatever its candidates.
    sim : (M,) similarity of each pair; samples favour similar pairs.
    spacing : mm per working pixel (the known spacing); the fitted scale must lie in
        ``spacing * scale_range``.
    rng : numpy Generator (same seed, same result).
    residual_threshold : mm; a pair is an inlier when mapped within this distance of its partner.
    min_pixel_spread : minimal side length (pixels) of a sampled triangle, avoiding degenerate samples.
    distinct_mm : hypotheses whose mapped section centre differs by less than this (or whose normals
        differ by < 20 degrees and centres by < distinct_mm) are duplicates; only the best is kept.

    Returns
    -------
    Up to ``n_hypotheses`` :class:`SectionMap`, best first; ``score`` = number of inlier patches,
    ``inliers`` (M,) bool of the pairs within the threshold.
    """
    rc = np.asarray(rc, float)
    xyz = np.asarray(xyz, float)
    group = np.asarray(group)
    order = np.argsort(group, kind="stable")
    rc, xyz, group, sim = rc[order], xyz[order], group[order], np.asarray(sim, float)[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    n_groups = len(starts)
    if n_groups < 3:
        return []
    sizes = np.diff(np.r_[starts, len(group)])
    # sampling weights inside a group: softmax of similarity (sharp), across groups: uniform
    w = np.exp((sim - sim.max()) * 20.0)
    gsum = np.add.reduceat(w, starts)
    w_in = w / np.repeat(gsum, sizes)
    # cumulative weight inside each group (each group's weights sum to 1, so subtract the group index)
    cum_in = np.cumsum(w_in) - np.repeat(np.arange(n_groups, dtype=float), sizes)
    centre_px = rc.mean(axis=0)
    pair_terms = _pair_terms(rc, xyz)  # the pairs' share of every batch's residuals

    hyps: list[tuple[float, NDArray, NDArray]] = []
    for start in range(0, n_trials, batch):
        nb = min(batch, n_trials - start)
        g3 = rng.integers(0, n_groups, size=(nb, 3))
        distinct = (g3[:, 0] != g3[:, 1]) & (g3[:, 0] != g3[:, 2]) & (g3[:, 1] != g3[:, 2])
        g3 = g3[distinct]
        nb = len(g3)
        if nb == 0:
            continue
        u = rng.random((nb, 3))
        # pick a pair inside each chosen group by inverse CDF
        pick = np.empty((nb, 3), np.int64)
        for j in range(3):
            s0 = starts[g3[:, j]]
            sz = sizes[g3[:, j]]
            off = np.zeros(nb, np.int64)
            for step in range(int(sz.max())):
                valid = step < sz
                c = np.where(valid, cum_in[np.minimum(s0 + step, len(cum_in) - 1)], 2.0)
                off += (valid & (c < u[:, j])).astype(np.int64)
            pick[:, j] = s0 + np.minimum(off, sz - 1)
        p2 = rc[pick]  # (nb, 3, 2)
        d = np.linalg.norm(p2[:, [0, 1, 2]] - p2[:, [1, 2, 0]], axis=-1)
        e1, e2 = p2[:, 1] - p2[:, 0], p2[:, 2] - p2[:, 0]
        area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        ok = (d.min(axis=1) >= min_pixel_spread) & (area >= 0.25 * min_pixel_spread**2)
        if not ok.any():
            continue
        lin, t, s = similarity_fit(p2[ok], xyz[pick[ok]])
        ok_s = (s >= spacing * scale_range[0]) & (s <= spacing * scale_range[1])
        lin, t = lin[ok_s], t[ok_s]
        if len(lin) == 0:
            continue
        res2 = _from_terms(_hypothesis_terms(lin, t), pair_terms)  # (h, M) squared residuals
        inl = _group_min(res2, starts) < residual_threshold**2  # (h, G)
        score = inl.sum(axis=1).astype(float)
        # tie-break by mean residual of inliers so tighter fits win
        for h in np.argsort(-score)[: max(4 * n_hypotheses, 10)]:
            hyps.append((score[h], lin[h], t[h]))
    if not hyps:
        return []
    hyps.sort(key=lambda x: -x[0])
    kept: list[SectionMap] = []
    for score, lin, t in hyps:
        c = lin @ centre_px + t
        n = np.cross(lin[:, 0], lin[:, 1])
        n /= np.linalg.norm(n)
        dup = False
        for k in kept:
            ck = k.apply(centre_px[None])[0]
            if np.linalg.norm(ck - c) < distinct_mm and abs(float(n @ k.normal)) > np.cos(np.deg2rad(20)):
                dup = True
                break
        if dup:
            continue
        res = np.linalg.norm(rc @ lin.T + t - xyz, axis=1)
        m = SectionMap(lin, t, score=float(score), inliers=np.zeros(len(order), bool))
        m.inliers[order] = res < residual_threshold
        kept.append(m)
        if len(kept) >= n_hypotheses:
            break
    return kept

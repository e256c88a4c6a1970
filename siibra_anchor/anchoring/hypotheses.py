"""Where a section might lie: placements proposed from its patch matches, and the frames they share.

Every proposal is a :class:`~siibra_anchor.affine_fit.SectionMap` from working pixels (row, col) to world
mm. Besides RANSAC (:func:`~siibra_anchor.affine_fit.ransac_section`) there are two voting proposers: on
an expected plane (:func:`prior_hypotheses`, a series' plane) and on the reference's own plane
orientations (:func:`canonical_hypotheses`, a Hough transform for blocks with few right matches). A
:class:`Candidate` is a placement being scored, with the matches it was re-matched with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..affine_fit import SectionMap
from ..planes import CANONICAL_PLANES, plane_basis
from .params import PlanePrior

__all__ = [
    "Candidate",
    "MatchVotes",
    "in_plane_frames",
    "prior_hypotheses",
    "canonical_hypotheses",
    "plane_views",
    "mounting_mirrored",
]


class MatchVotes(NamedTuple):
    """Matches that vote for placements, and how they vote.

    rc : (M, 2) working pixels of section patches; xyz : (M, 3) mm of their matched reference patches;
    w : (M,) weights (squared clipped similarities); spacing : working pixel spacing (mm); flipped : the
    mounting hint (None: both handednesses); threshold_mm : how close a match must lie to count.
    """

    rc: NDArray
    xyz: NDArray
    w: NDArray
    spacing: float
    flipped: bool | None
    threshold_mm: float


@dataclass
class Candidate:
    """A placement under consideration.

    placement : working pixel -> world mm map.
    matches : the guided re-matching it came with: ``sim`` (N,) similarity, ``idx`` (N,) reference patch
        (-1: none), ``ok`` (N,) bool, one per section patch; empty when re-matching found too few.
    score : how well it fits: NMI gain against the template (or the coarse-match consistency when the
        reference has no volume); NaN until scored.
    voted : proposed by a canonical-plane vote (kept as voted beside its re-matched version).
    """

    placement: SectionMap
    matches: dict[str, NDArray] = field(default_factory=dict)
    score: float = math.nan
    voted: bool = False


def in_plane_frames(
    n: NDArray, e1: NDArray, e2: NDArray, angles: Any, px_mm: float, flipped: bool | None
) -> list[NDArray]:
    """(3, 2) linear maps of a section lying in the plane of unit normal ``n`` (basis ``e1, e2``): rows
    along each of ``angles`` (radians from ``e1``), pixels of ``px_mm``, both handednesses
    (``cross(row, col) = +-n``, the + side first), less those the mounting hint ``flipped`` rules out."""
    out = []
    for sign in (1.0, -1.0):
        for a in angles:
            r = np.cos(a) * e1 + np.sin(a) * e2
            lin = px_mm * np.stack([r, sign * np.cross(n, r)], axis=1)
            if flipped is not None and mounting_mirrored(SectionMap(lin, np.zeros(3))) != bool(flipped):
                continue
            out.append(lin)
    return out


def prior_hypotheses(prior: PlanePrior, votes: MatchVotes, n_keep: int = 3) -> list[SectionMap]:
    """Placements on the prior plane: for each in-plane rotation (the prior's, or 36 steps) and
    handedness, every match (rc -> xyz) votes for an in-plane translation; the densest votes win.

    votes : the matches (working pixel -> reference mm, weights) and how to vote (:class:`MatchVotes`).
    """
    rc, xyz, w, spacing, flipped, threshold_mm = votes
    n = np.asarray(prior.normal, float)
    n = n / np.linalg.norm(n)
    e1, e2 = plane_basis(n)
    if prior.row_dir is not None:
        r0 = np.asarray(prior.row_dir, float)
        r0 = r0 - (r0 @ n) * n
        angles = [float(np.arctan2(r0 @ e2, r0 @ e1))]
    else:
        angles = list(np.linspace(0.0, 2 * np.pi, 36, endpoint=False))
    binw = threshold_mm / 2.0
    found: list[tuple[float, SectionMap]] = []
    for lin in in_plane_frames(n, e1, e2, angles, spacing * prior.scale, flipped):
        t = xyz - rc @ lin.T
        u = np.stack([t @ e1, t @ e2], axis=1)
        lo = u.min(axis=0)
        ij = np.floor((u - lo) / binw).astype(int)
        grid = np.zeros(ij.max(axis=0) + 1)
        np.add.at(grid, (ij[:, 0], ij[:, 1]), w)
        grid = ndimage.uniform_filter(grid, size=3, mode="constant") * 9.0
        b = np.unravel_index(int(np.argmax(grid)), grid.shape)
        centre = lo + (np.array(b) + 0.5) * binw
        near = np.linalg.norm(u - centre, axis=1) < threshold_mm
        if not near.any():
            continue
        uc = (w[near, None] * u[near]).sum(axis=0) / max(float(w[near].sum()), 1e-12)
        tr = uc[0] * e1 + uc[1] * e2 + prior.offset_mm * n
        found.append((float(grid[b]), SectionMap(lin, tr, score=float(grid[b]))))
    found.sort(key=lambda x: -x[0])
    return [m for _, m in found[:n_keep]]


def canonical_hypotheses(
    ref: Any,
    ref_idx: NDArray,
    votes: MatchVotes,
    n_keep: int = 3,
    n_angles: int = 36,
    normal_bin_mm: float = 4.0,
) -> list[SectionMap]:
    """Placements voted for on the reference's own plane orientations (coronal, sagittal, axial).

    RANSAC needs three mutually consistent matches among its samples; on a small block where nine matches
    in ten are wrong it may never draw them. Most sections are cut near a canonical orientation, so here
    every match onto a reference patch of one orientation votes, for each of ``n_angles`` in-plane
    rotations and both handednesses, for the translation that would put its section patch on its
    reference patch (a Hough transform in 3D: two in-plane bins of ``threshold_mm / 2`` and the position
    along the normal in ``normal_bin_mm`` bins). The few right matches pile up in one cell; wrong ones
    scatter. The densest ``n_keep`` cells per orientation become hypotheses: a tilted section lands within
    a few mm and degrees of its place, and the guided re-matching and intensity refinement that follow
    take it from there.
    """
    rc, xyz, w, spacing, flipped, threshold_mm = votes
    normals = ref.plane_normals
    pair_n = normals[ref.plane_ids[ref_idx]]
    binw = threshold_mm / 2.0
    out: list[SectionMap] = []
    # the plane orientations of the matched reference patches, most matched first; at most three (a
    # reference cut along many orientations, e.g. from registered sections, votes on its main ones)
    orients: list[tuple[float, NDArray]] = []
    for n0 in normals[np.unique(ref.plane_ids[ref_idx])]:
        if any(abs(float(n0 @ d)) > 0.99 for _, d in orients):
            continue
        orients.append((float(w[np.abs(pair_n @ n0) > 0.99].sum()), n0))
    orients.sort(key=lambda x: -x[0])
    total = max(float(w.sum()), 1e-12)
    for weight, n0 in orients[:3]:
        if weight < 0.05 * total:
            continue
        sel = np.abs(pair_n @ n0) > 0.99
        if sel.sum() < 3:
            continue
        n = n0 * (1.0 if float(pair_n[sel][0] @ n0) > 0 else -1.0)
        e1, e2 = plane_basis(n)
        r_s, x_s, w_s = rc[sel], xyz[sel], w[sel]
        cell = np.array([binw, binw, normal_bin_mm])
        found: list[tuple[float, SectionMap]] = []
        angles = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False)
        for lin in in_plane_frames(n, e1, e2, angles, spacing, flipped):
            t = x_s - r_s @ lin.T
            tu = np.stack([t @ e1, t @ e2, t @ n], axis=1)  # translation in (e1, e2, n), mm
            u = tu / cell
            lo = np.floor(u.min(axis=0))
            ijk = (u - lo).astype(int)
            grid = np.zeros(ijk.max(axis=0) + 1)
            np.add.at(grid, (ijk[:, 0], ijk[:, 1], ijk[:, 2]), w_s)
            grid = ndimage.uniform_filter(grid, size=3, mode="constant") * 27.0
            for f in np.argsort(grid, axis=None)[::-1][:n_keep]:
                b = np.array(np.unravel_index(int(f), grid.shape))
                centre = (lo + b + 0.5) * cell
                near = (np.linalg.norm(tu[:, :2] - centre[:2], axis=1) < threshold_mm) & (
                    np.abs(tu[:, 2] - centre[2]) < 2 * normal_bin_mm
                )
                if not near.any():
                    continue
                uc = (w_s[near, None] * tu[near]).sum(axis=0) / max(float(w_s[near].sum()), 1e-12)
                tr = uc[0] * e1 + uc[1] * e2 + uc[2] * n
                found.append((float(grid[tuple(b)]), SectionMap(lin, tr, score=float(grid[tuple(b)]))))
        found.sort(key=lambda x: -x[0])
        out += [m for _, m in found[:n_keep]]
    return out


def plane_views(m: SectionMap, plane_axes: NDArray, n_rotations: int, mirrors: list[bool]) -> NDArray:
    """View index (angle x mirror, as :func:`extract_patches` cut them) that makes a section patch look
    like a patch of each reference section under placement ``m``; -1 where the reference section is
    more than 60 degrees off the section plane or needs a mirror state that was not cut.

    plane_axes : (S, 3, 2) unit row/column directions of the reference sections. Returns (S,) int.
    """
    su = m.linear / np.linalg.norm(m.linear, axis=0, keepdims=True)  # (3, 2)
    mt = np.einsum("ik,sil->skl", su, plane_axes)  # (S, 2, 2): section axes . reference axes
    det = np.linalg.det(mt)
    views = np.full(len(plane_axes), -1, np.int64)
    step = 2.0 * np.pi / n_rotations
    for j, mirrored in enumerate(mirrors):
        sel = (det < -0.5) if mirrored else (det > 0.5)
        mm = mt.copy()
        if mirrored:
            mm[:, :, 1] *= -1.0
        ang = np.arctan2(mm[:, 1, 0], mm[:, 0, 0])
        k = np.round(ang / step).astype(np.int64) % n_rotations
        views[sel] = j * n_rotations + k[sel]
    return views


def mounting_mirrored(m: SectionMap) -> bool:
    """True if placement ``m`` shows the section mirrored relative to the usual view of the closest
    canonical plane (:data:`~siibra_anchor.planes.CANONICAL_PLANES`): the section was mounted face down."""
    name = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(m.normal)))]
    ur, uc = CANONICAL_PLANES[name]
    su = m.linear / np.linalg.norm(m.linear, axis=0, keepdims=True)
    return bool(np.linalg.det(su.T @ np.stack([ur, uc], axis=1)) < 0)

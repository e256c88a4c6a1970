"""``anchor()``: place one section in a reference space.

Data flows one way: section -> working-resolution image -> patches at several in-plane angles ->
embeddings -> cosine top-k matches -> RANSAC hypotheses -> guided re-matching -> image-similarity choice
and refinement -> :class:`~siibra_anchor.result.AnchoringResult`.
"""

from __future__ import annotations

import logging
import time
import tracemalloc
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..affine_fit import SectionMap, constrain_affine, ransac_section, similarity_fit
from ..errors import EmptyMaskError, EncoderError, ImageTooSmallError, InvalidSectionError, LowConfidenceWarning
from ..patches import grid_centres, normalize_intensity, rotation_angles
from ..planes import plane_basis, section_affine
from ..result import AnchoringResult
from ..section import Section
from ..views import PatchViews

__all__ = ["anchor", "AnchorParams", "PlanePrior", "confidence_from_scores", "LOW_CONFIDENCE"]

log = logging.getLogger(__name__)

#: Below this confidence :func:`anchor` logs a warning and emits :class:`~siibra_anchor.errors.LowConfidenceWarning`.
LOW_CONFIDENCE = 0.5


@dataclass(frozen=True)
class AnchorParams:
    """Tuning of the matcher (defaults are what the benchmark measures)."""

    n_rotations: int = 12
    k: int = 8
    n_coarse: int = 200
    coarse_dim: int = 48
    ransac_trials: int = 3000
    ransac_threshold_mm: float = 7.5
    n_hypotheses: int = 6
    scale_range: tuple[float, float] = (0.7, 1.4)
    guided_radii_mm: tuple[float, ...] = (16.0, 10.0, 7.0)
    inlier_mm: float = 5.0
    max_guided_iterations: int = 4
    dense_below: int = 250
    converged_mm: float = 0.5
    refine: bool = True
    n_sample_points: int = 2000
    n_refine: int = 2
    # a placement with confidence below ``retry_below`` is searched again with ``retry_widen`` times more
    # coarse patches, matches per patch, RANSAC trials and hypotheses; the better-scoring placement is kept
    retry_below: float = 0.5
    retry_widen: float = 2.0
    #: also vote for placements on the reference's canonical planes (see :func:`_canonical_hypotheses`);
    #: the wider second search switches it on
    canonical_votes: bool = False
    #: densest vote cells kept per canonical orientation as hypotheses (each is re-matched and scored)
    canonical_keep: int = 6
    #: global top-k search: "auto" (faiss from 1e6 reference patches if installed), "exact", "faiss", "faiss-hnsw"
    search: str = "auto"


@dataclass(frozen=True)
class PlanePrior:
    """Where a section's plane is expected to lie (e.g. from the rest of its series).

    normal : (3,) unit world normal ``cross(row dir, col dir)`` the placement should have (its sign
        follows the mounting; both signs are tried when ``anchor(flipped=None)``).
    offset_mm : ``normal . x`` for the points ``x`` of the expected plane (mm).
    tolerance_mm : how far from that plane reference patches are matched and placements accepted.
    row_dir : optional (3,) unit world direction of increasing rows (the expected in-plane orientation).
    scale : expected true / stated pixel spacing.
    max_angle_deg : placements whose normal is further off than this are rejected.
    """

    normal: tuple[float, float, float]
    offset_mm: float
    tolerance_mm: float = 6.0
    row_dir: tuple[float, float, float] | None = None
    scale: float = 1.0
    max_angle_deg: float = 10.0

    def agrees(self, m: SectionMap, tissue_rc: NDArray) -> bool:
        """True if map ``m`` puts the tissue (working pixels ``tissue_rc``) on the expected plane (either sign)."""
        n = np.asarray(self.normal, float)
        cos = abs(float(m.normal @ n))
        off = float(m.apply(tissue_rc).mean(axis=0) @ n) - self.offset_mm
        return cos >= np.cos(np.deg2rad(self.max_angle_deg)) and abs(off) <= self.tolerance_mm


def _in_plane_frames(
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


def _prior_hypotheses(
    prior: PlanePrior,
    rc: NDArray,
    xyz: NDArray,
    w: NDArray,
    spacing: float,
    flipped: bool | None,
    threshold_mm: float,
    n_keep: int = 3,
) -> list[SectionMap]:
    """Placements on the prior plane: for each in-plane rotation (the prior's, or 36 steps) and
    handedness, every match (rc -> xyz) votes for an in-plane translation; the densest votes win.

    rc : (M, 2) working pixels, xyz : (M, 3) mm of their matched reference patches, w : (M,) weights.
    """
    from scipy import ndimage

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
    for lin in _in_plane_frames(n, e1, e2, angles, spacing * prior.scale, flipped):
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


def _canonical_hypotheses(
    ref: Any,
    ref_idx: NDArray,
    rc: NDArray,
    xyz: NDArray,
    w: NDArray,
    spacing: float,
    flipped: bool | None,
    threshold_mm: float,
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
    from scipy import ndimage

    axes = ref.plane_axes
    normals = np.cross(axes[:, :, 0], axes[:, :, 1])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
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
        for lin in _in_plane_frames(n, e1, e2, angles, spacing, flipped):
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


def confidence_from_scores(consistency: float, nmi_gain: float) -> float:
    """Map the two quality scores of a placement to [0, 1]; both must be high for a high value.

    consistency : fraction of coarse section patches whose global top-k matches include one within the
        RANSAC threshold of where the final affine puts the patch (a few percent for a wrong placement).
    nmi_gain : normalised mutual information of the section with the template on the final plane minus
        its median on planes shifted 15 mm away (near 0 when nothing in the image relates to the template;
        about 0.05 for a mask outline alone).
    ``sigmoid(25 (consistency - 0.10)) * sigmoid(60 (nmi_gain - 0.06))``; the thresholds sit between
    what noise and non-brain images reach and what correctly placed sections reach in the benchmark
    (docs/benchmarks.md shows the calibration).
    """

    def sig(z: float) -> float:
        return float(1.0 / (1.0 + np.exp(-z)))

    return sig(25.0 * (consistency - 0.10)) * sig(60.0 * (nmi_gain - 0.06))


def _check_call(seed: Any, reference: Any, params: Any, device: Any) -> None:
    """Typed errors for the non-section arguments of :func:`anchor`."""
    from ..errors import InvalidReferenceError

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidSectionError(f"seed must be a non-negative integer, got {seed!r}")
    if reference is not None:
        from ..reference import Reference

        if not isinstance(reference, Reference):
            raise InvalidReferenceError(
                f"reference must be a siibra_anchor.Reference, got {type(reference).__name__}; "
                "build one with sa.Reference.from_space(...) or load it with sa.Reference.load(path)"
            )
    if params is not None and not isinstance(params, AnchorParams):
        raise InvalidSectionError(f"params must be an AnchorParams, got {type(params).__name__}")
    if device is not None and not isinstance(device, str) and type(device).__name__ != "device":
        raise InvalidSectionError(f"device must be a torch device name such as 'cpu' or 'cuda', got {device!r}")


def _section_map_to_affine(m: SectionMap, scale: NDArray, thickness_mm: float) -> NDArray:
    """Working-pixel map -> (4, 4) affine of the original pixel grid (working = original / scale)."""
    lin = m.linear / scale[None, :]
    return section_affine(lin, m.translation, thickness_mm)


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
    from ..planes import CANONICAL_PLANES

    name = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(m.normal)))]
    ur, uc = CANONICAL_PLANES[name]
    su = m.linear / np.linalg.norm(m.linear, axis=0, keepdims=True)
    return bool(np.linalg.det(su.T @ np.stack([ur, uc], axis=1)) < 0)


def _guided(
    emb: Any,
    cen: NDArray,
    ref: Any,
    m: SectionMap,
    params: AnchorParams,
    spacing: float,
    n_rotations: int,
    mirrors: list[bool],
) -> tuple[SectionMap, dict[str, NDArray]]:
    """Re-match each patch among references near where ``m`` puts it, comparing each reference with the
    patch view that ``m`` predicts; refit a similarity on the good matches; shrink the radius."""
    from ..matching import best_in_neighbourhood

    cur = m
    out: dict[str, NDArray] = {}
    axes = ref.plane_axes
    # shrink the radius, then iterate at the last radius until the placement stops moving
    radii = list(params.guided_radii_mm) + [params.guided_radii_mm[-1]] * params.max_guided_iterations
    for i, r in enumerate(radii):
        pred = cur.apply(cen)
        ref_view = plane_views(cur, axes, n_rotations, mirrors)[ref.plane_ids]
        sim, idx, _ = best_in_neighbourhood(emb, ref.embeddings, ref.tree, pred, r, ref_view=ref_view)
        ok = idx >= 0
        if ok.sum() < 3:
            break
        xyz = ref.centres_mm[np.maximum(idx, 0)]
        res = np.linalg.norm(pred - xyz, axis=1)
        w = np.where(ok, np.clip(sim, 0.0, None) ** 2, 0.0) * (res < 0.75 * r)
        if (w > 0).sum() < 3:
            break
        lin, t, _ = similarity_fit(cen[w > 0], xyz[w > 0], w[w > 0])
        lin = constrain_affine(lin, spacing, params.scale_range, max_anisotropy=1.0)
        new = SectionMap(lin, t, score=float((w > 0).sum()))
        out = {"sim": sim, "idx": idx, "ok": ok}
        moved = float(np.linalg.norm(new.apply(cen) - pred, axis=1).mean())
        cur = new
        if i >= len(params.guided_radii_mm) - 1 and moved < params.converged_mm:
            break
    return cur, out


def _shifted_nmi(pts: Any, m: SectionMap, ref: Any, vol: NDArray, shift_mm: float = 15.0) -> float:
    """Median NMI on planes shifted by ``shift_mm`` along the normal and in-plane (a local null level)."""
    from ..refine import plane_nmi

    n = m.normal
    e1 = m.linear[:, 0] / np.linalg.norm(m.linear[:, 0])
    e2 = np.cross(n, e1)
    vals = [
        plane_nmi(pts, m.linear, m.translation + shift_mm * d, vol, ref.volume_affine)
        for d in (n, -n, e1, -e1, e2, -e2)
    ]
    return float(np.median(vals))


def _nmi_gain(pts: Any, m: SectionMap, ref: Any) -> float:
    """NMI of the section with the template on placement ``m`` minus its level on shifted planes."""
    from ..refine import plane_nmi

    return plane_nmi(pts, m.linear, m.translation, ref.volume, ref.volume_affine) - _shifted_nmi(
        pts, m, ref, ref.volume
    )


def _refined(
    pts: Any, m: SectionMap, ref: Any, spacing: float, p: AnchorParams, smoothed: dict, sigmas: tuple, evals: int
) -> tuple[float, SectionMap]:
    """Intensity-refine placement ``m`` (within the scale prior) and return (NMI gain, refined map)."""
    from ..refine import refine_map

    lin, t, _ = refine_map(
        pts,
        m.linear,
        m.translation,
        ref.volume,
        ref.volume_affine,
        smoothed=smoothed,
        smooth_sigmas=sigmas,
        max_evals=evals,
    )
    gm = SectionMap(constrain_affine(lin, spacing, p.scale_range), t, score=m.score)
    return _nmi_gain(pts, gm, ref), gm


def anchor(
    section: Section,
    space: Any = "mni152",
    reference: Any = None,
    encoder: Any = None,
    n_patches: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    hemisphere: str | None = None,
    flipped: bool | None = None,
    params: AnchorParams | None = None,
    plane_prior: PlanePrior | None = None,
) -> AnchoringResult:
    """Find where ``section`` lies in ``space``.

    Parameters
    ----------
    section : :class:`~siibra_anchor.section.Section` (image, spacing in mm, tissue mask).
    space : space name ("mni152" embedded; others via siibra) -- ignored when ``reference`` is given.
    reference : a prebuilt :class:`~siibra_anchor.reference.Reference` (default: the space's cached one).
    encoder : torch module mapping (N, 1, P, P) to (N, D); default the shipped encoder. Must be the
        encoder the reference was built with.
    n_patches : about how many section patches to use (default: every grid point, ~1000 on a whole
        coronal section).
    seed : seeds every random choice; same inputs and seed give the same result.
    device : torch device for the encoder ("cpu", "cuda", ...).
    progress : show a progress bar for the reference build.
    hemisphere : "left" / "right" if the section holds only that hemisphere (a hint, not a constraint
        on whole sections).
    flipped : True if mounted face down (mirrored), False if not, None to consider both.
    params : matcher tuning (:class:`AnchorParams`).
    plane_prior : :class:`PlanePrior`, where the plane is expected (series anchoring passes the series'
        plane): matching is restricted to reference patches near it, placements on it are proposed, and
        placements off it are rejected unless nothing else is left.

    Returns
    -------
    :class:`AnchoringResult` whose ``affine`` maps original pixel (row, col, 0, 1) to world mm.
    """
    result = _anchor(
        section,
        space=space,
        reference=reference,
        encoder=encoder,
        n_patches=n_patches,
        seed=seed,
        device=device,
        progress=progress,
        hemisphere=hemisphere,
        flipped=flipped,
        params=params,
        plane_prior=plane_prior,
    )
    if result.confidence < LOW_CONFIDENCE:
        msg = (
            f"low confidence {result.confidence:.2f} for section {section.name!r}: the placement may be wrong "
            f"(consistency {result.diagnostics.get('consistency', float('nan')):.2f}, "
            f"NMI gain {result.diagnostics.get('nmi_gain') or float('nan'):.3f}); check that it is a human brain "
            "section with the right spacing_mm, or treat it as unplaced"
        )
        log.warning(msg)
        warnings.warn(msg, LowConfidenceWarning, stacklevel=2)
    return result


def _anchor(
    section: Section,
    space: Any = "mni152",
    reference: Any = None,
    encoder: Any = None,
    n_patches: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    hemisphere: str | None = None,
    flipped: bool | None = None,
    params: AnchorParams | None = None,
    plane_prior: PlanePrior | None = None,
) -> AnchoringResult:
    """:func:`anchor` without the low-confidence warning (the wider second search calls it)."""
    from ..encoders import encoder_hash, load_default_encoder
    from ..matching import search_topk
    from ..reference import Reference
    from ..spaces import canonical_space

    p = params or AnchorParams()
    if not isinstance(section, Section):
        raise InvalidSectionError(
            f"anchor() needs a siibra_anchor.Section, got {type(section).__name__}; "
            "wrap arrays with sa.Section(image, spacing_mm=...)"
        )
    if hemisphere not in (None, "left", "right"):
        raise InvalidSectionError(f"hemisphere must be None, 'left' or 'right', got {hemisphere!r}")
    if flipped not in (None, True, False):
        raise InvalidSectionError(f"flipped must be None, True or False, got {flipped!r}")
    if n_patches is not None and (not isinstance(n_patches, (int, np.integer)) or n_patches < 6):
        raise InvalidSectionError(f"n_patches must be an integer >= 6 or None, got {n_patches!r}")
    _check_call(seed, reference, params, device)
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    enc = encoder if encoder is not None else load_default_encoder()
    if reference is None:
        canonical_space(space)
        reference = Reference.from_space(space, encoder=enc, progress=progress)
    ref = reference
    if ref.encoder_hash != encoder_hash(enc):
        raise EncoderError(
            f"the reference was built with encoder {ref.encoder_hash} but anchoring uses {encoder_hash(enc)}; "
            "build the reference with the same encoder (Reference.from_space(..., encoder=enc))"
        )
    timings["reference_s"] = time.perf_counter() - t_start
    if section.mask.all():
        raise EmptyMaskError(
            f"the tissue mask of section {section.name!r} covers every pixel, so it marks no tissue boundary; "
            "pass mask=None to detect tissue, or a mask that is False on the background (for a block that "
            "fills the frame, set the mask's border pixels to False)"
        )
    spec = ref.spec
    t0 = time.perf_counter()
    img, msk, scale = section.at_spacing(spec.spacing_mm)
    if min(img.shape) < spec.size_px // 2:
        raise ImageTooSmallError(
            f"section {section.name!r} is {img.shape} px at the working spacing {spec.spacing_mm} mm "
            f"({section.extent_mm[0]:.1f} x {section.extent_mm[1]:.1f} mm); it needs at least "
            f"{spec.size_px // 2 * spec.spacing_mm:.0f} mm of tissue across. Check spacing_mm"
        )
    if msk.sum() == 0:
        raise EmptyMaskError(f"section {section.name!r} has no tissue at {spec.spacing_mm} mm/px")
    imgn = normalize_intensity(img, msk)
    cen = grid_centres(msk, spec)
    if n_patches is None and len(cen) < p.dense_below:
        # small pieces (blocks, hemisections) need denser sampling to collect consistent matches
        cen = grid_centres(msk, spec, stride_px=max(1, spec.stride_px // 2))
    if n_patches is not None and len(cen) > 0:
        stride = max(1, int(round(spec.stride_px * np.sqrt(len(cen) / n_patches))))
        cen = grid_centres(msk, spec, stride_px=stride)
        if len(cen) > n_patches:
            cen = cen[np.sort(rng.choice(len(cen), n_patches, replace=False))]
    if len(cen) < 6:
        cen = grid_centres(msk, spec, stride_px=1)
        if len(cen) > 200:
            cen = cen[np.sort(rng.choice(len(cen), 200, replace=False))]
    if len(cen) < 6:
        raise ImageTooSmallError(
            f"section {section.name!r} holds only {len(cen)} patches of {spec.size_px * spec.spacing_mm:.0f} mm; "
            "the tissue is too small to anchor (or spacing_mm is wrong)"
        )
    angles = rotation_angles(p.n_rotations)
    mirrors = [False, True] if flipped is None else [bool(flipped)]
    emb = PatchViews(imgn, cen, spec.size_px, angles, mirrors, enc, device=device)
    n = emb.n
    coarse = np.sort(rng.choice(n, min(n, p.n_coarse), replace=False))
    emb_coarse = emb.all_views(coarse)
    timings["embed_s"] = time.perf_counter() - t0

    # -- coarse: global top-k on a subset, RANSAC hypotheses -------------------------------------
    t0 = time.perf_counter()
    cmask, proj, cref = ref.coarse_index(p.coarse_dim)
    cpos = np.flatnonzero(cmask)
    ref_mask = None
    if hemisphere is not None:
        xs = ref.centres_mm[cpos, 0]
        ref_mask = xs < 10.0 if hemisphere == "left" else xs > -10.0
    if plane_prior is not None:
        # reference patches within the prior's slab (patch half-width added: a patch centre off the
        # plane still overlaps it)
        d_ref = ref.centres_mm[cpos] @ np.asarray(plane_prior.normal, float) - plane_prior.offset_mm
        slab = np.abs(d_ref) < plane_prior.tolerance_mm + 0.5 * spec.size_px * spec.spacing_mm
        ref_mask = slab if ref_mask is None else (ref_mask & slab)
    q = emb_coarse @ proj
    q /= np.maximum(np.linalg.norm(q, axis=2, keepdims=True), 1e-12)
    sims, cidx, _ = search_topk(q, cref, p.k, ref_mask=ref_mask, search=p.search)
    idx = cpos[cidx]
    rc_pairs = np.repeat(cen[coarse], idx.shape[1], axis=0)
    xyz_pairs = ref.centres_mm[idx.ravel()]
    grp = np.repeat(np.arange(len(coarse)), idx.shape[1])
    hyps = ransac_section(
        rc_pairs,
        xyz_pairs,
        grp,
        sims.ravel(),
        spacing=spec.spacing_mm,
        rng=rng,
        residual_threshold=p.ransac_threshold_mm,
        scale_range=p.scale_range,
        n_trials=p.ransac_trials,
        n_hypotheses=p.n_hypotheses,
    )
    if plane_prior is not None:
        hyps = (
            _prior_hypotheses(
                plane_prior,
                rc_pairs,
                xyz_pairs,
                np.clip(sims.ravel(), 0.0, None) ** 2,
                spec.spacing_mm,
                flipped,
                p.ransac_threshold_mm,
            )
            + hyps
        )
    voted: list[SectionMap] = []
    if p.canonical_votes and plane_prior is None:
        voted = _canonical_hypotheses(
            ref,
            idx.ravel(),
            rc_pairs,
            xyz_pairs,
            np.clip(sims.ravel(), 0.0, None) ** 2,
            spec.spacing_mm,
            flipped,
            p.ransac_threshold_mm,
            n_keep=p.canonical_keep,
        )
        hyps = hyps + voted
    timings["match_s"] = time.perf_counter() - t0
    if not hyps:
        from ..errors import AnchoringFailedError

        raise AnchoringFailedError(
            f"no consistent placement found for section {section.name!r} (too few plausible matches); "
            "check spacing_mm and the tissue mask, or try more patches"
        )

    # -- guided re-matching of every hypothesis ---------------------------------------------------
    t0 = time.perf_counter()
    tissue_rc = np.argwhere(msk)[:: max(1, int(msk.sum()) // 2000)].astype(float)

    def consistency(m: SectionMap) -> float:
        pred = m.apply(cen[coarse])
        d = np.linalg.norm(ref.centres_mm[idx] - pred[:, None, :], axis=2).min(axis=1)
        return float((d < p.ransac_threshold_mm).mean())

    cands = []
    for h in hyps:
        g, info = _guided(emb, cen, ref, h, p, spec.spacing_mm, p.n_rotations, mirrors)
        # a voted placement is kept as voted too: where nine matches in ten are wrong, the guided
        # re-matching can pull it away from a nearly right place that the intensity refinement would fix
        for m in (g, h) if any(h is v for v in voted) else (g,):
            if hemisphere is not None:
                x_c = float(m.apply(tissue_rc)[:, 0].mean())
                if (hemisphere == "left" and x_c > 5.0) or (hemisphere == "right" and x_c < -5.0):
                    continue
            cands.append((m, info))
    if plane_prior is not None and any(plane_prior.agrees(g, tissue_rc) for g, _ in cands):
        cands = [(g, info) for g, info in cands if plane_prior.agrees(g, tissue_rc)]
    if not cands:
        g, info = _guided(emb, cen, ref, hyps[0], p, spec.spacing_mm, p.n_rotations, mirrors)
        cands = [(g, info)]
    timings["guided_s"] = time.perf_counter() - t0

    # -- choose by image similarity and refine ----------------------------------------------------
    t0 = time.perf_counter()
    scored: list[list[Any]] = []
    pts = None
    smoothed = {sg: ref.smoothed_volume(sg) for sg in (2.0, 1.0, 0.0)}
    if ref.volume is not None:
        from ..refine import sample_points

        pts = sample_points(imgn, msk, p.n_sample_points, rng)
        for g, info in cands:
            scored.append([_nmi_gain(pts, g, ref), g, info])
        scored.sort(key=lambda x: -x[0])
        if p.refine:
            # refine the best n_refine coarsely, then re-rank (refinement can overturn a close call)
            for item in scored[: p.n_refine]:
                item[0], item[1] = _refined(pts, item[1], ref, spec.spacing_mm, p, smoothed, (2.0,), 120)
            scored.sort(key=lambda x: -x[0])
            top = scored[0]
            gain, gm = _refined(pts, top[1], ref, spec.spacing_mm, p, smoothed, (1.0, 0.0), 160)
            if gain >= top[0]:
                scored[0] = [gain, gm, top[2]]
    else:
        scored = [[consistency(g), g, info] for g, info in cands]
        scored.sort(key=lambda x: -x[0])
    timings["refine_s"] = time.perf_counter() - t0

    if ref.volume is not None and p.refine and pts is not None:
        # The mirror image of the winner across the mid-sagittal plane (x -> -x) is the classic
        # left/right confusion; test it explicitly unless a hint rules it out.
        top = scored[0]
        d = np.diag([-1.0, 1.0, 1.0])
        mir = SectionMap(d @ top[1].linear, d @ top[1].translation, score=top[1].score)
        far = np.linalg.norm(mir.apply(tissue_rc) - top[1].apply(tissue_rc), axis=1).mean() > 10.0
        x_c = float(mir.apply(tissue_rc)[:, 0].mean())
        allowed = far and not (
            (hemisphere == "left" and x_c > 5.0)
            or (hemisphere == "right" and x_c < -5.0)
            or (flipped is not None and mounting_mirrored(mir) != bool(flipped))
            or (plane_prior is not None and not plane_prior.agrees(mir, tissue_rc))
        )
        if allowed:
            gain, gm = _refined(pts, mir, ref, spec.spacing_mm, p, smoothed, (2.0, 0.0), 160)
            g2, info2 = _guided(
                emb,
                cen,
                ref,
                gm,
                replace(p, guided_radii_mm=(p.guided_radii_mm[-1],)),
                spec.spacing_mm,
                p.n_rotations,
                mirrors,
            )
            scored.append([gain, gm, info2 if info2 else top[2]])
            scored.sort(key=lambda x: -x[0])

    best_gain, best, info = scored[0]
    cons = consistency(best)
    conf = confidence_from_scores(cons, best_gain if ref.volume is not None else 0.05)
    # an alternative placement (> 10 mm away over the tissue) that fits almost as well makes the choice
    # a coin toss (e.g. a mirrored block near the midline of a symmetric brain): say so
    pos_best = best.apply(tissue_rc)
    margin = np.inf
    for gain, g, _ in scored[1:]:
        if np.linalg.norm(g.apply(tissue_rc) - pos_best, axis=1).mean() > 10.0:
            margin = min(margin, best_gain - gain)
    if np.isfinite(margin):
        conf *= 0.5 + 0.5 * float(np.tanh(max(margin, 0.0) / 0.08))

    # -- result -------------------------------------------------------------------------------------
    thickness = float(np.mean(section.spacing_mm))
    affine = _section_map_to_affine(best, scale, thickness)
    pred = best.apply(cen)
    midx = info.get("idx", np.full(n, -1))
    ok = midx >= 0
    xyz = np.where(ok[:, None], ref.centres_mm[np.maximum(midx, 0)], np.nan)
    resid = np.linalg.norm(pred - xyz, axis=1)
    matches = {
        "row": cen[:, 0] * scale[0],
        "col": cen[:, 1] * scale[1],
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "similarity": np.where(ok, info.get("sim", np.zeros(n)), np.nan),
        "residual_mm": resid,
        "inlier": ok & (resid < p.inlier_mm),
    }
    c_best = pos_best.mean(axis=0)
    alternatives = []
    listed = [pos_best]
    for gain, g, _ in scored[1:]:
        pos = g.apply(tissue_rc)
        if min(np.linalg.norm(pos - q, axis=1).mean() for q in listed) <= 10.0:
            continue  # the same placement, found twice
        listed.append(pos)
        c_alt = pos.mean(axis=0)
        label = "other placement"
        if np.sign(c_alt[0]) != np.sign(c_best[0]) and abs(c_alt[0]) > 5 and abs(c_best[0]) > 5:
            label = "other hemisphere"
        elif float(np.cross(g.linear[:, 0], g.linear[:, 1]) @ np.cross(best.linear[:, 0], best.linear[:, 1])) < 0:
            label = "mirrored / reversed normal"
        alternatives.append(
            {
                "affine": _section_map_to_affine(g, scale, thickness),
                "score": float(gain),
                "inlier_fraction": consistency(g),
                "label": label,
            }
        )
    total = time.perf_counter() - t_start
    timings["total_s"] = total
    diagnostics = {
        "timings": timings,
        "n_patches": int(n),
        "n_encoded_views": int(emb.n_encoded),
        "n_coarse": int(len(coarse)),
        "n_hypotheses": len(hyps),
        "consistency": cons,
        "nmi_gain": float(best_gain) if ref.volume is not None else None,
        "margin_to_alternative": float(margin) if np.isfinite(margin) else None,
        "seed": int(seed),
        "hemisphere": hemisphere,
        "flipped": flipped,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()},
    }
    if plane_prior is not None:
        diagnostics["plane_prior"] = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in plane_prior.__dict__.items()
        }
    result = AnchoringResult(
        affine=affine,
        space=ref.space,
        confidence=conf,
        matches=matches,
        alternatives=alternatives,
        section={
            "name": section.name,
            "shape": list(section.shape),
            "spacing_mm": list(section.spacing_mm),
            "modality": section.modality,
            **({"path": str(Path(section.source).resolve())} if section.source else {}),
        },
        diagnostics=diagnostics,
        encoder_hash=ref.encoder_hash,
        reference={
            "space": ref.space,
            "n_sections": ref.n_sections,
            "n_patches": ref.n_patches,
            "params": ref.params,
        },
        mask=section.mask,
        image=section.image,
    )
    if conf < p.retry_below and p.retry_widen > 1.0 and ref.volume is not None:
        # a hard section (a small block, an unusual contrast): the right placement is often among the
        # matches but not among the few RANSAC hypotheses; search wider once and keep the better score
        w = p.retry_widen
        wide = replace(
            p,
            k=int(round(p.k * w)),
            n_coarse=int(round(p.n_coarse * w)),
            ransac_trials=int(round(p.ransac_trials * w)),
            n_hypotheses=int(round(p.n_hypotheses * w)),
            retry_below=0.0,
            canonical_votes=True,
        )
        again = _anchor(
            section,
            reference=ref,
            encoder=enc,
            n_patches=n_patches,
            seed=seed,
            device=device,
            hemisphere=hemisphere,
            flipped=flipped,
            params=wide,
            plane_prior=plane_prior,
        )
        first = {"confidence": conf, "nmi_gain": float(best_gain), "consistency": cons}
        if (again.diagnostics.get("nmi_gain") or -1.0) > float(best_gain):
            result = again
        result.diagnostics["retried_wider"] = {"first_pass": first, "kept": "wider" if result is again else "first"}
        result.diagnostics["timings"]["total_s"] = time.perf_counter() - t_start
    return result


def peak_memory_of(fn, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Run ``fn`` and return (its result, peak traced Python/numpy memory in MiB)."""
    tracemalloc.start()
    try:
        out = fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak / 2**20

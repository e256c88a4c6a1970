"""The stages of one anchoring pass, each a function over a :class:`Run`:

``sample`` (working image, tissue patches, their embeddings) -> ``propose`` (coarse global matches,
RANSAC and voted placements) -> ``guide`` (re-match every placement near where it puts each patch) ->
``score`` (NMI with the template, intensity refinement of the best) -> ``disambiguate`` (the mirror image
across the midline, confidence, margin to the best distinct alternative) -> ``assemble`` (the
:class:`~siibra_anchor.result.AnchoringResult`).

Each stage reads what the stages before it filled in and fills in its own fields; :func:`run_stages`
runs them in order. Randomness comes from ``Run.rng`` in that order, so a seed gives one result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from ..affine_fit import SectionMap, constrain_affine, ransac_section, similarity_fit
from ..confidence import cap, confidence_model
from ..errors import AnchoringFailedError, EmptyMaskError, ImageTooSmallError, InvalidReferenceError
from ..matching import best_in_neighbourhood, search_topk
from ..patches import grid_centres, normalize_intensity, rotation_angles
from ..planes import CANONICAL_PLANES, section_affine
from ..refine import SamplePoints, nmi_gain, outside_share, refine_map, sample_points
from ..result import AnchoringResult, pixel_grid_of
from ..section import Section
from ..views import PatchViews
from .hypotheses import Candidate, MatchVotes, canonical_hypotheses, mounting_mirrored, plane_views, prior_hypotheses
from .params import AnchorParams, PlanePrior

__all__ = [
    "Run",
    "sample",
    "prepare",
    "embed_coarse",
    "propose",
    "guide",
    "score",
    "refine_from",
    "placement_gain",
    "working_map",
    "original_affine",
    "disambiguate",
    "confide",
    "assemble",
    "run_stages",
    "confidence_from_scores",
    "guided_rematch",
]


@dataclass
class Run:
    """State of one anchoring pass. The caller fills the inputs; each stage fills its own fields.

    Inputs: section, ref (a :class:`~siibra_anchor.reference.Reference`), encoder, params, seed, hints
    (hemisphere, flipped, cut), plane_prior, n_patches, device.
    sample: img/msk/imgn (H, W) working-resolution image, tissue mask and normalised image; scale (2,)
        original / working pixels; cen (N, 2) working pixel patch centres; emb (:class:`PatchViews`);
        coarse (C,) indices of the patches searched globally, emb_coarse (C, V, D) all their views' embeddings;
        mirrors; tissue_rc (T, 2) tissue pixels.
    propose: idx (C, k) reference patches matched by each coarse patch, sims (C, k); hyps (placements);
        voted (those from canonical-plane votes).
    guide: candidates (re-matched placements that respect the hints).
    score: candidates ranked best first (``score`` filled); pts (NMI sample points, None without volume);
        snapped (whether the winner came from the restart on a canonical plane).
    disambiguate: best (:class:`Candidate`), consistency, margin, features (of the confidence model).
    confide: confidence (calibrated probability of being within 10 mm).
    """

    section: Section
    ref: Any
    encoder: Any
    params: AnchorParams
    seed: int = 0
    hemisphere: str | None = None
    flipped: bool | None = None
    plane_prior: PlanePrior | None = None
    n_patches: int | None = None
    device: Any = None
    #: the patch embeddings of an earlier pass over the same section (the wider search reuses the views
    #: it already encoded when its patches are the same)
    reuse_views: Any = None
    #: the cutting-plane hint: "coronal", "sagittal" or "axial" (None: any plane)
    cut: str | None = None
    #: True when no placement respected the hints (hemisphere, cut) and the winner is one that does not
    hints_unmet: bool = field(default=False, init=False)
    #: the refinement's restart from the winner snapped onto a canonical plane: None (not tried), False
    #: (tried, the winner kept), True (it scored higher and replaced the winner)
    snapped: bool | None = field(default=None, init=False)
    rng: np.random.Generator = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    img: NDArray = field(init=False)
    msk: NDArray = field(init=False)
    imgn: NDArray = field(init=False)
    scale: NDArray = field(init=False)
    cen: NDArray = field(init=False)
    emb: Any = field(init=False)
    coarse: NDArray = field(init=False)
    emb_coarse: NDArray = field(init=False)
    mirrors: list[bool] = field(init=False)
    tissue_rc: NDArray = field(init=False)
    idx: NDArray = field(init=False)
    sims: NDArray = field(init=False)
    hyps: list[SectionMap] = field(init=False)
    voted: list[SectionMap] = field(init=False)
    candidates: list[Candidate] = field(init=False)
    pts: SamplePoints | None = field(default=None, init=False)
    best: Candidate = field(init=False)
    consistency: float = field(init=False)
    margin: float = field(init=False)
    features: dict[str, float] = field(init=False)
    confidence: float = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @property
    def spacing(self) -> float:
        """Working pixel spacing in mm (the reference's)."""
        return float(self.ref.spec.spacing_mm)

    def coarse_consistency(self, m: SectionMap) -> float:
        """Share of coarse patches whose global top-k matches hold one within the RANSAC threshold of where
        ``m`` puts the patch (a few percent for a wrong placement)."""
        pred = m.apply(self.cen[self.coarse])
        d = np.linalg.norm(self.ref.centres_mm[self.idx] - pred[:, None, :], axis=2).min(axis=1)
        return float((d < self.params.ransac_threshold_mm).mean())

    @property
    def cut_normal(self) -> NDArray | None:
        """World normal of the hinted cutting plane (None without the hint)."""
        if self.cut is None:
            return None
        row, col = CANONICAL_PLANES[self.cut]
        return np.cross(row, col)

    def violates_hints(self, m: SectionMap) -> bool:
        """True if ``m`` puts the tissue's centre in the hemisphere the hint rules out, or its plane further
        than ``cut_max_angle_deg`` from the hinted cutting plane."""
        n = self.cut_normal
        if n is not None and abs(float(m.normal @ n)) < np.cos(np.deg2rad(self.params.cut_max_angle_deg)):
            return True
        if self.hemisphere is None:
            return False
        x_c = float(m.apply(self.tissue_rc)[:, 0].mean())
        return (self.hemisphere == "left" and x_c > 5.0) or (self.hemisphere == "right" and x_c < -5.0)


def _patch_centres(r: Run, msk: NDArray) -> NDArray:
    """Working-pixel centres of the section patches (denser on small pieces, thinned to ``n_patches``)."""
    spec, p, n_patches = r.ref.spec, r.params, r.n_patches
    cen = grid_centres(msk, spec)
    if n_patches is None and len(cen) < p.dense_below:
        # small pieces (blocks, hemisections) need denser sampling to collect consistent matches
        cen = grid_centres(msk, spec, stride_px=max(1, spec.stride_px // 2))
    if n_patches is not None and len(cen) > 0:
        stride = max(1, int(round(spec.stride_px * np.sqrt(len(cen) / n_patches))))
        cen = grid_centres(msk, spec, stride_px=stride)
        if len(cen) > n_patches:
            cen = cen[np.sort(r.rng.choice(len(cen), n_patches, replace=False))]
    if len(cen) < 6:
        cen = grid_centres(msk, spec, stride_px=1)
        if len(cen) < 6 and msk.any():
            # a piece smaller than a patch's min_tissue share (a small block): patches centred on its
            # tissue, however much of them it fills
            cen = grid_centres(msk, replace(spec, min_tissue=0.0), stride_px=1)
        if len(cen) > 200:
            cen = cen[np.sort(r.rng.choice(len(cen), 200, replace=False))]
    return cen


def sample(r: Run) -> None:
    """Working-resolution image and mask, tissue patch centres, their embeddings at every in-plane angle
    and mounting, and the coarse subset that is searched globally. A mask that covers every pixel (a
    block cut from inside the tissue, filling its frame) is a valid mask: patches are taken everywhere.
    (:func:`prepare` and then :func:`embed_coarse`; a batch prepares every section, encodes their coarse
    patches together and then runs the other stages per section.)"""
    prepare(r)
    embed_coarse(r)


def embed_coarse(r: Run) -> None:
    """Every view's embedding of the coarse patches (encoded here unless a batch encoded them already)."""
    t0 = time.perf_counter()
    r.emb_coarse = r.emb.all_views(r.coarse)
    r.timings["embed_s"] = r.timings.get("embed_s", 0.0) + time.perf_counter() - t0


def prepare(r: Run) -> None:
    """:func:`sample` up to the encoder: image, mask, patch centres, the (lazy) patch views, the coarse
    subset and the tissue pixels."""
    section, spec, p = r.section, r.ref.spec, r.params
    t0 = time.perf_counter()
    r.img, r.msk, r.scale = section.at_spacing(spec.spacing_mm)
    if min(r.img.shape) < spec.size_px // 2:
        # less than half a patch across: a block cut out of a larger section (tissue along half its border or
        # more, read on the section's own mask: the working grid is too coarse) is placed down to a quarter
        # patch (12 mm); a whole object this small is no human brain and is refused
        m = np.asarray(section.mask, bool)
        cut_from_more = bool(np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]]).mean() >= 0.5)
        min_px = spec.size_px // 4 if cut_from_more else spec.size_px // 2
        if min(r.img.shape) < min_px:
            raise ImageTooSmallError(
                f"section {section.name!r} is {r.img.shape} px at the working spacing {spec.spacing_mm} mm "
                f"({section.extent_mm[0]:.1f} x {section.extent_mm[1]:.1f} mm); it needs at least "
                f"{min_px * spec.spacing_mm:.0f} mm of tissue across (12 mm for a block whose tissue runs along "
                "the image's border). Check spacing_mm"
            )
        # padded with background at its bottom and right (the pixel grid's origin stays), so that it is
        # placed, with the low confidence it deserves
        pad = [(0, max(0, spec.size_px // 2 - n)) for n in r.img.shape]
        r.img, r.msk = np.pad(r.img, pad), np.pad(r.msk, pad)
    if r.msk.sum() == 0:
        raise EmptyMaskError(f"section {section.name!r} has no tissue at {spec.spacing_mm} mm/px")
    r.imgn = normalize_intensity(r.img, r.msk)
    r.cen = _patch_centres(r, r.msk)
    if len(r.cen) < 6:
        raise ImageTooSmallError(
            f"section {section.name!r} holds only {len(r.cen)} patches of {spec.size_px * spec.spacing_mm:.0f} mm; "
            "the tissue is too small to anchor (or spacing_mm is wrong)"
        )
    angles = rotation_angles(p.n_rotations)
    r.mirrors = [False, True] if r.flipped is None else [bool(r.flipped)]
    old = r.reuse_views
    if old is not None and old.mirrors == r.mirrors and np.array_equal(old.centres, r.cen):
        r.emb = old  # same patches of the same image: its encoded views stay valid
    else:
        r.emb = PatchViews(r.imgn, r.cen, spec.size_px, angles, r.mirrors, r.encoder, device=r.device)
    r.coarse = np.sort(r.rng.choice(r.emb.n, min(r.emb.n, p.n_coarse), replace=False))
    r.tissue_rc = np.argwhere(r.msk)[:: max(1, int(r.msk.sum()) // 2000)].astype(float)
    r.timings["embed_s"] = time.perf_counter() - t0


def _reference_mask(r: Run, cpos: NDArray) -> NDArray | None:
    """Which coarse reference patches may be matched: the hinted hemisphere (10 mm over the midline), the
    hinted cutting plane (patches of reference planes within ``cut_max_angle_deg`` + 15 degrees of it, when
    the reference has any) and the plane prior's slab (plus a patch half-width: a patch centre off the plane
    still overlaps it)."""
    ref_mask = None
    if r.hemisphere is not None:
        xs = r.ref.centres_mm[cpos, 0]
        ref_mask = xs < 10.0 if r.hemisphere == "left" else xs > -10.0
    n = r.cut_normal
    if n is not None:
        near = np.abs(r.ref.plane_normals @ n) >= np.cos(np.deg2rad(min(r.params.cut_max_angle_deg + 15.0, 89.0)))
        on_cut = near[r.ref.plane_ids[cpos]]
        if on_cut.any():
            ref_mask = on_cut if ref_mask is None else (ref_mask & on_cut)
    if r.plane_prior is not None:
        prior, spec = r.plane_prior, r.ref.spec
        d_ref = r.ref.centres_mm[cpos] @ np.asarray(prior.normal, float) - prior.offset_mm
        slab = np.abs(d_ref) < prior.tolerance_mm + 0.5 * spec.size_px * spec.spacing_mm
        ref_mask = slab if ref_mask is None else (ref_mask & slab)
    return ref_mask


def propose(r: Run) -> None:
    """Global top-k matches of the coarse patches (every view) in the compressed reference, then placements
    from them: RANSAC, votes on the plane prior, and votes on the canonical planes when asked."""
    t0 = time.perf_counter()
    p, ref = r.params, r.ref
    cmask, proj, cref = ref.coarse_index(p.coarse_dim)
    cpos = np.flatnonzero(cmask)
    q = r.emb_coarse @ proj
    q /= np.maximum(np.linalg.norm(q, axis=2, keepdims=True), 1e-12)
    sims, cidx, _ = search_topk(q, cref, p.k, ref_mask=_reference_mask(r, cpos), search=p.search, device=r.device)
    r.idx, r.sims = cpos[cidx], sims
    rc_pairs = np.repeat(r.cen[r.coarse], r.idx.shape[1], axis=0)
    xyz_pairs = ref.centres_mm[r.idx.ravel()]
    grp = np.repeat(np.arange(len(r.coarse)), r.idx.shape[1])
    votes = MatchVotes(
        rc_pairs, xyz_pairs, np.clip(sims.ravel(), 0.0, None) ** 2, r.spacing, r.flipped, p.ransac_threshold_mm
    )
    hyps = ransac_section(
        rc_pairs,
        xyz_pairs,
        grp,
        sims.ravel(),
        spacing=r.spacing,
        rng=r.rng,
        residual_threshold=p.ransac_threshold_mm,
        scale_range=p.scale_range,
        n_trials=p.ransac_trials,
        n_hypotheses=p.n_hypotheses,
    )
    if r.plane_prior is not None:
        hyps = prior_hypotheses(r.plane_prior, votes) + hyps
    r.voted = []
    if p.canonical_votes and r.plane_prior is None:
        r.voted = canonical_hypotheses(ref, r.idx.ravel(), votes, n_keep=p.canonical_keep)
        hyps = hyps + r.voted
    r.hyps = hyps
    r.timings["match_s"] = time.perf_counter() - t0
    if not hyps:
        raise AnchoringFailedError(
            f"no consistent placement found for section {r.section.name!r} (too few plausible matches); "
            "check spacing_mm and the tissue mask, or try more patches"
        )


def guided_rematch(r: Run, m: SectionMap, radii_mm: tuple[float, ...] | None = None) -> Candidate:
    """Re-match each patch among reference patches near where ``m`` puts it, comparing each with the patch
    view that ``m`` predicts; refit a similarity on the good matches; shrink the radius, then iterate at the
    last radius until the placement stops moving. Returns the re-matched placement with its matches."""
    p, ref, cen = r.params, r.ref, r.cen
    radii_mm = radii_mm or p.guided_radii_mm
    n_shrink = len(radii_mm)
    radii = list(radii_mm) + [radii_mm[-1]] * p.max_guided_iterations
    cur, out = m, {}
    for i, rad in enumerate(radii):
        pred = cur.apply(cen)
        views = plane_views(cur, ref.plane_axes, p.n_rotations, r.mirrors)
        tree, subset = ref.tree_of(views >= 0)
        sim, idx, _ = best_in_neighbourhood(
            r.emb, ref.embeddings, tree, pred, rad, ref_view=views[ref.plane_ids], subset=subset
        )
        ok = idx >= 0
        if ok.sum() < 3:
            break
        xyz = ref.centres_mm[np.maximum(idx, 0)]
        res = np.linalg.norm(pred - xyz, axis=1)
        w = np.where(ok, np.clip(sim, 0.0, None) ** 2, 0.0) * (res < 0.75 * rad)
        if (w > 0).sum() < 3:
            break
        lin, t, _ = similarity_fit(cen[w > 0], xyz[w > 0], w[w > 0])
        lin = constrain_affine(lin, r.spacing, p.scale_range, max_anisotropy=1.0)
        new = SectionMap(lin, t, score=float((w > 0).sum()))
        out = {"sim": sim, "idx": idx, "ok": ok}
        moved = float(np.linalg.norm(new.apply(cen) - pred, axis=1).mean())
        cur = new
        if i >= n_shrink - 1 and moved < p.converged_mm:
            break
    return Candidate(cur, out)


def guide(r: Run) -> None:
    """Re-match every proposed placement; keep those the hints and the plane prior allow (a voted one also
    as voted: where nine matches in ten are wrong, re-matching can pull it away from a nearly right place
    that the intensity refinement would fix)."""
    t0 = time.perf_counter()
    cands: list[Candidate] = []
    for h in r.hyps:
        g = guided_rematch(r, h)
        voted = any(h is v for v in r.voted)
        for m in (g.placement, h) if voted else (g.placement,):
            if not r.violates_hints(m):
                cands.append(Candidate(m, g.matches, voted=voted and m is h))
    prior = r.plane_prior
    if prior is not None and any(prior.agrees(c.placement, r.tissue_rc) for c in cands):
        cands = [c for c in cands if prior.agrees(c.placement, r.tissue_rc)]
    if not cands:  # nothing the hints allow: the best guess, flagged (the wider search looks again)
        cands = [guided_rematch(r, r.hyps[0])]
        r.hints_unmet = True
    r.candidates = cands
    r.timings["guided_s"] = time.perf_counter() - t0


def _pure_gain(r: Run, m: SectionMap) -> float:
    """NMI gain of placement ``m`` on the sample points that :func:`score` drew."""
    return nmi_gain(cast(SamplePoints, r.pts), m.linear, m.translation, r.ref.volume, r.ref.volume_affine)


def _outside(r: Run, m: SectionMap) -> float:
    """Share of the tissue's sample points that placement ``m`` puts outside the template's brain."""
    pts = cast(SamplePoints, r.pts)
    return outside_share(pts, m.linear, m.translation, r.ref.brain_volume(), r.ref.volume_affine)


def _gain(r: Run, m: SectionMap) -> float:
    """The score that ranks and refines placements: the NMI gain of ``m`` less ``outside_weight`` times the
    share of the tissue it puts outside the template's brain. NMI alone rewards drawing a section larger
    than the brain where its tissue is dark (signal dropout of echo-planar images, a pale stain at the edge):
    the dark tissue then lies on the template's background (docs/method.md, step 8)."""
    g = _pure_gain(r, m)
    if r.params.outside_weight > 0:
        g -= r.params.outside_weight * _outside(r, m)
    return g


def _refined(r: Run, c: Candidate, smoothed: dict, sigmas: tuple, evals: int) -> Candidate:
    """``c`` intensity-refined (within the scale prior) and scored by :func:`_gain`."""
    m = c.placement
    lin, t, _ = refine_map(
        cast(SamplePoints, r.pts),
        m.linear,
        m.translation,
        r.ref.volume,
        r.ref.volume_affine,
        smoothed=smoothed,
        smooth_sigmas=sigmas,
        max_evals=evals,
        smooth_nmi=r.params.refine_smooth_nmi,
        brain=r.ref.brain_volume() if r.params.outside_weight > 0 else None,
        outside_weight=r.params.outside_weight,
    )
    gm = SectionMap(constrain_affine(lin, r.spacing, r.params.scale_range, r.params.max_anisotropy), t, score=m.score)
    return replace(c, placement=gm, score=_gain(r, gm))


def _smoothed(r: Run) -> dict[float, NDArray]:
    """The template smoothed by 2, 1 and 0 voxels, as the refinement's coarse-to-fine stages read it."""
    return {sg: r.ref.smoothed_volume(sg) for sg in (2.0, 1.0, 0.0)}


def _finer(r: Run, c: Candidate, smoothed: dict) -> Candidate:
    """The fine step of the refinement (template smoothed by 1, then 0 voxels): ``c`` refined, or ``c``
    itself when that scores higher."""
    fine = _refined(r, c, smoothed, (1.0, 0.0), r.params.refine_evals[1])
    return fine if fine.score >= c.score else c


def _snapped(r: Run, m: SectionMap) -> SectionMap | None:
    """``m`` turned about its tissue's centre onto the nearest canonical plane (the hinted cut's when given),
    in-plane scale and shear kept; None when it lies within 3 degrees of that plane already, more than
    ``snap_max_deg`` off it, or the turned placement breaks a hint."""
    n = m.normal
    if r.cut_normal is not None:
        a = np.asarray(r.cut_normal, float)
    else:
        axes = np.array([np.cross(*CANONICAL_PLANES[k]) for k in CANONICAL_PLANES])
        a = axes[int(np.argmax(np.abs(axes @ n)))]
    a = a * np.sign(float(a @ n))
    angle = np.degrees(np.arccos(np.clip(float(a @ n), -1.0, 1.0)))
    if angle < 3.0 or angle > r.params.snap_max_deg:
        return None
    out = _turned(m, np.cross(n, a), angle, r.tissue_rc.mean(axis=0))
    return None if r.violates_hints(out) else out


def _turned(m: SectionMap, axis: NDArray, deg: float, about_px: NDArray) -> SectionMap:
    """``m`` turned by ``deg`` degrees about the world ``axis`` through the point where it puts working pixel
    ``about_px`` (that point stays; in-plane scale and shear are kept)."""
    rot = Rotation.from_rotvec(np.asarray(axis, float) / np.linalg.norm(axis) * np.deg2rad(deg)).as_matrix()
    c = np.asarray(about_px, float)
    lin = rot @ m.linear
    return SectionMap(lin, m.apply(c[None])[0] - lin @ c, score=m.score)


def _snap_start(r: Run, top: Candidate, smoothed: dict) -> Candidate | None:
    """The winner refined again from its plane snapped onto the nearest canonical one (:func:`_snapped`),
    as :func:`score` refines a winner; None when not tried."""
    if r.plane_prior is not None or r.params.snap_max_deg <= 0:
        return None
    s = _snapped(r, top.placement)
    if s is None:
        return None
    return _finer(r, _refined(r, replace(top, placement=s), smoothed, (2.0,), r.params.refine_evals[0]), smoothed)


def _ranked(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: -c.score)  # stable: ties keep their order


def score(r: Run) -> None:
    """Rank the candidates by NMI gain with the template; refine the best ``n_refine`` coarsely, re-rank
    (refinement can overturn a close call), refine the winner finely (with ``snap_max_deg`` > 0, off by
    default, also from its plane snapped onto the nearest canonical one: :func:`_snap_start`, kept if it
    scores higher). Without a template volume: rank by coarse-match consistency."""
    t0 = time.perf_counter()
    p, ref = r.params, r.ref
    if ref.volume is None:
        r.candidates = _ranked([replace(c, score=r.coarse_consistency(c.placement)) for c in r.candidates])
    else:
        smoothed = _smoothed(r)
        r.pts = sample_points(r.imgn, r.msk, p.n_sample_points, r.rng)
        ranked = _ranked([replace(c, score=_gain(r, c.placement)) for c in r.candidates])
        if p.refine:
            coarse = p.refine_evals[0]
            ranked[: p.n_refine] = [_refined(r, c, smoothed, (2.0,), coarse) for c in ranked[: p.n_refine]]
            ranked = _ranked(ranked)
            ranked[0] = _finer(r, ranked[0], smoothed)
            snap = _snap_start(r, ranked[0], smoothed)
            r.snapped = None if snap is None else bool(snap.score > ranked[0].score)
            if snap is not None and r.snapped:
                ranked = [snap, *ranked]
        r.candidates = ranked
    r.timings["refine_s"] = time.perf_counter() - t0


def refine_from(r: Run, m: SectionMap) -> Candidate:
    """``m`` intensity-refined as :func:`score` refines a winner (coarse against the template smoothed by 2
    voxels, then fine at 1 and 0, the fine result kept only if it scores higher), scored by its NMI gain.
    Needs a template volume; draws the NMI sample points if no stage has. The evaluation uses it to find
    where the refinement's objective itself puts a section that starts on its truth."""
    if r.ref.volume is None:
        raise InvalidReferenceError("refine_from needs a reference with a template volume")
    _ensure_points(r)
    smoothed = _smoothed(r)
    return _finer(r, _refined(r, Candidate(m), smoothed, (2.0,), r.params.refine_evals[0]), smoothed)


def placement_gain(r: Run, m: SectionMap) -> float:
    """NMI gain with the template of working-pixel placement ``m`` (on the NMI sample points; drawn here if
    no stage has)."""
    _ensure_points(r)
    return _gain(r, m)


def _ensure_points(r: Run) -> None:
    """The NMI sample points, drawn as :func:`score` draws them unless a stage already has."""
    if r.pts is None:
        r.pts = sample_points(r.imgn, r.msk, r.params.n_sample_points, r.rng)


def working_map(r: Run, affine: NDArray) -> SectionMap:
    """A (4, 4) affine of the original pixel grid as a working-pixel placement (the inverse of
    :func:`original_affine`); :func:`prepare` must have run."""
    a = np.asarray(affine, float)
    return SectionMap(a[:3, :2] * r.scale[None, :], a[:3, 3].copy())


def _mirror_candidate(r: Run) -> Candidate | None:
    """The winner's mirror image across the mid-sagittal plane (x -> -x), the classic left/right
    confusion, refined and scored; None where it is the same place or a hint or the prior rules it out."""
    top = r.candidates[0]
    d = np.diag([-1.0, 1.0, 1.0])
    mir = SectionMap(d @ top.placement.linear, d @ top.placement.translation, score=top.placement.score)
    far = np.linalg.norm(mir.apply(r.tissue_rc) - top.placement.apply(r.tissue_rc), axis=1).mean() > 10.0
    if not far or r.violates_hints(mir):
        return None
    if r.flipped is not None and mounting_mirrored(mir) != bool(r.flipped):
        return None
    if r.plane_prior is not None and not r.plane_prior.agrees(mir, r.tissue_rc):
        return None
    smoothed = _smoothed(r)
    refined = _refined(r, Candidate(mir), smoothed, (2.0, 0.0), r.params.refine_evals[1])
    again = guided_rematch(r, refined.placement, radii_mm=(r.params.guided_radii_mm[-1],))
    return replace(refined, matches=again.matches or top.matches)


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


def disambiguate(r: Run) -> None:
    """Test the winner's mirror image; pick the best candidate and describe it by the features the
    confidence model reads (:data:`siibra_anchor.confidence.FEATURES`)."""
    mirror = None
    if r.ref.volume is not None and r.params.refine and r.pts is not None:
        top = r.candidates[0]
        mirror = _mirror_candidate(r)
        if mirror is not None:
            r.candidates = _ranked([*r.candidates, mirror])
            mirror = top if r.candidates[0] is mirror else mirror  # the one of the pair that lost
    r.best = best = r.candidates[0]
    r.consistency = r.coarse_consistency(best.placement)
    pos_best = best.placement.apply(r.tissue_rc)
    margin = np.inf
    for c in r.candidates[1:]:
        if np.linalg.norm(c.placement.apply(r.tissue_rc) - pos_best, axis=1).mean() > 10.0:
            margin = min(margin, best.score - c.score)
    r.margin = float(margin)
    r.features = _features(r, None if mirror is None else best.score - mirror.score)


def _features(r: Run, mirror_margin: float | None) -> dict[str, float]:
    """The confidence model's features of the best candidate (see :data:`siibra_anchor.confidence.FEATURES`)."""
    best, p = r.best, r.params
    n = r.emb.n
    idx = best.matches.get("idx", np.full(n, -1))
    ok = idx >= 0
    xyz = r.ref.centres_mm[np.maximum(idx, 0)]
    inl = ok & (np.linalg.norm(best.placement.apply(r.cen) - xyz, axis=1) < p.inlier_mm)
    sims = np.asarray(best.matches.get("sim", np.zeros(n)))[inl]
    sv = np.linalg.svd(best.placement.linear, compute_uv=False)
    feats = {
        "consistency": r.consistency,
        "inlier_share": float(inl.mean()),
        "match_similarity": float(np.median(sims)) if len(sims) else 0.0,
        "margin": cap(r.margin),
        "log_patches": float(np.log10(n)),
        "log_area_mm2": float(np.log10(max(float(r.msk.sum()), 1.0) * r.spacing**2)),
        "log_scale": float(abs(np.log(sv.mean() / r.spacing))),
        "anisotropy": float(sv.max() / sv.min() - 1.0),
    }
    if r.ref.volume is not None:
        feats["nmi_gain"] = float(best.score) if p.outside_weight <= 0 else _pure_gain(r, best.placement)
        feats["mirror_margin"] = cap(mirror_margin)
    return feats


def confide(r: Run) -> None:
    """The calibrated confidence: the probability, by the shipped model of the reference's kind (with or
    without a template volume), that the best candidate lies within 10 mm of the truth."""
    r.confidence = confidence_model("volume" if r.ref.volume is not None else "no-volume")(r.features)


def original_affine(r: Run, m: SectionMap) -> NDArray:
    """A working-pixel placement as the (4, 4) affine of the original pixel grid (working = original / scale)."""
    return section_affine(m.linear / r.scale[None, :], m.translation, float(np.mean(r.section.spacing_mm)))


def _match_table(r: Run) -> dict[str, Any]:
    """Per-patch table of the winner: original pixel, matched reference mm, similarity, residual, inlier."""
    n, info = r.emb.n, r.best.matches
    midx = info.get("idx", np.full(n, -1))
    ok = midx >= 0
    xyz = np.where(ok[:, None], r.ref.centres_mm[np.maximum(midx, 0)], np.nan)
    resid = np.linalg.norm(r.best.placement.apply(r.cen) - xyz, axis=1)
    return {
        "row": r.cen[:, 0] * r.scale[0],
        "col": r.cen[:, 1] * r.scale[1],
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "similarity": np.where(ok, info.get("sim", np.zeros(n)), np.nan),
        "residual_mm": resid,
        "inlier": ok & (resid < r.params.inlier_mm),
    }


def _alternatives(r: Run) -> list[dict[str, Any]]:
    """Distinct other placements (> 10 mm from each listed one over the tissue), labelled."""
    best = r.best.placement
    pos_best = best.apply(r.tissue_rc)
    c_best, n_best = pos_best.mean(axis=0), np.cross(best.linear[:, 0], best.linear[:, 1])
    out, listed = [], [pos_best]
    for c in r.candidates[1:]:
        pos = c.placement.apply(r.tissue_rc)
        if min(np.linalg.norm(pos - q, axis=1).mean() for q in listed) <= 10.0:
            continue  # the same placement, found twice
        listed.append(pos)
        c_alt, g = pos.mean(axis=0), c.placement
        label = "other placement"
        if np.sign(c_alt[0]) != np.sign(c_best[0]) and abs(c_alt[0]) > 5 and abs(c_best[0]) > 5:
            label = "other hemisphere"
        elif float(np.cross(g.linear[:, 0], g.linear[:, 1]) @ n_best) < 0:
            label = "mirrored / reversed normal"
        out.append(
            {
                "affine": original_affine(r, g),
                "score": float(c.score),
                "inlier_fraction": r.coarse_consistency(g),
                "label": label,
            }
        )
    return out


def assemble(r: Run) -> AnchoringResult:
    """The :class:`~siibra_anchor.result.AnchoringResult` of the winner: affine of the original pixels,
    matches, alternatives and diagnostics (scores, timings, what was asked)."""
    section, ref, has_volume = r.section, r.ref, r.ref.volume is not None
    diagnostics: dict[str, Any] = {
        "timings": r.timings,
        "n_patches": int(r.emb.n),
        "n_encoded_views": int(r.emb.n_encoded),
        "n_coarse": int(len(r.coarse)),
        "n_hypotheses": len(r.hyps),
        "consistency": r.consistency,
        "nmi_gain": r.features["nmi_gain"] if has_volume else None,
        # with AnchorParams.outside_weight only: the brain mask costs a second the first time a reference needs it
        "outside_brain": _outside(r, r.best.placement) if r.params.outside_weight > 0 and r.pts is not None else None,
        "margin_to_alternative": r.margin if np.isfinite(r.margin) else None,
        "confidence_features": r.features,
        "seed": int(r.seed),
        "hemisphere": r.hemisphere,
        "flipped": r.flipped,
        "cut": r.cut,
        "hints_unmet": r.hints_unmet,
        "snapped": r.snapped,
        "params": r.params.as_dict(),
    }
    if r.plane_prior is not None:
        diagnostics["plane_prior"] = r.plane_prior.as_dict()
    return AnchoringResult(
        affine=original_affine(r, r.best.placement),
        space=ref.space,
        confidence=r.confidence,
        matches=_match_table(r),
        alternatives=_alternatives(r),
        section={
            "name": section.name,
            "shape": list(section.shape),
            "spacing_mm": list(section.spacing_mm),
            "modality": section.modality,
            **({"path": str(Path(section.source).resolve())} if section.source else {}),
        },
        diagnostics=diagnostics,
        encoder_hash=ref.encoder_hash,
        reference={"space": ref.space, "n_sections": ref.n_sections, "n_patches": ref.n_patches, "params": ref.params},
        mask=section.mask,
        image=section.image,
        pixel_grid=pixel_grid_of(section),
    )


#: the stages of one pass, in order
STAGES = (sample, propose, guide, score, disambiguate, confide)


def run_stages(r: Run, prepared: bool = False) -> AnchoringResult:
    """Run every stage on ``r`` and assemble the result (``prepared``: :func:`prepare` has run already, so
    :func:`sample` is only its :func:`embed_coarse` half)."""
    for stage in STAGES:
        if prepared and stage is sample:
            embed_coarse(r)
            continue
        stage(r)
    return assemble(r)

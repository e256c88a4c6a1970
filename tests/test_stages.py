"""Each stage of the anchoring pipeline on its own (siibra_anchor.anchoring.stages), on a real simulated
section and the embedded MNI152 reference: what each stage reads, what it fills in, and that the stages
run in order give what anchor() gives."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import siibra_anchor as sa
from siibra_anchor.anchoring import stages
from siibra_anchor.anchoring.hypotheses import Candidate
from siibra_anchor.anchoring.stages import Run
from siibra_anchor.confidence import FEATURES, confidence_model
from siibra_anchor.encoders import load_default_encoder
from siibra_anchor.errors import AnchoringFailedError, ImageTooSmallError, InvalidParameterError
from siibra_anchor.evaluation.simulate import section_error, simulate_section
from siibra_anchor.planes import section_affine


@pytest.fixture(scope="module")
def sim():
    return simulate_section(
        volume="fsl-mni152-t1", orientation="coronal", offset_mm=-10.0, rotation_deg=25.0, tilt_deg=5.0,
        spacing_mm=0.8, seed=3,
    )  # fmt: skip


@pytest.fixture(scope="module")
def after(sim, mni_reference):
    """Snapshots of one Run after each stage (shallow copies: a stage assigns its fields anew)."""
    r = Run(sim.section, mni_reference, load_default_encoder(), sa.AnchorParams(), seed=0)
    snaps = {}
    for stage in stages.STAGES:
        stage(r)
        snaps[stage.__name__] = copy.copy(r)
    return snaps


def _placement_error_mm(m, sim, scale):
    """Mean distance over the tissue between where a working-pixel map puts it and the truth."""
    aff = section_affine(m.linear / scale[None, :], m.translation, 1.0)
    return section_error(aff, sim.true_affine, sim.section.mask)


def test_sample_fills_patches_inside_the_tissue(after, sim):
    r = after["sample"]
    assert r.cen.shape[1] == 2 and len(r.cen) >= 6
    assert r.msk[r.cen[:, 0].astype(int), r.cen[:, 1].astype(int)].all()
    assert r.emb.n == len(r.cen)
    assert np.all(np.diff(r.coarse) > 0) and len(r.coarse) == min(len(r.cen), 200)
    assert r.emb_coarse.shape[:2] == (len(r.coarse), 12 * 2)  # every angle, both mountings (no hint)
    assert np.allclose(r.scale, r.ref.spec.spacing_mm / 0.8)  # working pixels are the reference's


def test_sample_takes_one_mounting_with_the_hint_and_refuses_a_too_small_piece(sim, mni_reference):
    enc = load_default_encoder()
    r = Run(sim.section, mni_reference, enc, sa.AnchorParams(), flipped=False)
    stages.sample(r)
    assert r.mirrors == [False] and r.emb_coarse.shape[1] == 12
    tiny = np.zeros((20, 20))
    tiny[5:15, 5:15] = 1.0
    with pytest.raises(ImageTooSmallError, match="working spacing"):
        stages.sample(Run(sa.Section(tiny, spacing_mm=0.5), mni_reference, enc, sa.AnchorParams()))


def test_propose_finds_a_hypothesis_near_the_truth(after, sim):
    r = after["propose"]
    assert r.idx.shape == (len(r.coarse), r.params.k) and r.sims.shape == r.idx.shape
    errs = [_placement_error_mm(h, sim, r.scale) for h in r.hyps]
    assert min(errs) < 10.0, errs
    assert r.voted == []  # canonical votes only in the wider search


def test_propose_respects_the_hemisphere_hint(after, sim):
    r = copy.copy(after["sample"])
    r.hemisphere = "left"
    stages.propose(r)
    assert np.all(r.ref.centres_mm[r.idx.ravel(), 0] < 10.0)


def test_propose_fails_typed_when_nothing_is_consistent(after):
    r = copy.copy(after["sample"])
    r.params = sa.AnchorParams(ransac_trials=1, n_hypotheses=1, ransac_threshold_mm=1e-6, scale_range=(5.0, 6.0))
    with pytest.raises(AnchoringFailedError):
        stages.propose(r)


def test_guide_rematches_towards_the_truth(after, sim):
    r = after["guide"]
    assert all(isinstance(c, Candidate) for c in r.candidates)
    best_before = min(_placement_error_mm(h, sim, r.scale) for h in r.hyps)
    best_after = min(_placement_error_mm(c.placement, sim, r.scale) for c in r.candidates)
    assert best_after <= best_before + 0.5
    c = r.candidates[0]
    assert set(c.matches) == {"sim", "idx", "ok"} and len(c.matches["idx"]) == r.emb.n


def test_guide_drops_placements_the_hint_rules_out(after):
    r = copy.copy(after["propose"])
    r.hemisphere = "right"  # the section's tissue is mostly central; a one-sided hint filters candidates
    stages.guide(r)
    kept = [c for c in r.candidates if not r.violates_hints(c.placement)]
    assert kept == r.candidates or len(r.candidates) == 1  # the fallback keeps one when none is left


def test_score_ranks_by_nmi_gain_and_refines_the_winner(after, sim):
    g, s = after["guide"], after["score"]
    scores = [c.score for c in s.candidates]
    assert scores == sorted(scores, reverse=True) and len(s.candidates) == len(g.candidates)
    assert s.pts is not None and s.candidates[0].score > 0.1
    assert _placement_error_mm(s.candidates[0].placement, sim, s.scale) < 3.0


def _tilted(m, deg, axis_px=(1.0, 0.0), centre_px=None):
    """Working-pixel map ``m`` turned by ``deg`` about its in-plane direction ``axis_px`` through ``centre_px``."""
    return stages._turned(m, m.linear @ np.asarray(axis_px, float), deg, centre_px)


def test_snapped_turns_the_winner_onto_the_nearest_canonical_plane(after, sim):
    """The refinement's restart: the placement turned about its tissue's centre onto the canonical plane
    nearest to it (coronal here), in-plane scales and the tissue's centre kept; not within 3 degrees of it,
    not beyond snap_max_deg, not when it would break the cut hint."""
    from dataclasses import replace

    r = copy.copy(after["score"])
    r.params = replace(r.params, snap_max_deg=25.0)  # off by default
    c_px = r.tissue_rc.mean(axis=0)
    win = r.candidates[0].placement
    coronal = np.array([0.0, 1.0, 0.0])
    for deg in (8.0, 20.0):
        m = _tilted(win, deg, axis_px=(1.0, 1.0), centre_px=c_px + 7.0)
        s = stages._snapped(r, m)
        assert s is not None and abs(abs(s.normal @ coronal) - 1.0) < 1e-9
        assert np.allclose(s.apply(c_px[None]), m.apply(c_px[None]))
        assert np.allclose(s.scales, m.scales)
    flat = stages._snapped(r, _tilted(win, 8.0, centre_px=c_px))  # exactly coronal
    assert stages._snapped(r, _tilted(flat, 2.0, centre_px=c_px)) is None
    assert stages._snapped(r, _tilted(flat, 30.0, centre_px=c_px)) is None  # beyond snap_max_deg (25)
    r.params = replace(r.params, snap_max_deg=35.0)
    assert stages._snapped(r, _tilted(flat, 30.0, centre_px=c_px)) is not None
    r.cut = "axial"  # the coronal placement is 90 degrees off the hinted plane: nothing to snap to
    assert stages._snapped(r, _tilted(flat, 10.0, centre_px=c_px)) is None
    r.cut = "coronal"
    assert stages._snapped(r, _tilted(flat, 10.0, centre_px=c_px)) is not None


def test_score_restarts_a_tilted_winner_on_the_canonical_plane(after, sim):
    """A winner stuck 15 degrees off its (near-coronal, 5 degrees tilted) plane: the restart from the
    coronal plane is tried; kept only if it scores higher, and then nearer the truth than the stuck one.
    Switched off (snap_max_deg=0, the default), it is not tried."""
    from dataclasses import replace

    base = copy.copy(after["guide"])
    top = base.candidates[0]
    c_px = after["sample"].tissue_rc.mean(axis=0)
    stuck = replace(top, placement=_tilted(top.placement, 15.0, axis_px=(0.0, 1.0), centre_px=c_px))
    results = {}
    for snap in (25.0, 0.0):
        r = copy.copy(base)
        r.params, r.candidates, r.rng = replace(r.params, snap_max_deg=snap), [stuck], np.random.default_rng(0)
        stages.score(r)
        results[snap] = r
    on, off = results[25.0], results[0.0]
    assert off.snapped is None and on.snapped is not None
    assert sa.AnchorParams().snap_max_deg == 0.0
    assert on.candidates[0].score >= off.candidates[0].score
    if on.snapped:
        assert _placement_error_mm(on.candidates[0].placement, sim, on.scale) < _placement_error_mm(
            off.candidates[0].placement, sim, off.scale
        )
    assert _placement_error_mm(on.candidates[0].placement, sim, on.scale) < 3.0


def test_score_without_a_volume_ranks_by_consistency(after, mni_reference):
    r = copy.copy(after["guide"])
    from dataclasses import replace

    r.ref = replace(mni_reference, volume=None)
    stages.score(r)
    assert r.pts is None
    for c in r.candidates:
        assert c.score == pytest.approx(r.coarse_consistency(c.placement))


def test_refine_from_is_the_winners_refinement_and_needs_a_volume(after, sim, mni_reference):
    """refine_from(r, m) refines a placement as score refines its winner: from the score stage's winner it
    stays as good (within a voxel of the truth); the original-grid affine round-trips through working_map;
    without a template volume it is a typed error."""
    from dataclasses import replace

    from siibra_anchor.errors import InvalidReferenceError

    r = copy.copy(after["score"])
    win = r.candidates[0].placement
    again = stages.refine_from(r, win)
    assert again.score >= stages.placement_gain(r, win) - 0.01
    assert _placement_error_mm(again.placement, sim, r.scale) < 3.0
    back = stages.working_map(r, stages.original_affine(r, win))
    assert np.allclose(back.linear, win.linear) and np.allclose(back.translation, win.translation)
    r.ref = replace(mni_reference, volume=None)
    with pytest.raises(InvalidReferenceError, match="template volume"):
        stages.refine_from(r, win)


def test_disambiguate_picks_the_best_and_describes_it(after):
    r = after["disambiguate"]
    assert r.best is r.candidates[0]
    f = r.features
    assert set(f) == set(FEATURES)  # a reference with a volume: every feature
    assert f["nmi_gain"] == r.best.score and f["consistency"] == r.consistency > 0.3
    assert 0.0 <= f["margin"] <= 0.3 and 0.0 <= f["mirror_margin"] <= 0.3
    assert 0.0 < f["inlier_share"] <= 1.0 and f["log_patches"] == pytest.approx(np.log10(r.emb.n))
    assert f["log_scale"] < np.log(1.3) and f["anisotropy"] < 0.2  # the simulated section is near-isotropic


@pytest.mark.filterwarnings("ignore::siibra_anchor.errors.LowConfidenceWarning")
def test_the_outside_penalty_ranks_by_the_score_and_reports_the_nmi_gain_itself(sim, mni_reference):
    """AnchorParams.outside_weight: candidates are ranked (and refined) by the NMI gain less the weight times
    the share of tissue placed outside the template's brain; the confidence feature and diagnostics["nmi_gain"]
    stay the NMI gain itself, and diagnostics["outside_brain"] gives the share (None when it is off)."""
    p = sa.AnchorParams(outside_weight=0.5)
    r = Run(sim.section, mni_reference, load_default_encoder(), p, seed=0)
    for stage in stages.STAGES:
        stage(r)
    out = stages._outside(r, r.best.placement)
    assert 0.0 <= out < 0.1  # a correct placement keeps its tissue inside the brain
    assert r.features["nmi_gain"] == pytest.approx(stages._pure_gain(r, r.best.placement))
    assert r.best.score == pytest.approx(r.features["nmi_gain"] - 0.5 * out)
    scores = [c.score for c in r.candidates]
    assert scores == sorted(scores, reverse=True)
    res = sa.anchor(sim.section, reference=mni_reference, params=p)
    assert section_error(res.affine, sim.true_affine, sim.section.mask) < 3.0
    assert res.diagnostics["outside_brain"] == pytest.approx(out, abs=0.02)
    assert res.diagnostics["nmi_gain"] == pytest.approx(res.diagnostics["confidence_features"]["nmi_gain"])
    assert sa.anchor(sim.section, reference=mni_reference).diagnostics["outside_brain"] is None  # off by default


def test_confide_is_the_calibrated_model_of_the_features(after):
    r = after["confide"]
    assert r.confidence == pytest.approx(confidence_model("volume")(r.features))
    assert 0.5 < r.confidence <= 1.0  # an easy, correct placement


def test_assemble_gives_the_result_anchor_gives(after, sim, mni_reference):
    r = after["confide"]
    res = stages.assemble(r)
    assert section_error(res.affine, sim.true_affine, sim.section.mask) < 3.0
    assert len(res.matches["row"]) == r.emb.n
    inl = np.asarray(res.matches["inlier"], bool)
    pts = res.to_points(np.asarray(res.matches["row"])[inl], np.asarray(res.matches["col"])[inl])
    xyz = np.stack([np.asarray(res.matches[k])[inl] for k in "xyz"], axis=1)
    assert np.all(np.linalg.norm(pts - xyz, axis=1) < r.params.inlier_mm + 1e-6)
    same = sa.anchor(sim.section, reference=mni_reference, seed=0)
    assert np.array_equal(same.affine, res.affine) and same.confidence == res.confidence


def test_anchor_params_are_checked_on_construction():
    with pytest.raises(InvalidParameterError, match="AnchorParams.n_rotations"):
        sa.AnchorParams(n_rotations=0)
    with pytest.raises(InvalidParameterError, match="AnchorParams.scale_range"):
        sa.AnchorParams(scale_range=(1.4, 0.7))
    with pytest.raises(InvalidParameterError, match="AnchorParams.search"):
        sa.AnchorParams(search="annoy")
    with pytest.raises(InvalidParameterError, match="AnchorParams.guided_radii_mm"):
        sa.AnchorParams(guided_radii_mm=())
    with pytest.raises(InvalidParameterError, match="AnchorParams.retry_below"):
        sa.AnchorParams(retry_below=1.5)
    for bad in ((0, 160), (120,), (120.5, 160), "many"):
        with pytest.raises(InvalidParameterError, match="AnchorParams.refine_evals"):
            sa.AnchorParams(refine_evals=bad)
    for bad in (-0.1, float("nan"), "0.5", None):
        with pytest.raises(InvalidParameterError, match="AnchorParams.outside_weight"):
            sa.AnchorParams(outside_weight=bad)
    for bad in ("yes", 1, None):
        with pytest.raises(InvalidParameterError, match="AnchorParams.refine_smooth_nmi"):
            sa.AnchorParams(refine_smooth_nmi=bad)
    assert sa.AnchorParams(k=3).as_dict()["k"] == 3
    assert sa.AnchorParams().as_dict()["refine_evals"] == [120, 160]
    assert sa.AnchorParams(outside_weight=0.0).outside_weight == 0.0  # off is allowed


def test_the_template_brain_mask_holds_the_brain_and_its_cavities(mni_reference):
    """Reference.brain_volume: the soft mask the outside-the-brain share reads: 1 in the white matter and in
    the ventricles (a cavity of the brain, dark in the T1), 0 outside the head."""
    b = mni_reference.brain_volume()
    assert b.shape == mni_reference.volume.shape and b.dtype == np.float32
    assert 0.0 <= float(b.min()) and float(b.max()) <= 1.0 + 1e-6
    inv = np.linalg.inv(mni_reference.volume_affine)

    def at(xyz):
        i, j, k = np.round(inv[:3, :3] @ np.asarray(xyz, float) + inv[:3, 3]).astype(int)
        return float(b[i, j, k]), float(mni_reference.volume[i, j, k])

    for point in ((-28.0, -20.0, 30.0), (28.0, -20.0, 30.0)):  # centrum semiovale
        assert at(point)[0] > 0.99
    ventricle = min(((x, y, 18.0) for x in (-4.0, -2.0, 2.0, 4.0) for y in (-10.0, -5.0, 0.0)), key=lambda p: at(p)[1])
    assert at(ventricle)[1] < 0.2 and at(ventricle)[0] > 0.99  # dark in the template, inside the brain
    assert at((0.0, 0.0, 95.0))[0] == 0.0 and at((0.0, 85.0, 0.0))[0] == 0.0
    assert mni_reference.brain_volume() is b  # cached


@pytest.mark.filterwarnings("ignore::siibra_anchor.errors.LowConfidenceWarning")
def test_a_small_block_that_reaches_the_border_is_placed_and_a_small_whole_object_refused(sim, mni_reference):
    """A 20 mm block cut out of a section (tissue on every border) is a legitimate section: placed, with
    its confidence; a 16 mm object on empty background is no human brain: refused with the size it needs."""
    m = sim.section.mask
    rr, cc = np.nonzero(m)
    r0, c0 = int(np.median(rr)), int(np.median(cc))
    n = int(round(20.0 / sim.section.spacing_mm[0]))
    img = np.asarray(sim.section.image)[r0 : r0 + n, c0 : c0 + n].copy()
    block = sa.Section(img, spacing_mm=sim.section.spacing_mm, mask=np.ones(img.shape, bool), name="block")
    res = sa.anchor(block, reference=mni_reference, seed=0, flipped=False)
    assert res.placed and 0.0 <= res.confidence <= 1.0 and np.isfinite(res.affine).all()
    assert res.diagnostics["n_patches"] >= 6
    yy, xx = np.mgrid[:40, :40]
    blob = ((yy - 20) ** 2 + (xx - 20) ** 2 < 16**2).astype(np.float32)  # 16 mm across at 0.5 mm/px
    with pytest.raises(ImageTooSmallError, match="24 mm of tissue across"):
        sa.anchor(sa.Section(blob, spacing_mm=0.5), reference=mni_reference)

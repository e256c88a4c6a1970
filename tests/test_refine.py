"""The intensity comparison and refinement of a placement (siibra_anchor.refine): the hard-binned NMI that
scores placements and the linearly binned one the optimiser climbs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from siibra_anchor.planes import sample_volume
from siibra_anchor.refine import SamplePoints, nmi, nmi_smooth, outside_share, plane_nmi, refine_map, sample_points


def test_smooth_nmi_measures_dependence_like_nmi_and_changes_continuously():
    rng = np.random.default_rng(0)
    a = rng.random(4000)
    b = np.clip(a + 0.1 * rng.normal(size=a.size), 0.0, 1.0)
    other = rng.random(a.size)
    for f in (nmi, nmi_smooth):
        assert 1.0 <= f(a, other) < 1.02 < 1.1 < f(a, b) < f(a, a) <= 2.0
    assert nmi_smooth(a, b) == pytest.approx(nmi(a, b), abs=0.02)
    assert nmi_smooth(a, 1.0 - b) == pytest.approx(nmi_smooth(a, b), abs=1e-9)  # the bins mirror exactly
    # shifting one sample's value by a tiny step moves the smooth NMI by a tiny amount, never by a jump
    steps = np.linspace(0.0, 0.02, 201)
    for f, smooth in ((nmi_smooth, True), (nmi, False)):
        vals = np.array([f(a, np.clip(b + s, 0.0, 1.0)) for s in steps])
        biggest = np.abs(np.diff(vals)).max()
        if smooth:
            assert biggest < 2e-4
        else:  # the hard bins: a sample crossing a bin edge moves the value in one step
            assert biggest > 5 * np.abs(np.diff(np.array([nmi_smooth(a, np.clip(b + s, 0, 1)) for s in steps]))).max()
    assert nmi_smooth(np.zeros(10), np.zeros(10)) == 1.0  # one bin: no information, no division by zero


def _blob_volume(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vol = ndimage.gaussian_filter(rng.random((60, 60, 60)), 3.0)
    vol = (vol - vol.min()) / np.ptp(vol)
    return vol.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels, 120 mm wide


def test_refinement_climbs_back_to_a_plane_it_was_pushed_off():
    vol, aff = _blob_volume()
    lin = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # 1 mm pixels on the coronal plane y = 60 mm
    t = np.array([25.0, 60.0, 25.0])
    img = np.zeros((70, 70), np.float32)
    rr, cc = np.mgrid[:70, :70]
    xyz = np.stack([rr.ravel(), cc.ravel()], 1) @ lin.T + t
    img[:] = sample_volume(vol, aff, xyz).reshape(70, 70)
    pts = sample_points(img, np.ones_like(img, bool), 3000, np.random.default_rng(1))
    pts = SamplePoints(pts.rc[: len(pts.rc) * 4 // 5], pts.values[: len(pts.rc) * 4 // 5])  # tissue only
    c = pts.rc.mean(0)
    th = np.deg2rad(4.0)  # pushed off: turned 4 degrees about the row axis and moved 3 mm
    rot = np.array([[1, 0, 0], [0, np.cos(th), -np.sin(th)], [0, np.sin(th), np.cos(th)]])
    lin0 = rot @ lin
    t0 = t + lin @ c - lin0 @ c + np.array([0.0, 3.0, 1.5])
    start_err = np.linalg.norm(pts.rc @ lin0.T + t0 - (pts.rc @ lin.T + t), axis=1).mean()
    assert start_err > 3.0
    for smooth in (False, True):  # the hard-binned objective (the default) and AnchorParams.refine_smooth_nmi
        li, ti, score = refine_map(pts, lin0, t0, vol, aff, (1.0, 0.0), 400, smooth_nmi=smooth)
        end_err = np.linalg.norm(pts.rc @ li.T + ti - (pts.rc @ lin.T + t), axis=1).mean()
        assert end_err < 0.5, (smooth, end_err)
        assert score == pytest.approx(plane_nmi(pts, li, ti, vol, aff))
        assert score > plane_nmi(pts, lin0, t0, vol, aff)


def _ball_brain(seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 'brain': a ball 40 mm in radius of smooth texture in [0.5, 1] on a background of 0 (2 mm voxels),
    and its soft mask."""
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.random((60, 60, 60)), 4.0)
    tex = 0.5 + 0.5 * (tex - tex.min()) / np.ptp(tex)
    ii, jj, kk = np.mgrid[:60, :60, :60]
    ball = (ii - 29.5) ** 2 + (jj - 29.5) ** 2 + (kk - 29.5) ** 2 <= 20.0**2
    brain = ndimage.gaussian_filter(ball.astype(np.float32), 1.0)
    return np.where(ball, tex, 0.0).astype(np.float32), brain, np.diag([2.0, 2.0, 2.0, 1.0])


def _central_section(vol, aff, radius_px: int = 39):
    """The 1 mm section through the ball's centre: its image, its disc of tissue and its true placement
    (pixel (40, 40) at the centre, (59, 59, 59) mm)."""
    lin = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    t = np.array([19.0, 59.0, 19.0])
    rr, cc = np.mgrid[:81, :81]
    r2 = (rr - 40) ** 2 + (cc - 40) ** 2
    img = sample_volume(vol, aff, np.stack([rr.ravel(), cc.ravel()], 1) @ lin.T + t).reshape(81, 81)
    return img, r2 <= radius_px**2, r2, lin, t


def test_outside_share_counts_the_tissue_placed_off_the_brain():
    vol, brain, aff = _ball_brain()
    img, disc, _, lin, t = _central_section(vol, aff, radius_px=38)
    pts = sample_points(img, disc, 2000, np.random.default_rng(0))
    assert pts.n_tissue == 2000 and len(pts.rc) > 2000  # tissue first, then the ring of background
    assert outside_share(pts, lin, t, brain, aff) < 0.05
    c = np.array([40.0, 40.0])
    big = 1.3 * lin  # drawn 1.3 times larger about the same centre: its rim (1 - 1 / 1.3^2 = 41 %) is off the ball
    assert outside_share(pts, big, lin @ c + t - big @ c, brain, aff) == pytest.approx(0.41, abs=0.08)
    off = t + np.array([0.0, 0.0, 60.0])  # moved 60 mm along the plane: mostly off the brain
    assert outside_share(pts, lin, off, brain, aff) > 0.6


def test_the_outside_penalty_draws_a_section_with_a_dark_rim_back_to_its_size():
    """A section whose outer rim is dark within its tissue mask (echo-planar signal dropout, a stain pale at
    the edge), placed 1.3 times too large: NMI alone grows it further (its dark rim on the template's
    background, its tissue spread over the brain); with the share of tissue outside the brain subtracted
    (AnchorParams.outside_weight) it comes back to its true size."""
    vol, brain, aff = _ball_brain()
    img, disc, r2, lin, t = _central_section(vol, aff)
    img = np.where(disc & (r2 > 27**2), 0.02, img)  # the rim beyond 27 mm lost its signal
    pts = sample_points(img, disc, 2000, np.random.default_rng(0))
    c = np.array([40.0, 40.0])
    lin0 = 1.3 * lin
    t0 = lin @ c + t - lin0 @ c
    scales = {}
    for w in (0.0, 0.5):
        li, _, _ = refine_map(pts, lin0, t0, vol, aff, (2.0, 0.0), 400, brain=brain, outside_weight=w)
        scales[w] = float(np.sqrt(abs(np.linalg.det(li.T @ li))))
    assert scales[0.0] > 1.3  # NMI alone: larger still
    assert abs(scales[0.5] - 1.0) < 0.05

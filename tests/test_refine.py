"""The intensity comparison and refinement of a placement (siibra_anchor.refine): the hard-binned NMI that
scores placements and the linearly binned one the optimiser climbs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from siibra_anchor.planes import sample_volume
from siibra_anchor.refine import SamplePoints, nmi, nmi_smooth, plane_nmi, refine_map, sample_points


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

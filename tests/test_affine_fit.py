"""Affine fitting against plain reference implementations and known transforms with outliers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from siibra_anchor.affine_fit import (
    SectionMap,
    _from_terms,
    _hypothesis_terms,
    _pair_terms,
    affine_fit,
    constrain_affine,
    ransac_section,
    similarity_fit,
)
from siibra_anchor.anchoring.params import AnchorParams
from siibra_anchor.planes import plane_affine, section_affine


def _random_map(rng, spacing=1.5, scale=1.0):
    rot = Rotation.random(random_state=rng).as_matrix()
    lin = spacing * scale * rot[:, :2]
    t = rng.uniform(-50, 50, 3)
    return lin, t


def _lstsq_reference(src, dst):
    """Plain reference: solve [r c 1] X = dst column by column with normal equations."""
    a = np.column_stack([src, np.ones(len(src))])
    x = np.linalg.solve(a.T @ a, a.T @ dst)
    return x[:2].T, x[2]


def test_affine_fit_matches_normal_equations():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (50, 2))
    lin = rng.normal(size=(3, 2))
    t = rng.normal(size=3)
    dst = src @ lin.T + t + rng.normal(0, 0.1, (50, 3))
    got_l, got_t = affine_fit(src, dst)
    ref_l, ref_t = _lstsq_reference(src, dst)
    np.testing.assert_allclose(got_l, ref_l, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(got_t, ref_t, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("mirror", [False, True])
def test_similarity_fit_recovers_exact_transform(mirror):
    rng = np.random.default_rng(1)
    lin, t = _random_map(rng, scale=1.1)
    if mirror:
        lin = lin[:, ::-1]  # swapping the in-plane axes is a mirror of the image
    src = rng.uniform(0, 80, (20, 2))
    dst = src @ lin.T + t
    got_l, got_t, s = similarity_fit(src, dst)
    np.testing.assert_allclose(got_l, lin, atol=1e-9)
    np.testing.assert_allclose(got_t, t, atol=1e-7)
    assert s == pytest.approx(1.65)


def test_similarity_fit_is_batched():
    rng = np.random.default_rng(2)
    maps = [_random_map(rng) for _ in range(4)]
    src = rng.uniform(0, 80, (4, 10, 2))
    dst = np.stack([src[i] @ m[0].T + m[1] for i, m in enumerate(maps)])
    lin, t, _ = similarity_fit(src, dst)
    for i, (ml, mt) in enumerate(maps):
        np.testing.assert_allclose(lin[i], ml, atol=1e-9)
        np.testing.assert_allclose(t[i], mt, atol=1e-7)


def _squared_residuals(rc, xyz, lin, t):
    return _from_terms(_hypothesis_terms(lin, t), _pair_terms(rc, xyz))


def test_ransac_recovers_transform_with_60_percent_outliers():
    rng = np.random.default_rng(3)
    lin, t = _random_map(rng, spacing=1.5, scale=0.9)
    n = 300
    src = rng.uniform(0, 100, (n, 2))
    dst = src @ lin.T + t + rng.normal(0, 1.0, (n, 3))
    bad = rng.random(n) < 0.6
    dst[bad] = rng.uniform(-90, 90, (bad.sum(), 3))
    # several candidates per patch: the true one (if good) and random decoys
    k = 3
    rc = np.repeat(src, k, axis=0)
    xyz = np.repeat(dst, k, axis=0)
    decoy = np.ones(len(rc), bool)
    decoy[::k] = False
    xyz[decoy] = rng.uniform(-90, 90, (decoy.sum(), 3))
    grp = np.repeat(np.arange(n), k)
    sim = rng.uniform(0.5, 1.0, len(rc))
    hyps = ransac_section(rc, xyz, grp, sim, spacing=1.5, rng=np.random.default_rng(0), residual_threshold=4.0)
    assert hyps, "RANSAC returned no hypothesis"
    best = hyps[0]
    # compare against the plain least-squares fit on the true inliers
    ref_l, ref_t = _lstsq_reference(src[~bad], dst[~bad])
    pts = rng.uniform(0, 100, (100, 2))
    err = np.linalg.norm(best.apply(pts) - (pts @ ref_l.T + ref_t), axis=1)
    assert err.max() < 3.0
    assert best.score >= 0.8 * (~bad).sum()
    # the inlier flags point at true pairs
    assert best.inliers[~decoy].sum() >= 0.8 * (~bad).sum()


def test_squared_residuals_equal_the_direct_distances():
    """RANSAC's (hypotheses x pairs) residuals, expanded into one product, against |lin @ rc + t - xyz|^2,
    mirrored and anisotropic maps included, at the coordinates a section and the reference have."""
    rng = np.random.default_rng(11)
    rc = rng.uniform(0, 300, (500, 2))
    xyz = rng.uniform(-100, 100, (500, 3))
    lin = rng.normal(0, 1.5, (40, 3, 2))
    t = rng.uniform(-150, 150, (40, 3))
    direct = np.linalg.norm(np.matmul(rc[None], lin.transpose(0, 2, 1)) + t[:, None] - xyz[None], axis=-1) ** 2
    got = _squared_residuals(rc, xyz, lin, t)
    assert got.shape == (40, 500)
    np.testing.assert_allclose(got, direct, rtol=1e-9, atol=1e-6)
    # near the threshold, where an inlier is decided, the error stays far below a mm^2
    lin0, t0 = _random_map(rng)
    near = rc[:50] @ lin0.T + t0 + rng.normal(0, 2.0, (50, 3))
    small = _squared_residuals(rc[:50], near, lin0[None], t0[None])[0]
    np.testing.assert_allclose(small, ((rc[:50] @ lin0.T + t0 - near) ** 2).sum(axis=1), atol=1e-8)


def test_ransac_is_seeded():
    rng = np.random.default_rng(4)
    lin, t = _random_map(rng)
    src = rng.uniform(0, 100, (100, 2))
    dst = src @ lin.T + t
    dst[::2] = rng.uniform(-90, 90, (50, 3))
    grp = np.arange(100)
    a = ransac_section(src, dst, grp, np.ones(100), 1.5, np.random.default_rng(7))
    b = ransac_section(src, dst, grp, np.ones(100), 1.5, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0].linear, b[0].linear)


def test_ransac_respects_scale_prior():
    rng = np.random.default_rng(5)
    lin, t = _random_map(rng, spacing=1.5, scale=3.0)  # three times the stated spacing: implausible
    src = rng.uniform(0, 100, (60, 2))
    dst = src @ lin.T + t
    hyps = ransac_section(src, dst, np.arange(60), np.ones(60), 1.5, np.random.default_rng(0))
    for h in hyps:
        assert 1.5 * 0.7 <= np.sqrt(np.prod(h.scales)) <= 1.5 * 1.4


def test_constrain_affine_limits_scale_and_anisotropy():
    lin = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    c = constrain_affine(lin, spacing=1.0, scale_range=(0.7, 1.4), max_anisotropy=1.15)
    s = np.linalg.svd(c, compute_uv=False)
    assert np.sqrt(s.prod()) == pytest.approx(1.4)  # the mean scale sqrt(3) is clipped to the range
    assert s.max() / s.min() == pytest.approx(1.15)
    # a similarity outside the range is clipped to it, direction kept
    c = constrain_affine(np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]), 0.5, (0.7, 1.4), max_anisotropy=1.0)
    np.testing.assert_allclose(c, np.array([[0.7, 0.0], [0.0, 0.7], [0.0, 0.0]]))
    # degenerate maps (a fit to collinear or coincident points) come back finite, inside the prior
    for lin0 in (np.zeros((3, 2)), np.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])):
        s0 = np.linalg.svd(constrain_affine(lin0, 0.5, (0.7, 1.4), max_anisotropy=1.35), compute_uv=False)
        assert np.all(np.isfinite(s0)) and np.sqrt(s0.prod()) == pytest.approx(0.35) and s0[0] / s0[1] <= 1.35 + 1e-9
    # BigBrain's histological geometry on a coronal section (z 1.44 against x 1.12) is inside the default prior
    bb = np.array([[0.0, 1.12], [0.0, 0.0], [-1.44, 0.0]]) * 0.4
    p = AnchorParams()
    np.testing.assert_allclose(constrain_affine(bb, 0.4, p.scale_range, p.max_anisotropy), bb, atol=1e-12)


def test_section_affine_convention():
    lin = np.array([[0.0, 0.5], [0.0, 0.0], [-0.5, 0.0]])  # rows go down (-z), cols go +x
    aff = section_affine(lin, [1.0, 2.0, 3.0], thickness_mm=0.05)
    n = np.cross(lin[:, 0], lin[:, 1])
    np.testing.assert_allclose(aff[:3, 2], n / np.linalg.norm(n) * 0.05)
    assert np.linalg.det(aff) > 0
    np.testing.assert_allclose(aff @ [2, 4, 0, 1], [3.0, 2.0, 2.0, 1.0])


def test_plane_affine_centres_the_image():
    aff = plane_affine([10, -20, 5], [0, 0, -1], [1, 0, 0], 0.5, (101, 51))
    np.testing.assert_allclose(aff @ [50, 25, 0, 1], [10, -20, 5, 1])


def test_sectionmap_residuals():
    m = SectionMap(np.array([[1.0, 0], [0, 1.0], [0, 0]]), np.zeros(3))
    r = m.residuals([[1, 2]], [[1, 2, 2]])
    assert r[0] == pytest.approx(2.0)


def test_canonical_votes_find_a_block_whose_matches_are_mostly_wrong(mni_reference):
    """Matches onto the real reference's coronal patches, nine in ten wrong: the Hough vote on the
    canonical planes still puts the section within a few mm of its true place."""
    from siibra_anchor.anchoring.hypotheses import MatchVotes, canonical_hypotheses

    ref = mni_reference
    rng = np.random.default_rng(4)
    axes = ref.plane_axes
    normals = np.cross(axes[:, :, 0], axes[:, :, 1])
    coronal = np.flatnonzero(np.abs(normals[ref.plane_ids] @ np.array([0.0, 1.0, 0.0])) > 0.99)
    # the true placement: a coronal plane tilted 5 degrees, rotated 70 degrees in-plane, at y = -20 mm
    a, tilt = np.deg2rad(70.0), np.deg2rad(5.0)
    r = np.array([np.cos(a), 0.0, np.sin(a)])
    c = np.cross([0.0, 1.0, 0.0], r)
    rot = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    lin = 1.5 * rot @ np.stack([r, c], axis=1)
    t = np.array([-10.0, -20.0, 5.0]) - lin @ np.array([15.0, 15.0])
    rc = rng.uniform(0, 30, (300, 2))
    true_xyz = rc @ lin.T + t
    # each section patch's match: the nearest coronal reference patch for 10%, a random one otherwise
    good = rng.random(300) < 0.1
    d = np.linalg.norm(ref.centres_mm[coronal][None] - true_xyz[good][:, None], axis=2)
    idx = coronal[rng.integers(0, len(coronal), 300)]
    idx[good] = coronal[np.argmin(d, axis=1)]
    hyps = canonical_hypotheses(ref, idx, MatchVotes(rc, ref.centres_mm[idx], np.ones(300), 1.5, None, 7.5))
    assert hyps
    errs = [np.linalg.norm(h.apply(rc) - true_xyz, axis=1).mean() for h in hyps]
    assert min(errs) < 6.0, errs
    assert errs[int(np.argmax([h.score for h in hyps]))] < 6.0

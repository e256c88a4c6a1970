"""The guided re-match (best reference within a radius) against a brute-force search, on arrays and on
lazily encoded patch views of a real image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from siibra_anchor.encoders import RawPixelEncoder, embed_patches
from siibra_anchor.matching import best_in_neighbourhood, topk_cosine
from siibra_anchor.patches import extract_patches, rotation_angles
from siibra_anchor.views import PatchViews


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _brute(q, refs, centres, pred, radius, ref_view):
    """Each query's best (similarity, reference, view) among references within ``radius``: a loop."""
    out = []
    for i in range(len(q)):
        best = (-2.0, -1, 0)
        for j in np.flatnonzero(np.linalg.norm(centres - pred[i], axis=1) <= radius):
            views = range(q.shape[1]) if ref_view is None else [ref_view[j]]
            for v in views:
                if v < 0:
                    continue
                s = float(q[i, v] @ refs[j])
                if s > best[0] + 1e-6:
                    best = (s, int(j), int(v))
        out.append(best)
    return out


@pytest.mark.parametrize("with_views", [False, True])
def test_best_in_neighbourhood_equals_a_brute_force_search(with_views):
    rng = np.random.default_rng(1)
    n_q, n_v, n_r = 40, 6, 900
    q = _unit(rng.normal(size=(n_q, n_v, 16)))
    refs = _unit(rng.normal(size=(n_r, 16)))
    centres = rng.uniform(-60, 60, (n_r, 3))
    pred = rng.uniform(-60, 60, (n_q, 3))
    pred[0] = 500.0  # nothing within reach: no match
    ref_view = rng.integers(-1, n_v, n_r) if with_views else None
    sim, idx, view = best_in_neighbourhood(q, refs, cKDTree(centres), pred, 14.0, ref_view=ref_view, chunk=16)
    want = _brute(q, refs, centres, pred, 14.0, ref_view)
    assert idx[0] == -1 and sim[0] == -2.0
    assert (idx >= 0).sum() > 30  # the radius holds references for most queries
    for i, (s, j, v) in enumerate(want):
        assert idx[i] == j, i
        if j >= 0:
            assert view[i] == v and sim[i] == pytest.approx(s, abs=1e-5)


def test_lazy_patch_views_give_what_their_embedded_array_gives():
    """A PatchViews (views encoded on demand) and the (Q, V, D) array of all its views are the same input;
    an array must not be taken for a PatchViews (both have a ``take``)."""
    rng = np.random.default_rng(2)
    img = rng.random((96, 96)).astype(np.float32)
    cen = rng.uniform(20, 76, (30, 2))
    angles = rotation_angles(4)
    enc = RawPixelEncoder()
    lazy = PatchViews(img, cen, 16, angles, [False, True], enc)
    full = np.stack(
        [embed_patches(enc, extract_patches(img, cen, 16, [a], mirror=m)[:, 0]) for m in (False, True) for a in angles],
        axis=1,
    )
    refs = _unit(rng.normal(size=(400, full.shape[2])))
    refs[:30] = full[np.arange(30), rng.integers(0, 8, 30)]  # some exact partners
    centres = rng.uniform(0, 40, (400, 3))
    tree = cKDTree(centres)
    pred = rng.uniform(0, 40, (30, 3))
    ref_view = rng.integers(-1, 8, 400)
    for rv in (ref_view, None):
        a = best_in_neighbourhood(full, refs, tree, pred, 12.0, ref_view=rv)
        b = best_in_neighbourhood(lazy, refs, tree, pred, 12.0, ref_view=rv)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    assert lazy.n_encoded <= 30 * 8


def test_a_tree_over_the_usable_references_gives_what_the_whole_tree_gives(mni_reference):
    """The guided search's tree over the reference sections near the placement's plane
    (``Reference.tree_of``) finds what the whole tree finds once the other sections are excluded."""
    ref = mni_reference
    rng = np.random.default_rng(3)
    planes = np.abs(ref.plane_normals[:, 2]) > 0.9  # the axial sections
    tree, subset = ref.tree_of(planes)
    assert np.array_equal(subset, np.flatnonzero(planes[ref.plane_ids]))
    assert ref.tree_of(planes)[0] is tree  # kept for the next call
    ref_view = np.where(planes[ref.plane_ids], rng.integers(0, 4, ref.n_patches), -1)
    q = _unit(rng.normal(size=(50, 4, ref.embeddings.shape[1])))
    pred = ref.centres_mm[rng.choice(ref.n_patches, 50)] + rng.normal(0, 3, (50, 3))
    whole = best_in_neighbourhood(q, ref.embeddings, ref.tree, pred, 10.0, ref_view=ref_view)
    part = best_in_neighbourhood(q, ref.embeddings, tree, pred, 10.0, ref_view=ref_view, subset=subset)
    assert (whole[1] >= 0).sum() > 40
    for a, b in zip(whole, part, strict=True):
        np.testing.assert_array_equal(a, b)
    # nearly every section usable: the whole tree; none: an empty one that finds nothing
    assert ref.tree_of(np.ones(len(planes), bool)) == (ref.tree, None)
    empty, none = ref.tree_of(np.zeros(len(planes), bool))
    assert len(none) == 0
    assert (best_in_neighbourhood(q, ref.embeddings, empty, pred, 10.0, ref_view=ref_view, subset=none)[1] == -1).all()


@pytest.mark.parametrize("share", [0.3, 0.9])
def test_topk_with_a_reference_mask_returns_the_best_allowed_references(share):
    """A hint's mask (half the reference for a hemisphere: searched as its own, smaller reference; most of
    it: masked in place) gives each query's k best allowed references over its views, as a loop finds them."""
    rng = np.random.default_rng(4)
    refs = _unit(rng.normal(size=(600, 12)))
    q = _unit(rng.normal(size=(20, 3, 12)))
    mask = rng.random(600) < share
    sims, idx, ang = topk_cosine(q, refs, 5, ref_mask=mask)
    s = np.einsum("qad,rd->qra", q, refs)
    for i in range(20):
        best = np.where(mask, s[i].max(axis=1), -np.inf)
        want = np.argsort(-best, kind="stable")[:5]
        np.testing.assert_array_equal(idx[i], want)
        np.testing.assert_allclose(sims[i], best[want], atol=1e-6)
        np.testing.assert_array_equal(ang[i], s[i, want].argmax(axis=1))

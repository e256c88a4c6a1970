"""Many sections at once (``anchor_batch``): the same placements as one ``anchor()`` call each, one encoder
stream for all coarse patches, per-section hints, sections that cannot be placed returned unplaced; the
matcher's ``device=`` path (a GPU when this machine has one, else the CPU path it shares)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import siibra_anchor as sa
from siibra_anchor.encoders import load_default_encoder
from siibra_anchor.errors import InvalidParameterError, InvalidSectionError
from siibra_anchor.evaluation.simulate import simulate_section
from siibra_anchor.matching import topk_cosine
from siibra_anchor.views import PatchViews, encode_together


@pytest.fixture(scope="module")
def sims():
    return [
        simulate_section(volume="fsl-mni152-t1", orientation="coronal", offset_mm=-12.0, rotation_deg=30.0,
                         tilt_deg=4.0, spacing_mm=0.8, seed=11),
        simulate_section(volume="mni152-2009a-t1", orientation="axial", offset_mm=8.0, rotation_deg=-60.0,
                         tilt_deg=6.0, spacing_mm=0.7, seed=12),
    ]  # fmt: skip


def _tiny() -> sa.Section:
    """A 10 mm scrap of tissue: too small to anchor even as a block (12 mm), nothing to place."""
    img = np.random.default_rng(5).random((20, 20)).astype(np.float32)
    return sa.Section(img, spacing_mm=0.5, mask=np.ones(img.shape, bool), name="scrap")


def test_batch_places_each_section_as_anchor_does(sims, mni_reference):
    enc = load_default_encoder()
    secs = [s.section for s in sims]
    batch = sa.anchor_batch(secs + [_tiny()], reference=mni_reference, encoder=enc, seed=3, flipped=False)
    assert len(batch) == 3
    for sim, r in zip(sims, batch[:2], strict=True):
        assert r.placed
        single = sa.anchor(sim.section, reference=mni_reference, encoder=enc, seed=3, flipped=False)
        np.testing.assert_allclose(r.affine, single.affine, atol=0.05)
        assert abs(r.confidence - single.confidence) < 0.02
        assert sim.error(r.affine) < 5.0
        t = r.diagnostics["timings"]
        assert 0.0 < t["batch_shared_s"] <= t["total_s"]
    scrap = batch[2]
    assert not scrap.placed and scrap.confidence == 0.0
    assert "ImageTooSmallError" in scrap.diagnostics["unplaced"]


def test_batch_hints_are_one_for_all_or_one_per_section(sims, mni_reference):
    secs = [s.section for s in sims]
    with pytest.raises(InvalidParameterError, match="one per section"):
        sa.anchor_batch(secs, reference=mni_reference, hemisphere=["left"])
    with pytest.raises(InvalidParameterError, match="hemisphere"):
        sa.anchor_batch(secs, reference=mni_reference, hemisphere=["left", "middle"])
    with pytest.raises(InvalidParameterError, match="cut"):
        sa.anchor_batch(secs, reference=mni_reference, cut=["coronal", "frontal"])
    with pytest.raises(InvalidParameterError, match="batch_size"):
        sa.anchor_batch(secs, reference=mni_reference, batch_size=0)
    with pytest.raises(InvalidParameterError, match="not a torch device"):
        sa.anchor_batch(secs, reference=mni_reference, device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="CUDA device"):
            sa.anchor_batch(secs, reference=mni_reference, device="cuda")
        with pytest.raises(InvalidParameterError, match="CUDA device"):
            sa.anchor(secs[0], reference=mni_reference, device="cuda:0")
    with pytest.raises(InvalidSectionError):
        sa.anchor_batch([secs[0], np.zeros((10, 10))], reference=mni_reference)
    assert sa.anchor_batch([], reference=mni_reference) == []


def test_encoding_together_gives_each_section_its_own_embeddings(sims):
    enc = load_default_encoder()
    rng = np.random.default_rng(0)
    angles = np.array([0.0, 90.0])

    def views(sim):
        img = sim.section.image.astype(np.float32)
        img = img / max(float(img.max()), 1e-6)
        cen = np.argwhere(sim.section.mask)[::997][:20].astype(float)
        return PatchViews(img, cen, 32, angles, [False, True], enc)

    together, alone = [views(s) for s in sims], [views(s) for s in sims]
    rows = [np.sort(rng.choice(v.n, 7, replace=False)) for v in together]
    n = encode_together(together, rows)
    assert n == sum(len(r) * v.n_views for r, v in zip(rows, together, strict=True))
    for t, a, r in zip(together, alone, rows, strict=True):
        np.testing.assert_allclose(t.all_views(r), a.all_views(r), atol=1e-5)
        assert t.n_encoded == len(r) * t.n_views  # all_views found them encoded: nothing encoded twice
    assert encode_together(together, rows) == 0


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_topk_on_a_device_matches_the_cpu_search(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: the GPU path is checked where one is lent")
    rng = np.random.default_rng(1)
    refs = rng.standard_normal((5000, 16)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    q = rng.standard_normal((70, 6, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=2, keepdims=True)
    mask = rng.random(5000) > 0.3
    s0, i0, a0 = topk_cosine(q, refs, 9, ref_mask=mask)
    s1, i1, a1 = topk_cosine(q, refs, 9, ref_mask=mask, device=device)
    np.testing.assert_allclose(s0, s1, atol=1e-5)
    assert (i0 == i1).mean() > 0.99 and (a0 == a1).mean() > 0.99
    assert mask[i1].all()
    # brute force: the best match of each query over its views
    best = np.einsum("qad,rd->qar", q, refs).max(axis=1)
    best[:, ~mask] = -2
    np.testing.assert_array_equal(i1[:, 0], best.argmax(axis=1))


def test_batch_cut_hint_per_section_is_each_sections_own(sims, mni_reference):
    """``cut`` as a list: each section gets its own cutting-plane hint, recorded in its result, and is placed
    as ``anchor(cut=...)`` places it, within 30 degrees of the named plane (plus the refinement's few)."""
    secs = [s.section for s in sims]
    batch = sa.anchor_batch(secs, reference=mni_reference, seed=3, flipped=False, cut=["coronal", "axial"])
    for sim, r, cut, axis in zip(sims, batch, ("coronal", "axial"), (1, 2), strict=True):
        assert r.diagnostics["cut"] == cut
        single = sa.anchor(sim.section, reference=mni_reference, seed=3, flipped=False, cut=cut)
        np.testing.assert_allclose(r.affine, single.affine, atol=0.05)
        n = np.cross(r.affine[:3, 0], r.affine[:3, 1])
        assert abs(n[axis]) / np.linalg.norm(n) >= np.cos(np.deg2rad(35.0))
        assert sim.error(r.affine) < 5.0

"""Histology geometry in the simulator: shrinkage, shear, warps, frame-filling blocks; truth per pixel."""

from __future__ import annotations

import numpy as np
import pytest

from siibra_anchor.evaluation.simulate import HistologyGeometry, section_error, simulate_section
from siibra_anchor.planes import sample_volume
from siibra_anchor.templates import load_volume


def test_default_is_unchanged_and_draws_nothing():
    a = simulate_section("fsl-mni152-t1", "coronal", tilt_deg=4, rotation_deg=20, seed=5)
    b = simulate_section("fsl-mni152-t1", "coronal", tilt_deg=4, rotation_deg=20, seed=5, histology=False)
    assert a.true_points is None and "histology" not in a.params
    np.testing.assert_array_equal(a.section.image, b.section.image)
    np.testing.assert_array_equal(a.true_affine, b.true_affine)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_pixel_shows_the_anatomy_at_its_true_point(seed):
    """The distorted image at pixel q is the volume at true_points[q] (plain resampling as reference)."""
    geo = HistologyGeometry(stain_gradient=0.0, folds=0, missing=0.0)
    s = simulate_section(
        "mni152-2009a-t1", "axial", tilt_deg=6, rotation_deg=40, spacing_mm=0.8, seed=seed, histology=geo
    )
    data, aff = load_volume("mni152-2009a-t1")
    m = s.section.mask
    ref = sample_volume(data, aff, s.true_points[m])
    assert np.corrcoef(ref, s.section.image[m])[0, 1] > 0.99
    # the fitted affine is the truth up to the warp: close, but not exact (the check can fail)
    floor = s.error(s.true_affine)
    assert 0.0 < floor < geo.warp_mm
    shrink = s.params["histology"]["drawn"]["shrink"]
    assert all(0.7 <= v <= 1.0 for v in shrink)
    # the image is shrunk: one pixel step covers spacing / shrink mm of anatomy
    steps = np.linalg.norm(s.true_affine[:3, :2], axis=0)
    np.testing.assert_allclose(steps, 0.8 / np.asarray(shrink), rtol=0.08)


def test_section_error_with_true_points_against_a_plain_loop():
    rng = np.random.default_rng(0)
    mask = rng.random((12, 9)) > 0.4
    pts = rng.normal(0, 10, (12, 9, 3))
    aff = np.eye(4)
    aff[:3, :2] = rng.normal(0, 1, (3, 2))
    aff[:3, 3] = rng.normal(0, 5, 3)
    expected = np.mean(
        [np.linalg.norm(aff[:3, :2] @ [r, c] + aff[:3, 3] - pts[r, c]) for r, c in zip(*np.nonzero(mask), strict=True)]
    )
    assert section_error(aff, np.eye(4), mask, true_points=pts) == pytest.approx(expected)


def test_frame_filling_blocks_touch_every_border():
    geo = HistologyGeometry(frame_fill=1.0, missing=0.0)
    for seed in range(3):
        s = simulate_section("fsl-mni152-t1", "coronal", partial="block", spacing_mm=0.7, seed=seed, histology=geo)
        m = s.section.mask
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
        assert m.mean() > 0.95
        assert s.params["histology"]["drawn"]["frame_fill"]


def test_histology_block_sections_are_seeded_and_shrunk_within_the_block_range():
    from siibra_anchor.evaluation.histology_block import histology_sections

    a, b = histology_sections(3, seed=4), histology_sections(3, seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.section.image, y.section.image)
        drawn = x.params["histology"]["drawn"]
        assert all(0.75 <= v <= 1.0 for v in drawn["shrink"])
        assert x.true_points is not None and x.true_points.shape[:2] == x.section.shape


@pytest.mark.slow
def test_histology_block_runs_with_both_hints_and_formats_its_failures(mni_reference):
    """The block as the benchmark runs it: the default encoder with the mounting and hemisphere hints, and
    again told the cutting plane."""
    from siibra_anchor.evaluation.histology_block import format_histology_block, run_histology_block

    rep = run_histology_block(2, seed=4, reference=mni_reference, raw_baseline=False, cut_known=True)
    assert rep["hints"] == "hemisphere and mounting" and rep["default"]["n"] == 2
    assert rep["raw_pixel"] == {"n": 0}
    for c in rep["cases"]:
        assert c["default_outcome"] in ("correct", "turned-180", "mirrored-midline", "mirrored-mounting",
                                        "wrong-plane", "refused")  # fmt: skip
        assert 0.0 <= c["default_confidence"] <= 1.0
        assert c["affine_floor_mm"] <= (c["default_error_mm"] if c["default_error_mm"] is not None else np.inf)
    text = format_histology_block(rep)
    assert "Histology-geometry block (2 sections, seed 4" in text and "hemisphere and mounting" in text
    assert f"{rep['default']['failures']}/2" in text
    failed = [
        c["name"] for c in rep["cases"] if not (c["default_error_mm"] is not None and c["default_error_mm"] <= 10)
    ]
    assert all(name in text for name in failed) and (("Failures:" in text) == bool(failed))
    # the cut column: the same sections, anchored with cut= their orientation
    assert rep["cut_known"]["n"] == 2
    errs = [c["cut_known_error_mm"] for c in rep["cases"]]
    assert all(e is None or e >= c["affine_floor_mm"] for e, c in zip(errs, rep["cases"], strict=True))
    n_fail = sum(e is None or e > 10 for e in errs)
    assert rep["cut_known"]["failures"] == n_fail
    assert "| all, cutting plane known | " in text and f"{n_fail}/2" in text.split("cutting plane known |")[1]
    assert "Failures with the cutting plane known: " in text
    no_cut = run_histology_block(1, seed=4, reference=mni_reference, raw_baseline=False)
    assert no_cut["cut_known"] == {"n": 0} and "cutting plane known" not in format_histology_block(no_cut)

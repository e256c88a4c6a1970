"""QC figure of a real anchoring: the panels are checked numerically, for a correct and a shifted affine."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import siibra_anchor as sa
from siibra_anchor import qc
from siibra_anchor.errors import InvalidSectionError, SpaceUnavailableError
from siibra_anchor.evaluation.simulate import section_error, simulate_section


@pytest.fixture(scope="module")
def anchored(mni_reference):
    """A coronal section cut from the FSL template (not the reference one), tilted 7 deg, anchored for real."""
    sim = simulate_section(
        volume="fsl-mni152-t1",
        orientation="coronal",
        offset_mm=-10.0,
        tilt_deg=7.0,
        rotation_deg=30.0,
        spacing_mm=0.75,
        seed=3,
        name="qc-coronal",
    )
    res = sa.anchor(sim.section, reference=mni_reference, seed=0, n_patches=150)
    assert section_error(res.affine, sim.true_affine, sim.section.mask) < 4.0
    return sim, res


def _shifted(res, shift_mm=(0.0, 15.0, 0.0)):
    bad = copy.copy(res)
    bad.affine = res.affine.copy()
    bad.affine[:3, 3] += np.asarray(shift_mm)
    return bad


def test_reference_panel_correlates_for_correct_anchoring_only(anchored):
    sim, res = anchored
    good = qc.qc_panels(res, regions=False)
    bad = qc.qc_panels(_shifted(res), regions=False)
    assert good.reference.shape == sim.section.shape  # the section's pixel grid (small enough: factor 1)
    assert good.factor == 1
    assert good.agreement["r"] > 0.7, good.agreement
    assert bad.agreement["r"] < good.agreement["r"] - 0.3, (good.agreement, bad.agreement)
    assert bad.agreement["nmi"] < good.agreement["nmi"] - 0.05
    # patches (4): the shifted placement turns most inliers into outliers
    assert good.matches["inlier"].sum() >= 20
    assert bad.matches["inlier"].sum() < 0.3 * good.matches["inlier"].sum()
    # overlay (3): reference edges sit on the section's own edges for the right plane, not the wrong one
    from scipy import ndimage

    near = ndimage.binary_dilation(qc.edge_map(good.section), iterations=2)
    assert good.edges.sum() > 100 and bad.edges.sum() > 100
    hit_good = near[good.edges].mean()
    hit_bad = near[bad.edges].mean()
    assert hit_good > hit_bad + 0.15, (hit_good, hit_bad)


def test_reference_on_plane_against_plain_interpolation(anchored):
    """Each panel pixel is the template trilinearly interpolated at affine @ (row, col, 0, 1)."""
    from scipy.interpolate import RegularGridInterpolator

    _, res = anchored
    data, vaff = sa.templates.load_volume("mni152")
    interp = RegularGridInterpolator(
        tuple(np.arange(n, dtype=float) for n in data.shape), data, bounds_error=False, fill_value=0.0
    )
    for factor in (1, 3):
        panel = qc.reference_on_plane(res, factor=factor)
        h, w = res.section["shape"]
        assert panel.shape == (-(-h // factor), -(-w // factor))
        rng = np.random.default_rng(0)
        r = rng.integers(0, panel.shape[0], 400)
        c = rng.integers(0, panel.shape[1], 400)
        # display pixel (i, j) sits at original pixel (i f + (f - 1) / 2, j f + (f - 1) / 2)
        rc = np.stack([r * factor + (factor - 1) / 2, c * factor + (factor - 1) / 2, np.zeros(400), np.ones(400)])
        ijk = (np.linalg.inv(vaff) @ res.affine @ rc)[:3].T
        raw = interp(ijk)
        got = panel[r, c]
        ok = (got > 0.05) & (got < 0.95)  # not clipped: panel = raw / constant
        assert ok.sum() > 100
        scale = raw[ok] / got[ok]
        np.testing.assert_allclose(scale, np.median(scale), rtol=1e-3)


def test_checkerboard_and_edges_plain():
    a, b = np.zeros((8, 12)), np.ones((8, 12))
    cb = qc.checkerboard(a, b, tiles=4)
    want = np.array([[((i // 2) + (j // 3)) % 2 for j in range(12)] for i in range(8)], float)
    np.testing.assert_array_equal(cb, want)
    with pytest.raises(InvalidSectionError):
        qc.checkerboard(a, np.ones((3, 3)))
    sq = np.zeros((40, 40), np.float32)
    sq[10:30, 10:30] = 1.0
    e = qc.edge_map(sq)
    rr, cc = np.nonzero(e)
    # the edges of a square lie on its border, and cover all four sides
    assert np.all(
        (np.abs(rr - 9.5) <= 2) | (np.abs(rr - 29.5) <= 2) | (np.abs(cc - 9.5) <= 2) | (np.abs(cc - 29.5) <= 2)
    )
    assert {rr.min() < 12, rr.max() > 27, cc.min() < 12, cc.max() > 27} == {True}
    assert not qc.edge_map(np.zeros((5, 5))).any()
    rgb = qc.edge_overlay(sq, sq)
    assert rgb.shape == (40, 40, 3) and np.allclose(rgb[e], qc.EDGE_RGB)


def test_caption_says_where_the_section_lies(anchored):
    sim, res = anchored
    text = qc.caption(res, sim.section.mask)
    pos = qc.plane_position(res, sim.section.mask)
    rr, cc = np.nonzero(sim.section.mask)
    true_y = float((sim.true_affine[1, 0] * rr + sim.true_affine[1, 1] * cc + sim.true_affine[1, 3]).mean())
    assert pos["plane"] == "coronal" and pos["axis"] == "y"
    assert pos["position_mm"] == pytest.approx(true_y, abs=3.0)
    assert pos["tilt_deg"] == pytest.approx(7.0, abs=3.0)
    assert f"coronal, y = {pos['position_mm']:.1f} mm, tilted {pos['tilt_deg']:.1f} deg" in text
    assert "mni152" in text and f"confidence {res.confidence:.2f}" in text and "in-plane rotation" in text
    assert "normal (" in text and "qc-coronal" in text
    moved = qc.plane_position(_shifted(res, (0.0, 20.0, 0.0)), sim.section.mask)
    assert moved["position_mm"] == pytest.approx(pos["position_mm"] + 20.0, abs=1e-6)


def test_plot_qc_writes_png_and_needs_the_section_when_loaded(anchored, tmp_path):
    from PIL import Image

    sim, res = anchored
    out = tmp_path / "qc.png"
    fig = res.plot_qc(out)
    assert len(fig.axes) >= 6
    assert "(2)" in fig.axes[1].get_title() and "(4)" in fig.axes[3].get_title()
    im = Image.open(out)
    assert im.format == "PNG" and im.size[0] > 800 and im.size[1] > 500
    assert not list(tmp_path.glob(".qc.png.*"))  # atomic: no temporary left
    # the checkerboard panel of a wrong placement looks different from the right one
    a = np.asarray(fig.axes[2].images[0].get_array(), float)
    fig_bad = qc.plot_qc(_shifted(res))
    b = np.asarray(fig_bad.axes[2].images[0].get_array(), float)
    assert np.abs(a - b).mean() > 0.05

    res.save(tmp_path / "r.json")
    loaded = sa.AnchoringResult.load(tmp_path / "r.json")
    assert loaded.image is None
    with pytest.raises(InvalidSectionError, match="pass the anchored section"):
        loaded.plot_qc()
    with pytest.raises(InvalidSectionError, match="anchored on a"):
        loaded.plot_qc(section=np.ones((10, 10)))
    fig2 = loaded.plot_qc(tmp_path / "qc2.png", section=sim.section)
    np.testing.assert_allclose(fig2.axes[1].images[0].get_array(), fig.axes[1].images[0].get_array())
    other = copy.copy(loaded)
    other.space = "colin27"
    with pytest.raises(SpaceUnavailableError, match="reference_volume="):
        qc.reference_on_plane(other)
    # another space with its template given: the figure is drawn; no offline maps there, panel 5 says so
    tpl = sa.templates.volume_path("mni152")
    p = qc.qc_panels(other, section=sim.section, reference_volume=tpl)
    np.testing.assert_allclose(p.reference, qc.reference_on_plane(res))
    if p.labels is None:
        assert "unavailable" in p.label_source


def test_region_outlines_panel(anchored):
    """Panel (5): labels from adapters.regions.section_region_labels, inside the tissue, largest labelled."""
    pytest.importorskip("siibra_anchor.adapters.regions", reason="adapters.regions (feat-siibra) not merged yet")
    sim, res = anchored
    p = qc.qc_panels(res, parcellation="fsl-juelich")  # the bundled maps: offline
    assert p.labels is not None and p.labels.shape == p.section.shape
    assert p.labels.any() and not p.labels[~p.mask].any()
    present = set(np.unique(p.labels[p.labels > 0]).tolist())
    assert present <= set(p.names)
    top = qc.largest_regions(p.labels, 3)
    assert len(top) >= 1
    lab, count, r, c = top[0]
    assert p.labels[int(r), int(c)] == lab and count == int((p.labels == lab).sum())
    # a coronal section 10 mm behind the centre of the brain meets cortex: some region name says so
    assert any(isinstance(n, str) and n for n in p.names.values())


def test_cli_anchor_writes_qc_figure(tmp_path, mni_reference):
    from PIL import Image

    from siibra_anchor.cli import main

    sim = simulate_section(volume="mni152-2009a-t1", orientation="axial", tilt_deg=4.0, spacing_mm=1.0, seed=4)
    png = tmp_path / "s.png"
    Image.fromarray((np.clip(sim.section.image, 0, 1) * 255).astype(np.uint8)).save(png)
    out = tmp_path / "fig" / "qc.png"
    rc = main(["--quiet", "anchor", str(png), "--spacing-mm", "1.0", "--n-patches", "80", "--qc", str(out)])
    assert rc == 0
    assert Image.open(out).size[0] > 800

"""Large images: lazy, tile-by-tile reading of OME-Zarr and TIFF in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zarr

import siibra_anchor as sa
from siibra_anchor.errors import FileFormatError, SpacingError
from siibra_anchor.evaluation.scaling import _reduced_true_affine, _simulated, _to_u8, write_upsampled_zarr
from siibra_anchor.evaluation.simulate import section_error
from siibra_anchor.io.formats import (
    block_reduce,
    open_image_source,
    read_section_image,
    write_ome_zarr,
    write_pyramidal_tiff,
)


def _block_mean(a: np.ndarray, fr: int, fc: int) -> np.ndarray:
    h, w = a.shape[0] // fr, a.shape[1] // fc
    return a[: h * fr, : w * fc].astype(float).reshape((h, fr, w, fc) + a.shape[2:]).mean(axis=(1, 3))


def _expected_upsampled_mean(low: np.ndarray, u: int, f: int, n: int) -> np.ndarray:
    """Block means of the nearest-upsampled image, computed from ``low`` without building it."""

    def weights(m: int) -> np.ndarray:
        w = np.zeros((n // f, m))
        r = np.arange((n // f) * f)
        np.add.at(w, (r // f, r // u), 1.0 / f)
        return w

    return weights(low.shape[0]) @ low.astype(float) @ weights(low.shape[1]).T


@pytest.mark.parametrize("window", [None, (5, 203, 17, 260), (125, 134, 60, 300)])
def test_block_reduce_matches_numpy_on_windows(tmp_path, window):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 65535, (300, 310), dtype=np.uint16)
    p = write_ome_zarr(tmp_path / "w.zarr", img, 0.01, levels=1, chunks=64)
    src = open_image_source(p)
    assert src.full_shape == (300, 310) and src.channels == 0 and src.spacing_mm == pytest.approx((0.01, 0.01))
    r0, r1, c0, c1 = window or (0, 300, 0, 310)
    with src.open_level(0) as rd:
        got = block_reduce(rd, (3, 5), tile_px=100, window=window, dtype=np.float64)
    np.testing.assert_allclose(got, _block_mean(img[r0:r1, c0:c1], 3, 5), rtol=0, atol=1e-9)


def test_large_single_level_ome_zarr_is_read_and_anchored_in_bounded_memory(tmp_path, mni_reference):
    """16k x 16k px uint8 (256 MiB) written chunk by chunk; reading it reduced must trace far less."""
    sim = _simulated(1, 1)[0]
    low = _to_u8(sim.section.image) * sim.section.mask
    n = 16_384
    path, s0, u = write_upsampled_zarr(tmp_path / "big.ome.zarr", low, 0.4, n, chunk=2048)
    assert zarr.open_array(str(path / "0"), mode="r").shape == (n, n)
    tracemalloc.start()
    try:
        sec = sa.Section.from_file(path, target_spacing_mm=0.375, reduce=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20, f"peak traced memory {peak / 2**20:.0f} MiB while reading a 256 MiB image"
    f = int(0.375 // s0)
    assert sec.downsample == (f, f) and sec.shape == (n // f, n // f)
    assert sec.spacing_mm == pytest.approx((f * s0, f * s0))
    expected = _expected_upsampled_mean(low, u, f, n)
    assert np.abs(sec.image.astype(float) - expected).max() <= 0.5 + 1e-6
    assert sec.full_resolution.full_shape == (n, n)

    res = sa.anchor(sec, reference=mni_reference, seed=0)
    err = section_error(res.affine, _reduced_true_affine(sim.true_affine, u, sec.downsample), sec.mask)
    assert err < 5.0, f"anchoring error {err:.2f} mm"
    assert res.section["shape"] == list(sec.shape)


@pytest.mark.parametrize("levels", [1, 3])
def test_tiled_tiff_flat_or_pyramidal_is_read_tile_by_tile(tmp_path, levels):
    rng = np.random.default_rng(2)
    img = np.repeat(np.repeat(rng.integers(0, 255, (256, 256), dtype=np.uint8), 16, 0), 16, 1)  # 4096^2
    p = write_pyramidal_tiff(tmp_path / "t.ome.tif", img, 0.005, levels=levels, tile=256)
    tracemalloc.start()
    try:
        got, sp, meta = read_section_image(p, target_spacing_mm=0.1, reduce=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < img.nbytes / 2, f"traced {peak / 2**20:.1f} MiB reading a {img.nbytes / 2**20:.0f} MiB image"
    assert sp == pytest.approx((0.1, 0.1)) and got.shape == (204, 204)
    assert meta["level"] == levels - 1 and meta["downsample"] == (20.0, 20.0)
    assert meta["reduced"] == (20 // 2 ** (levels - 1),) * 2
    assert np.abs(got - _block_mean(img, 20, 20)).max() <= 1.0  # levels are rounded block means


def test_rgb_zarr_and_spacing_rules(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (240, 330, 3), dtype=np.uint8)
    p = write_ome_zarr(tmp_path / "rgb.zarr", rgb, 0.02, levels=2, chunks=64, zarr_format=3)
    got, sp, meta = read_section_image(p, target_spacing_mm=0.13, reduce=True)
    # level 1 (0.04 mm) reduced by 3 -> 0.12 mm
    assert meta["level"] == 1 and sp == pytest.approx((0.12, 0.12)) and got.shape == (40, 55, 3)
    np.testing.assert_allclose(got, _block_mean(rgb, 6, 6), atol=1.0)
    # without reduce the same call returns the level as before
    lvl, sp1, _ = read_section_image(p, target_spacing_mm=0.13)
    assert lvl.shape == (120, 165, 3) and sp1 == pytest.approx((0.04, 0.04))
    q = tmp_path / "nounit.zarr"
    g = zarr.open_group(str(q), mode="w")
    g.create_array("0", shape=(64, 64), dtype=np.uint8, chunks=(32, 32))[...] = 7
    g.attrs["multiscales"] = [{"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "0"}]}]
    with pytest.raises(SpacingError, match="spacing_mm"):
        read_section_image(q, target_spacing_mm=1.0, reduce=True)


def test_full_resolution_handle(tmp_path):
    from PIL import Image

    img = np.zeros((200, 220), np.uint8)
    img[40:160, 50:170] = 200
    p = write_pyramidal_tiff(tmp_path / "s.ome.tif", img, 0.1, levels=2, tile=64)
    s = sa.Section.from_file(p, target_spacing_mm=0.45, reduce=True)
    assert s.downsample == (4.0, 4.0) and s.shape == (50, 55) and s.spacing_mm == pytest.approx((0.4, 0.4))
    src = s.full_resolution
    assert src.full_shape == (200, 220) and src.format == "tiff" and len(src.shapes) == 2
    with src.open_level(0) as rd:
        np.testing.assert_array_equal(rd.read(30, 50, 40, 60), img[30:50, 40:60])
    Image.fromarray(img).save(tmp_path / "s.png")
    s2 = sa.Section.from_file(tmp_path / "s.png", spacing_mm=0.1)
    assert s2.full_resolution is None and s2.downsample == (1.0, 1.0)
    with pytest.raises(FileFormatError, match="window by window"):
        open_image_source(tmp_path / "s.png")


def test_scaling_report_renders_tables_and_curves(tmp_path):
    """The committed full run (docs/scaling.json) renders to Markdown and a PNG, as the CLI does."""
    import json
    from pathlib import Path

    from siibra_anchor.evaluation.scaling import format_markdown, format_table, measure, plot_scaling

    rep = json.loads((Path(__file__).parents[1] / "docs" / "scaling.json").read_text())
    png = plot_scaling(rep, tmp_path / "s.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = format_markdown(rep, png_name=png.name)
    assert (
        sum(line.startswith("|---:") for line in md.splitlines()) == 4
        and "recall@8" in md
        and "![scaling curves](s.png)" in md
    )
    assert "| 8 |" in format_table(rep)
    # regenerating the committed doc keeps its hand-written part, and only that
    from siibra_anchor.evaluation.scaling import HAND_WRITTEN_MARK, with_hand_written

    doc = Path(__file__).parents[1] / "docs" / "scaling.md"
    committed = doc.read_text()
    assert HAND_WRITTEN_MARK in committed
    merged = with_hand_written(md, doc)
    assert merged.startswith(md.rstrip("\n")) and merged.endswith(committed[committed.index(HAND_WRITTEN_MARK) :])
    assert "## A 100k x 100k px section" in merged and merged.count("# Scaling: time and memory") == 1
    plain = tmp_path / "plain.md"
    plain.write_text("# old generated report only\n")
    assert with_hand_written(md, plain) == md and with_hand_written(md, tmp_path / "missing.md") == md
    _, m = measure(lambda: np.ones(32 * 2**20 // 8).sum())  # 32 MiB allocated and freed inside
    assert m["peak_rss_mib"] >= m["rss_before_mib"] and m["time_s"] > 0

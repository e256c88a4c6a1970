"""Section file readers and writers on real files written to tmp_path (PNG, JPEG, TIFF, NIfTI, OME-Zarr)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from siibra_anchor.errors import (
    AnchorError,
    CorruptFileError,
    FileFormatError,
    InvalidSectionError,
    SectionFileNotFoundError,
    SpacingError,
)
from siibra_anchor.io.formats import (
    detect_format,
    read_section_image,
    write_ome_zarr,
    write_pyramidal_tiff,
)
from siibra_anchor.templates import load_volume


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    """(193, 229) uint8 axial slice of the MNI152 2009c T1 template (bright brain on black)."""
    data, _ = load_volume("mni152")
    s = np.asarray(data[:, :, 90], np.float32)
    return np.rint(255 * s / s.max()).astype(np.uint8)


@pytest.fixture(scope="module")
def brain_rgb(brain: np.ndarray) -> np.ndarray:
    """(193, 229, 3) uint8 purple-stained version (dark purple tissue on white glass)."""
    d = brain.astype(np.float32)[..., None] / 255.0
    white, purple = np.array([245.0, 242.0, 248.0]), np.array([110.0, 50.0, 150.0])
    return np.rint(white - d * (white - purple)).astype(np.uint8)


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# -- PNG / JPEG -----------------------------------------------------------------------------------------
def test_png_round_trip_with_given_spacing(tmp_path, brain):
    p = tmp_path / "s0001.png"
    Image.fromarray(brain).save(p)
    img, spacing, meta = read_section_image(p, spacing_mm=(0.5, 0.25))
    np.testing.assert_array_equal(img, brain)
    assert spacing == (0.5, 0.25)
    assert meta["format"] == "png" and meta["name"] == "s0001" and meta["spacing_source"] == "given"


def test_png_phys_chunk_gives_spacing(tmp_path, brain_rgb):
    p = tmp_path / "rgb.png"
    Image.fromarray(brain_rgb).save(p, dpi=(25.4 / 0.02, 25.4 / 0.02))  # pHYs: 50000 px per metre
    img, spacing, meta = read_section_image(p)
    np.testing.assert_array_equal(img, brain_rgb)
    assert spacing == pytest.approx((0.02, 0.02), rel=1e-9)
    assert meta["spacing_source"] == "png-pHYs"
    # a given spacing overrides the file's
    assert read_section_image(p, spacing_mm=0.1)[1] == (0.1, 0.1)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_missing_spacing_raises_spacing_error(tmp_path, brain, suffix):
    p = tmp_path / f"s{suffix}"
    Image.fromarray(brain).save(p)
    with pytest.raises(SpacingError, match="spacing_mm"):
        read_section_image(p)


def test_png_screen_dpi_is_not_a_pixel_size(tmp_path, brain):
    p = tmp_path / "screen.png"
    Image.fromarray(brain).save(p, dpi=(72, 72))
    with pytest.raises(SpacingError, match="spacing_mm"):
        read_section_image(p)


def test_jpeg_round_trip(tmp_path, brain_rgb):
    p = tmp_path / "s.jpeg"
    Image.fromarray(brain_rgb).save(p, quality=95)
    img, spacing, meta = read_section_image(p, spacing_mm=0.02)
    assert img.shape == brain_rgb.shape and img.dtype == np.uint8
    assert np.abs(img.astype(float) - brain_rgb).mean() < 3.0
    assert spacing == (0.02, 0.02) and meta["format"] == "jpeg"


@pytest.mark.parametrize(
    ("mode", "shape"),
    [("P", (193, 229, 3)), ("LA", (193, 229)), ("I;16", (193, 229)), ("1", (193, 229))],
)
def test_png_modes_become_gray_or_rgb(tmp_path, brain, mode, shape):
    p = tmp_path / "m.png"
    base = Image.fromarray(brain)
    im = base.convert("RGB").convert("P") if mode == "P" else base.convert(mode)
    im.save(p)
    img, _, _ = read_section_image(p, spacing_mm=0.1)
    assert img.shape == shape
    assert img.std() > 0


# -- TIFF -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [((50.0, 40.0), "CENTIMETER", (0.25, 0.2)), ((254.0, 127.0), "INCH", (0.2, 0.1))],
)
def test_tiff_resolution_tags(tmp_path, brain, resolution, unit, expected):
    p = tmp_path / "r.tif"
    tifffile.imwrite(p, brain, resolution=resolution, resolutionunit=unit)
    img, spacing, meta = read_section_image(p)
    np.testing.assert_array_equal(img, brain)
    assert spacing == pytest.approx(expected)
    assert meta["spacing_source"] == "tiff-resolution"


def test_bigtiff_and_imagej_unit(tmp_path, brain):
    p = tmp_path / "big.tif"
    tifffile.imwrite(p, brain, bigtiff=True, resolution=(100.0, 100.0), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(p) as tf:
        assert tf.is_bigtiff
    assert read_section_image(p)[1] == pytest.approx((0.1, 0.1))
    q = tmp_path / "ij.tif"
    tifffile.imwrite(q, brain, imagej=True, resolution=(1 / 20.0, 1 / 20.0), metadata={"unit": "um"})
    img, spacing, meta = read_section_image(q)
    np.testing.assert_array_equal(img, brain)
    assert spacing == pytest.approx((0.02, 0.02)) and meta["spacing_source"] == "imagej"


def test_tiff_without_resolution_needs_spacing(tmp_path, brain):
    p = tmp_path / "plain.tiff"
    tifffile.imwrite(p, brain)
    with pytest.raises(SpacingError, match="spacing_mm"):
        read_section_image(p)
    assert read_section_image(p, spacing_mm=0.3)[1] == (0.3, 0.3)


@pytest.mark.parametrize(
    ("target", "level", "shape", "spacing"),
    [
        (None, 0, (193, 229), (0.02, 0.025)),
        (0.02, 0, (193, 229), (0.02, 0.025)),  # level 0 has a 0.025 axis: above 0.02, still the finest
        (0.03, 0, (193, 229), (0.02, 0.025)),
        (0.05, 1, (96, 114), (0.04, 0.05)),
        (0.099, 1, (96, 114), (0.04, 0.05)),
        (0.1, 2, (48, 57), (0.08, 0.1)),
        (5.0, 2, (48, 57), (0.08, 0.1)),
    ],
)
def test_pyramidal_tiff_reads_the_coarsest_sufficient_level(tmp_path, brain, target, level, shape, spacing):
    p = write_pyramidal_tiff(tmp_path / "pyr.ome.tif", brain, (0.02, 0.025), levels=3)
    img, sp, meta = read_section_image(p, target_spacing_mm=target)
    assert img.shape == shape and img.dtype == np.uint8
    assert sp == pytest.approx(spacing)
    assert meta["level"] == level and meta["n_levels"] == 3 and meta["full_shape"] == (193, 229)
    assert meta["spacing_source"] == "ome-xml"
    if level == 0:
        np.testing.assert_array_equal(img, brain)
    else:  # block mean of the level above: compare with a plain 2^level block average
        f = 2**level
        ref = brain[: shape[0] * f, : shape[1] * f].astype(float).reshape(shape[0], f, shape[1], f).mean((1, 3))
        assert np.abs(img - ref).max() <= 1.0


def test_pyramidal_tiff_does_not_decode_full_resolution(tmp_path):
    """Break the full-resolution tiles: a coarse level must still read, level 0 must fail typed."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (600, 700), dtype=np.uint8)
    p = write_pyramidal_tiff(tmp_path / "big.ome.tif", image, 0.01, levels=3, tile=256)
    with tifffile.TiffFile(p) as tf:
        page = tf.series[0].levels[0].pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    raw = bytearray(p.read_bytes())
    for o, c in zip(offsets, counts, strict=True):
        raw[o : o + c] = b"\xff" * c
    p.write_bytes(bytes(raw))
    img, spacing, meta = read_section_image(p, target_spacing_mm=0.04)
    assert img.shape == (150, 175) and spacing == pytest.approx((0.04, 0.04)) and meta["level"] == 2
    with pytest.raises(CorruptFileError, match="big.ome.tif"):
        read_section_image(p)


def test_pyramidal_tiff_rgb_and_given_spacing_scales_levels(tmp_path, brain_rgb):
    p = write_pyramidal_tiff(tmp_path / "rgb.ome.tiff", brain_rgb, 0.01, levels=2)
    img, sp, meta = read_section_image(p)
    np.testing.assert_array_equal(img, brain_rgb)
    assert sp == pytest.approx((0.01, 0.01)) and meta["name"] == "rgb"
    # spacing_mm is the full-resolution spacing; the level's follows from the pyramid factor
    img, sp, meta = read_section_image(p, spacing_mm=0.5, target_spacing_mm=1.0)
    assert img.shape == (96, 114, 3) and sp == (1.0, 1.0) and meta["spacing_source"] == "given"


def test_tiff_stack_is_not_a_section(tmp_path, brain):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.stack([brain] * 5), metadata={"axes": "ZYX"}, resolution=(10.0, 10.0), resolutionunit=3)
    with pytest.raises(InvalidSectionError, match="slice"):
        read_section_image(p)


# -- NIfTI ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nifti_single_slice_in_any_axis(tmp_path, brain, axis):
    zooms = [0.5, 0.7, 0.9]
    vol = np.expand_dims(brain.astype(np.float32), axis)
    aff = np.diag(zooms + [1.0])
    p = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), p)
    img, spacing, meta = read_section_image(p)
    np.testing.assert_array_equal(img, brain)
    inplane = [z for i, z in enumerate(zooms) if i != axis]
    assert spacing == pytest.approx(tuple(inplane))
    assert meta["slice_axis"] == axis and meta["name"] == "slice"
    np.testing.assert_allclose(meta["affine"], aff)


def test_nifti_2d_and_micron_units(tmp_path, brain):
    img2d = nib.Nifti1Image(brain.astype(np.int16), np.diag([20.0, 25.0, 1.0, 1.0]))
    img2d.header.set_xyzt_units(xyz="micron")
    p = tmp_path / "s.nii"
    nib.save(img2d, p)
    img, spacing, _ = read_section_image(p)
    np.testing.assert_array_equal(img, brain)
    assert spacing == pytest.approx((0.02, 0.025))


def test_nifti_volume_is_refused(tmp_path):
    data, aff = load_volume("mni152")
    p = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data[80:100, 90:120, 60:70]), aff), p)
    with pytest.raises(InvalidSectionError, match="cut one slice"):
        read_section_image(p)


# -- OME-Zarr -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_round_trip_and_levels(tmp_path, brain, brain_rgb, zarr_format):
    p = write_ome_zarr(tmp_path / "s.ome.zarr", brain, (0.02, 0.025), levels=3, zarr_format=zarr_format)
    marker = "zarr.json" if zarr_format == 3 else ".zattrs"
    assert (p / marker).is_file()
    assert detect_format(p) == "ome-zarr"
    img, sp, meta = read_section_image(p)
    np.testing.assert_array_equal(img, brain)
    assert sp == pytest.approx((0.02, 0.025)) and meta["n_levels"] == 3 and meta["name"] == "s"
    img, sp, meta = read_section_image(p, target_spacing_mm=0.06)
    assert img.shape == (96, 114) and sp == pytest.approx((0.04, 0.05)) and meta["level"] == 1
    img, sp, meta = read_section_image(p, target_spacing_mm=0.2)
    assert img.shape == (48, 57) and sp == pytest.approx((0.08, 0.1)) and meta["level"] == 2

    q = write_ome_zarr(tmp_path / "rgb.zarr", brain_rgb, 0.01, levels=2, zarr_format=zarr_format)
    img, sp, meta = read_section_image(q)
    np.testing.assert_array_equal(img, brain_rgb)
    img, sp, meta = read_section_image(q, target_spacing_mm=0.02)
    assert img.shape == (96, 114, 3) and sp == pytest.approx((0.02, 0.02))


def test_ome_zarr_written_by_another_tool(tmp_path, brain):
    """NGFF 0.4 with t, c, z singleton axes, millimetre units and a multiscale-level scale."""
    root = zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=2)
    full = brain[None, None, None]
    half = brain[::2, ::2][None, None, None]
    for name, arr in (("a", full), ("b", half)):
        root.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=(1, 1, 1, 64, 64))[...] = arr
    axes = [
        {"name": "t", "type": "time"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "millimeter"},
        {"name": "y", "type": "space", "unit": "millimeter"},
        {"name": "x", "type": "space", "unit": "millimeter"},
    ]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [
                {"path": "a", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 0.1, 0.1]}]},
                {"path": "b", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 0.2, 0.2]}]},
            ],
            "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 2.0, 2.0]}],
        }
    ]
    img, sp, meta = read_section_image(tmp_path / "other.zarr")
    np.testing.assert_array_equal(img, brain)
    assert sp == pytest.approx((0.2, 0.2)) and meta["spacing_source"] == "ngff-scale"
    img, sp, meta = read_section_image(tmp_path / "other.zarr", target_spacing_mm=0.5)
    np.testing.assert_array_equal(img, brain[::2, ::2])
    assert sp == pytest.approx((0.4, 0.4)) and meta["level"] == 1


def test_ome_zarr_without_units_needs_spacing(tmp_path, brain):
    root = zarr.open_group(str(tmp_path / "nounit.zarr"), mode="w", zarr_format=3)
    root.create_array("0", shape=brain.shape, dtype=brain.dtype, chunks=(64, 64))[...] = brain
    root.create_array("1", shape=(96, 114), dtype=brain.dtype, chunks=(64, 64))[...] = brain[:192:2, :228:2]
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]},
                    {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2, 2]}]},
                ],
            }
        ],
    }
    with pytest.raises(SpacingError, match="spacing_mm"):
        read_section_image(tmp_path / "nounit.zarr")
    img, sp, meta = read_section_image(tmp_path / "nounit.zarr", spacing_mm=0.3, target_spacing_mm=0.6)
    assert img.shape == (96, 114) and sp == pytest.approx((0.6, 0.6))


def test_ome_zarr_with_many_channels_is_refused(tmp_path, brain):
    root = zarr.open_group(str(tmp_path / "multi.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=(5,) + brain.shape, dtype=brain.dtype)[...] = np.stack([brain] * 5)
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 10, 10]}]}],
        }
    ]
    with pytest.raises(InvalidSectionError, match="C=5"):
        read_section_image(tmp_path / "multi.zarr")


def test_ome_zarr_overwrite_is_atomic(tmp_path, brain):
    p = tmp_path / "s.zarr"
    write_ome_zarr(p, brain, 0.1, levels=2)
    write_ome_zarr(p, brain[::-1], 0.2, levels=1, zarr_format=3)
    img, sp, meta = read_section_image(p)
    np.testing.assert_array_equal(img, brain[::-1])
    assert sp == (0.2, 0.2) and meta["n_levels"] == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.zarr"]  # no temp or backup left


def test_failed_write_leaves_nothing(tmp_path, brain):
    with pytest.raises(Exception, match="(?i)no-such-codec"):  # noqa: B017 - tifffile's own error
        write_pyramidal_tiff(tmp_path / "x.ome.tif", brain, 0.1, compression="no-such-codec")
    assert list(tmp_path.iterdir()) == []


# -- errors ---------------------------------------------------------------------------------------------
def _png(p, img):
    Image.fromarray(img).save(p)


def _jpeg(p, img):
    Image.fromarray(img).save(p, quality=90)


def _tiff(p, img):
    tifffile.imwrite(p, img)


def _tiff_zlib(p, img):
    tifffile.imwrite(p, img, compression="zlib")


def _pyr(p, img):
    write_pyramidal_tiff(p, img, 0.1, levels=2)


def _nii(p, img):
    nib.save(nib.Nifti1Image(img.astype(np.float32)[..., None], np.eye(4)), p)


@pytest.mark.parametrize(
    ("name", "writer", "fraction"),
    [
        ("t.png", _png, 0.5),
        ("t.jpg", _jpeg, 0.5),
        ("t.tif", _tiff, 0.5),
        ("t.tif", _tiff_zlib, 0.9),
        ("t.ome.tif", _pyr, 0.6),
        ("t.nii", _nii, 0.5),
        ("t.nii.gz", _nii, 0.5),
        ("t.nii.gz", _nii, 0.05),
    ],
)
def test_truncated_files_raise_corrupt_file_error(tmp_path, brain, name, writer, fraction):
    p = tmp_path / name
    writer(p, brain)
    _truncate(p, fraction)
    with pytest.raises(CorruptFileError, match=name.replace(".", r"\.")) as info:
        read_section_image(p, spacing_mm=0.1)
    assert isinstance(info.value, AnchorError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["g.png", "g.jpg", "g.tif", "g.nii", "g.nii.gz"])
def test_garbage_files_raise_corrupt_file_error(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptFileError, match=r"g\."):
        read_section_image(p, spacing_mm=0.1)


def test_empty_file_raises_corrupt_file_error(tmp_path):
    p = tmp_path / "empty.png"
    p.touch()
    with pytest.raises(CorruptFileError, match="empty"):
        read_section_image(p, spacing_mm=0.1)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("damage", ["chunk", "metadata"])
def test_damaged_ome_zarr_raises_corrupt_file_error(tmp_path, brain, zarr_format, damage):
    p = write_ome_zarr(tmp_path / "d.zarr", brain, 0.1, levels=1, zarr_format=zarr_format)
    meta_names = {".zattrs", ".zarray", ".zgroup", "zarr.json"}
    if damage == "chunk":
        chunks = [f for f in (p / "0").rglob("*") if f.is_file() and f.name not in meta_names]
        assert chunks
        for f in chunks:
            f.write_bytes(b"not a compressed chunk")
    else:
        (p / ("zarr.json" if zarr_format == 3 else ".zattrs")).write_text("{truncated")
    with pytest.raises(CorruptFileError, match="d.zarr"):
        read_section_image(p)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(SectionFileNotFoundError, match="nope.tif") as info:
        read_section_image(tmp_path / "nope.tif", spacing_mm=0.1)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, AnchorError)


@pytest.mark.parametrize("name", ["s.bmp", "s.txt", "noext"])
def test_unsupported_extension(tmp_path, brain, name):
    p = tmp_path / name
    Image.fromarray(brain).save(p, format="BMP")
    with pytest.raises(FileFormatError, match="unsupported"):
        read_section_image(p, spacing_mm=0.1)


def test_zarr_path_that_is_not_a_store(tmp_path):
    (tmp_path / "zip.zarr").write_bytes(b"PK\x03\x04")
    with pytest.raises(FileFormatError, match="directory"):
        read_section_image(tmp_path / "zip.zarr", spacing_mm=0.1)
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(FileFormatError, match="zarr metadata"):
        read_section_image(tmp_path / "plain_dir", spacing_mm=0.1)
    g = zarr.open_group(str(tmp_path / "bare.zarr"), mode="w", zarr_format=2)
    g.create_array("0", shape=(4, 4), dtype="u1")
    with pytest.raises(FileFormatError, match="multiscales"):
        read_section_image(tmp_path / "bare.zarr", spacing_mm=0.1)


def test_extension_that_lies_about_content(tmp_path, brain):
    p = tmp_path / "really_png.tif"
    Image.fromarray(brain).save(p, format="PNG")
    with pytest.raises(FileFormatError, match="png"):
        read_section_image(p, spacing_mm=0.1)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), "fine"])
def test_bad_target_spacing(tmp_path, brain, bad):
    p = tmp_path / "s.png"
    Image.fromarray(brain).save(p)
    with pytest.raises(SpacingError, match="target_spacing_mm"):
        read_section_image(p, spacing_mm=0.1, target_spacing_mm=bad)


def test_implausible_spacing_in_file(tmp_path, brain):
    p = tmp_path / "m.tif"  # 1 px per metre: 1000 mm per pixel, surely a unit mistake
    tifffile.imwrite(p, brain, resolution=(0.01, 0.01), resolutionunit="CENTIMETER")
    with pytest.raises(SpacingError, match="plausible"):
        read_section_image(p)


def test_bare_zarr_array_with_spacing(tmp_path, brain):
    arr = zarr.open_array(str(tmp_path / "arr.zarr"), mode="w", shape=brain.shape, dtype=brain.dtype, zarr_format=2)
    arr[...] = brain
    img, sp, _ = read_section_image(tmp_path / "arr.zarr", spacing_mm=0.2)
    np.testing.assert_array_equal(img, brain)
    assert sp == (0.2, 0.2)
    assert os.path.isdir(tmp_path / "arr.zarr")


def test_atomic_writes_get_the_users_usual_mode(tmp_path):
    import os
    import stat

    from siibra_anchor.cache import atomic_dir, atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert (tmp_path / "a.txt").read_text() == "x" and (tmp_path / "d" / "f").read_text() == "y"

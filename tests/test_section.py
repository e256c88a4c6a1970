"""The Section: validation with typed errors, files, tissue mask, resampling to a working grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from siibra_anchor.errors import (
    AnchorError,
    EmptyMaskError,
    InvalidSectionError,
    SectionFileNotFoundError,
    SpacingError,
)
from siibra_anchor.io.formats import write_ome_zarr, write_pyramidal_tiff
from siibra_anchor.section import Section
from siibra_anchor.templates import load_volume


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    """(193, 229) float32 axial slice of the MNI152 2009c T1 template, 1 mm pixels."""
    data, _ = load_volume("mni152")
    return np.array(data[:, :, 90], np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


# -- validation -----------------------------------------------------------------------------------------
def test_valid_section(brain):
    s = Section(brain, spacing_mm=1.0, modality="t1", name="ax90")
    assert s.shape == (193, 229) and s.spacing_mm == (1.0, 1.0)
    assert s.extent_mm == (193.0, 229.0)
    assert _dice(s.mask, brain > 0) > 0.95
    assert "ax90" in repr(s)


def test_nan_pixels(brain):
    img = brain.copy()
    img[5:7, 5:8] = np.nan
    with pytest.raises(InvalidSectionError, match="6 NaN"):
        Section(img, spacing_mm=1.0)


def test_constant_image():
    with pytest.raises(InvalidSectionError, match="constant"):
        Section(np.full((20, 30), 7.0), spacing_mm=1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_constant_colour_image_is_refused_at_any_size_and_alignment(dtype):
    """A constant RGB(A) image gives a constant luminance, whatever the array's size and its offset in memory
    (a BLAS matrix product rounded some pixels differently from others on some machines: a constant RGB image
    was accepted, then refused later by the tissue mask)."""
    from siibra_anchor.section import to_gray

    for h, w, c in ((50, 50, 3), (37, 53, 4), (64, 64, 3), (3, 129, 3)):
        for value in (7, 200, 1):
            buf = np.full(h * w * c + 1, value, dtype)
            for img in (buf[:-1].reshape(h, w, c), buf[1:].reshape(h, w, c)):  # two offsets in memory
                g = to_gray(img)
                assert g.dtype == np.float32 and float(g.max()) == float(g.min())
                with pytest.raises(InvalidSectionError, match="constant"):
                    Section(img, spacing_mm=1.0)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((50,), "2D"),
        ((4, 20, 30, 1), "2D"),
        ((20, 30, 2), "C in 1, 3, 4"),
        ((3, 20, 30), "channels-first"),
        ((1, 30), "small"),
    ],
)
def test_wrong_shape(shape, match):
    img = np.random.default_rng(0).random(shape)
    with pytest.raises(InvalidSectionError, match=match):
        Section(img, spacing_mm=1.0)


def test_non_numeric_and_complex():
    with pytest.raises(InvalidSectionError, match="numeric"):
        Section(np.array([["a", "b"], ["c", "d"]]), spacing_mm=1.0)
    with pytest.raises(InvalidSectionError, match="real"):
        Section(np.ones((4, 4)) * 1j + np.eye(4), spacing_mm=1.0)


@pytest.mark.parametrize(
    ("spacing", "match"),
    [
        (None, "missing"),
        (0.0, "positive"),
        (-0.5, "positive"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (50.0, "plausible"),
        (1e-6, "plausible"),
        ((0.1, 0.2, 0.3), r"\(row, col\)"),
        ("fine", "number"),
    ],
)
def test_bad_spacing(brain, spacing, match):
    with pytest.raises(SpacingError, match=match) as info:
        Section(brain, spacing_mm=spacing)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AnchorError)


def test_masks(brain):
    with pytest.raises(EmptyMaskError, match="empty"):
        Section(brain, spacing_mm=1.0, mask=np.zeros(brain.shape, bool))
    with pytest.raises(EmptyMaskError, match="shape"):
        Section(brain, spacing_mm=1.0, mask=np.ones((10, 10), bool))
    noise = np.random.default_rng(0).normal(size=(80, 90))  # no structure: no tissue to find
    s = Section(noise, spacing_mm=1.0, name="noise")
    with pytest.raises(EmptyMaskError, match="noise"):
        _ = s.mask
    given = brain > 50
    np.testing.assert_array_equal(Section(brain, spacing_mm=1.0, mask=given).mask, given)


def test_rgb_section_mask_uses_colour(brain):
    x = brain / brain.max()
    glass, pink = np.array([0.8, 0.8, 0.8]), np.array([0.95, 0.65, 0.95])
    noisy = glass - x[..., None] * (glass - pink) + 0.05 * np.random.default_rng(2).standard_normal(x.shape + (3,))
    rgb = np.clip(np.rint(255 * noisy), 0, 255).astype(np.uint8)
    s = Section(rgb, spacing_mm=0.5, modality="nissl")
    assert s.gray.shape == brain.shape
    assert _dice(s.mask, brain > 0) > 0.95


# -- resampling -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spacing", "working", "centre"),
    [
        ((0.1, 0.1), 0.4, (121.0, 182.0)),
        ((0.1, 0.2), 0.4, (121.0, 182.0)),
        ((0.05, 0.05), 0.15, (90.5, 60.25)),
    ],
)
def test_at_spacing_maps_working_pixel_to_original(spacing, working, centre):
    """A bright blob at original (r, c) lands at working (r / fr, c / fc): linear, no offset."""
    rr, cc = np.mgrid[0:240, 0:300].astype(float)
    img = np.exp(-((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (2 * 4.0**2))
    s = Section(img, spacing_mm=spacing, mask=np.ones(img.shape, bool))
    out, mask, scale = s.at_spacing(working)
    fr, fc = working / spacing[0], working / spacing[1]
    np.testing.assert_allclose(scale, [fr, fc])
    assert out.shape == s.working_shape(working) == mask.shape
    assert out.shape == (int((240 - 1) // fr) + 1, int((300 - 1) // fc) + 1)
    w = np.clip(out - 0.05 * out.max(), 0, None)
    i, j = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    ci, cj = (w * i).sum() / w.sum(), (w * j).sum() / w.sum()
    assert ci * fr == pytest.approx(centre[0], abs=0.1 * fr)
    assert cj * fc == pytest.approx(centre[1], abs=0.1 * fc)


def test_at_spacing_single_pixel_dot():
    img = np.zeros((200, 160))
    img[120, 80] = 1.0
    s = Section(img, spacing_mm=0.1, mask=np.ones(img.shape, bool))
    out, _, scale = s.at_spacing(0.4)
    assert np.unravel_index(np.argmax(out), out.shape) == (30, 20)
    assert tuple(scale) == (4.0, 4.0)


def test_at_spacing_resamples_mask(brain):
    s = Section(brain, spacing_mm=1.0)
    img, mask, _ = s.at_spacing(2.0)
    assert img.shape == mask.shape == (97, 115)
    assert _dice(mask, brain[::2, ::2] > 0) > 0.9


# -- files ----------------------------------------------------------------------------------------------
def test_from_file_each_format(tmp_path, brain):
    u8 = np.rint(255 * brain / brain.max()).astype(np.uint8)
    Image.fromarray(u8).save(tmp_path / "s.png", dpi=(25.4 / 0.5, 25.4 / 0.5))
    tifffile.imwrite(tmp_path / "s.tif", u8, resolution=(20.0, 20.0), resolutionunit="CENTIMETER")
    nib.save(nib.Nifti1Image(brain[:, :, None], np.diag([0.5, 0.5, 1.0, 1.0])), tmp_path / "s.nii.gz")
    write_ome_zarr(tmp_path / "s.zarr", u8, 0.5, levels=2)
    for name in ("s.png", "s.tif", "s.nii.gz", "s.zarr"):
        s = Section.from_file(tmp_path / name, modality="t1")
        assert s.shape == (193, 229), name
        assert s.spacing_mm == pytest.approx((0.5, 0.5)), name
        assert s.name == "s" and s.modality == "t1"
        assert _dice(s.mask, brain > 0) > 0.95, name


def test_from_file_pyramid_level_and_overrides(tmp_path, brain):
    u8 = np.rint(255 * brain / brain.max()).astype(np.uint8)
    p = write_pyramidal_tiff(tmp_path / "pyr.ome.tif", u8, 0.25, levels=3)
    s = Section.from_file(p, target_spacing_mm=0.6, name="lvl")
    assert s.shape == (96, 114) and s.spacing_mm == pytest.approx((0.5, 0.5)) and s.name == "lvl"
    s = Section.from_file(p, spacing_mm=0.1)  # spacing_mm overrides the file
    assert s.shape == (193, 229) and s.spacing_mm == (0.1, 0.1)


def test_from_file_errors(tmp_path, brain):
    with pytest.raises(SectionFileNotFoundError):
        Section.from_file(tmp_path / "missing.png", spacing_mm=1.0)
    Image.fromarray(np.rint(brain).astype(np.uint8)).save(tmp_path / "nospacing.png")
    with pytest.raises(SpacingError, match="spacing_mm"):
        Section.from_file(tmp_path / "nospacing.png")

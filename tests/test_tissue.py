"""Tissue masks on real brain slices (MNI152 2009c T1) in the contrasts sections come in."""

from __future__ import annotations

import numpy as np
import pytest

from siibra_anchor.errors import InvalidSectionError
from siibra_anchor.section import to_gray
from siibra_anchor.templates import load_volume
from siibra_anchor.tissue import background_distance, tissue_mask

WHITE = np.array([0.96, 0.95, 0.97])
PURPLE = np.array([0.45, 0.20, 0.60])  # cresyl violet-ish


def _slice(kind: str) -> np.ndarray:
    """A brain slice scaled to [0, 1]; the brain-extracted template is exactly 0 outside the brain."""
    data, _ = load_volume("mni152")
    s = {
        "axial": data[:, :, 90],
        "coronal": data[:, 120, :],
        "sagittal": data[60, :, :],
        "low": data[:, :, 45],
    }[kind]
    return np.asarray(s, np.float64) / float(s.max())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _stain(x: np.ndarray, colour: np.ndarray, glass: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """(H, W, 3) uint8: glass colour where x=0, ``colour`` where x=1, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    rgb = glass - x[..., None] * (glass - colour) + noise * rng.standard_normal(x.shape + (3,))
    return np.clip(np.rint(255 * rgb), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["axial", "coronal", "sagittal", "low"])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_brain_slice_in_three_contrasts(kind, noise):
    x = _slice(kind)
    truth = x > 0
    rng = np.random.default_rng(7)
    bright_on_dark = x + noise * rng.standard_normal(x.shape)  # MRI, fluorescence
    dark_on_bright = 0.95 - 0.8 * x + noise * rng.standard_normal(x.shape)  # Nissl / brightfield
    rgb = _stain(x, PURPLE, WHITE, noise, seed=3)
    assert _dice(tissue_mask(bright_on_dark), truth) > 0.9
    assert _dice(tissue_mask(dark_on_bright), truth) > 0.9
    assert _dice(tissue_mask(to_gray(rgb), rgb=rgb), truth) > 0.9
    assert _dice(tissue_mask(to_gray(rgb)), truth) > 0.9


def test_colour_finds_a_stain_that_grey_barely_sees():
    """Pink tissue on grey glass with almost the same luminance: saturation carries the contrast."""
    x = _slice("axial")
    truth = x > 0
    rgb = _stain(x, np.array([0.95, 0.65, 0.95]), np.array([0.8, 0.8, 0.8]), noise=0.05, seed=1)
    gray = to_gray(rgb)
    assert abs(float(gray[truth].mean() - gray[~truth].mean())) < 0.06 * 255
    assert _dice(tissue_mask(gray, rgb=rgb), truth) > 0.95
    assert _dice(tissue_mask(gray, rgb=rgb), truth) > _dice(tissue_mask(gray), truth)


def test_uneven_illumination():
    x = _slice("axial")
    ramp = 0.15 * np.linspace(0.0, 1.0, x.shape[1])[None, :]
    img = 0.9 - 0.7 * x + ramp + 0.03 * np.random.default_rng(0).standard_normal(x.shape)
    assert _dice(tissue_mask(img), x > 0) > 0.9


def test_tissue_touching_the_border():
    x = _slice("axial")
    truth = x > 0
    rows = np.flatnonzero(truth.any(axis=1))
    crop = slice(rows[0] + 25, None)  # cut the section through the tissue at the top
    img = 0.95 - 0.8 * x[crop]
    m = tissue_mask(img)
    assert m[0].sum() > 20  # the cut edge stays tissue
    assert _dice(m, truth[crop]) > 0.9


def test_large_image_is_processed_at_reduced_resolution():
    x = _slice("axial")
    big = np.kron(x, np.ones((8, 8)))  # (1544, 1832): computed at <= 1024 px, upsampled nearest
    m = tissue_mask(big)
    assert m.shape == big.shape and m.dtype == bool
    assert _dice(m, big > 0) > 0.95
    small = tissue_mask(big, max_side=256)
    assert small.shape == big.shape and _dice(small, big > 0) > 0.9


def test_dust_is_dropped_and_holes_filled():
    img = np.full((200, 200), 0.9)
    img[40:160, 40:160] = 0.2  # tissue
    img[90:110, 90:110] = 0.9  # a tear inside the tissue: a hole, filled
    img[10:12, 180:182] = 0.1  # dust on the glass
    m = tissue_mask(img)
    assert m[40:160, 40:160].all()
    outside = np.ones_like(m)
    outside[39:161, 39:161] = False  # noise smoothing may add one pixel at the edge, no more
    assert not (m & outside).any()
    assert not m[10:12, 180:182].any()


def test_constant_and_invalid_input():
    assert not tissue_mask(np.full((32, 48), 3.0)).any()
    with pytest.raises(InvalidSectionError, match="2D"):
        tissue_mask(np.zeros((4, 4, 4)))
    with pytest.raises(InvalidSectionError, match="rgb"):
        tissue_mask(np.zeros((8, 8)), rgb=np.zeros((8, 9, 3)))


def test_background_distance_against_plain_formula():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.0, 1.0, (60, 80, 1)).astype(np.float32)
    img[:3], img[-3:], img[:, :3], img[:, -3:] = 0.25, 0.25, 0.25, 0.25  # uniform border frame
    d, noise = background_distance(img, smooth_px=0)
    lo, hi = np.percentile(img, [0.5, 99.5])
    expected = np.abs(img[..., 0] - 0.25) / (hi - lo)
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
    assert noise == 0.0


@pytest.mark.parametrize("polarity", ["bright", "dark"])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_tissue_that_fills_the_frame_is_all_tissue(polarity, noise):
    """A block cropped inside the brain: its border is tissue, so the whole image is (no EmptyMaskError)."""
    from siibra_anchor.section import Section
    from siibra_anchor.tissue import border_is_tissue

    x = _slice("axial")[60:130, 70:150]
    assert (x > 0).all()
    img = (x if polarity == "bright" else 0.95 - 0.8 * x) + noise * np.random.default_rng(1).standard_normal(x.shape)
    if noise == 0.0:
        assert border_is_tissue(img[..., None])
    assert tissue_mask(img).all()  # noisy: nothing stands out from a partly textured border either
    assert Section(img, spacing_mm=1.0).mask.all()


def test_blank_glass_and_a_framed_section_are_not_taken_for_frame_filling_tissue():
    from siibra_anchor.tissue import border_texture

    rng = np.random.default_rng(0)
    blank = 0.9 + 0.05 * rng.standard_normal((100, 100))
    assert border_texture(blank) < 0.1 and not tissue_mask(blank).any()
    x = _slice("axial")
    assert border_texture(x) == 0.0
    assert _dice(tissue_mask(x), x > 0) > 0.95  # as before: glass around the tissue is background

"""Simulated sections with exact ground truth: planes cut from a volume in a known pose.

Used by the demo, the tests and the benchmark. A simulated section is cut from a volume *other* than the
reference template (another MNI template, a grey-matter map, ...) so anchoring it is a real test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import EmptyMaskError, InvalidParameterError
from ..planes import AXIS_OF_PLANE, CANONICAL_PLANES, cut_plane, plane_affine, world_bbox
from ..reference import volume_brain_mask
from ..section import Section

__all__ = ["SimulatedSection", "simulate_section", "section_error"]


@dataclass
class SimulatedSection:
    """A section, its true (4, 4) affine (pixel -> mm, DESIGN.md convention) and how it was made."""

    section: Section
    true_affine: NDArray
    params: dict[str, Any] = field(default_factory=dict)


def _remap(img: NDArray, mask: NDArray, rng: np.random.Generator) -> NDArray:
    """A random smooth non-monotone intensity map of the tissue (background untouched)."""
    x = np.linspace(0, 1, 6)
    y = rng.random(6)
    v = np.interp(img[mask], x, y)
    out = img.copy()
    out[mask] = v
    return out


def _tear_mask(msk: NDArray, n: int, spacing_mm: float, rng: np.random.Generator) -> NDArray:
    """(H, W) bool of ``n`` tears: wavy cracks through a random tissue point, 0.5-2 mm wide, crossing
    40-100% of the tissue's extent (the tissue on either side keeps its place)."""
    from skimage.draw import line

    out = np.zeros_like(msk, dtype=bool)
    rr, cc = np.nonzero(msk)
    extent = float(max(int(np.ptp(rr)), int(np.ptp(cc)), 1))
    for _ in range(n):
        i = int(rng.integers(len(rr)))
        ang = rng.uniform(0, np.pi)
        d = np.array([np.cos(ang), np.sin(ang)])
        perp = np.array([-d[1], d[0]])
        half = rng.uniform(0.2, 0.5) * extent
        t = np.linspace(-half, half, 24)
        wiggle = np.cumsum(rng.normal(0, 0.04 * half / 4, t.size))
        pts = np.array([rr[i], cc[i]])[None] + t[:, None] * d[None] + (wiggle - wiggle.mean())[:, None] * perp[None]
        one = np.zeros_like(out)
        for a, b in zip(pts[:-1], pts[1:], strict=False):
            lr, lc = line(int(round(a[0])), int(round(a[1])), int(round(b[0])), int(round(b[1])))
            ok = (lr >= 0) & (lr < msk.shape[0]) & (lc >= 0) & (lc < msk.shape[1])
            one[lr[ok], lc[ok]] = True
        width = max(1, int(round(rng.uniform(0.5, 2.0) / spacing_mm)))
        if width > 1:
            one = ndimage.binary_dilation(one, iterations=width // 2)
        out |= one
    return out


def simulate_section(
    volume: str = "fsl-mni152-t1",
    orientation: str = "coronal",
    offset_mm: float | None = None,
    tilt_deg: float = 0.0,
    rotation_deg: float = 0.0,
    spacing_mm: float = 0.4,
    scale_error: float = 1.0,
    partial: str | None = None,
    contrast: str = "as-is",
    noise: float = 0.0,
    tears: int = 0,
    flip: bool = False,
    seed: int | np.random.Generator = 0,
    name: str | None = None,
) -> SimulatedSection:
    """Cut a section from ``volume`` with a known affine.

    Parameters
    ----------
    volume : key of :data:`siibra_anchor.templates.VOLUMES` or a NIfTI path (world mm, MNI-aligned).
    orientation : "coronal", "sagittal" or "axial" base plane.
    offset_mm : position of the plane along its normal axis, relative to the brain's bounding-box centre
        (random within the central 60% when None).
    tilt_deg : tilt of the plane off the canonical orientation about a random in-plane axis.
    rotation_deg : in-plane rotation of the image.
    spacing_mm : true pixel spacing; the section *states* ``spacing_mm * scale_error``.
    partial : None, "left"/"right" (hemisection: keep tissue with world x < 0 / > 0) or "block"
        (a random rectangular block of 35-60% of the tissue's extent).
    contrast : "as-is", "inverted" (dark tissue on a bright background, like a brightfield stain) or
        "remap" (random non-monotone intensity map).
    noise : std of additive Gaussian noise, as a fraction of the tissue intensity range.
    tears : number of tears (wavy cracks 0.5-2 mm wide across the tissue, where tissue is missing).
    flip : mirror the image (section mounted face down).
    """
    from ..templates import load_volume

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    data, vaff = load_volume(volume)
    mask3 = volume_brain_mask(data)
    lo, hi = world_bbox(mask3, vaff)
    centre = (lo + hi) / 2.0
    ax = AXIS_OF_PLANE[orientation]
    if offset_mm is None:
        offset_mm = float(rng.uniform(-0.3, 0.3) * (hi[ax] - lo[ax]))
    centre[ax] += offset_mm
    row_dir, col_dir = (v.copy() for v in CANONICAL_PLANES[orientation])
    normal = np.cross(row_dir, col_dir)
    if tilt_deg:
        phi = rng.uniform(0, 2 * np.pi)
        tilt_axis = np.cos(phi) * row_dir + np.sin(phi) * col_dir
        rot = Rotation.from_rotvec(np.deg2rad(tilt_deg) * tilt_axis)
        row_dir, col_dir, normal = rot.apply(row_dir), rot.apply(col_dir), rot.apply(normal)
    if rotation_deg:
        rot = Rotation.from_rotvec(np.deg2rad(rotation_deg) * normal)
        row_dir, col_dir = rot.apply(row_dir), rot.apply(col_dir)
    if flip:
        col_dir = -col_dir
    extent = float(np.linalg.norm(hi - lo)) * 0.8
    n = int(np.ceil(extent / spacing_mm))
    aff = plane_affine(centre, row_dir, col_dir, spacing_mm, (n, n), thickness_mm=spacing_mm)
    img = cut_plane(data, vaff, aff, (n, n))
    msk = cut_plane(mask3.astype(np.float32), vaff, aff, (n, n)) > 0.5
    rr, cc = np.nonzero(msk)
    if partial in ("left", "right"):
        xw = aff[0, 0] * rr + aff[0, 1] * cc + aff[0, 3]
        keep = xw < 0 if partial == "left" else xw > 0
        m2 = np.zeros_like(msk)
        m2[rr[keep], cc[keep]] = True
        msk = m2
    elif partial == "block":
        r0, r1, c0, c1 = rr.min(), rr.max(), cc.min(), cc.max()
        fh, fw = rng.uniform(0.35, 0.6, size=2)
        bh, bw = int((r1 - r0) * fh), int((c1 - c0) * fw)
        br = int(rng.integers(r0, max(r0 + 1, r1 - bh)))
        bc = int(rng.integers(c0, max(c0 + 1, c1 - bw)))
        m2 = np.zeros_like(msk)
        m2[br : br + bh, bc : bc + bw] = msk[br : br + bh, bc : bc + bw]
        msk = m2
    elif partial is not None:
        raise InvalidParameterError(f"partial must be None, 'left', 'right' or 'block', got {partial!r}")
    msk = ndimage.binary_opening(msk, iterations=1)
    if msk.sum() < 100:
        raise EmptyMaskError("simulated section holds almost no tissue; choose another offset")
    # crop to the tissue plus a margin of background, shifting the affine's origin accordingly
    rr, cc = np.nonzero(msk)
    pad = max(4, int(0.05 * max(np.ptp(rr), np.ptp(cc))))
    r0, c0 = max(rr.min() - pad, 0), max(cc.min() - pad, 0)
    r1, c1 = min(rr.max() + pad + 1, n), min(cc.max() + pad + 1, n)
    img, msk = img[r0:r1, c0:c1], msk[r0:r1, c0:c1]
    if tears:
        # no random draw without tears: sections without tears stay what they were before tears existed
        msk = msk & ~_tear_mask(msk, int(tears), spacing_mm, rng)
        if msk.sum() < 100:
            raise EmptyMaskError("simulated section holds almost no tissue after tearing; choose fewer tears")
    aff = aff.copy()
    aff[:3, 3] = aff[:3, :2] @ np.array([r0, c0], float) + aff[:3, 3]
    tissue = img[msk]
    lo_v, hi_v = np.percentile(tissue, [1, 99])
    img = np.clip((img - lo_v) / max(hi_v - lo_v, 1e-6), 0, 1)
    if contrast == "inverted":
        img = 1.0 - img
        img[~msk] = 0.95
    elif contrast == "remap":
        img = _remap(img, msk, rng)
        img[~msk] = 0.0
    elif contrast == "as-is":
        img[~msk] = 0.0
    else:
        raise InvalidParameterError(f"contrast must be 'as-is', 'inverted' or 'remap', got {contrast!r}")
    if noise:
        img = img + rng.normal(0, noise, img.shape)
    params = {
        "volume": str(volume),
        "orientation": orientation,
        "offset_mm": offset_mm,
        "tilt_deg": tilt_deg,
        "rotation_deg": rotation_deg,
        "spacing_mm": spacing_mm,
        "scale_error": scale_error,
        "partial": partial,
        "contrast": contrast,
        "noise": noise,
        "tears": int(tears),
        "flip": flip,
    }
    sec = Section(
        img.astype(np.float32),
        spacing_mm=spacing_mm * scale_error,
        mask=msk,
        modality=contrast,
        name=name or f"sim-{orientation}-{volume}",
    )
    return SimulatedSection(sec, aff, params)


def section_error(affine: NDArray, true_affine: NDArray, mask: NDArray, max_points: int = 20000) -> float:
    """Mean distance (mm) over tissue pixels between where ``affine`` and ``true_affine`` put them.

    mask : (H, W) bool tissue of the section (pixel grid of both affines). A regular subsample of at most
    ``max_points`` tissue pixels is used (exact for small sections).
    """
    rr, cc = np.nonzero(np.asarray(mask, bool))
    step = max(1, len(rr) // max_points)
    rc = np.stack([rr[::step], cc[::step]], axis=1).astype(float)
    a, b = np.asarray(affine, float), np.asarray(true_affine, float)
    d = rc @ (a[:3, :2] - b[:3, :2]).T + (a[:3, 3] - b[:3, 3])
    return float(np.linalg.norm(d, axis=1).mean())

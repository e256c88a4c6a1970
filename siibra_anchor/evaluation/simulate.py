"""Simulated sections with exact ground truth: planes cut from a volume in a known pose.

Used by the demo, the tests and the benchmark. A simulated section is cut from a volume *other* than the
reference template (another MNI template, a grey-matter map, ...) so anchoring it is a real test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import EmptyMaskError, InvalidParameterError
from ..planes import AXIS_OF_PLANE, CANONICAL_PLANES, cut_plane, plane_affine, world_bbox
from ..reference import volume_brain_mask
from ..section import Section

__all__ = [
    "SimulatedSection",
    "HistologyGeometry",
    "simulate_section",
    "section_error",
    "partial_mask",
    "one_side_of_midline",
    "tissue_piece",
]


def one_side_of_midline(xs: NDArray, margin_mm: float = 2.0) -> str | None:
    """ "left" or "right" when every world x of a section's tissue lies more than ``margin_mm`` on that side
    of the midline (the hemisphere a user knows a one-sided sagittal section holds), else None."""
    xs = np.asarray(xs, float)
    if xs.size and (np.all(xs < -margin_mm) or np.all(xs > margin_mm)):
        return "left" if xs.mean() < 0 else "right"
    return None


@dataclass
class SimulatedSection:
    """A section, its true (4, 4) affine (pixel -> mm, DESIGN.md convention) and how it was made.

    true_points : (H, W, 3) float32 world mm of every pixel when the section was distorted nonlinearly
        (:class:`HistologyGeometry`); ``true_affine`` is then the least-squares affine of those points
        over the tissue (the best any affine can do). None when ``true_affine`` is exact.
    """

    section: Section
    true_affine: NDArray
    params: dict[str, Any] = field(default_factory=dict)
    true_points: NDArray | None = None

    def error(self, affine: NDArray) -> float:
        """Mean distance (mm) over the tissue between ``affine`` and the truth (per pixel when known)."""
        return section_error(affine, self.true_affine, self.section.mask, true_points=self.true_points)


@dataclass(frozen=True)
class HistologyGeometry:
    """How a histological section's geometry differs from the brain it was cut from (all drawn per section).

    shrink : range of the independent in-plane shrinkage per axis (tissue appears ``s`` times its size,
        0.7-1.0: BigBrain's ratios to MNI, about 1/1.12 to 1/1.44, fall in it); the section still states
        the microscope's pixel spacing, so the anchoring must find the scale.
    shear_deg : largest in-plane shear angle.
    warp_mm : largest amplitude of a smooth nonlinear in-plane displacement; warp_scale_mm its smoothness.
    frame_fill : probability that the image is cropped to the tissue (blocks: to inside the block), so the
        tissue touches or fills the frame.
    missing : probability of a missing piece (an elliptic bite of 5-15 mm out of the tissue's edge).
    folds : largest number of folds (bands 1-3 mm wide where the tissue lies double: darker or brighter,
        positions unchanged).
    stain_gradient : largest relative amplitude of a smooth multiplicative staining gradient.
    """

    shrink: tuple[float, float] = (0.7, 1.0)
    shear_deg: float = 5.0
    warp_mm: float = 3.0
    warp_scale_mm: float = 15.0
    frame_fill: float = 0.3
    missing: float = 0.3
    folds: int = 1
    stain_gradient: float = 0.3


def _smooth_field(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> NDArray:
    """(H, W) smooth random field with max |value| = 1 (Gaussian-filtered white noise)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), max(sigma_px, 1.0), mode="reflect")
    return f / max(float(np.abs(f).max()), 1e-12)


def _distort(
    img: NDArray, msk: NDArray, aff: NDArray, spacing_mm: float, geo: HistologyGeometry, rng: np.random.Generator
) -> tuple[NDArray, NDArray, NDArray, dict[str, Any]]:
    """Shrink, shear and warp a cut section in its plane; returns (image, mask, true points (H, W, 3), draws).

    Output pixel q maps to source pixel p = L^-1 (q - q0) + p0 + u(q), with L = shear @ diag(shrink) and u
    a smooth displacement; its true world position is ``aff`` at p (exact per pixel).
    """
    sr, sc = (float(v) for v in rng.uniform(geo.shrink[0], geo.shrink[1], size=2))
    shear = float(rng.uniform(-geo.shear_deg, geo.shear_deg))
    lin = np.array([[1.0, np.tan(np.deg2rad(shear))], [0.0, 1.0]]) @ np.diag([sr, sc])
    h, w = msk.shape
    warp_px = geo.warp_mm / spacing_mm
    corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], float) - [(h - 1) / 2, (w - 1) / 2]
    span = np.ptp(corners @ lin.T, axis=0)
    oh, ow = (int(np.ceil(v + 2 * warp_px)) + 1 for v in span)
    qr, qc = np.meshgrid(np.arange(oh, dtype=float), np.arange(ow, dtype=float), indexing="ij")
    q = np.stack([qr - (oh - 1) / 2, qc - (ow - 1) / 2], axis=-1)
    p = q @ np.linalg.inv(lin).T + [(h - 1) / 2, (w - 1) / 2]
    amp = float(rng.uniform(0.3, 1.0)) * warp_px
    sigma = geo.warp_scale_mm / spacing_mm
    p[..., 0] += amp * _smooth_field((oh, ow), sigma, rng)
    p[..., 1] += amp * _smooth_field((oh, ow), sigma, rng)
    coords = [p[..., 0], p[..., 1]]
    out = ndimage.map_coordinates(np.asarray(img, np.float32), coords, order=1, mode="constant", cval=0.0)
    m = ndimage.map_coordinates(msk.astype(np.float32), coords, order=1, mode="constant", cval=0.0) > 0.5
    pts = (p @ aff[:3, :2].T + aff[:3, 3]).astype(np.float32)
    return out.astype(np.float32), m, pts, {"shrink": (sr, sc), "shear_deg": shear, "warp_mm": amp * spacing_mm}


def _fit_affine(pts: NDArray, msk: NDArray, thickness_mm: float) -> NDArray:
    """Least-squares (4, 4) section affine of per-pixel world points (H, W, 3) over the mask."""
    from ..planes import section_affine

    rr, cc = np.nonzero(msk)
    a = np.stack([rr, cc, np.ones_like(rr)], axis=1).astype(float)
    sol, *_ = np.linalg.lstsq(a, pts[rr, cc].astype(float), rcond=None)
    return section_affine(sol[:2].T, sol[2], thickness_mm)


def _crop_to(img: NDArray, msk: NDArray, pts: NDArray | None, box: tuple[int, int, int, int]) -> tuple[Any, ...]:
    r0, r1, c0, c1 = box
    return img[r0:r1, c0:c1], msk[r0:r1, c0:c1], None if pts is None else pts[r0:r1, c0:c1]


def _missing_piece(msk: NDArray, spacing_mm: float, rng: np.random.Generator) -> NDArray:
    """(H, W) bool ellipse of 5-15 mm centred on a random edge pixel of the tissue (the piece lost)."""
    edge = msk & ~ndimage.binary_erosion(msk)
    rr, cc = np.nonzero(edge if edge.any() else msk)
    i = int(rng.integers(len(rr)))
    a, b = (rng.uniform(2.5, 7.5, size=2) / spacing_mm).tolist()
    ang = rng.uniform(0, np.pi)
    yy, xx = np.ogrid[: msk.shape[0], : msk.shape[1]]
    dy, dx = yy - rr[i], xx - cc[i]
    u = dy * np.cos(ang) + dx * np.sin(ang)
    v = -dy * np.sin(ang) + dx * np.cos(ang)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


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
    histology: HistologyGeometry | bool | None = None,
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
    histology : a :class:`HistologyGeometry` (True: the default one) to shrink, shear and warp the section
        in its plane, crop it to the tissue, bite pieces out, fold and unevenly stain it. The truth is
        then per pixel (:attr:`SimulatedSection.true_points`; score with :meth:`SimulatedSection.error`).
        None or False (the default) draws nothing more: sections are what they were before this existed.
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
    msk = ndimage.binary_opening(partial_mask(msk, partial, aff, rng), iterations=1)
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
    geo = HistologyGeometry() if histology is True else (histology or None)
    pts: NDArray | None = None
    draws: dict[str, Any] = {}
    if geo is not None:
        img, msk, pts, draws = _distort(img, msk, aff, spacing_mm, geo, rng)
        rr, cc = np.nonzero(msk)
        if rng.random() < geo.frame_fill:
            if partial == "block":  # the block itself, inside its tissue: the mask may fill the frame
                box = _inner_box(msk)
            else:
                box = (int(rr.min()), int(rr.max()) + 1, int(cc.min()), int(cc.max()) + 1)
            img, msk, pts = _crop_to(img, msk, pts, box)
            draws["frame_fill"] = True
        else:
            pad = max(4, int(0.05 * max(np.ptp(rr), np.ptp(cc))))
            box = (
                max(int(rr.min()) - pad, 0),
                int(rr.max()) + pad + 1,
                max(int(cc.min()) - pad, 0),
                int(cc.max()) + pad + 1,
            )
            img, msk, pts = _crop_to(img, msk, pts, box)
            draws["frame_fill"] = False
        if rng.random() < geo.missing:
            piece = _missing_piece(msk, spacing_mm, rng)
            if (msk & ~piece).sum() >= 0.5 * msk.sum():
                msk = msk & ~piece
                draws["missing"] = True
        if msk.sum() < 100:
            raise EmptyMaskError("simulated histology section holds almost no tissue; choose another seed")
        aff = _fit_affine(cast(NDArray, pts), msk, spacing_mm)  # the warp above always sets pts
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
    if geo is not None:
        img = _stain(img, msk, spacing_mm, geo, rng, draws)
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
    if geo is not None:
        params["histology"] = {**asdict(geo), "drawn": draws}
    sec = Section(
        img.astype(np.float32),
        spacing_mm=spacing_mm * scale_error,
        mask=msk,
        modality=contrast,
        name=name or f"sim-{orientation}-{volume}",
    )
    return SimulatedSection(sec, aff, params, pts)


def partial_mask(msk: NDArray, partial: str | None, affine: NDArray, rng: np.random.Generator) -> NDArray:
    """The part of tissue mask ``msk`` (H, W) a partial section keeps: ``"left"`` / ``"right"`` the pixels
    whose world x (by ``affine``, pixel -> mm) is < 0 / > 0, ``"block"`` a random rectangle of 35-60 % of
    the tissue's extent per axis (drawn from ``rng``), None all of it."""
    if partial is None:
        return msk
    rr, cc = np.nonzero(msk)
    m2 = np.zeros_like(msk)
    if partial in ("left", "right"):
        xw = affine[0, 0] * rr + affine[0, 1] * cc + affine[0, 3]
        keep = xw < 0 if partial == "left" else xw > 0
        m2[rr[keep], cc[keep]] = True
    elif partial == "block":
        r0, r1, c0, c1 = rr.min(), rr.max(), cc.min(), cc.max()
        fh, fw = rng.uniform(0.35, 0.6, size=2)
        bh, bw = int((r1 - r0) * fh), int((c1 - c0) * fw)
        br = int(rng.integers(r0, max(r0 + 1, r1 - bh)))
        bc = int(rng.integers(c0, max(c0 + 1, c1 - bw)))
        m2[br : br + bh, bc : bc + bw] = msk[br : br + bh, bc : bc + bw]
    else:
        raise InvalidParameterError(f"partial must be None, 'left', 'right' or 'block', got {partial!r}")
    return m2


def tissue_piece(
    sim: SimulatedSection, side_mm: float, rng: np.random.Generator, pad_mm: float = 4.0, min_fill: float = 0.7
) -> SimulatedSection:
    """A small piece of ``sim``'s tissue as a user would mount it: a square window about ``side_mm`` across
    (in the section's true pixels) where tissue fills at least ``min_fill`` of it, with ``pad_mm`` of
    background around; the truth follows (``true_affine`` shifted to the window, ``true_points`` cut). A
    window that fits nowhere is shrunk by a fifth, up to five times."""
    img = np.asarray(sim.section.image, np.float32)
    msk = np.asarray(sim.section.mask, bool)
    px = float(np.mean(sim.section.spacing_mm)) / float(sim.params.get("scale_error", 1.0))
    rr, cc = np.nonzero(msk)
    if len(rr) == 0:
        raise EmptyMaskError("the section holds no tissue to cut a piece from")
    side = max(4, int(round(side_mm / px)))
    for _ in range(6):
        for i in rng.integers(len(rr), size=60):
            r0, c0 = int(rr[i]) - side // 2, int(cc[i]) - side // 2
            if r0 < 0 or c0 < 0 or r0 + side > msk.shape[0] or c0 + side > msk.shape[1]:
                continue
            if msk[r0 : r0 + side, c0 : c0 + side].mean() >= min_fill:
                break
        else:
            side = max(4, int(side * 0.8))
            continue
        break
    else:
        raise EmptyMaskError(
            f"no window of {side_mm:.0f} mm, nor of down to a third of that, is filled {min_fill:.0%} by tissue; "
            "cut a smaller piece or lower min_fill"
        )
    pad = max(1, int(round(pad_mm / px)))
    background = float(np.median(img[~msk])) if (~msk).any() else 0.0
    window = (slice(r0, r0 + side), slice(c0, c0 + side))
    piece = np.full((side + 2 * pad, side + 2 * pad) + img.shape[2:], background, np.float32)
    piece[pad:-pad, pad:-pad] = img[window]
    pmask = np.zeros((side + 2 * pad, side + 2 * pad), bool)
    pmask[pad:-pad, pad:-pad] = msk[window]
    shift = np.eye(4)
    shift[0, 3], shift[1, 3] = r0 - pad, c0 - pad
    pts = None
    if sim.true_points is not None:
        pts = np.zeros(pmask.shape + (3,), np.float32)
        pts[pad:-pad, pad:-pad] = sim.true_points[window]
    sec = Section(
        piece,
        spacing_mm=sim.section.spacing_mm,
        mask=pmask,
        modality=sim.section.modality,
        name=f"{sim.section.name}-piece{side * px:.0f}mm",
    )
    params = {**sim.params, "piece_mm": side * px, "piece_origin_px": [int(r0), int(c0)]}
    return SimulatedSection(sec, np.asarray(sim.true_affine, float) @ shift, params, pts)


def section_error(
    affine: NDArray,
    true_affine: NDArray,
    mask: NDArray,
    max_points: int = 20000,
    true_points: NDArray | None = None,
) -> float:
    """Mean distance (mm) over tissue pixels between where ``affine`` and ``true_affine`` put them.

    mask : (H, W) bool tissue of the section (pixel grid of both affines). A regular subsample of at most
    ``max_points`` tissue pixels is used (exact for small sections).
    true_points : (H, W, 3) world mm of every pixel (a nonlinearly distorted section); when given it is the
    truth and ``true_affine`` is not used.
    """
    rr, cc = np.nonzero(np.asarray(mask, bool))
    step = max(1, len(rr) // max_points)
    rr, cc = rr[::step], cc[::step]
    rc = np.stack([rr, cc], axis=1).astype(float)
    a = np.asarray(affine, float)
    if true_points is not None:
        d = rc @ a[:3, :2].T + a[:3, 3] - np.asarray(true_points, float)[rr, cc]
        return float(np.linalg.norm(d, axis=1).mean())
    b = np.asarray(true_affine, float)
    d = rc @ (a[:3, :2] - b[:3, :2]).T + (a[:3, 3] - b[:3, 3])
    return float(np.linalg.norm(d, axis=1).mean())


def _inner_box(msk: NDArray) -> tuple[int, int, int, int]:
    """The largest axis-aligned box around the tissue's deepest point that holds tissue only (or nearly:
    grown from the centre while at least 97 % of each new row/column is tissue)."""
    dist = ndimage.distance_transform_edt(msk)
    r, c = np.unravel_index(int(np.argmax(dist)), msk.shape)
    r0, r1, c0, c1 = int(r), int(r) + 1, int(c), int(c) + 1
    h, w = msk.shape
    grown = True
    while grown:
        grown = False
        if r0 > 0 and msk[r0 - 1, c0:c1].mean() >= 0.97:
            r0, grown = r0 - 1, True
        if r1 < h and msk[r1, c0:c1].mean() >= 0.97:
            r1, grown = r1 + 1, True
        if c0 > 0 and msk[r0:r1, c0 - 1].mean() >= 0.97:
            c0, grown = c0 - 1, True
        if c1 < w and msk[r0:r1, c1].mean() >= 0.97:
            c1, grown = c1 + 1, True
    return r0, r1, c0, c1


def _stain(
    img: NDArray,
    msk: NDArray,
    spacing_mm: float,
    geo: HistologyGeometry,
    rng: np.random.Generator,
    draws: dict[str, Any],
) -> NDArray:
    """A smooth multiplicative staining gradient and folds (bands where tissue lies double) on the tissue."""
    out = np.asarray(img, np.float32).copy()
    h, w = msk.shape
    g = float(rng.uniform(0.0, geo.stain_gradient))
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[:h, :w].astype(float)
    ramp = (np.cos(ang) * (yy - h / 2) + np.sin(ang) * (xx - w / 2)) / max(h, w)
    field_ = 1.0 + g * (ramp + 0.5 * _smooth_field((h, w), 20.0 / spacing_mm, rng))
    bg = out[~msk].mean() if (~msk).any() else 0.0
    out[msk] = bg + (out[msk] - bg) * field_[msk].astype(np.float32)
    n_folds = int(rng.integers(0, geo.folds + 1)) if geo.folds else 0
    rr, cc = np.nonzero(msk)
    for _ in range(n_folds):
        i = int(rng.integers(len(rr)))
        a = rng.uniform(0, np.pi)
        width = rng.uniform(1.0, 3.0) / spacing_mm
        band = np.abs(np.cos(a) * (yy - rr[i]) + np.sin(a) * (xx - cc[i])) <= width / 2
        band &= msk
        # double thickness: the tissue's contrast against the background is doubled (stronger stain)
        out[band] = np.clip(bg + 1.8 * (out[band] - bg), min(0.0, bg), max(1.0, bg))
    draws["stain_gradient"] = g
    draws["folds"] = n_folds
    return out

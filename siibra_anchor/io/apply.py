"""Apply an anchoring at full resolution: write the section's pixels at their world positions.

:func:`resample_to_space` streams the section from its file (TIFF / OME-Zarr window by window, see
:class:`~siibra_anchor.io.formats.ImageSource`) and writes a chunked volume, so a 100k x 100k px
section never sits in memory whole. Three output grids:

``"reference"`` (NIfTI default)
    The voxel grid of the space's template volume (MNI152 2009c at 1 mm, shipped; for other spaces pass
    ``template=`` the template NIfTI); every voxel that the section plane crosses gets the image value at
    its projection onto the plane, the others 0: a slab one template voxel thick. This is the grid that
    overlays: nilearn's ``resample_to_img`` / ``plot_stat_map`` and nibabel's ``resample_from_to`` onto the
    template keep every written voxel. Used by default for NIfTI when ``spacing_mm`` is not given and a
    template is known.
``"world"`` (OME-Zarr default; NIfTI default when ``spacing_mm`` is given or no template is known)
    An axis-aligned world grid of ``spacing_mm`` (default: 4x the full-resolution spacing, at least
    0.05 mm) over the section's bounding box, filled like the reference grid (a slab one voxel of
    ``spacing_mm`` thick). OME-Zarr writes only the chunks the plane crosses. Resampled onto a coarser
    template grid the slab survives when ``spacing_mm`` is at least the template's voxel size.
``"section"`` (NIfTI only)
    The section's own pixel grid, resampled to ``spacing_mm`` (default: the full-resolution pixel
    spacing), one voxel thick; the NIfTI affine is oblique (``result.affine`` composed with the scaling),
    exactly ``nibabel.Nifti1Image(image[..., None], affine)`` at full resolution. Full detail, but an
    oblique single-voxel slab: resampling it onto a template grid leaves (almost) nothing.

NIfTI outputs carry sform and qform code 4 (MNI152) when the space is MNI152, 5 (another template) for the
other siibra spaces and 2 (aligned to another image) for custom spaces.

Values are block means of the source over each output voxel's footprint (linear interpolation in
between); colour is converted to luminance. Writes are atomic.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..cache import atomic_dir, atomic_file
from ..errors import (
    FileFormatError,
    InvalidParameterError,
    InvalidSectionError,
    SectionFileNotFoundError,
    SpaceUnavailableError,
    SpacingError,
)
from ..section import Section, to_gray

__all__ = ["resample_to_space", "full_resolution_affine", "world_grid", "xform_code"]

log = logging.getLogger(__name__)

#: About how many output voxels one streamed block holds (bounds memory).
_BLOCK_VOXELS = 1 << 22


def xform_code(space: str) -> int:
    """NIfTI sform/qform code of a space: 4 (MNI152) for "mni152", 5 (template) for colin27 / bigbrain,
    2 (aligned anatomical) for anything else."""
    if space == "mni152":
        return 4
    return 5 if space in ("colin27", "bigbrain") else 2


def full_resolution_affine(affine: NDArray, downsample: Sequence[float]) -> NDArray:
    """Affine of full-resolution pixels, given the ``affine`` of a section read ``downsample`` (row, col)
    times coarser by block means (section pixel ``i`` centred on full-resolution pixel
    ``i * f + (f - 1) / 2``). The third column (normal x thickness) is kept.
    """
    fr, fc = (float(v) for v in downsample)
    m = np.eye(4)
    m[0, 0], m[0, 3] = 1.0 / fr, -(fr - 1.0) / (2.0 * fr)
    m[1, 1], m[1, 3] = 1.0 / fc, -(fc - 1.0) / (2.0 * fc)
    return np.asarray(affine, np.float64) @ m


def world_grid(
    affine0: NDArray, full_shape: Sequence[int], spacing_mm: float, pad_mm: float = 0.0
) -> tuple[NDArray, tuple[int, int, int]]:
    """Axis-aligned grid (4x4 voxel -> mm, (nx, ny, nz)) of isotropic ``spacing_mm`` that covers the
    section (full-resolution affine ``affine0``, ``full_shape`` (H, W)) plus ``pad_mm``."""
    h, w = int(full_shape[0]), int(full_shape[1])
    corners = np.array([[r, c, 0.0, 1.0] for r in (-0.5, h - 0.5) for c in (-0.5, w - 0.5)]) @ affine0.T
    lo = corners[:, :3].min(axis=0) - pad_mm - spacing_mm
    hi = corners[:, :3].max(axis=0) + pad_mm + spacing_mm
    shape = tuple(int(v) for v in np.ceil((hi - lo) / spacing_mm).astype(int) + 1)
    g = np.eye(4)
    g[:3, :3] *= spacing_mm
    g[:3, 3] = lo
    return g, (shape[0], shape[1], shape[2])


# -- sources ---------------------------------------------------------------------------------------------
class _ArrayReader:
    """:class:`~siibra_anchor.io.formats.LevelReader` over an in-memory image."""

    def __init__(self, image: NDArray) -> None:
        self._a = image
        self.shape = (int(image.shape[0]), int(image.shape[1]))
        self.chunks = (256, 256)
        self.dtype = image.dtype

    def read(self, r0: int, r1: int, c0: int, c1: int) -> NDArray:
        return self._a[r0:r1, c0:c1]


class _MemorySource:
    """An in-memory image posing as a one-level :class:`~siibra_anchor.io.formats.ImageSource`."""

    def __init__(self, image: NDArray) -> None:
        self.image = np.asarray(image)
        self.shapes = ((int(self.image.shape[0]), int(self.image.shape[1])),)
        self.factors = ((1.0, 1.0),)
        self.dtype = self.image.dtype

    @property
    def full_shape(self) -> tuple[int, int]:
        return self.shapes[0]

    @contextlib.contextmanager
    def open_level(self, level: int = 0) -> Iterator[_ArrayReader]:
        yield _ArrayReader(self.image)


def _open_source(source: Any) -> tuple[Any, tuple[int, int] | None]:
    """(source with shapes/factors/open_level, shape of the Section it came from or None)."""
    from .formats import detect_format, open_image_source, read_section_image

    if isinstance(source, Section):
        lazy = source.full_resolution
        if lazy is not None:
            return lazy, source.shape
        if source.downsample != (1.0, 1.0):  # a coarser PNG/NIfTI level does not exist; keep it honest
            raise InvalidSectionError(f"section {source.name!r} has no full-resolution source to read")
        return _MemorySource(source.image), source.shape
    if isinstance(source, (str, PathLike)):
        if not Path(source).exists():
            raise SectionFileNotFoundError(f"section image not found: {str(source)!r}; check the path")
        if detect_format(source) in ("tiff", "ome-zarr"):
            return open_image_source(source, spacing_mm=1.0), None  # spacing is taken from the result
        img, _, _ = read_section_image(source, spacing_mm=1.0)
        return _MemorySource(img), None
    arr = np.asarray(source)
    if arr.ndim not in (2, 3):
        raise InvalidSectionError(f"source image must be (H, W) or (H, W, C), got shape {arr.shape}")
    return _MemorySource(arr), None


def _snap_factor(n0: int, n: int) -> float:
    from .formats import _factor

    return _factor(n0, n)


def block_reduce(*args: Any, **kwargs: Any) -> NDArray:
    """:func:`siibra_anchor.io.formats.block_reduce` (imported on first use)."""
    from .formats import block_reduce as br

    return br(*args, **kwargs)


@contextlib.contextmanager
def _nifti_memmap(
    out: Path, shape: tuple[int, int, int], dtype: np.dtype, affine: NDArray, code: int = 1
) -> Iterator[NDArray]:
    """Yield a zero-filled (I, J, K) memory map that becomes NIfTI ``out`` (gzipped for .nii.gz) on exit.

    The data go to an uncompressed .nii next to ``out`` first (pages leave memory as they are written),
    then are compressed in 4 MiB pieces; ``out`` appears atomically.
    """
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_xyzt_units("mm")
    hdr.set_sform(affine, code=code)
    hdr.set_qform(affine, code=code)
    hdr.set_data_offset(352)
    gz = out.name.lower().endswith(".gz")
    with atomic_file(out, suffix=".nii.gz" if gz else ".nii") as tmp:
        raw = tmp.with_name(tmp.name + ".raw.nii") if gz else tmp
        try:
            with open(raw, "wb") as fh:
                fh.write(hdr.binaryblock)
                fh.write(b"\x00" * (352 - len(hdr.binaryblock)))
                fh.truncate(352 + int(np.prod(shape)) * dtype.itemsize)
            mm = np.memmap(raw, dtype=dtype, mode="r+", offset=352, shape=shape, order="F")
            yield mm
            mm.flush()
            del mm
            if gz:
                with open(raw, "rb") as fi, gzip.open(tmp, "wb", compresslevel=4) as fo:
                    shutil.copyfileobj(fi, fo, 1 << 22)
        finally:
            if gz:
                raw.unlink(missing_ok=True)


class _Sampler:
    """Sample a source at full-resolution pixel positions, pre-averaged over ``g`` (row, col)
    full-resolution pixels (the output voxel footprint) by choosing a pyramid level and block means."""

    def __init__(self, src: Any, reader: Any, level: int, g: tuple[float, float]) -> None:
        self.reader = reader
        self.fk = src.factors[level]
        self.q = (max(1, int(math.floor(g[0] / self.fk[0] + 1e-9))), max(1, int(math.floor(g[1] / self.fk[1] + 1e-9))))
        self.h0, self.w0 = src.full_shape

    def sample(self, r: NDArray, c: NDArray) -> tuple[NDArray, NDArray]:
        """Values (float64) at full-resolution pixel (r, c) and a bool mask of positions on the image."""
        inside = (r >= -0.5) & (r <= self.h0 - 0.5) & (c >= -0.5) & (c <= self.w0 - 0.5)
        out = np.zeros(r.shape, np.float64)
        if not inside.any():
            return out, inside
        (fr, fc), (qr, qc) = self.fk, self.q
        u = (r[inside] - (fr - 1) / 2.0) / fr  # level pixels
        v = (c[inside] - (fc - 1) / 2.0) / fc
        hk, wk = self.reader.shape
        r0 = max(0, (int(math.floor(u.min())) - qr) // qr * qr)
        c0 = max(0, (int(math.floor(v.min())) - qc) // qc * qc)
        r1 = min(hk, int(math.ceil(u.max())) + 2 * qr)
        c1 = min(wk, int(math.ceil(v.max())) + 2 * qc)
        r1 = r0 + max(qr, (r1 - r0) // qr * qr)
        c1 = c0 + max(qc, (c1 - c0) // qc * qc)
        r1, c1 = min(r1, hk), min(c1, wk)
        if r1 - r0 < qr or c1 - c0 < qc:  # a window at the very edge, smaller than one block
            qr, qc = 1, 1
        blk = block_reduce(self.reader, (qr, qc), window=(r0, r1, c0, c1), dtype=np.float64)
        if blk.ndim == 3:
            blk = to_gray(blk).astype(np.float64)
        bu = (u - r0 - (qr - 1) / 2.0) / qr
        bv = (v - c0 - (qc - 1) / 2.0) / qc
        out[inside] = ndimage.map_coordinates(blk, [bu, bv], order=1, mode="nearest", prefilter=False)
        return out, inside


def _level_for(src: Any, g: tuple[float, float]) -> int:
    """Coarsest level no coarser than ``g`` full-resolution pixels per output voxel."""
    ok = [k for k, (fr, fc) in enumerate(src.factors) if fr <= g[0] * (1 + 1e-9) and fc <= g[1] * (1 + 1e-9)]
    return max(ok, key=lambda k: src.factors[k][0] * src.factors[k][1]) if ok else 0


def _out_dtype(src_dtype: np.dtype) -> np.dtype:
    dt = np.dtype(src_dtype)
    if dt in (np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64):
        return dt
    return np.dtype(np.float32)


def _cast(values: NDArray, dtype: np.dtype) -> NDArray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


# -- public API ------------------------------------------------------------------------------------------
def resample_to_space(
    result: Any,
    source: Any,
    out: str | PathLike[str],
    spacing_mm: float | None = None,
    format: str | None = None,
    grid: str | None = None,
    chunk: int = 64,
    template: str | PathLike[str] | None = None,
) -> Path:
    """Write ``source`` placed by ``result`` into the result's space as a chunked NIfTI or OME-Zarr volume.

    Parameters
    ----------
    result : :class:`~siibra_anchor.result.AnchoringResult` (or a path to its JSON).
    source : the anchored section: a :class:`~siibra_anchor.section.Section` (read with
        ``reduce=True`` or not; its file is reopened at full resolution), a file path (TIFF / OME-Zarr
        read window by window; PNG / NIfTI read whole), or an (H, W) array at full resolution. The
        full-resolution pixel grid is related to the anchored one by the shape ratio (block means).
    out : ``*.nii``, ``*.nii.gz`` or ``*.zarr`` / ``*.ome.zarr`` (replaced atomically).
    spacing_mm : output voxel size in mm (see the module docstring for defaults; ignored by
        ``grid="reference"``).
    format : "nifti" or "ome-zarr" (default: from ``out``'s suffix).
    grid : "reference", "world" or "section" (see the module docstring). Default for NIfTI: "reference"
        when no ``spacing_mm`` is given and a template is known (the space's shipped one or ``template``),
        else "world"; for OME-Zarr: "world".
    chunk : edge of the output chunks in voxels (OME-Zarr chunks; the streaming block for NIfTI).
    template : NIfTI whose voxel grid ``grid="reference"`` uses (default: the space's shipped template;
        only MNI152 ships, so pass it for colin27, bigbrain or a custom space).

    Returns
    -------
    Path of the written volume. Raises :class:`FileFormatError` for an unsupported output,
    :class:`SpacingError` for a non-positive spacing, :class:`InvalidSectionError` when the source does
    not fit the result's section shape, :class:`SpaceUnavailableError` for ``grid="reference"`` without a
    template of the space.
    """
    from ..result import AnchoringResult

    res = result if isinstance(result, AnchoringResult) else AnchoringResult.load(result)
    out = Path(out)
    fmt = format or ("ome-zarr" if out.name.lower().endswith(".zarr") else "nifti")
    if fmt not in ("nifti", "ome-zarr"):
        raise FileFormatError(f"format must be 'nifti' or 'ome-zarr', got {format!r}")
    if fmt == "nifti" and not out.name.lower().endswith((".nii", ".nii.gz")):
        raise FileFormatError(f"NIfTI output must end in .nii or .nii.gz, got {out.name!r}")
    from ..templates import VOLUMES

    has_template = template is not None or res.space in VOLUMES
    if grid is None:
        grid = "reference" if fmt == "nifti" and spacing_mm is None and has_template else "world"
    if grid not in ("section", "world", "reference"):
        raise FileFormatError(f"grid must be 'section', 'world' or 'reference', got {grid!r}")
    if grid == "section" and fmt == "ome-zarr":
        raise FileFormatError(
            "OME-Zarr cannot store the oblique affine of the section grid; use grid='world' or write .nii.gz"
        )
    if spacing_mm is not None and (not math.isfinite(float(spacing_mm)) or float(spacing_mm) <= 0):
        raise SpacingError(f"spacing_mm must be a positive number of mm, got {spacing_mm!r}")
    if int(chunk) < 8:
        raise InvalidParameterError(f"chunk must be >= 8 voxels, got {chunk!r}")

    src, sec_shape = _open_source(source)
    anchored = tuple(int(v) for v in res.section.get("shape", src.full_shape))
    if sec_shape is not None and tuple(sec_shape) != anchored:
        raise InvalidSectionError(f"the section is {sec_shape} px but the result was anchored on {anchored} px")
    h0, w0 = src.full_shape
    if h0 < anchored[0] or w0 < anchored[1]:
        raise InvalidSectionError(
            f"source image {h0} x {w0} px is smaller than the anchored section {anchored[0]} x {anchored[1]} px; "
            "pass the image the result was computed on (or its full-resolution original)"
        )
    down = (_snap_factor(h0, anchored[0]), _snap_factor(w0, anchored[1]))
    a0 = full_resolution_affine(res.affine, down)
    pix_mm = np.linalg.norm(a0[:3, :2], axis=0)  # full-resolution (row, col) mm per pixel
    log.info("source %s px, %s full-res px per anchored px, %.4g x %.4g mm/px", (h0, w0), down, *pix_mm)
    code = xform_code(res.space)
    if grid == "section":
        s = float(spacing_mm) if spacing_mm is not None else float(pix_mm.min())
        return _write_section_grid(src, a0, pix_mm, s, out, int(chunk), code)
    if grid == "reference":
        g_aff, shape = _reference_grid(res.space, template)
    else:
        s = float(spacing_mm) if spacing_mm is not None else max(0.05, 4.0 * float(pix_mm.min()))
        g_aff, shape = world_grid(a0, (h0, w0), s)
    n_vox = int(np.prod(shape))
    if n_vox > 2**34:
        raise SpacingError(f"a world grid of {shape} voxels at this spacing is too large; choose a larger spacing_mm")
    return _write_world_grid(src, a0, pix_mm, g_aff, shape, out, fmt, int(chunk), code)


def _reference_grid(space: str, template: str | PathLike[str] | None) -> tuple[NDArray, tuple[int, ...]]:
    """(voxel -> mm affine, (I, J, K)) of ``template`` or of the space's shipped template."""
    import nibabel as nib

    from ..templates import VOLUMES, volume_path

    if template is None:
        if space not in VOLUMES:
            raise SpaceUnavailableError(
                f"no template of space {space!r} ships with siibra-anchor for grid='reference'; pass "
                "template=<the space's template NIfTI> (CLI: --template), or use grid='world'"
            )
        template = volume_path(space)
    p = Path(template)
    if not p.is_file():
        raise SectionFileNotFoundError(f"template volume not found: {p}")
    try:
        img: Any = nib.load(str(p))
    except Exception as exc:  # nibabel raises many kinds for unreadable files
        raise FileFormatError(f"cannot read template volume {p}: {exc}") from exc
    if len(img.shape) < 3:
        raise FileFormatError(f"template volume {p} has shape {img.shape}; need a 3D volume")
    return np.asarray(img.affine, np.float64), tuple(int(v) for v in img.shape[:3])


# -- section grid (NIfTI, filled tile by tile through a memory map) -------------------------------------
def _write_section_grid(src: Any, a0: NDArray, pix_mm: NDArray, s: float, out: Path, chunk: int, code: int) -> Path:
    h0, w0 = src.full_shape
    g = (s / float(pix_mm[0]), s / float(pix_mm[1]))  # full-res pixels per output voxel
    ho, wo = max(1, int(math.floor(h0 / g[0] + 1e-6))), max(1, int(math.floor(w0 / g[1] + 1e-6)))
    # output voxel (i, j) sits on full-res pixel (i * g + (g - 1) / 2): the block-mean convention
    aff = full_resolution_affine(a0, (1.0 / g[0], 1.0 / g[1]))
    aff[:3, 2] = a0[:3, 2]
    dtype = _out_dtype(src.dtype)
    level = _level_for(src, g)
    tile = max(int(chunk), int(2048 / max(g)))  # output voxels per tile side: ~2048 source px
    with _nifti_memmap(out, (ho, wo, 1), dtype, aff, code) as mm, src.open_level(level) as rd:
        sampler = _Sampler(src, rd, level, g)
        for i0 in range(0, ho, tile):
            i1 = min(ho, i0 + tile)
            rows = np.arange(i0, i1) * g[0] + (g[0] - 1) / 2.0
            for j0 in range(0, wo, tile):
                j1 = min(wo, j0 + tile)
                cols = np.arange(j0, j1) * g[1] + (g[1] - 1) / 2.0
                rr, cc = np.meshgrid(rows, cols, indexing="ij")
                val, _ = sampler.sample(rr.ravel(), cc.ravel())
                mm[i0:i1, j0:j1, 0] = _cast(val, dtype).reshape(i1 - i0, j1 - j0)
    return out


# -- world grid (NIfTI through a memory-mapped file, or OME-Zarr chunk by chunk) -------------------------
def _write_world_grid(
    src: Any,
    a0: NDArray,
    pix_mm: NDArray,
    g_aff: NDArray,
    shape: tuple[int, ...],
    out: Path,
    fmt: str,
    chunk: int,
    code: int = 1,
) -> Path:
    lin = a0[:3, :2]
    normal = np.cross(lin[:, 0], lin[:, 1])
    normal /= np.linalg.norm(normal)
    pinv = np.linalg.pinv(lin)  # (2, 3): world offset in the plane -> full-res (row, col)
    t0 = a0[:3, 3]
    vox = g_aff[:3, :3]
    # a voxel (parallelepiped with edges = vox columns) meets the plane iff |d| <= half its extent along n
    half = 0.5 * float(np.abs(normal @ vox).sum())
    vsize = float(np.cbrt(abs(np.linalg.det(vox))))
    g = (max(1.0, vsize / float(pix_mm[0])), max(1.0, vsize / float(pix_mm[1])))
    level = _level_for(src, g)
    dtype = _out_dtype(src.dtype)
    nx, ny, nz = shape
    c = int(chunk)
    # chunks the plane crosses: centre distance <= half the chunk's extent along n + one voxel
    starts = np.stack(np.meshgrid(*(np.arange(0, n, c) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    centres = (starts + (np.minimum(starts + c, shape) - starts - 1) / 2.0) @ vox.T + g_aff[:3, 3]
    reach = 0.5 * np.abs(normal @ vox).sum() * c + half
    crossed = starts[np.abs((centres - t0) @ normal) <= reach]
    log.info("world grid %s, %d of %d chunks crossed by the section", shape, len(crossed), len(starts))

    # sweep along the grid axis most aligned with the normal: each line of voxels along it meets the
    # plane's slab in a short run [k_lo, k_hi], so only voxels next to the plane are ever computed
    nv = normal @ vox  # (3,) normal distance per voxel step along each grid axis
    sweep = int(np.argmax(np.abs(nv)))
    o0, o1 = (a for a in range(3) if a != sweep)
    d_origin = float(normal @ (g_aff[:3, 3] - t0))

    def fill(write_block: Any, rd: Any) -> None:
        sampler = _Sampler(src, rd, level, g)
        for st in crossed:
            en = np.minimum(st + c, shape)
            ga, gb = np.meshgrid(np.arange(st[o0], en[o0]), np.arange(st[o1], en[o1]), indexing="ij")
            a, b = ga.ravel(), gb.ravel()
            base = d_origin + a * nv[o0] + b * nv[o1]
            k1, k2 = (-half - base) / nv[sweep], (half - base) / nv[sweep]
            lo = np.maximum(np.ceil(np.minimum(k1, k2) - 1e-9), st[sweep]).astype(np.int64)
            hi = np.minimum(np.floor(np.maximum(k1, k2) + 1e-9), en[sweep] - 1).astype(np.int64)
            counts = np.maximum(hi - lo + 1, 0)
            if counts.sum() == 0:
                continue
            rep = np.repeat(np.arange(len(a)), counts)
            offs = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            ijk = np.empty((len(rep), 3), np.int64)
            ijk[:, o0], ijk[:, o1], ijk[:, sweep] = a[rep], b[rep], lo[rep] + offs
            xyz = ijk @ vox.T + g_aff[:3, 3]
            rc = (xyz - t0) @ pinv.T
            val, inside = sampler.sample(rc[:, 0], rc[:, 1])
            if not inside.any():
                continue
            block = np.zeros(tuple(int(v) for v in en - st), dtype)
            loc = ijk[inside] - st
            block[loc[:, 0], loc[:, 1], loc[:, 2]] = _cast(val[inside], dtype)
            write_block(tuple(slice(int(x), int(y)) for x, y in zip(st, en, strict=True)), block)

    if fmt == "nifti":
        with _nifti_memmap(out, (nx, ny, nz), dtype, g_aff, code) as mm, src.open_level(level) as rd:

            def put(sl: tuple[slice, ...], block: NDArray) -> None:
                mm[sl] = block

            fill(put, rd)
        return out

    if np.any(np.abs(vox - np.diag(np.diag(vox))) > 1e-9) or np.any(np.diag(vox) <= 0):
        raise FileFormatError(
            "OME-Zarr stores only scale and translation, but this grid is rotated or flipped; write .nii.gz"
        )
    import zarr

    scale = [float(v) for v in np.diag(vox)[::-1]]  # NGFF axes z, y, x
    trans = [float(v) for v in g_aff[:3, 3][::-1]]
    with atomic_dir(out) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        arr = group.create_array("0", shape=(nz, ny, nx), dtype=dtype, chunks=(c, c, c), fill_value=0)

        def put_zarr(sl: tuple[slice, ...], block: NDArray) -> None:
            arr[sl[::-1]] = np.transpose(block, (2, 1, 0))

        with src.open_level(level) as rd:
            fill(put_zarr, rd)
        axes = [{"name": n, "type": "space", "unit": "millimeter"} for n in ("z", "y", "x")]
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "name": out.name,
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": scale},
                            {"type": "translation", "translation": trans},
                        ],
                    }
                ],
            }
        ]
        group.attrs["siibra_anchor"] = {"world_axes": "x, y, z (RAS+, mm) = NGFF x, y, z"}
    return out

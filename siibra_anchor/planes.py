"""Planes through volumes: 2D->3D section affines and resampling.

Conventions (see DESIGN.md): a section affine is a (4, 4) float64 matrix mapping the homogeneous pixel
coordinate ``(row, col, 0, 1)`` to world ``(x, y, z, 1)`` in millimetres (RAS+). Its first two columns are
the world step of one row / one column, its third column is the unit normal times the section thickness
(so the matrix is invertible with a positive determinant), its fourth the world position of pixel (0, 0).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from .errors import InvalidSectionError

__all__ = [
    "AXIS_OF_PLANE",
    "CANONICAL_PLANES",
    "world_bbox",
    "section_affine",
    "plane_affine",
    "sample_volume",
    "cut_plane",
    "pixel_to_world",
]

#: In-plane (row direction, column direction) unit vectors in RAS+ for the three canonical planes.
#: Rows run from superior to inferior (or anterior to posterior for axial), columns towards +x / +y,
#: which is how these planes are usually displayed.
CANONICAL_PLANES: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = {
    "coronal": (np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0])),
    "sagittal": (np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])),
    "axial": (np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0])),
}


def plane_basis(normal: ArrayLike) -> tuple[NDArray, NDArray]:
    """Two unit vectors ``(e1, e2)`` spanning the plane orthogonal to ``normal`` (normalised here), with
    ``cross(normal, e1) = e2``: a fixed choice, the same for ``normal`` and ``-normal`` up to sign."""
    n = np.asarray(normal, float)
    n = n / max(float(np.linalg.norm(n)), 1e-12)
    e1 = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 = e1 / np.linalg.norm(e1)
    return e1, np.cross(n, e1)


def section_affine(linear: ArrayLike, translation: ArrayLike, thickness_mm: float | None = None) -> NDArray:
    """Build the (4, 4) section affine from the 2D->3D linear part and translation.

    Parameters
    ----------
    linear : (3, 2) array, world mm per pixel step along rows (column 0) and columns (column 1).
    translation : (3,) array, world mm of pixel (0, 0).
    thickness_mm : section thickness; default the mean in-plane pixel spacing (norm of the columns).

    Returns
    -------
    (4, 4) float64 matrix whose third column is the unit normal ``cross(col0, col1)/|...|`` times the
    thickness, so its determinant is positive.
    """
    lin = np.asarray(linear, dtype=np.float64).reshape(3, 2)
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    n = np.cross(lin[:, 0], lin[:, 1])
    nn = float(np.linalg.norm(n))
    if not np.isfinite(nn) or nn <= 1e-12:
        raise InvalidSectionError(f"degenerate 2D->3D map (columns parallel): {lin.tolist()}")
    if thickness_mm is None:
        thickness_mm = float(np.mean(np.linalg.norm(lin, axis=0)))
    aff = np.eye(4)
    aff[:3, :2] = lin
    aff[:3, 2] = n / nn * float(thickness_mm)  # type: ignore[arg-type]
    aff[:3, 3] = t
    return aff


def plane_affine(
    center_mm: ArrayLike,
    row_dir: ArrayLike,
    col_dir: ArrayLike,
    spacing_mm: float | tuple[float, float],
    shape: tuple[int, int],
    thickness_mm: float | None = None,
) -> NDArray:
    """Affine of an (H, W) plane centred on ``center_mm`` with the given in-plane unit directions.

    The centre of the image (pixel ``((H-1)/2, (W-1)/2)``) lands on ``center_mm``.
    """
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (2,))
    sr, sc = float(sp[0]), float(sp[1])
    r = np.asarray(row_dir, float)
    c = np.asarray(col_dir, float)
    r = r / np.linalg.norm(r)
    c = c - r * float(r @ c)
    c = c / np.linalg.norm(c)
    lin = np.stack([r * sr, c * sc], axis=1)
    h, w = shape
    t = np.asarray(center_mm, float) - lin @ np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    return section_affine(lin, t, thickness_mm)


def pixel_to_world(affine: ArrayLike, rows: ArrayLike, cols: ArrayLike) -> NDArray:
    """World mm of pixel coordinates: (N,) rows and cols -> (N, 3)."""
    a = np.asarray(affine, float)
    rc = np.stack([np.asarray(rows, float).ravel(), np.asarray(cols, float).ravel()], axis=1)
    return rc @ a[:3, :2].T + a[:3, 3]


def sample_volume(
    data: NDArray, vol_affine: ArrayLike, points_mm: ArrayLike, order: int = 1, cval: float = 0.0
) -> NDArray:
    """Interpolate a 3D volume at world points.

    data : (I, J, K) array; vol_affine : (4, 4) voxel->mm; points_mm : (..., 3). Returns (...,) float32.
    Points outside the volume get ``cval``.
    """
    pts = np.asarray(points_mm, float)
    inv = np.linalg.inv(np.asarray(vol_affine, float))
    flat = pts.reshape(-1, 3)
    ijk = flat @ inv[:3, :3].T + inv[:3, 3]
    vals = ndimage.map_coordinates(
        np.asarray(data, np.float32), ijk.T, order=order, mode="constant", cval=cval, prefilter=False
    )
    return vals.reshape(pts.shape[:-1]).astype(np.float32)


def cut_plane(
    data: NDArray,
    vol_affine: ArrayLike,
    affine: ArrayLike,
    shape: tuple[int, int],
    order: int = 1,
    cval: float = 0.0,
) -> NDArray:
    """Resample a volume on the (H, W) pixel grid of a section affine. Returns (H, W) float32."""
    h, w = shape
    rr, cc = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    pts = pixel_to_world(affine, rr, cc).reshape(h, w, 3)
    return sample_volume(data, vol_affine, pts, order=order, cval=cval)


#: world axis (x, y, z = 0, 1, 2) each canonical plane is normal to
AXIS_OF_PLANE = {"sagittal": 0, "coronal": 1, "axial": 2}


def world_bbox(mask: NDArray, affine: NDArray) -> tuple[NDArray, NDArray]:
    """World (mm) bounding box ``(lo (3,), hi (3,))`` of the voxels of a 3D bool ``mask`` under the voxel ->
    world ``affine`` (4, 4): the extremes of the eight corner voxel centres of its index box."""
    ijk = np.argwhere(mask)
    lo, hi = ijk.min(axis=0), ijk.max(axis=0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    w = corners @ affine[:3, :3].T + affine[:3, 3]
    return w.min(axis=0), w.max(axis=0)

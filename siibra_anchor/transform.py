"""The anchoring as a transform: section pixels <-> world mm of a space, serialisable, movable between spaces.

:class:`SectionTransform` holds the (4, 4) matrix of DESIGN.md (pixel ``(row, col, 0, 1)`` -> world
``(x, y, z, 1)`` mm, RAS+, third column = unit normal x thickness), the space it maps into, and the pixel
grid it refers to (the image shape, and -- when the section was anchored on a reduced copy of a large file --
the file and the reduction factor). ``AnchoringResult.transform`` returns one.

* :meth:`SectionTransform.apply` -- (N,) rows, cols -> (N, 3) mm;
* :meth:`SectionTransform.inverse` -- (N, 3) mm -> rows, cols and the signed distance (mm) from the plane
  along its unit normal;
* :meth:`SectionTransform.to_space` -- the same section in another space: a grid of section points is
  warped through siibra's spatial-transformation service (MNI152 <-> Colin27 <-> BigBrain, online) and an
  affine is fitted to them by least squares; ``fit_residual_mm`` (RMS and max) says how far the (nonlinear)
  warp is from that affine over the section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidParameterError

__all__ = ["SectionTransform", "fit_section_affine"]


def fit_section_affine(
    rows: ArrayLike, cols: ArrayLike, points_mm: ArrayLike, thickness_mm: float | None = None
) -> tuple[NDArray, NDArray]:
    """Least-squares (4, 4) section affine mapping pixels (N,) rows, cols to (N, 3) ``points_mm``.

    Returns ``(affine, residuals_mm)`` with residuals (N,) = distance between fitted and given points.
    Needs at least 3 pixels not on one line.
    """
    from .planes import section_affine

    r = np.asarray(rows, float).ravel()
    c = np.asarray(cols, float).ravel()
    p = np.asarray(points_mm, float).reshape(-1, 3)
    if not len(r) == len(c) == len(p) or len(r) < 3:
        raise InvalidParameterError(
            f"need >= 3 matching pixels and points, got {len(r)} rows, {len(c)} cols, {len(p)} points"
        )
    design = np.stack([r, c, np.ones_like(r)], axis=1)
    if np.linalg.matrix_rank(design) < 3:
        raise InvalidParameterError("the pixels lie on one line; an affine of the plane is not determined")
    coef, *_ = np.linalg.lstsq(design, p, rcond=None)  # (3, 3): rows -> [row step, col step, origin]
    aff = section_affine(coef[:2].T, coef[2], thickness_mm)
    resid = np.linalg.norm(design @ coef - p, axis=1)
    return aff, resid


@dataclass(frozen=True, eq=False)
class SectionTransform:
    """Section pixels -> world mm of ``space`` (see the module docstring).

    Attributes
    ----------
    matrix : (4, 4) float64, pixel (row, col, 0, 1) -> world mm.
    space : canonical space key ("mni152", "colin27", ...).
    shape : (H, W) of the pixel grid the matrix refers to, or None when unknown.
    pixel_grid : where that grid comes from: ``{"file": path or None, "reduction": k}`` (pixel (r, c) of the
        grid is pixel (r * k + (k - 1) / 2, ...) of the file at full resolution), empty when unknown.
    fit_residual_mm : for a transform produced by :meth:`to_space`, ``{"rms": ..., "max": ..., "n": ...}``
        of the warped grid points about the fitted affine; empty otherwise.
    """

    matrix: NDArray
    space: str
    shape: tuple[int, int] | None = None
    pixel_grid: dict[str, Any] = field(default_factory=dict)
    fit_residual_mm: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-12:
            raise InvalidParameterError(f"matrix must be a finite invertible (4, 4) affine, got {m!r}")
        object.__setattr__(self, "matrix", m)
        if self.shape is not None:
            object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    def apply(self, rows: ArrayLike, cols: ArrayLike) -> NDArray:
        """(N, 3) world mm of pixels (N,) ``rows``, (N,) ``cols``."""
        from .planes import pixel_to_world

        return pixel_to_world(self.matrix, rows, cols)

    def inverse(self, points_mm: ArrayLike) -> tuple[NDArray, NDArray, NDArray]:
        """Pixels of world points: (N, 3) mm -> (N,) rows, (N,) cols (float) and (N,) signed distance (mm)
        of each point from the section plane along its unit normal (``matrix[:3, 2]`` direction)."""
        p = np.asarray(points_mm, float).reshape(-1, 3)
        ijk = (np.linalg.inv(self.matrix) @ np.c_[p, np.ones(len(p))].T).T
        thickness = float(np.linalg.norm(self.matrix[:3, 2]))
        return ijk[:, 0], ijk[:, 1], ijk[:, 2] * thickness

    def grid_pixels(self, n: int = 7) -> tuple[NDArray, NDArray]:
        """(n * n,) rows and cols of an even grid over the section (corners included)."""
        if self.shape is None:
            raise InvalidParameterError("the transform has no pixel grid shape; pass shape=(H, W)")
        h, w = self.shape
        rr, cc = np.meshgrid(np.linspace(0, h - 1, n), np.linspace(0, w - 1, n), indexing="ij")
        return rr.ravel(), cc.ravel()

    def to_space(
        self, space: Any, n: int = 7, online: bool | None = None, timeout_s: float = 120.0
    ) -> SectionTransform:
        """The section in ``space``: ``n x n`` section points warped with siibra, an affine fitted to them.

        Raises :class:`~siibra_anchor.errors.SpaceUnavailableError` when siibra cannot warp between the
        spaces (offline, or spaces the transformation service does not link).
        """
        from .extensions import extension

        warp_points = extension("warp_points")
        if int(n) < 2:
            raise InvalidParameterError(f"n must be >= 2 (grid points per side), got {n!r}")
        rows, cols = self.grid_pixels(int(n))
        target, pts = warp_points(self.apply(rows, cols), self.space, space, online=online, timeout_s=timeout_s)
        if target == self.space:
            return self
        thickness = float(np.linalg.norm(self.matrix[:3, 2]))
        aff, resid = fit_section_affine(rows, cols, pts, thickness)
        return SectionTransform(
            aff,
            target,
            self.shape,
            dict(self.pixel_grid),
            {"rms": float(np.sqrt(np.mean(resid**2))), "max": float(resid.max()), "n": float(len(resid))},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (see :meth:`from_dict`)."""
        return {
            "matrix": self.matrix.tolist(),
            "space": self.space,
            "shape": list(self.shape) if self.shape is not None else None,
            "pixel_grid": dict(self.pixel_grid),
            "fit_residual_mm": dict(self.fit_residual_mm),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SectionTransform:
        try:
            return cls(
                np.asarray(d["matrix"], float),
                str(d["space"]),
                tuple(d["shape"]) if d.get("shape") is not None else None,  # type: ignore[arg-type]
                dict(d.get("pixel_grid") or {}),
                {k: float(v) for k, v in (d.get("fit_residual_mm") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidParameterError(f"not a SectionTransform dict: {exc}") from exc

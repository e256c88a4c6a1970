"""Points between spaces through siibra's spatial-transformation service (MNI152 <-> Colin27 <-> BigBrain).

:func:`warp_points` sends world points (mm) of one space to siibra (``PointCloud.warp``, which posts them to
the service's ``/transform-points``) and returns them in the other, every call bounded by a timeout; failures
are :class:`~siibra_anchor.errors.SpaceUnavailableError` saying what to do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from siibra_anchor.errors import NetworkError, SpaceUnavailableError

__all__ = ["warp_points"]


def warp_points(
    points_mm: ArrayLike, source: Any, target: Any, online: bool | None = None, timeout_s: float = 120.0
) -> tuple[str, NDArray]:
    """``(target key, (N, 3) points in target mm)`` of (N, 3) ``points_mm`` given in space ``source``."""
    from siibra_anchor.net import call_with_timeout, retry

    from .siibra_config import get_siibra
    from .siibra_spaces import resolve_space, siibra_space

    src_key = resolve_space(source, online=online)
    tgt_key = resolve_space(target, online=online)
    pts = np.asarray(points_mm, float).reshape(-1, 3)
    if src_key == tgt_key:
        return tgt_key, pts.copy()
    siibra, _ = get_siibra(online=online, timeout_s=timeout_s)
    src = siibra_space(src_key, online=online, timeout_s=timeout_s)
    tgt = siibra_space(tgt_key, online=online, timeout_s=timeout_s)
    pc = siibra.PointCloud(pts, space=src)
    try:
        out = retry(call_with_timeout, pc.warp, tgt, timeout_s=timeout_s, what="warping points with siibra")
    except (NetworkError, ConnectionError) as exc:
        raise SpaceUnavailableError(
            f"siibra's spatial-transformation service did not answer ({exc}); warping {src_key!r} -> "
            f"{tgt_key!r} needs the network. Without it, anchor the section in the target space instead"
        ) from exc
    except Exception as exc:  # siibra's SpaceWarpingFailedError and HTTP errors
        raise SpaceUnavailableError(
            f"siibra cannot warp points from {src_key!r} to {tgt_key!r}: {exc}; "
            "siibra's transformation service links MNI152, Colin27 and BigBrain only"
        ) from exc
    got = np.asarray(out.coordinates, float).reshape(-1, 3)
    if got.shape != pts.shape or not np.all(np.isfinite(got)):
        raise SpaceUnavailableError(
            f"siibra's transformation service returned {got.shape} points (NaN: {bool(np.isnan(got).any())}) "
            f"for {pts.shape[0]}; the points may lie outside the {tgt_key!r} volume"
        )
    return tgt_key, got

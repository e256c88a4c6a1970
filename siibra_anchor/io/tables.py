"""CSV tables for people who script: anchored points and patch matches of one or more results.

* points: one row per section pixel, ``section, row, col, x_mm, y_mm, z_mm`` (pixel centres at integers,
  world mm of the result's space, RAS+), plus ``region, probability`` when a parcellation is asked for.
* matches: ``section`` plus the columns of :attr:`AnchoringResult.matches` (section pixel of each patch
  centre, mm of the matched reference patch, similarity, residual, inlier).

Files are written atomically; pandas reads them back with ``pd.read_csv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidParameterError

__all__ = ["points_table", "matches_table", "write_points_csv", "write_matches_csv", "POINT_COLUMNS"]

POINT_COLUMNS = ("section", "row", "col", "x_mm", "y_mm", "z_mm")


def _as_list(results: Any) -> list[Any]:
    res = [results] if hasattr(results, "affine") else list(results)
    if not res:
        raise InvalidParameterError("no results given to tabulate")
    return res


def _grid(result: Any, step: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres every ``step`` px (default: at most 64 along the longer side), on the tissue when the mask is known."""
    h, w = (int(v) for v in result.section.get("shape", (0, 0))[:2])
    if h < 1 or w < 1:
        raise InvalidParameterError(f"result {result.section.get('name')!r} has no section shape; pass rows and cols")
    if step is not None and (int(step) != step or step < 1):
        raise InvalidParameterError(f"step must be a whole number of pixels >= 1, got {step!r}")
    s = int(step) if step is not None else max(1, math.ceil(max(h, w) / 64))
    rr, cc = np.meshgrid(np.arange(s // 2, h, s, dtype=float), np.arange(s // 2, w, s, dtype=float), indexing="ij")
    rows, cols = rr.ravel(), cc.ravel()
    mask = getattr(result, "mask", None)
    if mask is not None and np.asarray(mask).shape[:2] == (h, w):
        keep = np.asarray(mask)[np.rint(rows).astype(int), np.rint(cols).astype(int)].astype(bool)
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def points_table(
    results: Any,
    rows: ArrayLike | None = None,
    cols: ArrayLike | None = None,
    *,
    step: int | None = None,
    parcellation: str | None = None,
    online: bool | None = False,
):
    """pandas DataFrame of section pixels and their world mm (columns :data:`POINT_COLUMNS`).

    results : one AnchoringResult or a sequence. rows, cols : (N,) pixel coordinates (the same for every
    result); default a grid of pixels every ``step`` px (at most 64 points along the longer side), on the tissue when the result
    holds its mask. parcellation : also look up the most probable region at each point (e.g. "julich"; see
    :func:`siibra_anchor.adapters.regions.load_table`), adding ``region`` ("" outside every region) and
    ``probability``; ``online`` as there (default False: the offline map, MNI152 only).
    """
    import pandas as pd

    frames = []
    for r in _as_list(results):
        if rows is None or cols is None:
            rr, cc = _grid(r, step)
        else:
            rr, cc = np.asarray(rows, np.float64).ravel(), np.asarray(cols, np.float64).ravel()
            if rr.shape != cc.shape:
                raise InvalidParameterError(f"rows and cols differ in length: {rr.shape} vs {cc.shape}")
        pts = r.to_points(rr, cc)
        df = pd.DataFrame(
            {
                "section": str(r.section.get("name", "section")),
                "row": rr,
                "col": cc,
                "x_mm": pts[:, 0],
                "y_mm": pts[:, 1],
                "z_mm": pts[:, 2],
            }
        )
        if parcellation is not None:
            from ..extensions import extension

            table = extension("region_table")(parcellation, space=r.space, online=online)
            idx, prob = table.sample(pts)
            df["region"] = [table.names[i] if i >= 0 else "" for i in idx]
            df["probability"] = prob
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def matches_table(results: Any):
    """pandas DataFrame of the patch matches of one or more results, with a leading ``section`` column."""
    import pandas as pd

    frames = []
    for r in _as_list(results):
        m = r.matches
        m.insert(0, "section", str(r.section.get("name", "section")))
        frames.append(m)
    return pd.concat(frames, ignore_index=True)


def _write_csv(df: Any, path: str | PathLike[str]) -> Path:
    from ..cache import atomic_write_text

    path = Path(path)
    atomic_write_text(path, df.to_csv(index=False, float_format="%.10g"))
    return path


def write_points_csv(results: Any, path: str | PathLike[str], **kwargs: Any) -> Path:
    """Write :func:`points_table` of ``results`` (keyword arguments as there) to ``path``. Returns the path."""
    return _write_csv(points_table(results, **kwargs), path)


def write_matches_csv(results: Any | Sequence[Any], path: str | PathLike[str]) -> Path:
    """Write :func:`matches_table` of ``results`` to ``path``. Returns the path."""
    return _write_csv(matches_table(results), path)

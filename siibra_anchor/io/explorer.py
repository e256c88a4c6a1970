"""Point annotations that siibra-explorer loads: openMINDS SANDS coordinate points, zipped.

siibra-explorer's annotation mode takes a ``.zip`` dropped onto the viewer (or exported from it) holding one
JSON file per annotation. A point is::

    {"@id": "<uuid>", "@type": "https://openminds.ebrains.eu/sands/CoordinatePoint",
     "coordinateSpace": {"@id": "<siibra space id>"},
     "coordinates": [{"@type": "https://openminds.ebrains.eu/core/QuantitativeValue",
                      "value": <x mm>, "unit": {"@id": "id.link/mm"}}, <y>, <z>]}

(format as read by siibra-explorer's ``Point.fromSANDS``: millimetres of the space, shown only while that
space is selected). :func:`write_explorer_annotations` writes the outline corners, the centre and the patch
centres of anchored sections that way.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidParameterError

__all__ = ["SANDS_POINT_TYPE", "sands_point", "explorer_points", "write_explorer_annotations"]

SANDS_POINT_TYPE = "https://openminds.ebrains.eu/sands/CoordinatePoint"
_QV_TYPE = "https://openminds.ebrains.eu/core/QuantitativeValue"
_MM = "id.link/mm"


def sands_point(xyz_mm: ArrayLike, space_id: str, point_id: str | None = None) -> dict[str, Any]:
    """One SANDS coordinate point (dict) at ``xyz_mm`` (3,) in the space with siibra id ``space_id``."""
    p = np.asarray(xyz_mm, np.float64).reshape(3)
    if not np.all(np.isfinite(p)):
        raise InvalidParameterError(f"point coordinates must be finite mm, got {p.tolist()}")
    return {
        "@id": point_id or str(uuid.uuid4()),
        "@type": SANDS_POINT_TYPE,
        "coordinateSpace": {"@id": space_id},
        "coordinates": [
            {"@id": str(uuid.uuid4()), "@type": _QV_TYPE, "value": float(v), "unit": {"@id": _MM}} for v in p
        ],
    }


def explorer_points(result: Any, patches: bool = True) -> list[tuple[str, np.ndarray]]:
    """(label, (3,) mm) of a result's outline corners, centre and (``patches``) inlier patch centres."""
    h, w = (int(v) for v in result.section.get("shape", (1, 1))[:2])
    name = str(result.section.get("name", "section"))
    rows = [-0.5, -0.5, h - 0.5, h - 0.5, (h - 1) / 2.0]
    cols = [-0.5, w - 0.5, w - 0.5, -0.5, (w - 1) / 2.0]
    labels = [f"{name} corner {k}" for k in ("top-left", "top-right", "bottom-right", "bottom-left")]
    labels.append(f"{name} centre")
    if patches:
        m = result.matches
        m = m[m["inlier"].to_numpy(bool)]
        rows += m["row"].tolist()
        cols += m["col"].tolist()
        labels += [f"{name} patch {i}" for i in m.index]
    pts = result.to_points(rows, cols)
    return list(zip(labels, pts, strict=True))


def write_explorer_annotations(results: Any, path: str | PathLike[str], patches: bool = True) -> Path:
    """Write the points of :func:`explorer_points` of one or more results as a siibra-explorer annotation zip.

    Drop the zip onto siibra-explorer with the results' space selected (the points carry its siibra id).
    Raises :class:`InvalidParameterError` for a space siibra-explorer does not know (custom spaces).
    Returns the path (written atomically).
    """
    from ..cache import atomic_file
    from ..spaces import SPACE_IDS

    res = [results] if hasattr(results, "affine") else list(results)
    if not res:
        raise InvalidParameterError("no results given to write as siibra-explorer annotations")
    path = Path(path)
    with atomic_file(path, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for r in res:
            space_id = SPACE_IDS.get(r.space)
            if space_id is None:
                raise InvalidParameterError(
                    f"siibra-explorer knows no space {r.space!r}; annotations can be written for {sorted(SPACE_IDS)}"
                )
            for _label, xyz in explorer_points(r, patches=patches):
                pt = sands_point(xyz, space_id)
                z.writestr(f"{pt['@id']}.sands.json", json.dumps(pt, indent=1))
    return path

"""QUINT series files: the JSON (and QuickNII XML) that QuickNII, VisuAlign, DeepSlice and PyNutil read.

A QUINT series holds one entry per section image::

    {"name": ..., "target": ..., "target-resolution": [I, J, K], "aligner": ...,
     "slices": [{"filename": "brain_s012.png", "nr": 12, "width": W, "height": H,
                 "anchoring": [ox, oy, oz, ux, uy, uz, vx, vy, vz]}, ...]}

``anchoring`` is in the *voxel frame of the target volume*: the image's top-left corner is at ``o``, ``u``
spans its full width and ``v`` its full height, so the normalised image point ``(x/W, y/H)`` lies at
``o + x/W u + y/H v``. In that frame voxel ``i`` covers ``[i, i + 1)`` (PyNutil floors the coordinate to
find the voxel), whereas NIfTI puts voxel centres at integers. With ``T`` the target's voxel -> world mm
affine and ``o_mm, u_mm, v_mm`` the anchoring in world mm (:meth:`AnchoringResult.to_quicknii`)::

    o_vox = T^-1 o_mm + 0.5        u_vox = L^-1 u_mm        v_vox = L^-1 v_mm      (L = T[:3, :3])

:func:`export_quint` writes a series from :class:`~siibra_anchor.result.AnchoringResult` objects,
:func:`import_quint` reads one (written here, by QuickNII, by DeepSlice or by VisuAlign) back into results.
VisuAlign's nonlinear ``markers`` are kept in ``result.diagnostics["quint"]["markers"]`` but not applied:
the results hold the linear (QuickNII) anchoring.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import CorruptFileError, FileFormatError, InvalidParameterError, SectionFileNotFoundError
from ..result import image_filename as quint_filename

__all__ = [
    "QuintTarget",
    "quint_target",
    "anchoring_to_voxels",
    "anchoring_to_world",
    "quint_filename",
    "quint_slice",
    "quint_series",
    "export_quint",
    "import_quint",
]

log = logging.getLogger(__name__)

_SECTION_NR = re.compile(r"_s(\d+)")
_XML_KEYS = ("ox", "oy", "oz", "ux", "uy", "uz", "vx", "vy", "vz")


@dataclass(frozen=True)
class QuintTarget:
    """The volume whose voxel frame a QUINT anchoring is written in.

    name : written as the series' ``target`` (a volume file name, e.g. the MNI152 2009c template's).
    shape : (I, J, K) voxels, written as ``target-resolution``.
    affine : (4, 4) voxel (NIfTI centre convention) -> world mm of ``space``.
    space : canonical space of the world frame ("mni152", "custom:<name>", ...).
    """

    name: str
    shape: tuple[int, int, int]
    affine: NDArray
    space: str


def _nifti_header_target(path: Path, name: str, space: str) -> QuintTarget:
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds for unreadable files
        raise CorruptFileError(f"cannot read target volume {path}: {exc}") from exc
    shape = tuple(int(v) for v in img.shape[:3])
    if len(shape) != 3:
        raise CorruptFileError(f"target volume {path} has shape {img.shape}; need a 3D volume")
    return QuintTarget(name, (shape[0], shape[1], shape[2]), np.asarray(img.affine, np.float64), space)


def quint_target(target: Any = None, space: str | None = None) -> QuintTarget:
    """Resolve ``target`` to a :class:`QuintTarget`.

    ``target`` : a :class:`QuintTarget`; a key of :data:`siibra_anchor.templates.VOLUMES` ("mni152", ...)
    or the file name of one (as written into ``target``); a path to a NIfTI volume; or None for the
    template of ``space`` (only "mni152" ships with the package). Shipped volumes are all in the MNI152
    world frame, so their space is "mni152"; a NIfTI path gets ``space`` (default "custom:<file stem>").
    Raises :class:`InvalidParameterError` when the target cannot be resolved.
    """
    from ..templates import VOLUMES, volume_path

    if isinstance(target, QuintTarget):
        return target
    if target is None:
        if space is None or space not in VOLUMES:
            raise InvalidParameterError(
                f"no shipped template for space {space!r} to write QUINT voxel coordinates in; pass "
                "target='mni152' or target=<path to the space's template NIfTI>"
            )
        target = space
    key = str(target)
    by_file = {v.parts[-1]: k for k, v in VOLUMES.items()}
    if key in by_file:
        key = by_file[key]
    if key in VOLUMES:
        p = volume_path(key)
        return _nifti_header_target(p, p.name, "mni152")
    p = Path(key)
    if p.is_file():
        stem = p.name.split(".")[0]
        return _nifti_header_target(p, p.name, space or f"custom:{stem}")
    raise InvalidParameterError(
        f"unknown QUINT target {target!r}: not a shipped volume {sorted(VOLUMES)} nor an existing NIfTI file; "
        "pass target=<path to the template NIfTI whose voxels the anchoring refers to>"
    )


def anchoring_to_voxels(anchoring_mm: ArrayLike, target_affine: ArrayLike) -> list[float]:
    """World-mm anchoring (9,) ``o, u, v`` -> the target's QUINT voxel frame (voxel i covers [i, i + 1))."""
    a = np.asarray(anchoring_mm, np.float64).reshape(9)
    inv = np.linalg.inv(np.asarray(target_affine, np.float64))
    o = inv[:3, :3] @ a[:3] + inv[:3, 3] + 0.5
    u = inv[:3, :3] @ a[3:6]
    v = inv[:3, :3] @ a[6:9]
    return [float(x) for x in (*o, *u, *v)]


def anchoring_to_world(anchoring_vox: ArrayLike, target_affine: ArrayLike) -> list[float]:
    """Inverse of :func:`anchoring_to_voxels`: QUINT voxel-frame anchoring (9,) -> world mm."""
    a = np.asarray(anchoring_vox, np.float64).reshape(9)
    t = np.asarray(target_affine, np.float64)
    o = t[:3, :3] @ (a[:3] - 0.5) + t[:3, 3]
    u = t[:3, :3] @ a[3:6]
    v = t[:3, :3] @ a[6:9]
    return [float(x) for x in (*o, *u, *v)]


def _section_numbers(filenames: Sequence[str]) -> list[int]:
    """QUINT ``nr``: the ``_sNNN`` numbers of the names when every name has a distinct one, else 1..N."""
    nrs = []
    for f in filenames:
        m = _SECTION_NR.findall(Path(f).name)
        if not m:
            return list(range(1, len(filenames) + 1))
        nrs.append(int(m[-1]))
    return nrs if len(set(nrs)) == len(nrs) else list(range(1, len(filenames) + 1))


def quint_slice(result: Any, target: Any = None, *, filename: str | None = None, nr: int | None = None) -> dict:
    """One QUINT slice entry (filename, nr, width, height, anchoring in the target's voxel frame)."""
    tgt = quint_target(target, result.space)
    if tgt.space != result.space:
        raise InvalidParameterError(
            f"the result is in space {result.space!r} but the QUINT target {tgt.name!r} is in {tgt.space!r}; "
            "pass the template of the result's space as target"
        )
    shape = result.section.get("shape")
    if not shape or len(shape) < 2:
        raise InvalidParameterError(
            f"result {result.section.get('name', '?')!r} has no section shape (H, W); QUINT needs width and height"
        )
    q = result.to_quicknii()
    entry: dict[str, Any] = {
        "filename": filename or quint_filename(result.section),
        "nr": int(nr) if nr is not None else 1,
        "width": int(q["width"]),
        "height": int(q["height"]),
        "anchoring": anchoring_to_voxels(q["anchoring"], tgt.affine),
    }
    return entry


def quint_series(
    results: Sequence[Any], target: Any = None, *, name: str = "", filenames: Sequence[str] | None = None
) -> dict:
    """The QUINT series dict of ``results`` (see the module docstring), ``nr`` from ``_sNNN`` names or order."""
    from .. import __version__

    results = list(results)
    if not results:
        raise InvalidParameterError("export_quint needs at least one result, got none")
    spaces = sorted({r.space for r in results})
    if len(spaces) > 1:
        raise InvalidParameterError(f"a QUINT series has one target, but the results are in spaces {spaces}")
    tgt = quint_target(target, spaces[0])
    names = list(filenames) if filenames is not None else [quint_filename(r.section) for r in results]
    if len(names) != len(results):
        raise InvalidParameterError(f"got {len(names)} filenames for {len(results)} results")
    nrs = _section_numbers(names)
    slices = [quint_slice(r, tgt, filename=f, nr=n) for r, f, n in zip(results, names, nrs, strict=True)]
    return {
        "name": name,
        "target": tgt.name,
        "target-resolution": list(tgt.shape),
        "aligner": f"siibra-anchor {__version__}",
        "slices": slices,
    }


def _series_xml(series: Mapping[str, Any]) -> str:
    """QuickNII XML of a series dict (``anchoring="ox=..&oy=.."`` per slice)."""
    slices = series["slices"]
    root = ET.Element(
        "series",
        {
            "name": str(series.get("name", "")),
            "first": str(slices[0]["nr"]),
            "last": str(slices[-1]["nr"]),
            "target": str(series.get("target", "")),
        },
    )
    for s in slices:
        anchoring = "&".join(f"{k}={float(v)!r}" for k, v in zip(_XML_KEYS, s["anchoring"], strict=True))
        ET.SubElement(
            root,
            "slice",
            {
                "filename": str(s["filename"]),
                "nr": str(s["nr"]),
                "width": str(s["width"]),
                "height": str(s["height"]),
                "anchoring": anchoring,
            },
        )
    ET.indent(root)
    return "<?xml version='1.0' encoding='utf-8'?>\n" + ET.tostring(root, encoding="unicode") + "\n"


def export_quint(
    results: Any,
    path: str | PathLike[str],
    target: Any = None,
    *,
    name: str | None = None,
    filenames: Sequence[str] | None = None,
    xml: bool | str | PathLike[str] = False,
) -> Path:
    """Write ``results`` (one :class:`AnchoringResult` or a sequence) as a QUINT series JSON at ``path``.

    Parameters
    ----------
    results : AnchoringResult or sequence of them (one series, one space).
    path : the JSON to write (atomic).
    target : the template whose voxel frame the anchorings are written in (see :func:`quint_target`);
        default the results' space's shipped template (MNI152 2009c for "mni152").
    name : series name (default: ``path``'s stem).
    filenames : image file names to write instead of the results' own (with extensions).
    xml : also write QuickNII's XML; True writes ``path`` with suffix ``.xml``, a path writes there.

    Returns the JSON path. Readable by QuickNII, VisuAlign, DeepSlice (``read_QUINT_JSON``) and PyNutil.
    """
    from ..cache import atomic_write_text

    path = Path(path)
    res = [results] if hasattr(results, "affine") else list(results)
    series = quint_series(res, target, name=path.stem.split(".")[0] if name is None else name, filenames=filenames)
    atomic_write_text(path, json.dumps(series, indent=1))
    if xml:
        xml_path = path.with_suffix(".xml") if xml is True else Path(xml)
        atomic_write_text(xml_path, _series_xml(series))
    return path


# -- reading -----------------------------------------------------------------------------------------------
def _read_series(path: Path) -> dict[str, Any]:
    """A series dict (``slices`` with ``anchoring``) from QUINT JSON, VisuAlign .waln/.wwrp or QuickNII XML."""
    if path.suffix.lower() == ".xml":
        # some QuickNII-era files leave the & between anchoring fields unescaped; escape bare ones first
        raw = re.sub(r"&(?!amp;|lt;|gt;|quot;|apos;|#)", "&amp;", path.read_text(encoding="utf-8", errors="replace"))
        try:
            root = ET.fromstring(raw)
        except ET.ParseError as exc:
            raise CorruptFileError(f"{path} is not valid XML ({exc})") from exc
        slices = []
        for el in root.iter("slice"):
            a = dict(kv.split("=", 1) for kv in el.get("anchoring", "").split("&") if "=" in kv)
            try:
                anchoring = [float(a[k]) for k in _XML_KEYS]
            except (KeyError, ValueError) as exc:
                raise CorruptFileError(f"{path}: slice {el.get('filename')!r} has no valid anchoring") from exc
            slices.append(
                {
                    "filename": el.get("filename", ""),
                    "nr": int(el.get("nr", 0) or 0),
                    "width": int(float(el.get("width", 0) or 0)),
                    "height": int(float(el.get("height", 0) or 0)),
                    "anchoring": anchoring,
                }
            )
        return {"name": root.get("name", ""), "target": root.get("target"), "slices": slices}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise CorruptFileError(f"{path} is not a QUINT series: a JSON object with 'slices' is expected")
    if "slices" not in d and isinstance(d.get("sections"), list):  # VisuAlign workspace (.waln/.wwrp)
        d = {**d, "slices": [{**s, "anchoring": s.get("anchoring", s.get("ouv"))} for s in d["sections"]]}
    if not isinstance(d.get("slices"), list):
        raise CorruptFileError(f"{path} is not a QUINT series: it has no 'slices' list")
    return d


def _image_for(images: Any, filename: str, index: int) -> Any:
    """The image given for slice ``filename`` (the ``index``-th), or None."""
    if images is None:
        return None
    if isinstance(images, (str, PathLike)):
        p = Path(images) / filename
        if not p.is_file():
            raise SectionFileNotFoundError(f"image {filename!r} of the QUINT series is not in {images}")
        return p
    if isinstance(images, Mapping):
        return images.get(filename, images.get(Path(filename).stem))
    return list(images)[index]


def import_quint(
    path: str | PathLike[str],
    images: Any = None,
    *,
    target: Any = None,
    space: str | None = None,
    thickness_mm: float | None = None,
) -> list[Any]:
    """Read a QUINT series (JSON, VisuAlign .waln/.wwrp, QuickNII XML) into :class:`AnchoringResult` objects.

    Parameters
    ----------
    path : the series file (written by :func:`export_quint`, QuickNII, DeepSlice or VisuAlign).
    images : optional, the section images: a folder holding the slices' files, a mapping
        ``filename -> Section | array | path``, or a sequence in slice order. With an image, the result's
        affine refers to that image's pixels (it may be a downscaled copy of the ``width x height`` the
        anchoring was made on) and the result holds the image; without, the pixels are ``width x height``.
    target : the template whose voxel frame the anchorings are in (default: the file's ``target`` when it
        names a shipped volume or a NIfTI file next to the series; see :func:`quint_target`).
    space : canonical space of the results (default: the target's).
    thickness_mm : section thickness written into the affine's third column (default: the pixel spacing).

    Anchorings without a target volume (e.g. DeepSlice's mouse atlases) cannot be placed in mm: pass
    ``target`` the atlas volume as NIfTI. VisuAlign markers are kept in ``diagnostics["quint"]`` only.
    """
    from ..result import AnchoringResult
    from ..section import Section

    path = Path(path)
    if not path.is_file():
        raise SectionFileNotFoundError(f"QUINT series not found: {path}")
    series = _read_series(path)
    if target is None:
        named = series.get("target")
        if not named:
            raise InvalidParameterError(f"{path} names no target volume; pass target=<template NIfTI or 'mni152'>")
        beside = path.parent / str(named)
        target = beside if beside.is_file() else named
    tgt = quint_target(target, space)
    out = []
    for i, s in enumerate(series["slices"]):
        anchoring = s.get("anchoring")
        filename = str(s.get("filename") or f"section_{i + 1}")
        if not anchoring or len(anchoring) != 9 or not np.all(np.isfinite(np.asarray(anchoring, float))):
            log.warning("slice %r of %s has no anchoring; skipped", filename, path)
            continue
        width, height = int(s.get("width") or 0), int(s.get("height") or 0)
        img = _image_for(images, filename, i)
        section_obj = None
        if isinstance(img, Section):
            section_obj = img
            arr = img.image
        elif isinstance(img, (str, PathLike)):
            from .formats import read_section_image

            arr = read_section_image(img, spacing_mm=1.0)[0]
        elif img is not None:
            arr = np.asarray(img)
        else:
            arr = None
        if arr is not None:
            height, width = int(arr.shape[0]), int(arr.shape[1])
        if width < 1 or height < 1:
            raise CorruptFileError(
                f"slice {filename!r} of {path} has no width/height; pass its image with images=... to size it"
            )
        world = anchoring_to_world(anchoring, tgt.affine)
        affine = AnchoringResult.affine_from_quicknii(world, width, height, thickness_mm)
        spacing = np.linalg.norm(affine[:3, :2], axis=0)
        markers = s.get("markers") or []
        if markers:
            log.info("slice %r: %d VisuAlign markers kept in diagnostics, not applied", filename, len(markers))
        result = AnchoringResult(
            affine,
            space or tgt.space,
            1.0,
            section={
                "name": Path(filename).stem,
                "shape": [height, width],
                "spacing_mm": [float(v) for v in spacing],
                "modality": section_obj.modality if section_obj is not None else "unknown",
                **({"path": str(Path(img).resolve())} if isinstance(img, (str, PathLike)) else {}),
            },
            diagnostics={
                "source": "quint",
                "confidence": "not estimated: imported from a QUINT series",
                "quint": {
                    "file": str(path),
                    "filename": filename,
                    "nr": s.get("nr"),
                    "target": tgt.name,
                    "aligner": series.get("aligner"),
                    "anchoring": [float(v) for v in anchoring],
                    "markers": markers,
                },
            },
            image=arr,
        )
        out.append(result)
    if not out:
        raise FileFormatError(f"{path} holds no anchored slice")
    return out

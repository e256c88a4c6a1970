"""The :class:`AnchoringResult`: where a section lies in a space, how sure we are, and why.

``affine`` follows DESIGN.md: (4, 4) float64 mapping pixel ``(row, col, 0, 1)`` of the *original* section
image to world ``(x, y, z, 1)`` mm (RAS+) of ``space``; third column = unit normal x thickness.
Results save to versioned JSON (pydantic) and load back exactly (floats round-trip through ``repr``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import CorruptFileError, SchemaVersionError, SectionFileNotFoundError

__all__ = ["AnchoringResult", "RESULT_SCHEMA_VERSION", "MATCH_COLUMNS", "encode_mask", "decode_mask", "pixel_grid_of"]

RESULT_SCHEMA_VERSION = 1
MATCH_COLUMNS = ("row", "col", "x", "y", "z", "similarity", "residual_mm", "inlier")


class Alternative(BaseModel):
    """Another distinct placement that was considered, with its scores."""

    model_config = ConfigDict(extra="forbid")
    affine: list[list[float]]
    score: float = Field(description="image similarity (NMI gain over a shifted plane) of this placement")
    inlier_fraction: float
    label: str = Field(description="how it differs from the chosen one: 'mirrored', 'other hemisphere', ...")


class _ResultModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = RESULT_SCHEMA_VERSION
    siibra_anchor_version: str
    space: str
    affine: list[list[float]]
    confidence: float
    section: dict[str, Any]
    matches: dict[str, list[float]]
    alternatives: list[Alternative] = []
    diagnostics: dict[str, Any] = {}
    encoder_hash: str = ""
    reference: dict[str, Any] = {}
    # added in 0.x without a schema bump: older files lack them and load with no mask / an unknown grid
    tissue_mask: dict[str, Any] | None = None
    pixel_grid: dict[str, Any] = {}


def encode_mask(mask: NDArray) -> dict[str, Any]:
    """JSON-able compressed (H, W) bool mask: ``{"shape", "encoding": "packbits+zlib+base64", "data"}``."""
    import base64
    import zlib

    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise CorruptFileError(f"a tissue mask must be 2D (H, W), got shape {m.shape}")
    data = base64.b64encode(zlib.compress(np.packbits(m.ravel()).tobytes(), 6)).decode("ascii")
    return {"shape": [int(m.shape[0]), int(m.shape[1])], "encoding": "packbits+zlib+base64", "data": data}


def decode_mask(d: dict[str, Any]) -> NDArray:
    """(H, W) bool mask of :func:`encode_mask`'s dict."""
    import base64
    import binascii
    import zlib

    try:
        if d.get("encoding") != "packbits+zlib+base64":
            raise ValueError(f"unknown mask encoding {d.get('encoding')!r}")
        h, w = (int(v) for v in d["shape"])
        bits = np.frombuffer(zlib.decompress(base64.b64decode(d["data"])), np.uint8)
        return np.unpackbits(bits, count=h * w).astype(bool).reshape(h, w)
    except (KeyError, TypeError, ValueError, zlib.error, binascii.Error) as exc:
        raise CorruptFileError(f"not a valid tissue mask in the result: {exc}") from exc


def pixel_grid_of(section: Any) -> dict[str, Any]:
    """The pixel grid an affine of ``section`` refers to: ``{"file": path or None, "reduction": [fr, fc]}``.

    ``reduction`` is full-resolution file pixels per section pixel (block means: section pixel (i, j) is
    centred on file pixel ``(i * fr + (fr - 1) / 2, j * fc + (fc - 1) / 2)``), see ``Section.downsample``.
    """
    src = getattr(section, "source", None)
    fr, fc = getattr(section, "downsample", (1.0, 1.0))
    return {"file": str(Path(src).resolve()) if src else None, "reduction": [float(fr), float(fc)]}


AMBIGUOUS_MARGIN = 0.04
"""A distinct alternative placement scoring within this NMI gain of the chosen one makes it ambiguous."""


class AnchoringResult:
    """Result of :func:`siibra_anchor.anchor`.

    Attributes
    ----------
    affine : (4, 4) float64, pixel (row, col, 0, 1) -> world mm of ``space``.
    space : canonical space key.
    confidence : float in [0, 1]; low when the section could not be placed reliably.
    matches : pandas DataFrame, one row per section patch: row, col (original pixels), x, y, z (mm of the
        matched reference patch), similarity, residual_mm (distance to where the affine puts the patch),
        inlier.
    alternatives : list of dicts (affine, score, inlier_fraction, label) of other distinct placements.
    section : dict with name, shape, spacing_mm, modality (and the tissue mask is kept in memory when the
        result comes from :func:`anchor`, as ``mask``, for region queries and viewers).
    diagnostics : timings, scores and parameters that explain the result.
    mask : (H, W) bool tissue mask or None; saved (compressed) with the result and loaded back.
    pixel_grid : ``{"file": ..., "reduction": [fr, fc]}``, the pixel grid ``affine`` refers to (see
        :func:`pixel_grid_of`); empty when unknown.
    transform : the anchoring as a :class:`~siibra_anchor.transform.SectionTransform`.
    """

    def __init__(
        self,
        affine: ArrayLike,
        space: str,
        confidence: float,
        matches: dict[str, ArrayLike] | None = None,
        alternatives: list[dict[str, Any]] | None = None,
        section: dict[str, Any] | None = None,
        diagnostics: dict[str, Any] | None = None,
        encoder_hash: str = "",
        reference: dict[str, Any] | None = None,
        mask: NDArray | None = None,
        image: NDArray | None = None,
        pixel_grid: dict[str, Any] | None = None,
    ) -> None:
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise CorruptFileError(f"affine must be a finite (4, 4) matrix, got shape {a.shape}")
        self.affine: NDArray = a
        self.space = str(space)
        self.confidence = float(np.clip(confidence, 0.0, 1.0))
        m = matches or {c: [] for c in MATCH_COLUMNS}
        self._matches = {c: np.asarray(m.get(c, []), dtype=bool if c == "inlier" else float) for c in MATCH_COLUMNS}
        self.alternatives = list(alternatives or [])
        self.section = dict(section or {})
        self.diagnostics = dict(diagnostics or {})
        self.encoder_hash = str(encoder_hash)
        self.reference = dict(reference or {})
        self.mask = mask
        self.image = image
        self.pixel_grid: dict[str, Any] = dict(pixel_grid or {})

    @classmethod
    def unplaced(cls, section: Any, reason: str, space: str = "mni152") -> AnchoringResult:
        """The result for a section that could not be placed: :attr:`placed` is False, the confidence 0,
        ``diagnostics["unplaced"]`` says why, and the affine is only the section's pixel grid at the origin
        (no placement: do not use it as one)."""
        sr, sc = (float(v) for v in section.spacing_mm)
        aff = np.diag([sr, sc, float(np.mean(section.spacing_mm)), 1.0])
        info = {"name": section.name, "shape": list(section.shape), "spacing_mm": [sr, sc]}
        return cls(
            aff,
            space,
            0.0,
            section={**info, "modality": section.modality},
            diagnostics={"unplaced": reason, "flags": ["failed", "unplaced"]},
            mask=section.mask,
            image=section.image,
        )

    @property
    def placed(self) -> bool:
        """False for a section that could not be placed (see :meth:`unplaced`)."""
        return "unplaced" not in self.diagnostics

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def matches(self):
        """Per-patch table (pandas DataFrame) with columns :data:`MATCH_COLUMNS`."""
        import pandas as pd

        return pd.DataFrame({c: self._matches[c] for c in MATCH_COLUMNS})

    def to_points(self, rows: ArrayLike, cols: ArrayLike) -> NDArray:
        """World mm (N, 3) of pixel coordinates (N,) rows, (N,) cols of the original section image."""
        from .planes import pixel_to_world

        return pixel_to_world(self.affine, rows, cols)

    @property
    def transform(self):
        """The anchoring as a :class:`~siibra_anchor.transform.SectionTransform` (pixel <-> space mm):
        ``apply(rows, cols)``, ``inverse(points)``, ``to_space(name)``."""
        from .transform import SectionTransform

        sh = self.section.get("shape")
        shape = (int(sh[0]), int(sh[1])) if sh and len(sh) >= 2 else None
        return SectionTransform(self.affine, self.space, shape, dict(self.pixel_grid))

    @property
    def center_mm(self) -> NDArray:
        """World mm of the image centre pixel."""
        h, w = self.section.get("shape", (1, 1))[:2]
        return self.to_points([(h - 1) / 2.0], [(w - 1) / 2.0])[0]

    @property
    def normal(self) -> NDArray:
        """Unit normal of the section plane (3,)."""
        n = self.affine[:3, 2]
        return n / np.linalg.norm(n)

    @property
    def in_plane_rotation_deg(self) -> float:
        """Angle (degrees) between the image's row axis and the world axis it is closest to, in-plane."""
        r = self.affine[:3, 0] / np.linalg.norm(self.affine[:3, 0])
        n = self.normal
        ax = np.eye(3)
        # reference "down" direction of the closest canonical plane: -z unless the plane is axial
        down = -ax[1] if abs(n[2]) > max(abs(n[0]), abs(n[1])) else -ax[2]
        down = down - n * float(down @ n)
        down /= np.linalg.norm(down)
        return float(np.degrees(np.arctan2(float(np.cross(down, r) @ n), float(down @ r))))

    @property
    def plane_name(self) -> str:
        """Closest canonical plane: 'sagittal', 'coronal' or 'axial', with the tilt off it in degrees."""
        n = np.abs(self.normal)
        i = int(np.argmax(n))
        tilt = float(np.degrees(np.arccos(np.clip(n[i], -1, 1))))
        return f"{('sagittal', 'coronal', 'axial')[i]} (tilted {tilt:.1f} deg)"

    @property
    def pixel_spacing_mm(self) -> NDArray:
        """(2,) fitted mm per pixel along rows and columns."""
        return np.linalg.norm(self.affine[:3, :2], axis=0)

    def summary(self) -> str:
        """A few lines a person can read."""
        c = self.center_mm
        n = self.normal
        sp = self.pixel_spacing_mm
        if not self.placed:
            return (
                f"section     {self.section.get('name', '?')}  {tuple(self.section.get('shape', ()))} px\n"
                f"UNPLACED    {self.diagnostics['unplaced']}"
            )
        lines = [
            f"section     {self.section.get('name', '?')}  {tuple(self.section.get('shape', ()))} px",
            f"space       {self.space}",
            f"confidence  {self.confidence:.2f}",
            f"centre      x={c[0]:.1f} y={c[1]:.1f} z={c[2]:.1f} mm",
            f"plane       {self.plane_name}, normal ({n[0]:.2f}, {n[1]:.2f}, {n[2]:.2f})",
            f"in-plane    rotation {self.in_plane_rotation_deg:.1f} deg, fitted spacing "
            f"{sp[0]:.4g} x {sp[1]:.4g} mm/px (stated {self.section.get('spacing_mm')})",
        ]
        try:  # the stated spacing as recorded (a loaded file may hold anything there: then no scale line)
            stated = np.asarray(self.section.get("spacing_mm") or [np.nan, np.nan], float).reshape(-1)
        except (TypeError, ValueError):
            stated = np.array([np.nan])
        if stated.size in (1, 2) and np.all(stated > 0):
            f = np.asarray(sp, float) / np.broadcast_to(stated, (2,))
            lines.append(
                f"scale       {f[0]:.3f} (rows) x {f[1]:.3f} (columns) true / stated spacing, anisotropy "
                f"{max(f) / min(f):.3f} (histology shrinks unevenly; see docs/method.md)"
            )
        if self.alternatives:
            lines.append(
                "alternatives " + "; ".join(f"{a['label']} (score {a['score']:.3f})" for a in self.alternatives[:3])
            )
        amb = self.ambiguity()
        if amb:
            lines.append(f"AMBIGUOUS   {amb}")
        if self.diagnostics.get("hints_unmet"):
            lines.append(
                "HINTS UNMET no placement respected the hints given (hemisphere, cut); this is the best one that "
                "does not: check the hints, or treat the section as unplaced"
            )
        return "\n".join(lines)

    def ambiguity(self, margin: float = AMBIGUOUS_MARGIN) -> str | None:
        """Why the placement is ambiguous and which hint would settle it, or None when it is not.

        A placement is ambiguous when a distinct alternative (``alternatives``: > 10 mm away over the
        tissue) scores within ``margin`` of the chosen one (the score is the NMI gain of the section
        against the reference on the candidate plane, see ``diagnostics["nmi_gain"]``).
        """
        best = self.diagnostics.get("nmi_gain")
        if best is None or not self.alternatives:
            return None
        close = [a for a in self.alternatives if float(best) - float(a["score"]) < margin]
        if not close:
            return None
        a = close[0]
        gap = float(best) - float(a["score"])
        label = str(a.get("label", "other placement"))
        if label == "other hemisphere" and self.diagnostics.get("hemisphere") is None:
            side = "left" if self.center_mm[0] < 0 else "right"
            other = "right" if side == "left" else "left"
            return (
                f"the {other} hemisphere fits almost as well as the {side} one (score gap {gap:.3f}); "
                f"if you know which hemisphere the section holds, pass hemisphere='left' or 'right' "
                f"(CLI: --hemisphere left|right)"
            )
        if label.startswith("mirrored") and self.diagnostics.get("flipped") is None:
            return (
                f"the mirrored mounting fits almost as well (score gap {gap:.3f}); if you know how the section "
                f"was mounted, pass flipped=False (face up) or flipped=True (face down) "
                f"(CLI: --not-flipped / --flipped)"
            )
        alt_centre = np.asarray(a["affine"], dtype=float)[:3, :] @ np.array(
            [*(np.asarray(self.section.get("shape", (1, 1))[:2], dtype=float) - 1) / 2.0, 0.0, 1.0]
        )
        dist = float(np.linalg.norm(alt_centre - self.center_mm))
        return (
            f"a {label} {dist:.0f} mm away fits almost as well (score gap {gap:.3f}); look at the QC figure "
            f"(result.plot_qc) before using this placement, or anchor against a reference closer to your data"
        )

    def __repr__(self) -> str:
        return f"AnchoringResult(space={self.space!r}, confidence={self.confidence:.2f}, centre={self.center_mm.round(1).tolist()})"

    # -- QuickNII / DeepSlice -----------------------------------------------------------------------
    def to_quicknii(self, target: Any = None) -> dict[str, Any]:
        """One QUINT slice entry: ``{"filename", "nr", "width", "height", "anchoring": [ox, oy, oz, ux, ..., vz]}``.

        ``o`` is the image's top-left *corner*, ``u`` spans the full image width and ``v`` the full height,
        so pixel centre (row, col) lies at ``o + (col + 0.5) / W * u + (row + 0.5) / H * v`` -- QuickNII's
        normalised image coordinates. ``filename`` is the image's file name with its extension.

        Without ``target`` the vectors are in world mm of ``space`` (and the entry names ``space``); QuickNII,
        VisuAlign, DeepSlice and PyNutil read anchorings in a target volume's *voxels*: pass ``target``
        (e.g. "mni152" or a template NIfTI path) for that frame, or write a whole series with
        :func:`siibra_anchor.export_quint` (see :mod:`siibra_anchor.io.quint`).
        """
        if target is not None:
            from .extensions import extension

            return extension("quint_slice")(self, target)
        h, w = self.section["shape"][:2]
        a = self.affine
        o = a[:3, :2] @ np.array([-0.5, -0.5]) + a[:3, 3]
        u = a[:3, 1] * w
        v = a[:3, 0] * h
        return {
            "filename": image_filename(self.section),
            "nr": 1,
            "width": int(w),
            "height": int(h),
            "anchoring": [float(x) for x in (*o, *u, *v)],
            "space": self.space,
        }

    @staticmethod
    def affine_from_quicknii(
        anchoring: ArrayLike, width: int, height: int, thickness_mm: float | None = None
    ) -> NDArray:
        """Inverse of :meth:`to_quicknii`: the (4, 4) pixel->mm affine of an o, u, v anchoring."""
        from .planes import section_affine

        v9 = np.asarray(anchoring, float).reshape(9)
        o, u, v = v9[:3], v9[3:6], v9[6:9]
        lin = np.stack([v / height, u / width], axis=1)
        t = o + lin @ np.array([0.5, 0.5])
        return section_affine(lin, t, thickness_mm)

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        model = _ResultModel(
            siibra_anchor_version=__version__,
            space=self.space,
            affine=self.affine.tolist(),
            confidence=self.confidence,
            section=_jsonable(self.section),
            matches={c: self._matches[c].astype(float).tolist() for c in MATCH_COLUMNS},
            alternatives=[Alternative(**{**a, "affine": np.asarray(a["affine"]).tolist()}) for a in self.alternatives],
            diagnostics=_jsonable(self.diagnostics),
            encoder_hash=self.encoder_hash,
            reference=_jsonable(self.reference),
            tissue_mask=encode_mask(self.mask) if self.mask is not None else None,
            pixel_grid=_jsonable(self.pixel_grid),
        )
        return model.model_dump(mode="json")

    def save(self, path: str | PathLike[str]) -> Path:
        """Write the result as JSON (atomic). Returns the path."""
        from .cache import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnchoringResult:
        if not isinstance(d, dict):
            raise CorruptFileError(f"an anchoring result must be a JSON object, got {type(d).__name__}")
        ver = d.get("schema_version")
        if isinstance(ver, int) and ver > RESULT_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"result has schema version {ver}, newer than this siibra-anchor understands "
                f"({RESULT_SCHEMA_VERSION}); upgrade siibra-anchor"
            )
        try:
            m = _ResultModel.model_validate(d)
        except ValidationError as exc:
            raise CorruptFileError(
                f"not a valid anchoring result: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"
            ) from exc
        if not 0.0 <= m.confidence <= 1.0:  # also refuses NaN
            raise CorruptFileError(f"not a valid anchoring result: confidence {m.confidence!r} is not in [0, 1]")
        lengths = {k: len(v) for k, v in m.matches.items() if k in MATCH_COLUMNS}
        if len(set(lengths.values())) > 1:
            raise CorruptFileError(f"not a valid anchoring result: match columns differ in length {lengths}")
        n = next(iter(lengths.values()), 0)
        mask = decode_mask(m.tissue_mask) if m.tissue_mask is not None else None
        sh = m.section.get("shape")
        if mask is not None and sh and tuple(mask.shape) != tuple(int(v) for v in sh[:2]):
            raise CorruptFileError(f"not a valid anchoring result: tissue mask {mask.shape} vs section shape {sh}")
        matches = {c: m.matches.get(c, [False if c == "inlier" else float("nan")] * n) for c in MATCH_COLUMNS}
        try:
            return cls(
                affine=m.affine,
                space=m.space,
                confidence=m.confidence,
                matches=matches,  # type: ignore[arg-type]
                alternatives=[a.model_dump() for a in m.alternatives],
                section=m.section,
                diagnostics=m.diagnostics,
                encoder_hash=m.encoder_hash,
                reference=m.reference,
                mask=mask,
                pixel_grid=m.pixel_grid,
            )
        except (ValueError, TypeError) as exc:  # e.g. a ragged affine
            raise CorruptFileError(f"not a valid anchoring result: {exc}") from exc

    @classmethod
    def load(cls, path: str | PathLike[str]) -> AnchoringResult:
        """Read a result written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise SectionFileNotFoundError(f"result file not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"{path} is not valid JSON ({exc}); re-run the anchoring") from exc
        return cls.from_dict(d)

    # -- bridges (implemented in adapters/ and viewer/) -------------------------------------------
    def to_siibra(self, space: Any = None, **kwargs: Any):
        """siibra PointClouds (outline, patch centres) and Volume of the section, in ``space`` (default: its own).

        See :func:`siibra_anchor.adapters.siibra_objects.result_to_siibra`; warping to another space is online.
        """
        from .extensions import extension

        return extension("result_to_siibra")(self, space=space, **kwargs)

    def assign_regions(self, parcellation: str = "julich", **kwargs: Any):
        """Regions the anchored tissue touches (see :mod:`siibra_anchor.adapters.regions`)."""
        from .extensions import extension

        return extension("assign_regions")(self, parcellation=parcellation, **kwargs)

    def plot_qc(self, path: str | PathLike[str] | None = None, section: Any = None, **kwargs: Any):
        """Quality-control figure (matplotlib Figure; also written to ``path``), see :func:`siibra_anchor.qc.plot_qc`.

        ``section`` (a Section, image or path) is needed when the result holds no image (loaded from JSON).
        """
        from .qc import plot_qc

        return plot_qc(self, path=path, section=section, **kwargs)

    def neuroglancer_url(self, **kwargs: Any) -> str:
        """Neuroglancer link showing the section in the reference volume (see :mod:`siibra_anchor.viewer`)."""
        from .extensions import extension

        return extension("neuroglancer_url")(self, **kwargs)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def image_filename(section: Mapping[str, Any], default_ext: str = ".png") -> str:
    """The image file name of a result's section (``result.section``), with its extension.

    The base name of ``section["path"]`` when the result came from a file, else ``section["name"]``, with
    ``default_ext`` appended when the name has no extension (QUINT tools open the image by this name).
    """
    path = section.get("path")
    if path:
        return Path(str(path)).name
    name = Path(str(section.get("name") or "section")).name
    return name if Path(name).suffix else name + default_ext

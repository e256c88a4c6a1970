"""Neuroglancer state of an anchored section: the section placed by its affine inside the reference volume.

Coordinates
-----------
The global coordinate space of every state built here is ``x, y, z`` in millimetres, the world (RAS+)
coordinates of the result's space. Volumes (template, section) are referenced as *precomputed* sources
whose scale-0 voxel is declared as 1 mm "index unit", so a layer transform is simply the NIfTI-style
voxel -> mm affine. Precomputed voxel ``i`` covers ``[i, i + 1)`` in Neuroglancer (centre at ``i + 0.5``)
while NIfTI and :attr:`AnchoringResult.affine` put the centre at ``i``; :func:`voxel_transform_matrix` shifts
by -0.5 voxel so that pixel centres land exactly where the affine says.

A section image ``(H, W)`` is stored as a precomputed volume of size ``(H, W, 1)`` with Neuroglancer axis
``x`` = image row, ``y`` = image column and ``z`` = the one-voxel-thick slab along the section normal.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from siibra_anchor.errors import InvalidSectionError, MissingDependencyError

from .errors import ViewerArgumentError

__all__ = [
    "EBRAINS_MNI152_URL",
    "EBRAINS_PREFIX",
    "MNI152_2009C_AFFINE",
    "MAX_URL_LENGTH",
    "build_state",
    "result_url",
    "write_state",
    "precomputed_affine",
    "fetch_precomputed_affine",
    "transform_json",
    "voxel_transform_matrix",
    "section_orientation",
    "world_dimensions",
]

logger = logging.getLogger(__name__)

EBRAINS_PREFIX = "https://neuroglancer.humanbrainproject.eu/"
#: Public EBRAINS precomputed MNI152 ICBM 2009c (masked T1). Online only; see docs/viewer.md.
EBRAINS_MNI152_URL = (
    "precomputed://https://neuroglancer.humanbrainproject.eu/precomputed/Fiber_Bundle/"
    "mni_icbm152_t1_tal_nlin_asym_09c_masked"
)
#: voxel -> mm affine of the MNI152 2009c 1 mm grid (193, 229, 193) shipped offline; the EBRAINS copy's
#: own ``info`` and ``transform.json`` are read instead when the network is there
#: (:func:`fetch_precomputed_affine`); this is the offline fallback.
MNI152_2009C_AFFINE = np.array(
    [[1.0, 0.0, 0.0, -96.0], [0.0, 1.0, 0.0, -132.0], [0.0, 0.0, 1.0, -78.0], [0.0, 0.0, 0.0, 1.0]]
)

#: Links longer than this (characters) are hard to paste into mails, chats and some browsers.
MAX_URL_LENGTH = 8000

#: RGB tint of the section (the template is grey, so the section stands out).
SECTION_TINT = (1.0, 0.62, 0.2)
INLIER_COLOR = "#00e000"
OUTLIER_COLOR = "#ff2020"
OUTLINE_COLOR = "#ffff00"


def _ng():
    try:
        import neuroglancer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError(
            "the viewer needs the 'neuroglancer' package: pip install 'siibra-anchor[viewer]'"
        ) from exc
    return neuroglancer


def world_dimensions():
    """Global ``x, y, z`` dimensions in mm (``neuroglancer.CoordinateSpace``)."""
    ng = _ng()
    return ng.CoordinateSpace(names=["x", "y", "z"], units="mm", scales=[1.0, 1.0, 1.0])


def voxel_transform_matrix(affine: ArrayLike, corner_origin: bool = True) -> NDArray:
    """(3, 4) Neuroglancer layer matrix from a NIfTI-style voxel -> mm affine.

    Parameters
    ----------
    affine : (4, 4) array
        Maps voxel index ``(i, j, k, 1)`` (voxel centres at integers) to world ``(x, y, z, 1)`` in mm.
    corner_origin : bool
        True for sources whose voxel ``i`` spans ``[i, i+1)`` (precomputed, plain zarr): the matrix then
        includes the -0.5 voxel shift. False for OME-Zarr (centre convention already).

    Returns
    -------
    (3, 4) float64 matrix ``M`` with ``world = M @ (p, 1)`` for a Neuroglancer source coordinate ``p``.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InvalidSectionError(f"affine must be a finite (4, 4) matrix, got shape {a.shape}")
    m = a[:3, :].copy()
    if corner_origin:
        m[:, 3] -= a[:3, :3] @ np.full(3, 0.5)
    return m


def _source_transform(
    affine: ArrayLike, names: Sequence[str] = ("x", "y", "z"), scales: Sequence[float] = (1.0, 1.0, 1.0)
):
    ng = _ng()
    m = voxel_transform_matrix(affine)
    return ng.CoordinateSpaceTransform(
        input_dimensions=ng.CoordinateSpace(names=list(names), units="mm", scales=[float(v) for v in scales]),
        output_dimensions=world_dimensions(),
        matrix=m.tolist(),
    )


def _quaternion_from_matrix(r: NDArray) -> list[float]:
    """Unit quaternion ``[x, y, z, w]`` (Neuroglancer order) of a proper rotation matrix (3, 3)."""
    m = r
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w], dtype=np.float64)
    return (q / np.linalg.norm(q)).tolist()


def section_orientation(affine: ArrayLike) -> tuple[NDArray, list[float]]:
    """Rotation whose view axes lie in the section plane.

    Returns
    -------
    rot : (3, 3) float64
        Columns: world direction of screen-right (image columns increasing), screen-down (image rows
        increasing, orthogonalised) and their cross product (the viewing normal).
    quaternion : list of 4 floats
        The same rotation as ``[x, y, z, w]``, for ``crossSectionOrientation``.
    """
    a = np.asarray(affine, dtype=np.float64)
    right = a[:3, 1] / np.linalg.norm(a[:3, 1])
    down = a[:3, 0] - right * float(a[:3, 0] @ right)
    nd = np.linalg.norm(down)
    if nd < 1e-12:
        raise InvalidSectionError("affine row and column axes are parallel; the section plane is undefined")
    down /= nd
    rot = np.stack([right, down, np.cross(right, down)], axis=1)
    return rot, _quaternion_from_matrix(rot)


def _section_shape(result: Any, image: NDArray | None) -> tuple[int, int]:
    shape = result.section.get("shape")
    if shape is None and image is not None:
        shape = np.shape(image)[:2]
    if shape is None:
        raise InvalidSectionError("result.section has no 'shape' and no image was given; pass image=")
    h, w = (int(s) for s in list(shape)[:2])
    if image is not None and tuple(np.shape(image)[:2]) != (h, w):
        raise InvalidSectionError(
            f"image shape {np.shape(image)[:2]} differs from the anchored section shape {(h, w)}; "
            "pass the original (full-resolution) image the result was computed on"
        )
    return h, w


def _outline_mm(result: Any, h: int, w: int) -> NDArray:
    """(4, 3) mm of the outer pixel-edge corners (clockwise from the top-left in the image)."""
    rows = np.array([-0.5, -0.5, h - 0.5, h - 0.5])
    cols = np.array([-0.5, w - 0.5, w - 0.5, -0.5])
    pts = np.stack([rows, cols, np.zeros(4), np.ones(4)])
    return (np.asarray(result.affine) @ pts)[:3].T


def _annotation_layers(result: Any, h: int, w: int, matches: bool, max_matches: int) -> list[tuple[str, Any]]:
    ng = _ng()
    dims = world_dimensions()
    out = []
    corners = _outline_mm(result, h, w)
    outline = ng.LocalAnnotationLayer(dimensions=dims, annotation_color=OUTLINE_COLOR)
    for i in range(4):
        outline.annotations.append(
            ng.LineAnnotation(id=f"edge{i}", point_a=corners[i].tolist(), point_b=corners[(i + 1) % 4].tolist())
        )
    outline.annotations.append(
        ng.PointAnnotation(id="topleft", point=corners[0].tolist(), description="image pixel (0, 0)")
    )
    out.append(("section outline", outline))
    if not matches:
        return out
    df = result.matches
    if len(df) == 0:
        return out
    if len(df) > max_matches:
        keep = np.sort(np.argsort(-df["similarity"].to_numpy(), kind="stable")[:max_matches])
        logger.info("showing the %d most similar of %d matches (max_matches)", max_matches, len(df))
        df = df.iloc[keep]  # keeps the original row numbers as index (annotation ids)
    here = np.round(result.to_points(df["row"].to_numpy(), df["col"].to_numpy()), 3)
    there = np.round(df[["x", "y", "z"]].to_numpy(dtype=np.float64), 3)
    inl = df["inlier"].to_numpy(dtype=bool)
    for label, sel, color in (("inliers", inl, INLIER_COLOR), ("outliers", ~inl, OUTLIER_COLOR)):
        layer = ng.LocalAnnotationLayer(
            dimensions=dims,
            annotation_color=color,
            annotation_properties=[
                ng.AnnotationPropertySpec(id="similarity", type="float32", default=0.0),
                ng.AnnotationPropertySpec(id="residual_mm", type="float32", default=0.0),
            ],
        )
        for k in np.flatnonzero(sel).tolist():
            props = [round(float(df["similarity"].iat[k]), 4), round(float(df["residual_mm"].iat[k]), 3)]
            layer.annotations.append(
                ng.PointAnnotation(
                    id=f"p{df.index[k]}",
                    point=here[k].tolist(),
                    props=props,
                    description=f"patch at row {df['row'].iat[k]:.0f}, col {df['col'].iat[k]:.0f}",
                )
            )
            layer.annotations.append(
                ng.LineAnnotation(
                    id=f"l{df.index[k]}", point_a=here[k].tolist(), point_b=there[k].tolist(), props=props
                )
            )
        out.append((f"matches ({label})", layer))
    return out


def precomputed_affine(info: dict[str, Any], transform_nm: ArrayLike | None = None) -> NDArray:
    """NIfTI-style (4, 4) voxel -> mm affine of scale 0 of a Neuroglancer precomputed volume.

    ``info`` is the volume's ``info`` JSON (its first scale's ``resolution`` in nm per voxel);
    ``transform_nm`` the (4, 4) (or (3, 4)) matrix of its ``transform.json``, as EBRAINS and siibra store
    it: resolution-scaled source coordinates (nm, corner convention) -> world nm. None means identity (what
    siibra assumes when the file is absent). The half-voxel shift back to centres follows
    ``siibra.volumes.providers.neuroglancer.shift_ng_transfrom``, applied through the linear part.
    """
    try:
        res_nm = np.asarray(info["scales"][0]["resolution"], dtype=np.float64).reshape(3)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ViewerArgumentError(f"precomputed info has no scales[0].resolution: {exc}") from exc
    t = np.eye(4)
    if transform_nm is not None:
        tm = np.asarray(transform_nm, dtype=np.float64)
        if tm.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(tm)):
            raise ViewerArgumentError(f"transform.json must hold a (4, 4) matrix, got shape {tm.shape}")
        t[: tm.shape[0]] = tm
    a = t @ np.diag([*res_nm, 1.0])
    a[:3, 3] += t[:3, :3] @ (0.5 * res_nm)
    a[:3, :] /= 1e6  # nm -> mm
    return a


def transform_json(affine: ArrayLike, resolution_nm: ArrayLike) -> list[list[float]]:
    """Inverse of :func:`precomputed_affine`: the (4, 4) ``transform.json`` matrix (nm) of a volume whose
    NIfTI-style voxel -> mm affine is ``affine`` and whose scale-0 resolution is ``resolution_nm``."""
    a = np.asarray(affine, dtype=np.float64).copy()
    res = np.asarray(resolution_nm, dtype=np.float64).reshape(3)
    a[:3, :] *= 1e6
    t = np.eye(4)
    t[:3, :3] = a[:3, :3] / res
    t[:3, 3] = a[:3, 3] - t[:3, :3] @ (0.5 * res)
    return t.tolist()


def _get_json(url: str, timeout_s: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - http(s) URL checked by caller
        return json.loads(r.read().decode("utf-8"))


def fetch_precomputed_affine(url: str, timeout_s: float = 10.0) -> NDArray | None:
    """Voxel -> mm affine of a precomputed volume read from its ``info`` and ``transform.json``, or None.

    ``url`` : ``precomputed://http(s)://...`` or the bare http(s) URL. Returns None when the volume cannot
    be reached within ``timeout_s`` (or ``SIIBRA_ANCHOR_OFFLINE`` is set); a missing ``transform.json``
    means identity, as in siibra.
    """
    from siibra_anchor.net import forced_offline

    base = url.removeprefix("precomputed://").rstrip("/")
    if forced_offline() or not base.startswith(("http://", "https://")):
        return None
    try:
        info = _get_json(f"{base}/info", timeout_s)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        logger.info("cannot read %s/info (%s); using the assumed template transform", base, exc)
        return None
    try:
        transform = _get_json(f"{base}/transform.json", timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            logger.info("cannot read %s/transform.json (%s); using the assumed template transform", base, exc)
            return None
        transform = None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        logger.info("cannot read %s/transform.json (%s); using the assumed template transform", base, exc)
        return None
    return precomputed_affine(info, transform)


def _template_for(result: Any, template_source: Any, online: bool | None) -> tuple[str, NDArray] | None:
    if template_source is None:
        if not str(result.space).lower().startswith("mni152"):
            logger.warning("no online template known for space %r; the state has no template layer", result.space)
            return None
        template_source = EBRAINS_MNI152_URL
    if isinstance(template_source, str):
        aff = None
        if online is None:
            from siibra_anchor.net import is_online

            online = is_online()
        if online:
            aff = fetch_precomputed_affine(template_source)
        return template_source, MNI152_2009C_AFFINE if aff is None else aff
    url, aff = template_source
    return str(url), np.asarray(aff, dtype=np.float64)


def _image_shader(tint: Sequence[float] | None, transparent_zero: bool) -> str:
    emit = "emitGrayscale(v);" if tint is None else f"emitRGB(vec3({tint[0]:g}, {tint[1]:g}, {tint[2]:g}) * v);"
    zero = "if (getDataValue().value == 0u) { emitTransparent(); return; }\n  " if transparent_zero else ""
    return f"void main() {{\n  {zero}float v = toNormalized(getDataValue());\n  {emit}\n}}\n"


def build_state(
    result: Any,
    image: ArrayLike | None = None,
    template_source: str | tuple[str, ArrayLike] | None = None,
    matches: bool = True,
    parcellation: tuple[str, ArrayLike] | None = None,
    section_source: str | None = None,
    layout: str = "4panel",
    viewport_px: int | None = None,
    margin: float = 1.25,
    max_matches: int = 300,
    section_opacity: float = 1.0,
    online: bool | None = None,
):
    """Neuroglancer state that shows the anchored section inside the reference volume.

    Parameters
    ----------
    result : AnchoringResult
        Uses ``affine`` (4, 4) pixel ``(row, col, 0, 1)`` -> mm, ``section["shape"]`` ``(H, W)``, ``space``
        and ``matches``.
    image : (H, W) or (H, W, C) array, optional
        Only checked against the section shape here; pixels reach Neuroglancer through ``section_source``
        (see :func:`siibra_anchor.viewer.serve.serve_result`, which writes and serves them).
    template_source : str or (str, (4, 4) array), optional
        Neuroglancer source URL of the template, with its voxel -> mm affine (NIfTI convention, the source
        being precomputed). For a bare string the affine is read from the volume's ``info`` and
        ``transform.json`` when online (:func:`fetch_precomputed_affine`), else the MNI152 2009c grid is
        assumed. Default: the public EBRAINS MNI152 2009c volume for MNI152 results (online only), else no
        template layer.
    matches : bool
        Add the patch matches as annotations: points where the affine puts each patch, lines to the matched
        reference point; inliers green, outliers red.
    max_matches : int
        At most this many matches (the most similar) are drawn, to keep links short.
    section_opacity : float
        Opacity of the section layer in [0, 1] (lower it to see the template through the section).
    online : bool, optional
        Whether to read a template's ``transform.json`` over the network; None asks
        :func:`siibra_anchor.net.is_online`.
    parcellation : (str, (4, 4) array), optional
        Segmentation source URL and its voxel -> mm affine, shown as a segmentation layer.
    section_source : str, optional
        Precomputed URL of the section pixels stored as ``(H, W, 1)`` (x = row, y = column). Without it
        the section appears as its outline (and matches) only.
    layout : str
        Neuroglancer layout: ``"4panel"``, ``"xy"``, ``"xy-3d"``, ``"3d"``...
    viewport_px : int, optional
        Shorter side of one panel in pixels, for the zoom (default 600, or 400 for ``"4panel"``).
    margin : float
        Field of view / section diagonal extent.

    Returns
    -------
    neuroglancer.ViewerState
        Global dimensions ``x, y, z`` in mm; centred on the section centre, cross-section in its plane
        (screen right = increasing image columns, screen down = increasing image rows).
    """
    ng = _ng()
    img = None if image is None else np.asarray(image)
    h, w = _section_shape(result, img)
    state = ng.ViewerState()
    state.dimensions = world_dimensions()
    tpl = _template_for(result, template_source, online)
    if tpl is not None:
        url, aff = tpl
        state.layers.append(
            name="template",
            layer=ng.ImageLayer(
                source=ng.LayerDataSource(
                    url=url, transform=_source_transform(aff, scales=np.linalg.norm(aff[:3, :3], axis=0))
                ),
                shader=_image_shader(None, False),
                opacity=1.0,
            ),
        )
    if parcellation is not None:
        purl, paff = parcellation
        state.layers.append(
            name="parcellation",
            layer=ng.SegmentationLayer(
                source=ng.LayerDataSource(url=str(purl), transform=_source_transform(paff)),
                selected_alpha=0.3,
                not_selected_alpha=0.15,
            ),
        )
    if section_source is not None:
        state.layers.append(
            name=str(result.section.get("name") or "section"),
            layer=ng.ImageLayer(
                source=ng.LayerDataSource(url=section_source, transform=_source_transform(result.affine)),
                shader=_image_shader(SECTION_TINT, True),
                opacity=float(section_opacity),
            ),
        )
    elif img is not None:
        logger.info("no section_source: the section is drawn as its outline; serve it to see its pixels")
    for name, layer in _annotation_layers(result, h, w, matches, max_matches):
        state.layers.append(name=name, layer=layer)

    rot, quat = section_orientation(result.affine)
    center = (np.asarray(result.affine) @ np.array([(h - 1) / 2.0, (w - 1) / 2.0, 0.0, 1.0]))[:3]
    extent_mm = float(max(np.linalg.norm(result.affine[:3, 0]) * h, np.linalg.norm(result.affine[:3, 1]) * w))
    state.position = center.tolist()
    state.cross_section_orientation = quat
    if viewport_px is None:
        viewport_px = 400 if layout == "4panel" else 600
    if not viewport_px > 0:
        raise ViewerArgumentError(f"viewport_px must be a positive number of pixels, got {viewport_px!r}")
    state.cross_section_scale = margin * extent_mm / float(viewport_px)
    state.projection_orientation = quat
    state.projection_scale = 2.0 * margin * extent_mm
    state.layout = layout
    state.show_axis_lines = False
    state.cross_section_background_color = "#000000"
    state.show_default_annotations = False
    if state.layers:
        state.selected_layer.layer = state.layers[-1].name
        state.selected_layer.visible = False
    return state


def write_state(result: Any, path: str | PathLike[str], **kwargs: Any) -> Path:
    """Write the full Neuroglancer state of :func:`build_state` (matches included) as JSON to ``path``.

    Open it in any Neuroglancer: paste it into the state editor (the ``{}`` button), or serve it over
    http(s) with CORS and open ``<neuroglancer>/#!<url of the JSON>``. Returns the path (written atomically).
    """
    from siibra_anchor.cache import atomic_write_text

    path = Path(path)
    state = build_state(result, **kwargs)
    atomic_write_text(path, json.dumps(state.to_json(), indent=1))
    return path


def result_url(
    result: Any,
    prefix: str = EBRAINS_PREFIX,
    image: ArrayLike | None = None,
    template_source: str | tuple[str, ArrayLike] | None = None,
    matches: bool = True,
    parcellation: tuple[str, ArrayLike] | None = None,
    section_source: str | None = None,
    inline_matches: bool = False,
    state_path: str | PathLike[str] | None = None,
    max_length: int = MAX_URL_LENGTH,
    **kwargs: Any,
) -> str:
    """Short Neuroglancer link (``prefix#!{state}``) of :func:`build_state`.

    With the default ``prefix`` and no sources this is a pure link: the EBRAINS MNI152 template (online)
    and the section outline in mm. The patch matches (and patch centres) are left out of the link, which
    stays under ``max_length`` (8,000) characters: with ``state_path`` the full state, matches included, is
    written there as JSON (:func:`write_state`); ``inline_matches=True`` puts them in the link instead
    (long: about 400 characters per match). A link longer than ``max_length`` is logged as a warning.
    Extra ``kwargs`` go to :func:`build_state`.
    """
    ng = _ng()
    if not isinstance(prefix, str) or not prefix.startswith(("http://", "https://")):
        raise ViewerArgumentError(f"prefix must be an http(s) URL of a Neuroglancer client, got {prefix!r}")
    common = dict(
        image=image,
        template_source=template_source,
        parcellation=parcellation,
        section_source=section_source,
        **kwargs,
    )
    if matches and state_path is not None:
        write_state(result, state_path, matches=True, **common)
        logger.info("full Neuroglancer state with the matches written to %s", state_path)
    elif matches and not inline_matches:
        logger.info(
            "matches left out of the link; state_path= writes them to a state JSON, inline_matches=True inlines"
        )
    state = build_state(result, matches=bool(matches and inline_matches), **common)
    url = ng.to_url(state, prefix=prefix)
    if len(url) > max_length:
        logger.warning(
            "the Neuroglancer link is %d characters (over %d); leave matches out of it (inline_matches=False)",
            len(url),
            max_length,
        )
    return url

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

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from siibra_anchor.errors import InvalidSectionError, MissingDependencyError

from .errors import ViewerArgumentError

__all__ = [
    "EBRAINS_MNI152_URL",
    "EBRAINS_PREFIX",
    "MNI152_2009C_AFFINE",
    "build_state",
    "result_url",
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
#: voxel -> mm affine of the MNI152 2009c 1 mm grid (193, 229, 193) shipped offline; assumed for the
#: EBRAINS copy (unverified offline: its ``transform.json`` could not be read here).
MNI152_2009C_AFFINE = np.array(
    [[1.0, 0.0, 0.0, -96.0], [0.0, 1.0, 0.0, -132.0], [0.0, 0.0, 1.0, -78.0], [0.0, 0.0, 0.0, 1.0]]
)

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


def _source_transform(affine: ArrayLike, names: Sequence[str] = ("x", "y", "z")):
    ng = _ng()
    m = voxel_transform_matrix(affine)
    return ng.CoordinateSpaceTransform(
        input_dimensions=ng.CoordinateSpace(names=list(names), units="mm", scales=[1.0, 1.0, 1.0]),
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


def _template_for(result: Any, template_source: Any) -> tuple[str, NDArray] | None:
    if template_source is None:
        if str(result.space).lower().startswith("mni152"):
            return EBRAINS_MNI152_URL, MNI152_2009C_AFFINE
        logger.warning("no online template known for space %r; the state has no template layer", result.space)
        return None
    if isinstance(template_source, str):
        return template_source, MNI152_2009C_AFFINE
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
        being precomputed with a 1 mm index unit). A bare string assumes the MNI152 2009c grid. Default:
        the public EBRAINS MNI152 2009c volume for MNI152 results (online only), else no template layer.
    matches : bool
        Add the patch matches as annotations: points where the affine puts each patch, lines to the matched
        reference point; inliers green, outliers red.
    max_matches : int
        At most this many matches (the most similar) are drawn, to keep links short.
    section_opacity : float
        Opacity of the section layer in [0, 1] (lower it to see the template through the section).
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
    tpl = _template_for(result, template_source)
    if tpl is not None:
        url, aff = tpl
        state.layers.append(
            name="template",
            layer=ng.ImageLayer(
                source=ng.LayerDataSource(url=url, transform=_source_transform(aff)),
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


def result_url(
    result: Any,
    prefix: str = EBRAINS_PREFIX,
    image: ArrayLike | None = None,
    template_source: str | tuple[str, ArrayLike] | None = None,
    matches: bool = True,
    parcellation: tuple[str, ArrayLike] | None = None,
    section_source: str | None = None,
    **kwargs: Any,
) -> str:
    """Neuroglancer link (``prefix#!{state}``) of :func:`build_state`.

    With the default ``prefix`` and no sources this is a pure link: the EBRAINS MNI152 template (online),
    the section outline and the matches as annotations in mm. Extra ``kwargs`` go to :func:`build_state`.
    """
    ng = _ng()
    if not isinstance(prefix, str) or not prefix.startswith(("http://", "https://")):
        raise ViewerArgumentError(f"prefix must be an http(s) URL of a Neuroglancer client, got {prefix!r}")
    state = build_state(
        result,
        image=image,
        template_source=template_source,
        matches=matches,
        parcellation=parcellation,
        section_source=section_source,
        **kwargs,
    )
    return ng.to_url(state, prefix=prefix)

"""Quality-control figures of one anchoring: the section beside the reference cut at the anchored plane.

The panels are pure functions over arrays, so they can be checked numerically and reused (the HTML series
report in :mod:`siibra_anchor.report` draws its thumbnails from them); :func:`plot_qc` lays them out
with matplotlib (imported lazily).

Display grid: a section larger than ``max_px`` pixels is shown block-averaged by an integer factor ``f``;
display pixel ``(i, j)`` covers original pixels ``[i f, (i + 1) f)`` and sits at original pixel
``(i f + (f - 1) / 2, j f + (f - 1) / 2)`` (:func:`display_affine`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from .errors import InvalidSectionError, SpaceUnavailableError

if TYPE_CHECKING:
    from .result import AnchoringResult
    from .section import Section

__all__ = [
    "QCPanels",
    "section_arrays",
    "display_factor",
    "display_affine",
    "reference_volume_of",
    "reference_on_plane",
    "normalize_tissue",
    "checkerboard",
    "edge_map",
    "edge_overlay",
    "plane_agreement",
    "plane_position",
    "caption",
    "qc_panels",
    "plot_qc",
    "qc_thumbnail",
    "match_status",
    "section_flags",
    "largest_regions",
    "small_panels",
]

log = logging.getLogger(__name__)

#: Colours (RGB in [0, 1]) shared by the figure and the report thumbnails.
INLIER_RGB = (0.1, 0.85, 0.2)
OUTLIER_RGB = (1.0, 0.15, 0.1)
OUTLINE_RGB = (0.0, 0.85, 1.0)
EDGE_RGB = (1.0, 0.2, 0.9)


# -- inputs ---------------------------------------------------------------------------------------------
def section_arrays(result: AnchoringResult, section: Section | ArrayLike | str | PathLike[str] | None = None):
    """(gray (H, W) float32, mask (H, W) bool) of the anchored section.

    ``section`` may be a :class:`~siibra_anchor.section.Section`, an image array, or a file path; when it is
    None the image kept in memory by :func:`~siibra_anchor.anchor` is used, else the file recorded in
    ``result.section["path"]``. A result loaded from JSON whose image file is gone needs ``section``.
    """
    from .section import Section, to_gray

    want = tuple(int(v) for v in result.section.get("shape", ())[:2])
    mask = None
    if section is None:
        if result.image is not None:
            img = np.asarray(result.image)
            gray = to_gray(img) if img.ndim == 3 else img.astype(np.float32)
            mask = result.mask
        else:
            p = result.section.get("path")
            if not p or not Path(p).exists():
                raise InvalidSectionError(
                    f"result of section {result.section.get('name', '?')!r} holds no image (it was loaded from "
                    f"JSON{'' if not p else f' and its file {p} is gone'}); pass the anchored section: "
                    "plot_qc(section=sa.Section.from_file(PATH, spacing_mm=...))"
                )
            sec = Section.from_file(p, spacing_mm=result.section.get("spacing_mm"))
            gray, mask = sec.gray, sec.mask
    elif isinstance(section, Section):
        gray, mask = section.gray, section.mask
    elif isinstance(section, (str, PathLike)):
        sec = Section.from_file(section, spacing_mm=result.section.get("spacing_mm"))
        gray, mask = sec.gray, sec.mask
    else:
        arr = np.asarray(section)
        if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number):
            raise InvalidSectionError(
                f"section must be a Section, a path or an (H, W[, C]) numeric image; got {arr.dtype} {arr.shape}"
            )
        gray = to_gray(arr) if arr.ndim == 3 else arr.astype(np.float32)
    if want and tuple(gray.shape) != want:
        raise InvalidSectionError(
            f"the section image is {tuple(gray.shape)} px but the result was anchored on a {want} px image; "
            "pass the image that was anchored"
        )
    if mask is None or np.shape(mask) != gray.shape:
        from .tissue import tissue_mask

        mask = tissue_mask(gray)
    return np.asarray(gray, np.float32), np.asarray(mask, bool)


def display_factor(shape: tuple[int, int], max_px: int | None) -> int:
    """Integer block factor that brings the long side of ``shape`` to at most ``max_px`` (1 if None)."""
    if max_px is None or max(shape) <= max_px:
        return 1
    return int(math.ceil(max(shape) / max_px))


def display_affine(affine: ArrayLike, factor: int) -> NDArray:
    """(4, 4) affine of the display grid of block ``factor``: display pixel (i, j) -> world mm."""
    a = np.asarray(affine, float)
    s = np.eye(4)
    s[0, 0] = s[1, 1] = float(factor)
    s[0, 3] = s[1, 3] = (factor - 1) / 2.0
    return a @ s


def _block_mean(a: NDArray, f: int) -> NDArray:
    if f == 1:
        return np.asarray(a, np.float32)
    h, w = a.shape
    hh, ww = -(-h // f) * f, -(-w // f) * f
    pad = np.pad(np.asarray(a, np.float32), ((0, hh - h), (0, ww - w)), mode="edge")
    return pad.reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))


def reference_volume_of(result: AnchoringResult, reference_volume: Any = None) -> tuple[NDArray, NDArray]:
    """(data (I, J, K), affine (4, 4) voxel -> mm) of the volume to compare the section with.

    ``reference_volume`` may be a :class:`~siibra_anchor.reference.Reference` (its template), a NIfTI path,
    a nibabel image or a ``(data, affine)`` pair; None takes the embedded template of ``result.space``
    (only "mni152" is embedded).
    """
    from .templates import load_volume

    rv = reference_volume
    if rv is None:
        if result.space == "mni152":
            return load_volume("mni152")
        raise SpaceUnavailableError(
            f"no embedded template for space {result.space!r}; pass reference_volume= (a NIfTI path, a "
            "nibabel image, (data, affine) or the sa.Reference the section was anchored with)"
        )
    if isinstance(rv, (str, PathLike)):
        return load_volume(Path(rv))
    if hasattr(rv, "volume") and hasattr(rv, "volume_affine"):
        if rv.volume is None or rv.volume_affine is None:
            raise SpaceUnavailableError(
                "this Reference keeps no template volume (built from sections); pass reference_volume= a NIfTI path"
            )
        return np.asarray(rv.volume), np.asarray(rv.volume_affine, float)
    if hasattr(rv, "dataobj") and hasattr(rv, "affine"):
        data = np.asarray(rv.dataobj, np.float32)
        return (data[..., 0] if data.ndim == 4 else data), np.asarray(rv.affine, float)
    if isinstance(rv, tuple) and len(rv) == 2:
        data, aff = np.asarray(rv[0], np.float32), np.asarray(rv[1], float)
        if data.ndim == 3 and aff.shape == (4, 4):
            return data, aff
    raise InvalidSectionError(
        f"reference_volume must be a Reference, a NIfTI path, a nibabel image or (data, affine); got {type(rv).__name__}"
    )


# -- panels ---------------------------------------------------------------------------------------------
def reference_on_plane(
    result: AnchoringResult,
    reference_volume: Any = None,
    shape: tuple[int, int] | None = None,
    factor: int = 1,
    affine: ArrayLike | None = None,
) -> NDArray:
    """The reference volume resampled on the anchored plane at the section's pixel grid.

    Parameters
    ----------
    result : the anchoring; ``result.affine`` (or ``affine``) maps pixel (row, col, 0, 1) to world mm.
    reference_volume : see :func:`reference_volume_of` (default: the embedded template of the space).
    shape : (H, W) of the grid; default the section's shape divided (rounding up) by ``factor``.
    factor : display block factor (:func:`display_affine`); 1 = the original pixel grid.
    affine : use this (4, 4) instead of ``result.affine`` (e.g. an alternative placement).

    Returns
    -------
    (H, W) float32 in [0, 1] (volume intensity divided by its 99.5th percentile over the plane); 0 outside
    the volume.
    """
    from .planes import cut_plane

    data, vaff = reference_volume_of(result, reference_volume)
    if shape is None:
        h, w = (int(v) for v in result.section.get("shape", (0, 0))[:2])
        if h < 1 or w < 1:
            raise InvalidSectionError("the result records no section shape; pass shape=(H, W)")
        shape = (-(-h // factor), -(-w // factor))
    a = display_affine(result.affine if affine is None else affine, factor)
    plane = cut_plane(data, vaff, a, (int(shape[0]), int(shape[1])))
    pos = plane[plane > 0]
    top = float(np.percentile(pos, 99.5)) if pos.size else 1.0
    return np.clip(plane / max(top, 1e-12), 0.0, 1.0).astype(np.float32)


def normalize_tissue(gray: NDArray, mask: NDArray) -> NDArray:
    """(H, W) float32 in [0, 1]: the tissue's 1st..99th percentile stretched to [0, 1]."""
    g = np.asarray(gray, np.float32)
    vals = g[np.asarray(mask, bool)]
    if vals.size < 2:
        vals = g.ravel()
    lo, hi = np.percentile(vals, [1, 99])
    return np.clip((g - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0).astype(np.float32)


def checkerboard(a: NDArray, b: NDArray, tiles: int = 8) -> NDArray:
    """(H, W) image alternating ``a`` and ``b`` in a ``tiles`` x ``tiles`` checkerboard (``a`` top-left)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InvalidSectionError(f"checkerboard needs equal shapes, got {a.shape} and {b.shape}")
    h, w = a.shape[:2]
    ti = (np.arange(h) * tiles // max(h, 1))[:, None]
    tj = (np.arange(w) * tiles // max(w, 1))[None, :]
    sel = ((ti + tj) % 2 == 0)[..., None] if a.ndim == 3 else (ti + tj) % 2 == 0
    return np.where(sel, a, b)


def edge_map(image: NDArray, sigma: float = 1.5) -> NDArray:
    """(H, W) bool: one-pixel-wide edges of an image in [0, 1] (Canny, thresholds 0.05 / 0.15 of the range)."""
    from skimage.feature import canny

    a = np.asarray(image, np.float32)
    if a.size == 0 or float(a.max()) <= float(a.min()):
        return np.zeros(a.shape, bool)
    return np.asarray(canny(a, sigma=sigma, low_threshold=0.05, high_threshold=0.15), bool)


def edge_overlay(section: NDArray, reference: NDArray, sigma: float = 1.5) -> NDArray:
    """(H, W, 3) float RGB: the section in gray with the reference plane's edges drawn in magenta."""
    base = np.repeat(np.asarray(section, np.float32)[..., None], 3, axis=2) * 0.85
    e = edge_map(reference, sigma)
    base[e] = EDGE_RGB
    return base


def plane_agreement(section: NDArray, reference: NDArray, mask: NDArray) -> dict[str, float]:
    """How well the section matches the reference plane over its tissue.

    Returns ``{"r": Pearson correlation, "nmi": normalised mutual information (1 = independent, 2 =
    identical), "inside": fraction of tissue pixels that land inside the reference brain}``. ``r`` is
    negative for a contrast opposite to the template's (brightfield stains); ``nmi`` does not care.
    """
    from .refine import nmi

    m = np.asarray(mask, bool)
    a = np.asarray(section, np.float64)[m]
    b = np.asarray(reference, np.float64)[m]
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        r = 0.0
    else:
        r = float(np.corrcoef(a, b)[0, 1])
    return {
        "r": r,
        "nmi": float(nmi(np.clip(a, 0, 1), np.clip(b, 0, 1))) if a.size else 1.0,
        "inside": float(np.mean(b > 0.02)) if b.size else 0.0,
    }


def plane_position(result: AnchoringResult, mask: NDArray | None = None) -> dict[str, Any]:
    """Where the section lies: closest canonical plane, its tilt, and the tissue centre along its axis.

    Returns ``{"plane": "coronal", "axis": "y", "position_mm": -18.2, "tilt_deg": 7.1, "centre_mm": (3,)}``;
    the centre is the mean world position of the tissue pixels (of the image when ``mask`` is None).
    """
    n = result.normal
    i = int(np.argmax(np.abs(n)))
    tilt = float(np.degrees(np.arccos(np.clip(abs(n[i]), -1.0, 1.0))))
    if mask is not None and np.any(mask):
        rr, cc = np.nonzero(np.asarray(mask, bool))
        step = max(1, rr.size // 20000)
        centre = result.to_points(rr[::step], cc[::step]).mean(axis=0)
    else:
        centre = result.center_mm
    return {
        "plane": ("sagittal", "coronal", "axial")[i],
        "axis": "xyz"[i],
        "position_mm": float(centre[i]),
        "tilt_deg": tilt,
        "centre_mm": centre,
    }


def caption(result: AnchoringResult, mask: NDArray | None = None, agreement: dict[str, float] | None = None) -> str:
    """One or two lines for a person: space, confidence, where the plane lies, rotation, normal.

    Example: ``"s0042 | mni152 | confidence 0.91 | coronal, y = -18.0 mm, tilted 7.1 deg | in-plane
    rotation 35.0 deg | normal (0.05, 0.99, 0.12)"``.
    """
    pos = plane_position(result, mask)
    n = result.normal
    first = (
        f"{result.section.get('name', 'section')} | {result.space} | confidence {result.confidence:.2f} | "
        f"{pos['plane']}, {pos['axis']} = {pos['position_mm']:.1f} mm, tilted {pos['tilt_deg']:.1f} deg"
    )
    second = f"in-plane rotation {result.in_plane_rotation_deg:.1f} deg | normal ({n[0]:.2f}, {n[1]:.2f}, {n[2]:.2f})"
    if agreement is not None:
        second += f" | section vs reference: r = {agreement['r']:+.2f}, NMI = {agreement['nmi']:.3f}"
    flags = section_flags(result)
    if flags:
        second += " | flags: " + ", ".join(flags)
    return first + "\n" + second


#: Confidence below which a section is flagged.
LOW_CONFIDENCE = 0.5
#: An alternative placement whose image-similarity score is within this of the chosen one is ambiguous.
AMBIGUOUS_MARGIN = 0.03


def section_flags(result: AnchoringResult) -> list[str]:
    """Flags of a result: ``result.diagnostics["flags"]`` plus "low confidence" and "ambiguous: <label>"."""
    flags = [str(f) for f in result.diagnostics.get("flags", []) or []]
    if result.confidence < LOW_CONFIDENCE:
        flags.append(f"low confidence ({result.confidence:.2f})")
    best = result.diagnostics.get("nmi_gain")
    margin = result.diagnostics.get("margin_to_alternative")
    for alt in result.alternatives:
        close = (
            margin is not None and float(margin) < AMBIGUOUS_MARGIN
            if best is None
            else float(best) - float(alt.get("score", -np.inf)) < AMBIGUOUS_MARGIN
        )
        if close:
            flags.append(f"ambiguous: {alt.get('label', 'other placement')}")
            break
    return flags


# -- the figure -----------------------------------------------------------------------------------------
@dataclass
class QCPanels:
    """The arrays of a QC figure on the display grid (block ``factor`` of the original pixels)."""

    section: NDArray  #: (H, W) float32 in [0, 1], tissue stretched; a dark background set to 0
    mask: NDArray  #: (H, W) bool tissue
    reference: NDArray  #: (H, W) float32 in [0, 1], :func:`reference_on_plane`
    overlay: NDArray  #: (H, W) :func:`checkerboard` of section and reference
    edges: NDArray  #: (H, W) bool :func:`edge_map` of the reference
    matches: Any  #: DataFrame of :func:`match_status` with display-grid ``row``/``col``
    labels: NDArray | None  #: (H, W) int32 region labels inside the tissue (0 = none), or None
    names: dict[int, str]  #: label -> region name
    label_source: str  #: where the labels come from (or why there are none)
    agreement: dict[str, float]  #: :func:`plane_agreement`
    caption: str  #: :func:`caption`
    factor: int  #: display block factor


def qc_panels(
    result: AnchoringResult,
    section: Section | ArrayLike | str | PathLike[str] | None = None,
    reference_volume: Any = None,
    max_px: int | None = 512,
    tiles: int = 8,
    regions: bool = True,
    parcellation: str = "julich",
) -> QCPanels:
    """Compute every panel of :func:`plot_qc` (no plotting). See :class:`QCPanels`."""
    gray, mask = section_arrays(result, section)
    f = display_factor(gray.shape, max_px)
    sec = normalize_tissue(_block_mean(gray, f), _block_mean(mask, f) > 0.5)
    m = _block_mean(mask, f) > 0.5
    ref = reference_on_plane(result, reference_volume, shape=sec.shape, factor=f)
    # compare tissue with tissue: a dark background is shown black like the template's
    sec_show = sec if _bright_background(sec, m) else np.where(m, sec, 0.0)
    mt = match_status(result)
    mt = mt.assign(row=(mt["row"] - (f - 1) / 2.0) / f, col=(mt["col"] - (f - 1) / 2.0) / f)
    labels, names, source = None, {}, ""
    if regions:
        labels, names, source = _region_labels(result, parcellation, sec.shape, f)
        if labels is not None:
            labels = np.where(m, labels, 0).astype(np.int32)
    agree = plane_agreement(sec, ref, m)
    return QCPanels(
        section=sec_show.astype(np.float32),
        mask=m,
        reference=ref,
        overlay=checkerboard(sec_show, ref, tiles),
        edges=edge_map(ref),
        matches=mt,
        labels=labels,
        names=names,
        label_source=source,
        agreement=agree,
        caption=caption(result, mask, agree),
        factor=f,
    )


def match_status(result: AnchoringResult, inlier_mm: float | None = None):
    """``result.matches`` with ``residual_mm`` and ``inlier`` recomputed for ``result.affine``.

    A match is an inlier when the affine puts its section patch within ``inlier_mm`` (default: the
    anchoring's own threshold, ``diagnostics["params"]["inlier_mm"]``, else 5 mm) of its reference patch; so
    the panel shows the placement being plotted, also when the affine was changed after anchoring.
    """
    mt = result.matches
    if inlier_mm is None:
        inlier_mm = float((result.diagnostics.get("params") or {}).get("inlier_mm", 5.0))
    pred = result.to_points(mt["row"].to_numpy(), mt["col"].to_numpy())
    res = np.linalg.norm(pred - mt[["x", "y", "z"]].to_numpy(float), axis=1)
    return mt.assign(residual_mm=res, inlier=np.isfinite(res) & (res < inlier_mm))


def _bright_background(sec: NDArray, mask: NDArray) -> bool:
    """True when the background is brighter than the tissue (brightfield): then it is kept as is."""
    if mask.all() or not mask.any():
        return False
    return bool(np.median(sec[~mask]) > np.median(sec[mask]))


def _region_labels(result: AnchoringResult, parcellation: str, shape: tuple[int, int], factor: int):
    """(labels (H, W) int32 or None, {label: name}, source) on the display grid, via adapters.regions."""
    from .extensions import extension

    try:
        section_region_labels = extension("section_region_labels")
    except ImportError as exc:
        log.warning("region outlines unavailable: %s", exc)
        return None, {}, f"region labels unavailable ({exc})"
    from .errors import AnchorError

    try:  # the display grid is the section image resampled to ``shape``; every pixel looked up
        labels, names, source = section_region_labels(result, parcellation=parcellation, shape=tuple(shape), step=1)
    except AnchorError as exc:  # e.g. no maps for this space offline: the other panels still help
        log.warning("region outlines unavailable: %s", exc)
        return None, {}, f"region labels unavailable: {exc}"
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        zr, zc = shape[0] / labels.shape[0], shape[1] / labels.shape[1]
        labels = ndimage.zoom(labels, (zr, zc), order=0, grid_mode=True, mode="nearest")
        labels = labels[: shape[0], : shape[1]]
        if labels.shape != tuple(shape):
            labels = np.pad(labels, ((0, shape[0] - labels.shape[0]), (0, shape[1] - labels.shape[1])), mode="edge")
    return labels.astype(np.int32), {int(k): str(v) for k, v in names.items()}, str(source)


def _outline(mask: NDArray) -> NDArray:
    m = np.asarray(mask, bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def largest_regions(labels: NDArray, n: int = 6) -> list[tuple[int, int, float, float]]:
    """The ``n`` largest labels of an (H, W) label image: (label, pixel count, row, col) of a point inside.

    The point is the region pixel farthest from the region's border (so text sits inside the region).
    """
    lab = np.asarray(labels)
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    out = []
    for k in np.argsort(counts)[::-1][:n]:
        reg = lab == ids[k]
        d = ndimage.distance_transform_edt(reg)
        r, c = np.unravel_index(int(np.argmax(d)), d.shape)
        out.append((int(ids[k]), int(counts[k]), float(r), float(c)))
    return out


def _short_name(name: str, n: int = 30) -> str:
    """A region name that fits a label: without a leading "GM "/"WM ", middle elided (the hemisphere stays)."""
    name = name[3:] if name[:3] in ("GM ", "WM ") else name
    return name if len(name) <= n else name[: n - 12] + ".." + name[-10:]


def plot_qc(
    result: AnchoringResult,
    path: str | PathLike[str] | None = None,
    section: Section | ArrayLike | str | PathLike[str] | None = None,
    reference_volume: Any = None,
    max_px: int | None = 512,
    n_labels: int = 6,
    dpi: int = 110,
    parcellation: str = "julich",
):
    """One QC figure of an anchoring (matplotlib :class:`~matplotlib.figure.Figure`).

    Panels: (1) the section with its tissue outline, (2) the reference resampled on the anchored plane at
    the section's pixel grid (section outline on top), (3) a checkerboard of the two with the reference
    edges in magenta, (4) the patch matches (inliers green, outliers red), (5) region outlines of
    ``parcellation`` with the largest regions labelled, (6) where the plane lies in the brain; caption with
    space, confidence, plane, position, tilt, in-plane rotation, normal and agreement. A wrong placement
    shows as a reference panel unlike the section, misaligned checkerboard tiles and edges off the tissue.

    ``path``: also write the figure there (PNG unless the suffix says otherwise), atomically.
    ``section``: needed when the result holds no image (loaded from JSON and its file is gone).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    p = qc_panels(result, section=section, reference_volume=reference_volume, max_px=max_px, parcellation=parcellation)
    h, w = p.section.shape
    aspect = w / max(h, 1)
    panel_h = 3.4
    fig = Figure(figsize=(3 * panel_h * max(aspect, 0.6) + 0.6, 2 * panel_h + 1.3), dpi=dpi)
    axs = fig.subplots(2, 3)

    def show(ax, img, title, cmap="gray"):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    show(axs[0, 0], p.section, "(1) section + tissue outline")
    show(axs[0, 1], p.reference, f"(2) {result.space} on the anchored plane")
    if p.mask.any() and not p.mask.all():
        for ax in (axs[0, 0], axs[0, 1]):
            ax.contour(p.mask.astype(np.float32), levels=[0.5], colors=[OUTLINE_RGB], linewidths=0.8)
    ov = np.repeat(p.overlay[..., None], 3, axis=2)
    ov[p.edges] = EDGE_RGB
    show(axs[0, 2], ov, f"(3) checkerboard + reference edges (r = {p.agreement['r']:+.2f})")

    show(axs[1, 0], p.section, "")
    mt = p.matches
    has = np.isfinite(mt["x"].to_numpy())
    inl = mt["inlier"].to_numpy(bool)
    out = has & ~inl
    axs[1, 0].scatter(mt["col"][out], mt["row"][out], s=9, c=[OUTLIER_RGB], label=f"outliers ({int(out.sum())})")
    axs[1, 0].scatter(mt["col"][inl], mt["row"][inl], s=9, c=[INLIER_RGB], label=f"inliers ({int(inl.sum())})")
    axs[1, 0].set_title("(4) patch matches", fontsize=9)
    axs[1, 0].legend(loc="lower right", fontsize=7, framealpha=0.7, markerscale=1.2)
    axs[1, 0].set_xlim(-0.5, w - 0.5)
    axs[1, 0].set_ylim(h - 0.5, -0.5)

    ax5 = axs[1, 1]
    show(ax5, p.section, "")
    if p.labels is not None and p.labels.any():
        from skimage.segmentation import find_boundaries

        b = find_boundaries(p.labels, mode="inner") & (p.labels > 0)
        rng = np.random.default_rng(0)  # fixed colours per label so figures are reproducible
        cols = rng.uniform(0.3, 1.0, size=(int(p.labels.max()) + 1, 4))
        cols[:, 3] = 1.0
        cols[0] = 0.0
        bl = np.where(b, p.labels, 0)
        ax5.imshow(np.ma.masked_equal(bl, 0), cmap=ListedColormap(cols), vmin=0, vmax=len(cols) - 1)
        for lab, _, r, c in largest_regions(p.labels, n_labels):
            name = _short_name(p.names.get(lab, str(lab)))
            ax5.text(
                c,
                r,
                name,
                fontsize=6,
                ha="center",
                va="center",
                color="black",
                bbox={"boxstyle": "round,pad=0.15", "fc": (1, 1, 1, 0.75), "lw": 0},
            )
        ax5.set_title("(5) regions", fontsize=9)
        ax5.text(w / 2, h - 1, p.label_source, fontsize=6, color="white", ha="center", va="bottom")
    else:
        ax5.set_title("(5) regions", fontsize=9)
        import textwrap

        msg = textwrap.fill(p.label_source or "no region in the tissue", 40)
        ax5.text(w / 2, h / 2, msg, ha="center", va="center", fontsize=7, color="yellow")

    _plot_locator(axs[1, 2], result, p, reference_volume)
    fig.text(0.01, 0.005, p.caption, fontsize=8, va="bottom", ha="left", family="monospace")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.96, bottom=0.1, wspace=0.04, hspace=0.12)
    if path is not None:
        from .cache import atomic_file

        target = Path(path)
        with atomic_file(target, suffix=target.suffix or ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format=(target.suffix.lstrip(".") or "png"))
    return fig


def _plot_locator(ax: Any, result: AnchoringResult, p: QCPanels, reference_volume: Any) -> None:
    """(6): a template slice orthogonal to the section, with the section's tissue projected onto it."""
    from .planes import CANONICAL_PLANES, cut_plane, plane_affine

    pos = plane_position(result)
    rr, cc = np.nonzero(p.mask)
    step = max(1, rr.size // 4000)
    f = p.factor
    pts = result.to_points(rr[::step] * f + (f - 1) / 2.0, cc[::step] * f + (f - 1) / 2.0)
    centre = pts.mean(axis=0) if len(pts) else result.center_mm
    # a sagittal view shows coronal and axial sections as lines; sagittal sections are seen from above
    view = "axial" if pos["plane"] == "sagittal" else "sagittal"

    rdir, cdir = CANONICAL_PLANES[view]
    size = 200
    try:
        data, vaff = reference_volume_of(result, reference_volume)
    except SpaceUnavailableError:
        data, vaff = None, np.eye(4)
    # centred on the volume's centre, through the section's centre along the view's normal axis
    c0 = vaff[:3, :3] @ ((np.array(data.shape[:3]) - 1) / 2.0) + vaff[:3, 3] if data is not None else np.zeros(3)
    k = 0 if view == "sagittal" else 2
    c0[k] = centre[k]
    aff = plane_affine(c0, rdir, cdir, 1.0, (size, size))
    sl = np.zeros((size, size), np.float32)
    if data is not None:
        sl = cut_plane(data, vaff, aff, (size, size))
        top = float(np.percentile(sl[sl > 0], 99.5)) if np.any(sl > 0) else 1.0
        sl = np.clip(sl / max(top, 1e-12), 0, 1)
    inv = np.linalg.inv(aff)
    prc = pts @ inv[:2, :3].T + inv[:2, 3]
    ax.imshow(sl, cmap="gray", vmin=0, vmax=1)
    ax.scatter(prc[:, 1], prc[:, 0], s=0.5, c=[(1.0, 0.8, 0.0)], marker=".", linewidths=0)
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        f"(6) {pos['plane']}, {pos['axis']} = {centre['xyz'.index(pos['axis'])]:.1f} mm, tilted {pos['tilt_deg']:.1f} deg "
        f"(seen {'from above' if view == 'axial' else 'from the side'})",
        fontsize=8,
    )


# -- thumbnails for reports -----------------------------------------------------------------------------
def qc_thumbnail(
    result: AnchoringResult,
    section: Section | ArrayLike | str | PathLike[str] | None = None,
    reference_volume: Any = None,
    height: int = 150,
    panels: tuple[NDArray, NDArray, NDArray, int] | None = None,
) -> NDArray:
    """(h, W, 3) uint8 strip of three small panels: section with outline and matches, reference on the
    plane with the section outline, checkerboard with reference edges. No matplotlib, fast.

    ``panels``: the output of :func:`small_panels` if already computed (else computed here)."""
    sec, m, ref, f = panels if panels is not None else small_panels(result, section, reference_volume, height)
    out = _outline(m)

    def rgb(a: NDArray) -> NDArray:
        return np.repeat(a[..., None], 3, axis=2).astype(np.float32)

    p1, p2 = rgb(sec), rgb(ref)
    p1[out] = OUTLINE_RGB
    p2[out] = OUTLINE_RGB
    mt = match_status(result)
    hh, ww = sec.shape
    for inl in (False, True):
        sel = np.isfinite(mt["x"].to_numpy()) & (mt["inlier"].to_numpy(bool) == inl)
        r = np.clip(np.round((mt["row"].to_numpy()[sel] - (f - 1) / 2.0) / f).astype(int), 0, hh - 1)
        c = np.clip(np.round((mt["col"].to_numpy()[sel] - (f - 1) / 2.0) / f).astype(int), 0, ww - 1)
        p1[r, c] = INLIER_RGB if inl else OUTLIER_RGB
    p3 = rgb(checkerboard(sec, ref, 6))
    p3[edge_map(ref, sigma=1.0)] = EDGE_RGB
    gap = np.ones((hh, 3, 3), np.float32)
    strip = np.concatenate([p1, gap, p2, gap, p3], axis=1)
    return (np.clip(strip, 0, 1) * 255).astype(np.uint8)


def small_panels(
    result: AnchoringResult,
    section: Section | ArrayLike | str | PathLike[str] | None = None,
    reference_volume: Any = None,
    max_px: int = 150,
) -> tuple[NDArray, NDArray, NDArray, int]:
    """(section (h, w) [0, 1], mask (h, w) bool, reference on the plane (h, w) [0, 1], block factor) on a
    display grid whose long side is at most ``max_px``: the arrays behind :func:`qc_thumbnail`."""
    gray, mask = section_arrays(result, section)
    f = display_factor(gray.shape, max_px)
    m = _block_mean(mask, f) > 0.5
    sec = normalize_tissue(_block_mean(gray, f), m)
    if not _bright_background(sec, m):
        sec = np.where(m, sec, 0.0)
    ref = reference_on_plane(result, reference_volume, shape=sec.shape, factor=f)
    return sec, m, ref, f

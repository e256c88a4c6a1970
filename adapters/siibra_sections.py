"""Sections that siibra serves (BigBrain cell-body stained sections) as :class:`Section` objects with their affine.

siibra knows where each BigBrain section lies: it serves it as a one-voxel-thick image volume in the
BigBrain space. :func:`section_from_volume` turns such a slab (any NIfTI-like image with ``dataobj`` and
``affine``) into ``(Section, affine)`` -- the affine in the :class:`~siibra_anchor.result.AnchoringResult`
convention -- ready for ``Reference.from_sections`` or for benchmarks. :func:`bigbrain_sections` lists and
fetches the sections through siibra (online, every call bounded by a timeout).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siibra_anchor.errors import InvalidSectionError, NetworkError, SpaceUnavailableError

__all__ = ["section_from_volume", "bigbrain_section_features", "bigbrain_sections"]

log = logging.getLogger(__name__)


def section_from_volume(
    img: Any, name: str = "section", modality: str = "cell body staining", tissue_threshold: float | None = None
) -> tuple[Any, NDArray]:
    """``(Section, affine)`` of a thin slab volume (one axis of length 1; else the middle slice of the thinnest).

    The in-plane voxel axes become rows and columns: rows follow the voxel axis closest to world -z
    (superior -> inferior; -y for axial slabs), columns the other axis, oriented towards +x (or +y), as
    sections are usually displayed. ``affine`` maps pixel (row, col, 0, 1) to the slab's world mm, so
    ``planes.cut_plane(volume, vol_affine, affine, section.shape)`` reproduces the slab from its volume.
    The tissue mask is ``image > tissue_threshold`` when given, else the Section's own detection.
    """
    from siibra_anchor.planes import section_affine
    from siibra_anchor.section import Section

    data = np.asanyarray(img.dataobj)
    aff = np.asarray(img.affine, float)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidSectionError(f"a section volume must be 3D (a one-voxel slab), got shape {data.shape}")
    thin = int(np.argmin(data.shape))
    k = data.shape[thin] // 2
    plane = np.take(np.asarray(data), k, axis=thin).astype(np.float32)
    in_axes = [a for a in range(3) if a != thin]
    world_dirs = aff[:3, :3]
    normal_world = world_dirs[:, thin]
    up = 2 if abs(normal_world[2]) < max(abs(normal_world[0]), abs(normal_world[1])) else 1
    # row axis: the in-plane voxel axis most aligned with world `up` (z, or y for axial slabs)
    row_ax = max(in_axes, key=lambda a: abs(world_dirs[up, a]) / np.linalg.norm(world_dirs[:, a]))
    col_ax = in_axes[1] if row_ax == in_axes[0] else in_axes[0]
    img2 = plane if row_ax == in_axes[0] else plane.T  # (rows = row_ax, cols = col_ax)
    r_step = world_dirs[:, row_ax].copy()
    c_step = world_dirs[:, col_ax].copy()
    origin = aff[:3, :3] @ np.eye(3)[thin] * k + aff[:3, 3]
    if r_step[up] > 0:  # rows run from superior to inferior
        img2 = img2[::-1]
        origin = origin + r_step * (img2.shape[0] - 1)
        r_step = -r_step
    side = 0 if up == 2 and abs(c_step[0]) >= abs(c_step[1]) else 1
    if c_step[side] < 0:  # columns run towards +x (or +y)
        img2 = img2[:, ::-1]
        origin = origin + c_step * (img2.shape[1] - 1)
        c_step = -c_step
    thickness = float(np.linalg.norm(world_dirs[:, thin]))
    affine = section_affine(np.stack([r_step, c_step], axis=1), origin, thickness)
    spacing = (float(np.linalg.norm(r_step)), float(np.linalg.norm(c_step)))
    img2 = np.ascontiguousarray(img2)
    mask = None if tissue_threshold is None else img2 > float(tissue_threshold)
    return Section(img2, spacing_mm=spacing, mask=mask, modality=modality, name=name), affine


def bigbrain_section_features(online: bool | None = None, timeout_s: float = 120.0) -> list[Any]:
    """siibra's ``CellbodyStainedSection`` features (BigBrain cell-body stained sections), listed within ``timeout_s``."""
    from siibra_anchor.net import call_with_timeout

    from .siibra_config import get_siibra

    try:
        siibra, mode = get_siibra(online=online, timeout_s=timeout_s)
    except NetworkError as exc:
        raise SpaceUnavailableError(
            f"BigBrain sections come from siibra online ({exc}); connect to the network, or register your own "
            "sections with sa.Reference.from_sections([(section, affine), ...], space=...)"
        ) from exc
    from siibra.features.image.sections import CellbodyStainedSection

    try:
        feats = call_with_timeout(
            CellbodyStainedSection._get_instances, timeout_s=timeout_s, what="listing BigBrain sections"
        )
    except AssertionError as exc:  # siibra: registry folder absent from the configuration
        raise SpaceUnavailableError(
            f"the siibra configuration in use ({mode}) declares no cell-body stained sections; use siibra online"
        ) from exc
    return list(feats)


def bigbrain_sections(
    limit: int | None = 4,
    resolution_mm: float = 0.32,
    names: list[str] | None = None,
    online: bool | None = None,
    timeout_s: float = 300.0,
) -> list[tuple[Any, NDArray]]:
    """BigBrain cell-body stained sections through siibra as ``(Section, affine)`` pairs in space "bigbrain".

    Parameters
    ----------
    limit : at most this many sections (in siibra's order); None for all (they are large).
    resolution_mm : pixel spacing at which each section is fetched from its image pyramid.
    names : only sections whose siibra name contains one of these strings.
    online, timeout_s : see :func:`siibra_anchor.adapters.siibra_config.get_siibra`; each fetch is bounded.

    Use them as a reference: ``sa.Reference.from_sections(bigbrain_sections(), space="bigbrain")``.
    """
    from siibra_anchor.net import call_with_timeout, retry

    from .siibra_spaces import fetch_volume

    feats = bigbrain_section_features(online=online, timeout_s=min(timeout_s, 120.0))
    if names is not None:  # an empty list selects none
        feats = [f for f in feats if any(n in str(f.name) for n in names)]
    if limit is not None:
        feats = feats[: int(limit)]
    out = []
    for f in feats:

        def fetch(f: Any = f) -> Any:
            try:
                return fetch_volume(f, f"BigBrain section {f.name!r}", resolution_mm=resolution_mm)
            except (SpaceUnavailableError, NetworkError):
                raise
            except Exception as exc:  # siibra's HTTP errors (404, 5xx), unreadable chunks, ...
                raise SpaceUnavailableError(f"siibra failed to fetch BigBrain section {f.name!r}: {exc}") from exc

        try:
            img = retry(
                call_with_timeout,
                fetch,
                timeout_s=timeout_s,
                what=f"fetching {f.name}",
                attempts=2,
                retry_on=(NetworkError,),
            )
        except (NetworkError, SpaceUnavailableError) as exc:
            raise SpaceUnavailableError(
                f"could not fetch BigBrain section {f.name!r} through siibra ({exc}); connect to the network, "
                "or register your own sections with sa.Reference.from_sections([(section, affine), ...], space=...)"
            ) from exc
        out.append(section_from_volume(img, name=str(f.name)))
    log.info("fetched %d BigBrain sections through siibra", len(out))
    return out

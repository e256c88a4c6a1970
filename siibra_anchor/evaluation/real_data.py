"""The real-anatomy volumes of the benchmark: their manifest, and a loader that checks each file's sha256.

The manifest (``real_data.json`` next to this module) lists individual-subject brain volumes from public
repositories (MRI of single people in several contrasts): for each, the file name expected in the data
folder, where it comes from (repository, commit, path), its licence, sha256 and size, its subject and
contrast, and its ``split``: ``"test"`` volumes are scored by the benchmark, ``"calibration"`` volumes
(other subjects) are kept apart for fitting the confidence calibration. Small, openly licensed volumes are
committed in the repository (``repo_path``); the others are fetched once into a folder of your own and
passed as ``--real-data DIR``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError, RealDataChecksumError, RealDataMissingError

__all__ = ["RealVolume", "MANIFEST_PATH", "real_volumes", "real_volume", "real_volume_path", "SPLITS"]

#: The manifest shipped with the package.
MANIFEST_PATH = Path(__file__).with_name("real_data.json")
#: The splits a volume can belong to.
SPLITS = ("test", "calibration")
#: Root of a source checkout (where ``repo_path`` entries live); absent in an installed wheel.
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RealVolume:
    """One manifest entry: a single-subject brain volume (NIfTI or MGH, world mm in RAS+).

    register_via : name of another entry of the same subject through which the volume is registered to the
    template (see :func:`~siibra_anchor.evaluation.real_truth.real_truth`); None: registered directly.
    truth_mask_iterations : re-register this many times with the volume skull-stripped by each run's previous
    estimate (whole-head scans; see :func:`~siibra_anchor.evaluation.real_truth.real_truth`).
    """

    name: str
    subject: str
    contrast: str
    file: str
    source: dict[str, str]
    licence: str
    sha256: str
    size: int
    split: str
    repo_path: str | None = None
    notes: str = ""
    register_via: str | None = None
    truth_mask_iterations: int = 0

    def how_to_get(self, folder: str | Path | None = None) -> str:
        """A sentence that says where to download the file and where to put it."""
        repo, commit, path = self.source["repo"], self.source["commit"], self.source["path"]
        dest = Path(folder) / self.file if folder is not None else Path("DIR") / self.file
        return (
            f"download https://raw.githubusercontent.com/{repo}/{commit}/{path} (or, for a Git LFS file, "
            f"https://media.githubusercontent.com/media/{repo}/{commit}/{path}) to {dest}, then pass "
            f"--real-data {dest.parent}"
        )


def _entry(d: dict[str, Any]) -> RealVolume:
    split = str(d.get("split", ""))
    if split not in SPLITS:
        raise InvalidParameterError(f"real-data manifest entry {d.get('name')!r} has split {split!r}; need {SPLITS}")
    return RealVolume(
        name=str(d["name"]),
        subject=str(d["subject"]),
        contrast=str(d["contrast"]),
        file=str(d["file"]),
        source={k: str(v) for k, v in d["source"].items()},
        licence=str(d["licence"]),
        sha256=str(d["sha256"]),
        size=int(d["size"]),
        split=split,
        repo_path=d.get("repo_path"),
        notes=str(d.get("notes", "")),
        register_via=d.get("register_via"),
        truth_mask_iterations=int(d.get("truth_mask_iterations", 0)),
    )


@lru_cache(maxsize=4)
def _read_manifest(path: str) -> tuple[RealVolume, ...]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(_entry(d) for d in doc["volumes"])


def real_volumes(split: str | None = None, manifest: str | Path | None = None) -> list[RealVolume]:
    """The manifest's volumes, all or those of one ``split`` ("test" or "calibration"), in manifest order."""
    if split is not None and split not in SPLITS:
        raise InvalidParameterError(f"split must be None or one of {SPLITS}, got {split!r}")
    vols = _read_manifest(str(Path(manifest or MANIFEST_PATH).resolve()))
    return [v for v in vols if split is None or v.split == split]


@lru_cache(maxsize=64)
def _checked(path: str, size: int, mtime_ns: int, sha256: str) -> bool:
    from ..cache import file_sha256

    return file_sha256(path) == sha256


def real_volume_path(volume: RealVolume | str, real_data_dir: str | Path | None = None) -> Path:
    """Path of a manifest volume, its sha256 checked against the manifest.

    The file is looked for as ``real_data_dir / volume.file``, then (for committed volumes) at its
    ``repo_path`` in the source checkout.

    Raises
    ------
    RealDataMissingError
        The file is in neither place; the message says where to download it.
    RealDataChecksumError
        The file found differs from the one the manifest records (sha256).
    """
    vol = volume if isinstance(volume, RealVolume) else real_volume(volume)
    candidates = []
    if real_data_dir is not None:
        candidates.append(Path(real_data_dir) / vol.file)
    if vol.repo_path:
        candidates.append(_REPO_ROOT / vol.repo_path)
    for p in candidates:
        if p.is_file():
            st = p.stat()
            if not _checked(str(p.resolve()), st.st_size, st.st_mtime_ns, vol.sha256):
                raise RealDataChecksumError(
                    f"{p} does not match the sha256 {vol.sha256} that the manifest records for {vol.name!r} "
                    f"(size {st.st_size} bytes, expected {vol.size}); replace it: {vol.how_to_get(p.parent)}"
                )
            return p
    where = " or ".join(str(c) for c in candidates) or "(no folder given)"
    raise RealDataMissingError(
        f"real-anatomy volume {vol.name!r} ({vol.contrast}, subject {vol.subject}) is not at {where}; "
        f"{vol.how_to_get(real_data_dir)}"
    )


def real_volume(name: str) -> RealVolume:
    """The manifest's volume called ``name`` (:class:`~siibra_anchor.errors.InvalidParameterError` if none is)."""
    for v in real_volumes():
        if v.name == name:
            return v
    raise InvalidParameterError(f"no real-anatomy volume named {name!r}; known: {[v.name for v in real_volumes()]}")

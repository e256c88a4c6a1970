"""Section images of a folder, in cutting order (the input of a series)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import SectionFileNotFoundError
from .formats import image_stem

__all__ = ["IMAGE_SUFFIXES", "series_images", "image_stem"]

#: file name endings read as section images (OME-Zarr and Zarr are folders)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz", ".zarr", ".ome.zarr")


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def series_images(folder: str | Path) -> list[Path]:
    """Section images of a folder in natural sort order (s2 before s10); results and hidden files skipped."""
    d = Path(folder)
    if not d.is_dir():
        raise SectionFileNotFoundError(f"series folder not found: {d}; give a folder of section images")
    files = [
        p
        for p in d.iterdir()
        if not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES) and ".anchor." not in p.name
    ]
    if not files:
        raise SectionFileNotFoundError(
            f"no section images ({', '.join(IMAGE_SUFFIXES)}) in {d}; put the series' images in one folder"
        )
    return sorted(files, key=lambda p: _natural_key(p.name))

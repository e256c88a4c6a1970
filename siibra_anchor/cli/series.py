"""``siibra-anchor series``: anchor every section image of a folder jointly, as one series."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_anchor_options, emit, quiet_dask, run

__all__ = ["register", "main"]


def register(sub: Any) -> None:
    p = sub.add_parser("series", help="anchor every section image of a folder jointly, as one series")
    p.add_argument("folder", help="folder of section images (natural sort order = cutting order)")
    p.add_argument("--spacing-mm", type=float, default=None, help="pixel spacing in mm (unless the files have it)")
    p.add_argument("--thickness-mm", type=float, default=None, help="distance between consecutive sections (mm)")
    p.add_argument(
        "--numbers-from-names",
        action="store_true",
        help="take each section's number from the last integer in its file name (gaps = missing sections)",
    )
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (default: a local cluster)")
    p.add_argument("--workers", type=int, default=2, help="workers of the local Dask cluster (default 2)")
    p.add_argument("--in-process", action="store_true", help="no Dask: anchor in this process")
    p.add_argument("--out", default=None, help="folder for <name>.anchor.json and series.json (default: FOLDER)")
    p.add_argument("--report", default=None, help="also write a QC report of the series to this path")
    p.add_argument("--modality", default="unknown", help="free text kept with the results")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    add_anchor_options(p)
    p.set_defaults(run=series_cmd)


def series_cmd(ns: argparse.Namespace) -> int:
    import json
    import re

    import siibra_anchor as sa

    from ..cache import atomic_write_text
    from ..errors import AnchorError, InvalidParameterError, SectionFileNotFoundError
    from ..io.folders import image_stem, series_images

    files = series_images(ns.folder)
    order = None
    if ns.numbers_from_names:
        nums = [re.findall(r"\d+", p.name.split(".")[0]) for p in files]
        if any(not n for n in nums):
            bad = [p.name for p, n in zip(files, nums, strict=True) if not n]
            raise InvalidParameterError(f"--numbers-from-names: no number in {bad[:3]}; rename or drop the option")
        order = [int(n[-1]) for n in nums]
    sections, kept, numbers = [], [], []  # numbers keep the gap an unreadable section leaves
    for k, p in enumerate(files):
        try:  # one unreadable image does not stop the series: it is reported and left out
            sections.append(sa.Section.from_file(p, spacing_mm=ns.spacing_mm, modality=ns.modality, name=image_stem(p)))
        except AnchorError as exc:
            emit(f"{image_stem(p):<24} not read: {' '.join(str(exc).split())}")
            continue
        kept.append(p)
        numbers.append(k if order is None else order[k])
    if not sections:
        raise SectionFileNotFoundError(f"no section image of {ns.folder} could be read (see the lines above)")
    if order is not None or len(kept) < len(files):
        order = numbers
    files = kept
    scheduler = None if ns.in_process else (ns.scheduler or "local")
    if scheduler is not None:
        quiet_dask(ns)
    res = sa.anchor_series(
        sections,
        space=ns.space,
        order=order,
        thickness_mm=ns.thickness_mm,
        seed=ns.seed,
        n_patches=ns.n_patches,
        hemisphere=ns.hemisphere,
        flipped=ns.flipped,
        cut=ns.cut,
        device=ns.device,
        scheduler=scheduler,
        n_workers=ns.workers,
        progress=not ns.quiet,
    )
    out = Path(ns.out) if ns.out else Path(ns.folder)
    out.mkdir(parents=True, exist_ok=True)
    for r, p in zip(res, files, strict=True):
        r.save(out / f"{image_stem(p)}.anchor.json")
    atomic_write_text(out / "series.json", json.dumps(res.to_dict(), indent=1))
    for r in res:
        flags = ",".join(r.diagnostics.get("flags", [])) or "-"
        if not r.placed:
            emit(f"{r.section.get('name', '?'):<24} unplaced: {r.diagnostics['unplaced']}")
            continue
        emit(f"{r.section.get('name', '?'):<24} confidence {r.confidence:.2f}  {r.plane_name:<9} {flags}")
    emit(f"series      {len(res)} sections, series confidence {res.confidence:.2f}")
    emit(f"results     {out}/*.anchor.json, {out / 'series.json'}")
    if ns.report:
        from ..report import write_series_report

        write_series_report(res, sections, ns.report)
        emit(f"report      {ns.report}")
    return 0


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.cli.series series FOLDER ...``."""
    return run([register], args)

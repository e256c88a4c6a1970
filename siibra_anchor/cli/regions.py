"""``siibra-anchor regions`` (brain regions under an anchored section) and ``siibra-anchor apply`` (the
section written into its space)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import emit, run

__all__ = ["register", "main"]


def register(sub: Any) -> None:
    p = sub.add_parser("regions", help="brain regions an anchored section touches (Julich-Brain via siibra or offline)")
    p.add_argument("result", help="RESULT.json written by 'siibra-anchor anchor'")
    p.add_argument(
        "--parcellation",
        default="julich",
        help="'julich' (default: Julich-Brain 3.x through siibra, online or cached), 'fsl-juelich' "
        "(bundled FSL Juelich maps, offline, MNI152 only) or a siibra name",
    )
    p.add_argument("--threshold", type=float, default=0.2, help="minimum probability 0..1 (default 0.2)")
    p.add_argument("--image", default=None, help="the section image: count only its tissue (default: all pixels)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="never use the network (Julich-Brain from the cache only; --parcellation fsl-juelich is offline)",
    )
    p.add_argument("--step", type=int, default=1, help="look up every STEP-th pixel (faster on large sections)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--csv", default=None, metavar="OUT", help="also write the table as CSV to OUT")
    p.set_defaults(run=regions_cmd)

    p = sub.add_parser("apply", help="write an anchored section into its space at full resolution")
    p.add_argument("result", help="result JSON written by 'anchor'")
    p.add_argument("image", help="the section image (TIFF/OME-Zarr read window by window; PNG/NIfTI whole)")
    p.add_argument("--out", required=True, help="OUT.nii, OUT.nii.gz or OUT.ome.zarr")
    p.add_argument("--spacing-mm", type=float, default=None, help="output voxel size (default: see docs)")
    p.add_argument(
        "--grid",
        choices=["section", "world", "reference"],
        default=None,
        help="reference: the template's grid (NIfTI default without --spacing-mm when the space's template is "
        "known); world: an axis-aligned grid (OME-Zarr default; NIfTI with --spacing-mm); section: the pixel grid",
    )
    p.add_argument("--template", default=None, metavar="NIFTI", help="template whose grid --grid reference uses")
    p.add_argument("--chunk", type=int, default=64, help="output chunk edge in voxels (default 64)")
    p.set_defaults(run=apply_cmd)


def regions_cmd(ns: argparse.Namespace) -> int:
    import json

    import siibra_anchor as sa

    res = sa.AnchoringResult.load(ns.result)
    mask = None
    if ns.image:
        sec = sa.Section.from_file(ns.image, spacing_mm=res.section.get("spacing_mm"))
        mask = sec.mask
    df = res.assign_regions(
        parcellation=ns.parcellation,
        threshold=ns.threshold,
        mask=mask,
        step=ns.step,
        online=False if ns.offline else None,
    )
    cols = ["region", "area_mm2", "share", "mean_probability", "pixels"]
    if ns.csv:
        from ..cache import atomic_write_text

        atomic_write_text(ns.csv, df[cols].to_csv(index=False))
    if ns.json:
        emit(json.dumps({**df.attrs, "regions": df[cols].to_dict(orient="records")}, indent=1))
        return 0
    emit(f"source      {df.attrs['source']}")
    emit(f"tissue      {df.attrs['tissue_area_mm2']:.1f} mm2, threshold {df.attrs['threshold']:g}")
    if df.empty:
        emit("no region reaches the threshold on this section")
        return 0
    w = max(len("region"), *(len(r) for r in df["region"]))
    emit(f"{'region':<{w}}  {'area_mm2':>9}  {'share':>6}  {'mean_p':>6}")
    for r in df.itertuples():
        emit(f"{r.region:<{w}}  {r.area_mm2:>9.1f}  {100 * r.share:>5.1f}%  {r.mean_probability:>6.2f}")
    if ns.csv:
        emit(f"wrote {ns.csv}")
    return 0


def apply_cmd(ns: argparse.Namespace) -> int:
    from ..io.apply import resample_to_space

    out = resample_to_space(
        ns.result, ns.image, ns.out, spacing_mm=ns.spacing_mm, grid=ns.grid, chunk=ns.chunk, template=ns.template
    )
    emit(f"wrote {out}")
    return 0


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.cli.regions regions|apply ...``."""
    return run([register], args)

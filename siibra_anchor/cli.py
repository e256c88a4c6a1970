"""Command line: ``siibra-anchor anchor|demo|benchmark|reference build|train``.

A thin wrapper over the library. Errors of siibra-anchor become one line on stderr and exit code 2;
progress bars go to stderr and are off with ``--quiet``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("siibra_anchor")


def _add_anchor_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="mni152", help="reference space (default: mni152, embedded)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--n-patches", type=int, default=None, help="about how many section patches to use")
    p.add_argument(
        "--hemisphere",
        choices=["left", "right"],
        default=None,
        help="hint: section holds only this hemisphere",
    )
    fl = p.add_mutually_exclusive_group()
    fl.add_argument("--flipped", dest="flipped", action="store_true", default=None, help="section is mounted face down")
    fl.add_argument("--not-flipped", dest="flipped", action="store_false", help="section is mounted face up")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="siibra-anchor", description=__doc__.splitlines()[0])
    ap.add_argument("--quiet", action="store_true", help="no progress bars, only warnings and results")
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("anchor", help="anchor one section image")
    p.add_argument("image", help="PNG, TIFF (incl. pyramidal), NIfTI or OME-Zarr section")
    p.add_argument(
        "--spacing-mm", type=float, default=None, help="pixel spacing in mm (required unless the file has it)"
    )
    p.add_argument("--out", default=None, help="result JSON (default: IMAGE.anchor.json next to the image)")
    p.add_argument("--modality", default="unknown", help="free text kept with the result (nissl, pli, ...)")
    p.add_argument("--qc", default=None, metavar="PNG", help="also write a quality-control figure (siibra_anchor.qc)")
    _add_anchor_opts(p)

    p = sub.add_parser("demo", help="anchor a real section cut from a template that is not the reference one")
    p.add_argument("--out", default="siibra-anchor-demo", help="folder for the section image and result")
    p.add_argument("--volume", default="fsl-mni152-t1", help="volume the demo section is cut from")
    p.add_argument("--orientation", default="coronal", choices=["coronal", "sagittal", "axial"])
    p.add_argument("--rotation-deg", type=float, default=35.0)
    p.add_argument("--tilt-deg", type=float, default=8.0)
    _add_anchor_opts(p)

    p = sub.add_parser("benchmark", help="measure anchoring error, time and memory on simulated sections")
    p.add_argument("--quick", action="store_true", help="8 sections instead of 48, tiny density and SimpleITK runs")
    p.add_argument("--out", default=None, help="folder for benchmark.json, the PNG figures and the section set")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--sections", default=None, help="measure the section set saved in this folder by --out")
    p.add_argument("--doc", default=None, help="also write the report as Markdown (e.g. docs/benchmarks.md)")

    p = sub.add_parser("reference", help="reference indexes")
    rsub = p.add_subparsers(dest="rcmd", required=True)
    b = rsub.add_parser("build", help="build (and cache) the reference of a space")
    b.add_argument("--space", default="mni152")
    b.add_argument("--n-sections", type=int, default=30, help="reference sections per orientation")
    b.add_argument("--axis", nargs="+", default=["coronal", "sagittal", "axial"])
    b.add_argument("--out", default=None, help="also save the reference to this .zarr folder")

    p = sub.add_parser("view", help="show a result in Neuroglancer (local, offline) or render a screenshot")
    from .viewer.cli import add_view_arguments

    add_view_arguments(p)

    p = sub.add_parser("train", help="train a patch encoder (see siibra_anchor.training)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="CONFIG.yaml [--resume] [--steps N] [--out DIR]")

    p = sub.add_parser("regions", help="brain regions an anchored section touches (Julich-Brain via siibra or offline)")
    p.add_argument("result", help="RESULT.json written by 'siibra-anchor anchor'")
    p.add_argument(
        "--parcellation",
        default="julich",
        help="'julich' (default: Julich-Brain 3.x through siibra, online or cached), 'fsl-juelich' (bundled "
        "FSL Juelich maps, offline, MNI152 only) or a siibra name",
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

    p = sub.add_parser("apply", help="write an anchored section into its space at full resolution")
    p.add_argument("result", help="result JSON written by 'anchor'")
    p.add_argument("image", help="the section image (TIFF/OME-Zarr read window by window; PNG/NIfTI whole)")
    p.add_argument("--out", required=True, help="OUT.nii, OUT.nii.gz or OUT.ome.zarr")
    p.add_argument("--spacing-mm", type=float, default=None, help="output voxel size (default: see docs)")
    p.add_argument(
        "--grid",
        choices=["section", "world", "reference"],
        default=None,
        help="section pixel grid (NIfTI default), axis-aligned world grid (OME-Zarr default), or the template's",
    )
    p.add_argument("--chunk", type=int, default=64, help="output chunk edge in voxels (default 64)")

    p = sub.add_parser("benchmark-scaling", help="time and peak memory vs sections, section size, reference size")
    p.add_argument("--quick", action="store_true", help="small sweep (about 3 minutes)")
    p.add_argument("--out", default="siibra-anchor-scaling", help="folder for scaling.json and scaling.png")
    p.add_argument("--doc", default=None, help="also write the report as Markdown (e.g. docs/scaling.md)")
    p.add_argument(
        "--large-image",
        type=int,
        nargs="?",
        const=100_000,
        default=None,
        metavar="PX",
        help="only the large-image check: write a PX x PX OME-Zarr (default 100000) chunk by chunk, anchor it "
        "read lazily, apply it, and report peak RSS",
    )
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("reliability", help="run the bad-input, corrupt-file, fuzz and fault cases; write a report")
    p.add_argument("--out", default=None, help="write the Markdown report here (e.g. docs/reliability.md)")
    p.add_argument("--quick", action="store_true", help="fewer fuzz examples and no anchoring of non-brain images")
    p.add_argument("--seed", type=int, default=0)

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
    _add_anchor_opts(p)

    p = sub.add_parser("benchmark-series", help="independent vs joint anchoring on simulated series")
    p.add_argument("--quick", action="store_true", help="one series of 10 sections instead of three of 20")
    p.add_argument("--out", default=None, help="folder for series_benchmark.json")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--scheduler", default=None, help="run on Dask: 'local' or a scheduler address")
    p.add_argument("--workers", type=int, default=2, help="workers of a local Dask cluster")
    p.add_argument(
        "--no-template-floor",
        action="store_true",
        help="skip the affine registration of each source volume onto the reference (the template floor)",
    )
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    return ap


def _print(*a: Any) -> None:
    sys.stdout.write(" ".join(str(x) for x in a) + "\n")


def _cmd_anchor(ns: argparse.Namespace) -> int:
    import siibra_anchor as sa

    from .patches import PatchSpec

    # TIFF / OME-Zarr are read lazily, block-averaged to 1/4 of the encoder's working spacing
    section = sa.Section.from_file(
        ns.image,
        spacing_mm=ns.spacing_mm,
        modality=ns.modality,
        target_spacing_mm=PatchSpec().spacing_mm / 4.0,
        reduce=True,
    )
    res = sa.anchor(
        section,
        space=ns.space,
        n_patches=ns.n_patches,
        seed=ns.seed,
        progress=not ns.quiet,
        hemisphere=ns.hemisphere,
        flipped=ns.flipped,
    )
    from .result import pixel_grid_of

    res.pixel_grid = pixel_grid_of(section)  # the affine is on the reduced grid of this file
    out = Path(ns.out) if ns.out else Path(str(ns.image).rstrip("/") + ".anchor.json")
    res.save(out)
    _print(res.summary())
    _print(f"result      {out}")
    if ns.qc:
        res.plot_qc(ns.qc, section=section)
        _print(f"qc figure   {ns.qc}")
    return 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    import siibra_anchor as sa
    from siibra_anchor.simulate import section_error, simulate_section

    sim = simulate_section(
        volume=ns.volume,
        orientation=ns.orientation,
        rotation_deg=ns.rotation_deg,
        tilt_deg=ns.tilt_deg,
        offset_mm=-12.0,
        spacing_mm=0.4,
        contrast="as-is",
        seed=ns.seed,
        name=f"demo-{ns.volume}-{ns.orientation}",
    )
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "section.png"
    img8 = (np.clip(sim.section.image, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(img8).save(png)
    np.savetxt(out / "true_affine.txt", sim.true_affine)
    _print(f"demo section {png}: cut from {ns.volume} ({sa.templates.VOLUMES[ns.volume].description})")
    _print(f"             {ns.orientation}, rotated {ns.rotation_deg} deg, tilted {ns.tilt_deg} deg, 0.4 mm/px")
    section = sa.Section.from_file(png, spacing_mm=0.4, name=sim.section.name)
    res = sa.anchor(
        section,
        space=ns.space,
        seed=ns.seed,
        progress=not ns.quiet,
        hemisphere=ns.hemisphere,
        flipped=ns.flipped,
        n_patches=ns.n_patches,
    )
    res.save(out / "result.json")
    _print(res.summary())
    err = section_error(res.affine, sim.true_affine, sim.section.mask)
    _print(
        f"error       {err:.2f} mm mean over the tissue against the true placement "
        f"({res.diagnostics['timings']['total_s']:.1f} s)"
    )
    _print(f"result      {out / 'result.json'}")
    try:
        url = res.neuroglancer_url()
    except ImportError as exc:  # the viewer extra is optional; the viewer's error says how to install it
        _print(f"neuroglancer: not available ({exc})")
    else:
        (out / "neuroglancer_url.txt").write_text(url + "\n")
        _print(f"neuroglancer {out / 'neuroglancer_url.txt'}")
    return 0


def _cmd_benchmark(ns: argparse.Namespace) -> int:
    from .benchmark import format_table, run_benchmark

    rep = run_benchmark(quick=ns.quick, out=ns.out, seed=ns.seed, progress=not ns.quiet, sections=ns.sections)
    _print(format_table(rep))
    if ns.doc:
        import shutil
        import tempfile

        from .benchmark import FIGURES, example_figure, format_markdown, plot_report
        from .cache import atomic_file, atomic_write_text

        doc_dir = Path(ns.doc).parent
        fig = example_figure(rep, doc_dir / "benchmark-example.png")
        with tempfile.TemporaryDirectory() as tmp:
            for name in plot_report(rep, tmp).values():
                with atomic_file(doc_dir / ("benchmark-" + name.replace("_", "-")), suffix=".png") as dst:
                    shutil.copyfile(Path(tmp) / name, dst)
        _print("figures " + ", ".join(f"benchmark-{v.replace('_', '-')}" for v in FIGURES.values()))
        atomic_write_text(ns.doc, format_markdown(rep))
        _print(f"wrote {ns.doc}" + (f" and {fig}" if fig else ""))
    return 0


def _cmd_reference(ns: argparse.Namespace) -> int:
    import time

    import siibra_anchor as sa

    t = time.perf_counter()
    ref = sa.Reference.from_space(ns.space, n_sections=ns.n_sections, axis=ns.axis, progress=not ns.quiet)
    _print(f"{ref} ready in {time.perf_counter() - t:.1f} s")
    if ns.out:
        _print(f"saved {ref.save(ns.out)}")
    return 0


def _cmd_view(ns: argparse.Namespace) -> int:
    from .viewer.cli import view_main

    return int(view_main(ns) or 0)


def _cmd_train(ns: argparse.Namespace) -> int:
    from .training.__main__ import main as train_main

    return int(train_main(ns.args) or 0)


def _cmd_regions(ns: argparse.Namespace) -> int:
    import json

    import siibra_anchor as sa

    from .adapters.regions import assign_regions

    res = sa.AnchoringResult.load(ns.result)
    mask = None
    if ns.image:
        sec = sa.Section.from_file(ns.image, spacing_mm=res.section.get("spacing_mm"))
        mask = sec.mask
    df = assign_regions(
        res,
        parcellation=ns.parcellation,
        threshold=ns.threshold,
        mask=mask,
        step=ns.step,
        online=False if ns.offline else None,
    )
    cols = ["region", "area_mm2", "share", "mean_probability", "pixels"]
    if ns.csv:
        from .cache import atomic_write_text

        atomic_write_text(ns.csv, df[cols].to_csv(index=False))
    if ns.json:
        _print(json.dumps({**df.attrs, "regions": df[cols].to_dict(orient="records")}, indent=1))
        return 0
    _print(f"source      {df.attrs['source']}")
    _print(f"tissue      {df.attrs['tissue_area_mm2']:.1f} mm2, threshold {df.attrs['threshold']:g}")
    if df.empty:
        _print("no region reaches the threshold on this section")
        return 0
    w = max(len("region"), *(len(r) for r in df["region"]))
    _print(f"{'region':<{w}}  {'area_mm2':>9}  {'share':>6}  {'mean_p':>6}")
    for r in df.itertuples():
        _print(f"{r.region:<{w}}  {r.area_mm2:>9.1f}  {100 * r.share:>5.1f}%  {r.mean_probability:>6.2f}")
    if ns.csv:
        _print(f"wrote {ns.csv}")
    return 0


def _cmd_apply(ns: argparse.Namespace) -> int:
    from .apply import resample_to_space

    out = resample_to_space(ns.result, ns.image, ns.out, spacing_mm=ns.spacing_mm, grid=ns.grid, chunk=ns.chunk)
    _print(f"wrote {out}")
    return 0


def _cmd_benchmark_scaling(ns: argparse.Namespace) -> int:
    from .scaling import format_large_image, format_table, large_image_check, run_scaling

    if ns.large_image is not None:
        rep = large_image_check(size_px=ns.large_image, out=ns.out, seed=ns.seed, progress=not ns.quiet)
        _print(format_large_image(rep))
        return 0
    rep = run_scaling(quick=ns.quick, out=ns.out, seed=ns.seed, progress=not ns.quiet)
    _print(format_table(rep))
    if ns.doc:
        from .cache import atomic_write_text
        from .scaling import format_markdown, plot_scaling, with_hand_written

        png = plot_scaling(rep, Path(ns.doc).parent / "scaling.png")
        atomic_write_text(ns.doc, with_hand_written(format_markdown(rep, png_name=png.name), ns.doc))
        _print(f"wrote {ns.doc} and {png}")
    return 0


def _cmd_reliability(ns: argparse.Namespace) -> int:
    from .reliability import format_markdown, format_table, run_reliability

    rep = run_reliability(quick=ns.quick, seed=ns.seed, progress=not ns.quiet)
    _print(format_table(rep))
    if ns.out:
        from .cache import atomic_write_text

        atomic_write_text(ns.out, format_markdown(rep))
        _print(f"wrote {ns.out}")
    return 0 if rep["ok"] else 1


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz", ".zarr", ".ome.zarr")


def _natural_key(name: str) -> list[Any]:
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def series_images(folder: str | Path) -> list[Path]:
    """Section images of a folder in natural sort order (s2 before s10); results and hidden files skipped."""
    from .errors import SectionFileNotFoundError

    d = Path(folder)
    if not d.is_dir():
        raise SectionFileNotFoundError(f"series folder not found: {d}; give a folder of section images")
    files = [
        p
        for p in d.iterdir()
        if not p.name.startswith(".") and p.name.lower().endswith(_IMAGE_SUFFIXES) and ".anchor." not in p.name
    ]
    if not files:
        raise SectionFileNotFoundError(
            f"no section images ({', '.join(_IMAGE_SUFFIXES)}) in {d}; put the series' images in one folder"
        )
    return sorted(files, key=lambda p: _natural_key(p.name))


def _quiet_dask(ns: argparse.Namespace) -> None:
    """Dask's scheduler logs every connection at INFO; show its warnings only (unless --verbose)."""
    if ns.verbose:
        return
    try:
        import distributed  # noqa: F401  (sets its loggers' levels on import)
    except ImportError:
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)


def _cmd_series(ns: argparse.Namespace) -> int:
    import json
    import re

    import siibra_anchor as sa

    from .cache import atomic_write_text
    from .errors import InvalidSectionError

    files = series_images(ns.folder)
    order = None
    if ns.numbers_from_names:
        nums = [re.findall(r"\d+", p.name.split(".")[0]) for p in files]
        if any(not n for n in nums):
            bad = [p.name for p, n in zip(files, nums, strict=True) if not n]
            raise InvalidSectionError(f"--numbers-from-names: no number in {bad[:3]}; rename or drop the option")
        order = [int(n[-1]) for n in nums]
    sections = [sa.Section.from_file(p, spacing_mm=ns.spacing_mm, modality=ns.modality, name=_stem(p)) for p in files]
    scheduler = None if ns.in_process else (ns.scheduler or "local")
    if scheduler is not None:
        _quiet_dask(ns)
    res = sa.anchor_series(
        sections,
        space=ns.space,
        order=order,
        thickness_mm=ns.thickness_mm,
        seed=ns.seed,
        n_patches=ns.n_patches,
        hemisphere=ns.hemisphere,
        flipped=ns.flipped,
        scheduler=scheduler,
        n_workers=ns.workers,
        progress=not ns.quiet,
    )
    out = Path(ns.out) if ns.out else Path(ns.folder)
    out.mkdir(parents=True, exist_ok=True)
    for r, p in zip(res, files, strict=True):
        r.save(out / f"{_stem(p)}.anchor.json")
    atomic_write_text(out / "series.json", json.dumps(res.to_dict(), indent=1))
    for r in res:
        flags = ",".join(r.diagnostics.get("flags", [])) or "-"
        _print(f"{r.section.get('name', '?'):<24} confidence {r.confidence:.2f}  {r.plane_name:<9} {flags}")
    _print(f"series      {len(res)} sections, series confidence {res.confidence:.2f}")
    _print(f"results     {out}/*.anchor.json, {out / 'series.json'}")
    if ns.report:
        from .report import write_series_report

        write_series_report(res, sections, ns.report)
        _print(f"report      {ns.report}")
    return 0


def _stem(p: Path) -> str:
    name = p.name
    for suf in sorted(_IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _cmd_benchmark_series(ns: argparse.Namespace) -> int:
    from .series_bench import format_series_table, run_series_benchmark

    if ns.scheduler:
        _quiet_dask(ns)
    rep = run_series_benchmark(
        quick=ns.quick,
        out=ns.out,
        seed=ns.seed,
        scheduler=ns.scheduler,
        n_workers=ns.workers,
        progress=not ns.quiet,
        template_floor=not ns.no_template_floor,
    )
    _print(format_series_table(rep))
    return 0


def main(argv: list[str] | None = None) -> int:
    import warnings

    from .errors import AnchorError, AnchorWarning

    ns = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    cmds = {
        "anchor": _cmd_anchor,
        "demo": _cmd_demo,
        "benchmark": _cmd_benchmark,
        "reference": _cmd_reference,
        "view": _cmd_view,
        "train": _cmd_train,
        "regions": _cmd_regions,
        "apply": _cmd_apply,
        "benchmark-scaling": _cmd_benchmark_scaling,
        "reliability": _cmd_reliability,
        "series": _cmd_series,
        "benchmark-series": _cmd_benchmark_series,
    }
    try:
        with warnings.catch_warnings():
            if not ns.debug:  # the library logs each of its warnings as one line already
                warnings.filterwarnings("ignore", category=AnchorWarning)
            return cmds[ns.cmd](ns)
    except AnchorError as exc:
        if ns.debug:
            raise
        sys.stderr.write(f"siibra-anchor: error: {_one_line(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("siibra-anchor: interrupted\n")
        return 130
    except Exception as exc:  # a bug or an environment problem: one line, the traceback only on request
        if ns.debug:
            raise
        sys.stderr.write(
            f"siibra-anchor: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
            "(run again with --debug for the traceback and report it)\n"
        )
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())

"""``siibra-anchor benchmark``, ``benchmark-series``, ``benchmark-scaling`` and ``reliability``: the
measurements of :mod:`siibra_anchor.evaluation`, printed as tables and written as docs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import emit, quiet_dask, run

__all__ = ["register", "main"]


def register(sub: Any) -> None:
    p = sub.add_parser("benchmark", help="measure anchoring error, time and memory on simulated sections")
    p.add_argument("--quick", action="store_true", help="8 sections instead of 48, tiny density and SimpleITK runs")
    p.add_argument("--out", default=None, help="folder for benchmark.json, the PNG figures and the section set")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--sections", default=None, help="measure the section set saved in this folder by --out")
    p.add_argument("--doc", default=None, help="also write the report as Markdown (e.g. docs/benchmarks.md)")
    p.add_argument(
        "--real-data",
        default=None,
        metavar="DIR",
        help="also run the real-anatomy tier on the volumes in DIR, checked against the manifest "
        "(docs/real-anatomy.md; the committed volumes are used when DIR lacks them)",
    )
    p.add_argument(
        "--real-mounting-unknown",
        action="store_true",
        help="real-anatomy tier with the hemisphere hint only (default: the mounting is known too, as in the "
        "template-family tier)",
    )
    p.add_argument(
        "--bigbrain",
        type=int,
        default=0,
        metavar="N",
        help="also anchor N BigBrain cell-body sections fetched through siibra (needs the network; errors "
        "against siibra's BigBrain -> MNI152 warp; docs/real-anatomy.md)",
    )
    p.add_argument("--bigbrain-resolution-mm", type=float, default=0.32, help="pixel spacing of the BigBrain sections")
    p.set_defaults(run=benchmark_cmd)

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
    p.set_defaults(run=scaling_cmd)

    p = sub.add_parser("reliability", help="run the bad-input, corrupt-file, fuzz and fault cases; write a report")
    p.add_argument("--out", default=None, help="write the Markdown report here (e.g. docs/reliability.md)")
    p.add_argument("--quick", action="store_true", help="fewer fuzz examples and no anchoring of non-brain images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=reliability_cmd)

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
    p.set_defaults(run=series_benchmark_cmd)


def benchmark_cmd(ns: argparse.Namespace) -> int:
    from ..evaluation.benchmark import format_table, run_benchmark

    rep = run_benchmark(
        quick=ns.quick,
        out=ns.out,
        seed=ns.seed,
        progress=not ns.quiet,
        sections=ns.sections,
        real_data=ns.real_data,
        real_mounting_known=not ns.real_mounting_unknown,
        bigbrain=ns.bigbrain,
        bigbrain_resolution_mm=ns.bigbrain_resolution_mm,
    )
    emit(format_table(rep))
    if ns.doc:
        import shutil
        import tempfile

        from ..cache import atomic_file, atomic_write_text
        from ..evaluation.benchmark import FIGURES, example_figure, format_markdown, plot_report

        doc_dir = Path(ns.doc).parent
        fig = example_figure(rep, doc_dir / "benchmark-example.png")
        with tempfile.TemporaryDirectory() as tmp:
            for name in plot_report(rep, tmp).values():
                with atomic_file(doc_dir / ("benchmark-" + name.replace("_", "-")), suffix=".png") as dst:
                    shutil.copyfile(Path(tmp) / name, dst)
        emit("figures " + ", ".join(f"benchmark-{v.replace('_', '-')}" for v in FIGURES.values()))
        atomic_write_text(ns.doc, format_markdown(rep))
        emit(f"wrote {ns.doc}" + (f" and {fig}" if fig else ""))
    return 0


def scaling_cmd(ns: argparse.Namespace) -> int:
    from ..evaluation.scaling import format_large_image, format_table, large_image_check, run_scaling

    if ns.large_image is not None:
        rep = large_image_check(size_px=ns.large_image, out=ns.out, seed=ns.seed, progress=not ns.quiet)
        emit(format_large_image(rep))
        return 0
    rep = run_scaling(quick=ns.quick, out=ns.out, seed=ns.seed, progress=not ns.quiet)
    emit(format_table(rep))
    if ns.doc:
        from ..cache import atomic_write_text
        from ..evaluation.scaling import format_markdown, plot_scaling, with_hand_written

        png = plot_scaling(rep, Path(ns.doc).parent / "scaling.png")
        atomic_write_text(ns.doc, with_hand_written(format_markdown(rep, png_name=png.name), ns.doc))
        emit(f"wrote {ns.doc} and {png}")
    return 0


def reliability_cmd(ns: argparse.Namespace) -> int:
    from ..evaluation.reliability import format_markdown, format_table, run_reliability
    from . import main as cli_main

    # the CLI cases of the report run this command line itself (the library never imports cli/)
    rep = run_reliability(quick=ns.quick, seed=ns.seed, progress=not ns.quiet, cli_main=cli_main)
    emit(format_table(rep))
    if ns.out:
        from ..cache import atomic_write_text

        atomic_write_text(ns.out, format_markdown(rep))
        emit(f"wrote {ns.out}")
    return 0 if rep["ok"] else 1


def series_benchmark_cmd(ns: argparse.Namespace) -> int:
    from ..evaluation.series_bench import format_series_table, run_series_benchmark

    if ns.scheduler:
        quiet_dask(ns)
    rep = run_series_benchmark(
        quick=ns.quick,
        out=ns.out,
        seed=ns.seed,
        scheduler=ns.scheduler,
        n_workers=ns.workers,
        progress=not ns.quiet,
        template_floor=not ns.no_template_floor,
    )
    emit(format_series_table(rep))
    return 0


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.cli.benchmark benchmark|benchmark-series|benchmark-scaling|reliability ...``."""
    return run([register], args)

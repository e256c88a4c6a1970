"""Scaling figures: time and peak memory vs number of sections, section size and reference size.

``siibra-anchor benchmark-scaling [--quick] [--out DIR] [--doc docs/scaling.md]`` runs four sweeps and
writes ``scaling.json`` and ``scaling.png`` so that a whole-brain run can be planned:

* **sections**: :func:`~siibra_anchor.anchor_series` on series of 1, 2, 4, 8 simulated sections;
* **section size**: one whole coronal section stored at 512 ... 8192 px across (fixed tissue, finer
  pixels), anchored from memory (:class:`~siibra_anchor.section.Section` of the full array) and read
  lazily from OME-Zarr (``Section.from_file(..., reduce=True)``), plus larger single-level OME-Zarr
  images that only the lazy path can take;
* **reference size**: references of 10 ... 30 planes per orientation, anchoring with exact and faiss
  search;
* **search**: exact vs faiss top-k on the real coarse index and on synthetic sets of up to millions of
  embeddings (real ones plus noise), with recall@k against exact.

``--large-image [PX]`` instead writes one PX x PX (default 100k) single-level OME-Zarr chunk by chunk,
anchors it read lazily, writes it into the space with :func:`~siibra_anchor.io.apply.resample_to_space`
and reports the process's peak resident memory after each step.

Peak memory is the resident set size high-water mark (``VmHWM``), reset before each measurement through
``/proc/self/clear_refs`` (Linux); elsewhere it is the process-wide maximum (``ru_maxrss``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..cache import atomic_dir, atomic_write_text, save_figure
from ..errors import InvalidParameterError

__all__ = [
    "run_scaling",
    "large_image_check",
    "write_upsampled_zarr",
    "format_table",
    "format_markdown",
    "format_large_image",
    "plot_scaling",
    "measure",
]

log = logging.getLogger(__name__)


# -- measuring -------------------------------------------------------------------------------------------
def _status_mib(key: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) / 1024.0 if m else None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _peak_mib() -> float:
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def measure(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn()``; return its result and ``{"time_s", "rss_before_mib", "peak_rss_mib", "peak_growth_mib"}``."""
    _reset_peak()
    before = _status_mib("VmRSS") or _peak_mib()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = _peak_mib()
    return out, {
        "time_s": dt,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "peak_growth_mib": max(0.0, peak - before),
    }


def _machine() -> dict[str, Any]:
    mem = None
    try:
        m = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem = round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        m2 = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m2.group(1).strip() if m2 else cpu
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1min_at_start": load,
    }


# -- inputs ----------------------------------------------------------------------------------------------
def _simulated(n: int, seed: int) -> list[Any]:
    """``n`` simulated whole sections (coronal/sagittal/axial, tilted, rotated) at 0.4 mm/px."""
    from .simulate import simulate_section

    rng = np.random.default_rng(seed)
    sims = []
    for i in range(n):
        sims.append(
            simulate_section(
                orientation=("coronal", "sagittal", "axial")[i % 3],
                tilt_deg=float(rng.uniform(0, 10)),
                rotation_deg=float(rng.uniform(-30, 30)),
                spacing_mm=0.4,
                seed=rng,
                name=f"scaling-{i}",
            )
        )
    return sims


def _to_u8(img: NDArray) -> NDArray:
    a = np.asarray(img, np.float32)
    hi = float(np.percentile(a, 99.9)) or 1.0
    return np.clip(np.rint(a / hi * 255.0), 0, 255).astype(np.uint8)


def write_upsampled_zarr(
    path: str | PathLike[str], low: NDArray, low_spacing_mm: float, size_px: int, chunk: int = 2048
) -> tuple[Path, float, int]:
    """Write a ``size_px`` x ``size_px`` single-level OME-Zarr (NGFF 0.4) whose pixel ``(r, c)`` is
    ``low[r // u, c // u]`` (nearest upsampling by ``u = ceil(size_px / len(low))``), chunk by chunk:
    never more than one chunk of the large image in memory. Returns (path, full-res spacing mm, u).
    Chunks are LZ4-compressed; chunks that are all zero are not stored.
    """
    import zarr
    from numcodecs import LZ4

    low = np.asarray(low)
    if low.ndim != 2:
        raise InvalidParameterError(f"low must be (h, w), got {low.shape}")
    u = int(np.ceil(size_px / min(low.shape)))
    s0 = low_spacing_mm / u
    n = int(size_px)
    dest = Path(path)
    with atomic_dir(dest) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        arr = group.create_array(
            "0",
            shape=(n, n),
            dtype=low.dtype,
            chunks=(chunk, chunk),
            fill_value=0,
            compressors=LZ4(1),
            config={"write_empty_chunks": False},
        )
        for r0 in range(0, n, chunk):
            ri = np.arange(r0, min(n, r0 + chunk)) // u
            rows = low[ri]
            for c0 in range(0, n, chunk):
                ci = np.arange(c0, min(n, c0 + chunk)) // u
                arr[r0 : r0 + len(ri), c0 : c0 + len(ci)] = np.ascontiguousarray(rows[:, ci])
        um = s0 * 1000.0
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "name": dest.name,
                "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in ("y", "x")],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [um, um]}]}],
            }
        ]
    return dest, s0, u


def _reduced_true_affine(low_affine: NDArray, u: int, f: tuple[float, float]) -> NDArray:
    """True affine of a section read ``f`` times reduced from an image ``u`` times upsampled from ``low``."""
    from ..io.apply import full_resolution_affine

    full = full_resolution_affine(low_affine, (u, u))
    m = np.eye(4)
    m[0, 0], m[0, 3] = f[0], (f[0] - 1) / 2.0
    m[1, 1], m[1, 3] = f[1], (f[1] - 1) / 2.0
    return full @ m


# -- the large-image check -------------------------------------------------------------------------------
def large_image_check(
    size_px: int = 100_000,
    out: str | PathLike[str] = "siibra-anchor-scaling",
    seed: int = 0,
    progress: bool = False,
    keep: bool = False,
) -> dict[str, Any]:
    """Write, anchor (read lazily) and apply a ``size_px``-square single-level OME-Zarr section; report
    time and peak RSS of each step. The image (uint8, a simulated coronal section upsampled by nearest
    neighbour, zstd chunks of 2048 px) is removed afterwards unless ``keep``."""
    import siibra_anchor as sa

    from ..io.apply import resample_to_space
    from ..patches import PatchSpec
    from .simulate import section_error

    outd = Path(out)
    outd.mkdir(parents=True, exist_ok=True)
    rep: dict[str, Any] = {
        "size_px": int(size_px),
        "machine": _machine(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(),
    }
    ref, m = measure(lambda: sa.Reference.from_space("mni152", progress=progress))
    rep["setup"] = {**m, "note": "imports + cached reference load"}
    sim = _simulated(1, seed)[0]
    low = _to_u8(sim.section.image) * sim.section.mask
    zpath = outd / f"large-{size_px}.ome.zarr"
    (path, s0, u), m = measure(lambda: write_upsampled_zarr(zpath, low, 0.4, size_px))
    rep["write"] = {**m, "spacing_mm": s0, "upsample": u, "bytes_uncompressed": int(size_px) ** 2}
    target = PatchSpec().spacing_mm / 4.0
    sec, m = measure(lambda: sa.Section.from_file(path, target_spacing_mm=target, reduce=True))
    rep["read"] = {**m, "section_shape": list(sec.shape), "section_spacing_mm": list(sec.spacing_mm)}
    res, m = measure(lambda: sa.anchor(sec, reference=ref, seed=seed))
    true = _reduced_true_affine(sim.true_affine, u, sec.downsample)
    rep["anchor"] = {
        **m,
        "error_mm": section_error(res.affine, true, sec.mask),
        "confidence": res.confidence,
    }
    res_path = res.save(outd / "large-image.anchor.json")
    vol_path = outd / "large-image-world.ome.zarr"
    _, m = measure(lambda: resample_to_space(res_path, path, vol_path, spacing_mm=0.5, grid="world"))
    rep["apply"] = {**m, "out": str(vol_path), "spacing_mm": 0.5}
    rep["peak_rss_mib"] = max(rep[k]["peak_rss_mib"] for k in ("setup", "write", "read", "anchor", "apply"))
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
    atomic_write_text(outd / "large-image.json", json.dumps(rep, indent=1, default=str))
    return rep


def format_large_image(rep: dict[str, Any]) -> str:
    """Plain-text table of :func:`large_image_check`."""
    n = rep["size_px"]
    lines = [
        f"large image {n} x {n} px uint8 ({n * n / 2**30:.2f} GiB uncompressed), single-level OME-Zarr, "
        f"{rep['write']['spacing_mm'] * 1000:.2f} um/px",
        f"{'step':<8} {'time s':>8} {'peak RSS MiB':>13} {'growth MiB':>11}",
    ]
    for k in ("setup", "write", "read", "anchor", "apply"):
        m = rep[k]
        lines.append(f"{k:<8} {m['time_s']:>8.1f} {m['peak_rss_mib']:>13.0f} {m['peak_growth_mib']:>11.0f}")
    lines.append(
        f"read at {rep['read']['section_spacing_mm'][0]:.3f} mm/px -> {tuple(rep['read']['section_shape'])} px; "
        f"anchoring error {rep['anchor']['error_mm']:.2f} mm, confidence {rep['anchor']['confidence']:.2f}"
    )
    lines.append(f"process peak RSS {rep['peak_rss_mib']:.0f} MiB ({rep['peak_rss_mib'] / 1024:.2f} GiB)")
    return "\n".join(lines)


# -- sweeps ----------------------------------------------------------------------------------------------
def _sweep_sections(ref: Any, counts: list[int], seed: int) -> list[dict[str, Any]]:
    """One series of ``max(counts)`` sections anchored one after the other (as :func:`anchor_series`
    does); cumulative time and the peak RSS of the series so far after ``counts`` sections."""
    import siibra_anchor as sa

    from .simulate import section_error

    sims = _simulated(max(counts), seed)
    rows = []
    _reset_peak()
    before = _status_mib("VmRSS") or _peak_mib()
    t0 = time.perf_counter()
    errs = []
    for i, sim in enumerate(sims, start=1):
        res = sa.anchor(sim.section, reference=ref, seed=seed)
        errs.append(section_error(res.affine, sim.true_affine, sim.section.mask))
        if i in counts:
            dt = time.perf_counter() - t0
            peak = _peak_mib()
            rows.append(
                {
                    "n_sections": i,
                    "time_s": dt,
                    "time_per_section_s": dt / i,
                    "rss_before_mib": before,
                    "peak_rss_mib": peak,
                    "peak_growth_mib": max(0.0, peak - before),
                    "median_error_mm": float(np.median(errs)),
                }
            )
            log.info("sections %d: %.1f s", i, dt)
    return rows


def _sweep_sizes(ref: Any, sizes: list[int], lazy_only: list[int], seed: int, work: Path) -> list[dict[str, Any]]:
    """Read one whole section stored at ``sizes`` px across and prepare it for anchoring (tissue mask
    and the working-resolution image: everything in :func:`anchor` that depends on the pixel count),
    from memory and lazily; anchor the largest lazy one to show it still places correctly."""
    import siibra_anchor as sa

    from ..patches import PatchSpec
    from .simulate import section_error

    sim = _simulated(1, seed + 1)[0]
    low = _to_u8(sim.section.image) * sim.section.mask
    spec = PatchSpec()
    target = spec.spacing_mm / 4.0
    rows = []
    largest = max(sizes + lazy_only)
    for n in sorted(set(sizes) | set(lazy_only)):
        path, s0, u = write_upsampled_zarr(work / f"size-{n}.ome.zarr", low, 0.4, n, chunk=1024)
        modes = ["lazy"] if n in lazy_only and n not in sizes else ["memory", "lazy"]
        for mode in modes:
            if mode == "memory":

                def run(path: Path = path) -> Any:
                    from ..io.formats import read_section_image

                    img, sp, _ = read_section_image(path)
                    sec = sa.Section(img, sp)
                    sec.at_spacing(spec.spacing_mm)
                    return sec
            else:

                def run(path: Path = path) -> Any:
                    sec = sa.Section.from_file(path, target_spacing_mm=target, reduce=True)
                    sec.at_spacing(spec.spacing_mm)
                    return sec

            sec, m = measure(run)
            row = {"size_px": n, "mode": mode, "megapixels": n * n / 1e6, "spacing_mm": s0, **m}
            if mode == "lazy" and n == largest:
                res, ma = measure(partial(sa.anchor, sec, reference=ref, seed=seed))
                true = _reduced_true_affine(sim.true_affine, u, sec.downsample)
                row.update(
                    anchor_s=ma["time_s"],
                    n_patches=res.diagnostics.get("n_patches"),
                    error_mm=section_error(res.affine, true, sec.mask),
                )
            rows.append(row)
            log.info("size %d %s: %.1f s, %.0f MiB", n, mode, m["time_s"], m["peak_rss_mib"])
            del sec
        shutil.rmtree(path, ignore_errors=True)
    return rows


def _sweep_references(n_axis: list[int], seed: int, n_sections: int) -> list[dict[str, Any]]:
    import siibra_anchor as sa

    from ..anchoring import AnchorParams
    from .simulate import section_error

    sims = _simulated(n_sections, seed + 2)
    rows = []
    for k in n_axis:
        ref, mb = measure(partial(sa.Reference.from_space, "mni152", n_sections=k))
        for search in ("exact", "faiss"):
            params = AnchorParams(search=search)
            build_s = 0.0
            if search == "faiss":  # built once per reference and kept, so timed apart from the sections
                from ..ann import cached_index

                _, mi = measure(partial(cached_index, ref.coarse_index(48)[2]))
                build_s = mi["time_s"]

            def run(ref: Any = ref, params: Any = params) -> list[Any]:
                return [sa.anchor(s.section, reference=ref, seed=seed, params=params) for s in sims]

            res, m = measure(run)
            errs = [section_error(r.affine, s.true_affine, s.section.mask) for r, s in zip(res, sims, strict=True)]
            rows.append(
                {
                    "planes_per_axis": k,
                    "n_patches": ref.n_patches,
                    "n_coarse": int(ref.coarse_index(48)[0].sum()),
                    "reference_s": mb["time_s"],
                    "search": search,
                    "index_build_s": build_s,
                    **m,
                    "time_per_section_s": m["time_s"] / len(sims),
                    "median_error_mm": float(np.median(errs)),
                }
            )
            log.info("reference %d/axis %s: %.1f s", k, search, m["time_s"])
    return rows


def _sweep_search(
    ref: Any, sizes: list[int], seed: int, k: int = 8, n_queries: int = 50, n_views: int = 24
) -> list[dict[str, Any]]:
    """Exact vs faiss (IVF) on the real coarse index and on synthetic sets of ``sizes`` vectors."""
    from ..ann import build_index, recall_at_k, topk_faiss
    from ..matching import topk_cosine

    rng = np.random.default_rng(seed)
    mask, proj, cref = ref.coarse_index(48)
    held = ref.embeddings[~mask] @ proj  # patches of the other reference planes: realistic queries
    held /= np.linalg.norm(held, axis=1, keepdims=True)
    rows = []

    def queries() -> NDArray:
        q = held[rng.choice(len(held), n_queries * n_views, replace=True)]
        return np.ascontiguousarray(q.reshape(n_queries, n_views, -1), np.float32)

    sets: list[tuple[str, NDArray]] = [("real coarse index", cref)]
    for n in sizes:
        base = cref[rng.integers(0, len(cref), n)]
        x = base + rng.normal(0.0, 0.08, base.shape).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        sets.append((f"synthetic {n:.0e}", x))
        del base
    for name, x in sets:
        q = queries()
        (_, i0, _), me = measure(partial(topk_cosine, q, x, k))
        idx, mb = measure(partial(build_index, x, kind="ivf", seed=seed))
        (_, i1, _), mf = measure(partial(topk_faiss, q, x, k, index=idx))
        rows.append(
            {
                "set": name,
                "n_refs": len(x),
                "queries": n_queries * n_views,
                "exact_s": me["time_s"],
                "exact_peak_growth_mib": me["peak_growth_mib"],
                "faiss_build_s": mb["time_s"],
                "faiss_s": mf["time_s"],
                "nlist": idx.nlist,
                "nprobe": idx.nprobe,
                f"recall_at_{k}": recall_at_k(i1, i0),
            }
        )
        log.info("search %s: exact %.2f s, faiss %.2f s", name, me["time_s"], mf["time_s"])
        del idx, x
    return rows


def run_scaling(
    quick: bool = False, out: str | PathLike[str] | None = None, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Run the four sweeps (smaller with ``quick``) and return (and save to ``out/scaling.json``) the report."""
    import siibra_anchor as sa

    t0 = time.perf_counter()
    outd = Path(out) if out is not None else Path("siibra-anchor-scaling")
    outd.mkdir(parents=True, exist_ok=True)
    work = outd / "work"
    work.mkdir(exist_ok=True)
    if quick:
        cfg: dict[str, Any] = {
            "sections": [1, 2],
            "sizes": [1024, 4096],
            "lazy_only": [8192],
            "ref_axis": [10],
            "ref_sections": 1,
            "search": [100_000],
        }
    else:
        cfg = {
            "sections": [1, 2, 4, 8],
            "sizes": [1024, 2048, 4096, 8192],
            "lazy_only": [16384, 32768],
            "ref_axis": [10, 30],
            "ref_sections": 1,
            "search": [100_000, 1_000_000],
        }
    rep: dict[str, Any] = {
        "quick": quick,
        "seed": seed,
        "config": cfg,
        "command": "siibra-anchor benchmark-scaling" + (" --quick" if quick else ""),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
    }
    ref, m = measure(lambda: sa.Reference.from_space("mni152", progress=progress))
    rep["default_reference"] = {"n_patches": ref.n_patches, **m}
    rep["sections"] = _sweep_sections(ref, cfg["sections"], seed)
    rep["sizes"] = _sweep_sizes(ref, cfg["sizes"], cfg["lazy_only"], seed, work)
    rep["references"] = _sweep_references(cfg["ref_axis"], seed, cfg["ref_sections"])
    rep["search"] = _sweep_search(ref, cfg["search"], seed)
    rep["total_s"] = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    atomic_write_text(outd / "scaling.json", json.dumps(rep, indent=1, default=str))
    return rep


# -- reports ---------------------------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> list[str]:
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---:" for _ in cols) + "|"
    out = [head, sep]
    for r in rows:
        out.append("| " + " | ".join(format(r.get(k), f) if r.get(k) is not None else "-" for k, _, f in cols) + " |")
    return out


_SECTION_COLS = [
    ("n_sections", "sections", "d"),
    ("time_s", "time s", ".1f"),
    ("time_per_section_s", "s/section", ".2f"),
    ("peak_rss_mib", "peak RSS MiB", ".0f"),
    ("peak_growth_mib", "growth MiB", ".0f"),
    ("median_error_mm", "median error mm", ".2f"),
]
_SIZE_COLS = [
    ("size_px", "px across", "d"),
    ("megapixels", "Mpx", ".1f"),
    ("mode", "read", "s"),
    ("time_s", "read + prepare s", ".1f"),
    ("peak_rss_mib", "peak RSS MiB", ".0f"),
    ("peak_growth_mib", "growth MiB", ".0f"),
    ("anchor_s", "anchor s", ".1f"),
    ("error_mm", "error mm", ".2f"),
]
_REF_COLS = [
    ("planes_per_axis", "planes/axis", "d"),
    ("n_patches", "ref patches", "d"),
    ("n_coarse", "coarse index", "d"),
    ("reference_s", "build/load s", ".1f"),
    ("search", "search", "s"),
    ("index_build_s", "index build s", ".1f"),
    ("time_per_section_s", "s/section", ".2f"),
    ("peak_rss_mib", "peak RSS MiB", ".0f"),
    ("median_error_mm", "median error mm", ".2f"),
]
_SEARCH_COLS = [
    ("set", "reference set", "s"),
    ("n_refs", "vectors", "d"),
    ("queries", "queries", "d"),
    ("exact_s", "exact s", ".2f"),
    ("faiss_build_s", "faiss build s", ".1f"),
    ("faiss_s", "faiss s", ".3f"),
    ("nlist", "nlist", "d"),
    ("nprobe", "nprobe", "d"),
    ("recall_at_8", "recall@8", ".3f"),
]


def format_table(rep: dict[str, Any]) -> str:
    """The report as plain-text (Markdown) tables."""
    lines = ["time and memory vs number of sections (one series, default reference)"]
    lines += _table(rep["sections"], _SECTION_COLS)
    lines += ["", "time and memory vs section size (one whole section, in memory vs read lazily)"]
    lines += _table(rep["sizes"], _SIZE_COLS)
    lines += ["", "time vs reference size (exact vs faiss global search)"]
    lines += _table(rep["references"], _REF_COLS)
    lines += ["", "top-k search: exact vs faiss IVF"]
    lines += _table(rep["search"], _SEARCH_COLS)
    lines.append(f"\ntotal {rep['total_s']:.0f} s")
    return "\n".join(lines)


#: In docs/scaling.md, what follows this line is written by hand and kept when the report is regenerated.
HAND_WRITTEN_MARK = "<!-- written by hand below this line: benchmark-scaling --doc keeps it -->"


def with_hand_written(generated: str, path: str | Path) -> str:
    """``generated`` followed by the hand-written part of the file at ``path`` (from
    :data:`HAND_WRITTEN_MARK` on), if it has one; a regenerated report keeps its notes."""
    p = Path(path)
    old = p.read_text() if p.is_file() else ""
    if HAND_WRITTEN_MARK not in old:
        return generated
    return generated.rstrip("\n") + "\n\n" + old[old.index(HAND_WRITTEN_MARK) :]


def format_markdown(rep: dict[str, Any], png_name: str = "scaling.png") -> str:
    """docs/scaling.md: command, machine, date, the tables and the figure."""
    mc = rep["machine"]
    return "\n".join(
        [
            "# Scaling: time and memory",
            "",
            "How anchoring time and peak memory grow with the number of sections, the section size and the",
            "reference size, to plan a whole-brain run. Produced by",
            "",
            "```bash",
            f"{rep['command']} --out scaling --doc docs/scaling.md",
            "```",
            "",
            f"on {mc['cpu']} ({mc['cpu_count']} cores, {mc['memory_gib']} GiB RAM, 1-min load average "
            f"{mc['load_avg_1min_at_start'] or 0:.1f} at the start: a shared machine, so absolute times are "
            "pessimistic and noisy),",
            f"Python {mc['python']}, {rep['date']}; total {rep['total_s'] / 60:.1f} min. Peak RSS is the process",
            "high-water mark during the step (reset before each step); growth is peak minus the resident size",
            "before it (imports, encoder and reference already loaded).",
            "",
            f"![scaling curves]({png_name})",
            "",
            "## Number of sections",
            "",
            *_table(rep["sections"], _SECTION_COLS),
            "",
            "One series of 8 simulated sections anchored one after the other against the default reference (what",
            "`anchor_series` does); time and the series' peak RSS so far after 1, 2, 4 and 8 sections.",
            "",
            "## Section size",
            "",
            "One whole coronal section (tissue fixed, ~185 mm across) stored as a single-level OME-Zarr at",
            "finer and finer pixels. Timed: reading it and preparing it for anchoring (tissue mask, working image at",
            "1.5 mm/px), the part of `anchor()` that depends on the pixel count; the rest is the per-section time",
            "above. *memory*: the full array is read and handed to `Section`; *lazy*:",
            "`Section.from_file(path, target_spacing_mm=0.375, reduce=True)` block-averages it chunk by chunk.",
            "The largest lazy one is also anchored (anchor s, error against the true placement).",
            "",
            *_table(rep["sizes"], _SIZE_COLS),
            "",
            "## Reference size",
            "",
            "References of more planes per orientation (`Reference.from_space(n_sections=...)`); build/load is",
            "the build when the reference is not cached yet, else loading it from the cache. The global search",
            "runs on the coarse index (every other plane, 48 PCA dimensions); the faiss index is built once per",
            "reference (index build s) and kept.",
            "",
            *_table(rep["references"], _REF_COLS),
            "",
            "## Exact vs approximate search",
            "",
            "50 query patches x 24 views (a quarter of the global search of one section), top-8. The real set is",
            "the coarse index of the default reference with the patches of the other planes as queries; the",
            "synthetic sets are real coarse embeddings plus Gaussian noise (sigma 0.08 per dimension),",
            'renormalised. `search="auto"` switches to faiss from 1,000,000 reference patches.',
            "",
            *_table(rep["search"], _SEARCH_COLS),
            "",
        ]
    )


def plot_scaling(rep: dict[str, Any], path: str | PathLike[str]) -> Path:
    """Four panels (sections, section size, reference size, search) as a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 4, figsize=(18, 4.2))
    s = rep["sections"]
    ax = axs[0]
    ax.plot([r["n_sections"] for r in s], [r["time_s"] for r in s], "o-", label="time s")
    ax.set_xlabel("sections in the series")
    ax.set_ylabel("time s")
    ax2 = ax.twinx()
    ax2.plot([r["n_sections"] for r in s], [r["peak_rss_mib"] for r in s], "s--", color="C3", label="peak RSS")
    ax2.set_ylabel("peak RSS MiB", color="C3")
    ax2.set_ylim(0, max(r["peak_rss_mib"] for r in s) * 1.3)
    ax.set_title("a) number of sections")

    ax = axs[1]
    for mode, st in (("memory", "o-"), ("lazy", "s-")):
        rr = [r for r in rep["sizes"] if r["mode"] == mode]
        ax.loglog([r["megapixels"] for r in rr], [r["peak_rss_mib"] for r in rr], st, label=f"peak RSS, {mode}")
    ax.set_xlabel("section megapixels")
    ax.set_ylabel("peak RSS MiB")
    ax2 = ax.twinx()
    rr = [r for r in rep["sizes"] if r["mode"] == "lazy"]
    ax2.loglog([r["megapixels"] for r in rr], [r["time_s"] for r in rr], "^:", color="C2", label="time s, lazy")
    ax2.set_ylabel("read + prepare s (lazy)", color="C2")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("b) section size")

    ax = axs[2]
    for search, st in (("exact", "o-"), ("faiss", "s--")):
        rr = [r for r in rep["references"] if r["search"] == search]
        ax.plot([r["n_patches"] for r in rr], [r["time_per_section_s"] for r in rr], st, label=search)
    ax.set_xlabel("reference patches")
    ax.set_ylabel("s per section")
    ax.legend(fontsize=8)
    ax.set_title("c) reference size")

    ax = axs[3]
    rr = rep["search"]
    n = [r["n_refs"] for r in rr]
    ax.loglog(n, [r["exact_s"] for r in rr], "o-", label="exact")
    ax.loglog(n, [r["faiss_s"] for r in rr], "s--", label="faiss IVF")
    for r in rr:
        ax.annotate(
            f"{r['recall_at_8']:.2f}",
            (r["n_refs"], r["faiss_s"]),
            fontsize=7,
            xytext=(3, -10),
            textcoords="offset points",
        )
    ax.set_xlabel("reference vectors")
    ax.set_ylabel("search s (1200 queries, top-8)")
    ax.legend(fontsize=8)
    ax.set_title("d) search (labels: faiss recall@8)")
    return save_figure(fig, path, dpi=110)

"""Where the time of one ``anchor()`` call goes, stage by stage, on the benchmark's sections.

    python -m siibra_anchor.evaluation.profile [--n 24]
    python -m siibra_anchor.evaluation.profile --batch [--n 24] [--device cuda]

Anchors the first ``n`` sections of the benchmark's set (seed 2026) with the cached MNI152 reference and
the default encoder (both loaded before timing starts), and prints the median and p90 of each stage's
seconds (``result.diagnostics["timings"]``: ``embed`` = sample, ``match`` = propose, ``guided`` = guide,
``refine`` = score and disambiguate) and of the whole call, and how many calls ran the wider second
search (their stage times are those of the pass that was kept).

``--batch`` measures throughput instead: the same sections anchored one ``anchor()`` call each and all in
one ``anchor_batch()`` call (their coarse patches encoded together), on ``--device``; sections per second
of each and how far the two placements of a section differ.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from typing import Any

import numpy as np

__all__ = ["profile_sections", "format_profile", "batch_throughput", "format_throughput", "main"]


def profile_sections(n: int = 24, seed: int = 2026, encoder: str | None = None) -> dict[str, Any]:
    """Per-stage timings of ``anchor()`` on the first ``n`` benchmark sections (``encoder``: a recorded
    encoder's name instead of the default)."""
    import siibra_anchor as sa

    from ..encoders import load_default_encoder
    from .benchmark import make_section, simulated_set, user_hints

    enc = load_default_encoder(encoder)
    ref = sa.Reference.from_space("mni152", encoder=enc)
    rows = []
    for case in simulated_set(n, seed=seed):
        sim = make_section(case)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sa.anchor(sim.section, reference=ref, encoder=enc, seed=0, **user_hints(case, sim))
        rows.append(
            {
                "wall_s": time.perf_counter() - t0,
                "stages": dict(res.diagnostics["timings"]),
                "retried": "retried_wider" in res.diagnostics,
                "patches": res.diagnostics["n_patches"],
            }
        )
    keys = [k for k in rows[0]["stages"] if k != "total_s"]
    stat = {
        k: {
            "median": float(np.median([r["stages"].get(k, 0.0) for r in rows])),
            "p90": float(np.percentile([r["stages"].get(k, 0.0) for r in rows], 90)),
        }
        for k in keys
    }
    wall = [r["wall_s"] for r in rows]
    return {
        "n": n,
        "stages": stat,
        "total": {"median": float(np.median(wall)), "p90": float(np.percentile(wall, 90))},
        "retried": int(sum(r["retried"] for r in rows)),
        "patches_median": float(np.median([r["patches"] for r in rows])),
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rows": rows,
    }


def format_profile(rep: dict[str, Any]) -> str:
    lines = [
        f"anchor() on {rep['n']} benchmark sections ({rep['patches_median']:.0f} patches median; "
        f"{rep['retried']} ran the wider second search)",
        f"{'stage':<14}{'median s':>10}{'p90 s':>10}",
    ]
    for k, v in rep["stages"].items():
        lines.append(f"{k.removesuffix('_s'):<14}{v['median']:>10.3f}{v['p90']:>10.3f}")
    lines.append(f"{'whole call':<14}{rep['total']['median']:>10.3f}{rep['total']['p90']:>10.3f}")
    return "\n".join(lines)


def batch_throughput(
    n: int = 24, device: str | None = None, seed: int = 2026, batch_size: int = 4096
) -> dict[str, Any]:
    """Sections per second of ``n`` benchmark sections anchored one by one and as one batch on ``device``."""
    import siibra_anchor as sa

    from ..encoders import load_default_encoder
    from .benchmark import make_section, simulated_set, user_hints

    enc = load_default_encoder()
    ref = sa.Reference.from_space("mni152", encoder=enc)
    cases = simulated_set(n, seed=seed)
    sims = [make_section(c) for c in cases]
    hints = [user_hints(c, s) for c, s in zip(cases, sims, strict=True)]
    hemis = [h.get("hemisphere") for h in hints]
    flips = [h.get("flipped") for h in hints]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one untimed call first: the device's start-up (CUDA context, kernels) is no section's cost
        sa.anchor(sims[0].section, reference=ref, encoder=enc, seed=0, device=device, **hints[0])
        t0 = time.perf_counter()
        one = [
            sa.anchor(s.section, reference=ref, encoder=enc, seed=0, device=device, **h)
            for s, h in zip(sims, hints, strict=True)
        ]
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        many = sa.anchor_batch(
            [s.section for s in sims], reference=ref, encoder=enc, seed=0, device=device, hemisphere=hemis,
            flipped=flips, batch_size=batch_size,
        )  # fmt: skip
        t_many = time.perf_counter() - t0
    diff = [
        float(np.abs(a.affine - b.affine).max()) if a.placed and b.placed else float("nan")
        for a, b in zip(one, many, strict=True)
    ]
    err = [s.error(r.affine) if r.placed else float("inf") for s, r in zip(sims, many, strict=True)]
    err_one = [s.error(r.affine) if r.placed else float("inf") for s, r in zip(sims, one, strict=True)]
    return {
        "n": n,
        "device": device or "cpu",
        "one_by_one_s": t_one,
        "batch_s": t_many,
        "one_by_one_per_s": n / t_one,
        "batch_per_s": n / t_many,
        "max_affine_difference": float(np.nanmax(diff)) if not np.all(np.isnan(diff)) else float("nan"),
        "batch_median_error_mm": float(np.median(err)),
        "one_by_one_median_error_mm": float(np.median(err_one)),
        "n_differing": int(sum(d > 1e-6 for d in diff if not np.isnan(d))),
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def format_throughput(rep: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{rep['n']} benchmark sections on {rep['device']}",
            f"  one anchor() call each: {rep['one_by_one_s']:.1f} s, {rep['one_by_one_per_s']:.2f} sections/s",
            f"  one anchor_batch() call: {rep['batch_s']:.1f} s, {rep['batch_per_s']:.2f} sections/s",
            f"  largest difference between the two placements' affine entries: {rep['max_affine_difference']:.2g} "
            f"({rep.get('n_differing', 0)} sections differ); median error one by one "
            f"{rep.get('one_by_one_median_error_mm', float('nan')):.2f} mm, batch {rep['batch_median_error_mm']:.2f} mm",
        ]
    )


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m siibra_anchor.evaluation.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="benchmark sections to anchor (default 24)")
    ap.add_argument("--batch", action="store_true", help="throughput of anchor_batch() against one anchor() each")
    ap.add_argument("--device", default=None, help="torch device for --batch (cpu, cuda, ...)")
    ap.add_argument("--encoder", default=None, help="a recorded encoder's name (default: the default encoder)")
    ap.add_argument("--json", default=None, help="also write the whole report to this JSON file")
    ns = ap.parse_args(args)
    logging.basicConfig(level=logging.ERROR)
    if ns.batch:
        rep = batch_throughput(ns.n, ns.device)
        text = format_throughput(rep)
    else:
        rep = profile_sections(ns.n, encoder=ns.encoder)
        text = format_profile(rep)
    sys.stdout.write(text + "\n")
    if ns.json:
        import json

        from ..cache import atomic_write_text

        rep = {**rep, "machine": _machine(ns.device)}
        atomic_write_text(ns.json, json.dumps(rep, indent=1, default=float) + "\n")
    return 0


def _machine(device: str | None) -> dict[str, Any]:
    """What the figures were measured on: CPU count, torch threads and version, the GPU's name."""
    import platform

    import torch

    gpu = None
    if device and device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": gpu,
    }


if __name__ == "__main__":
    raise SystemExit(main())

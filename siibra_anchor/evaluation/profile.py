"""Where the time of one ``anchor()`` call goes, stage by stage, on the benchmark's sections.

    python -m siibra_anchor.evaluation.profile [--n 24]

Anchors the first ``n`` sections of the benchmark's set (seed 2026) with the cached MNI152 reference and
the default encoder (both loaded before timing starts), and prints the median and p90 of each stage's
seconds (``result.diagnostics["timings"]``: ``embed`` = sample, ``match`` = propose, ``guided`` = guide,
``refine`` = score and disambiguate) and of the whole call, and how many calls ran the wider second
search (their stage times are those of the pass that was kept).
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

__all__ = ["profile_sections", "format_profile", "main"]


def profile_sections(n: int = 24, seed: int = 2026) -> dict[str, Any]:
    """Per-stage timings of ``anchor()`` on the first ``n`` benchmark sections."""
    import siibra_anchor as sa

    from ..encoders import load_default_encoder
    from .benchmark import make_section, simulated_set, user_hints

    enc = load_default_encoder()
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


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m siibra_anchor.evaluation.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="benchmark sections to anchor (default 24)")
    ns = ap.parse_args(args)
    logging.basicConfig(level=logging.ERROR)
    sys.stdout.write(format_profile(profile_sections(ns.n)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

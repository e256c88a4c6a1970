"""Compare encoders on the benchmark's sections: patch level and whole sections, without the rest of the
benchmark (minutes instead of half an hour).

    python -m siibra_anchor.training.compare patch-cnn-w24-d128-pool2-v2 runs/cpu_hour/encoder.pt [--sections]
        [--n-sections 30] [--stride-px 4] [--param k=12 ...] [--seed 2027]

Each argument is a shipped encoder name or a trained ``encoder.pt`` (its ``encoder.json`` beside it). Patch
level: :func:`siibra_anchor.evaluation.patch_eval.patch_metrics` on ``benchmark.simulated_set(48, 2026)`` (what
``siibra-anchor benchmark`` reports as "patch level"; ``--seed`` draws another set of the same kind, a check
that a choice made on the benchmark's sections holds on fresh ones). With ``--sections``: ``sa.anchor`` on each section
with the benchmark's hints; median, p90 and failure rate (> 10 mm) of the section error. The reference
is the default one (``Reference.from_space("mni152")``) unless ``--n-sections``/``--stride-px`` change its
density; ``--param NAME=VALUE`` changes a field of :class:`~siibra_anchor.AnchorParams` for ``--sections``.
With ``--real-data DIR``: the real-anatomy tier too (``siibra-anchor benchmark --real-data``'s test split,
``--real-n`` sections per volume), so that both tiers are measured in one run for every encoder.

With ``--calibration``: the same measurements on the calibration set instead of the test sets, for choosing
between candidates without looking at what the benchmark reports: template-family sections from the
calibration's seed (``evaluation.calibrate.CALIBRATION_SEEDS["sections"]``) and, with ``--real-data``, the
real-anatomy *calibration* split (other volumes than the test split's, sections from the calibration's seed).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["compare_encoders", "load_any_encoder", "main"]


def load_any_encoder(name: str) -> Any:
    """A shipped encoder by name, or a trained ``encoder.pt`` with the ``encoder.json`` the trainer wrote."""
    from siibra_anchor.encoders import load_default_encoder, load_encoder

    p = Path(name)
    if p.suffix == ".pt":
        manifest = json.loads(p.with_suffix(".json").read_text())
        return load_encoder(p, manifest["config"], sha256=manifest.get("sha256")).eval()
    return load_default_encoder(name).eval()


def compare_encoders(
    names: list[str],
    sections: bool = False,
    cases: int = 48,
    seed: int = 2026,
    reference: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    real_data: str | None = None,
    real_n: int = 3,
    real_mounting_known: bool = True,
    real_split: str = "test",
    real_seed: int = 2026,
) -> dict[str, Any]:
    """Figures per encoder (see the module docstring); the same sections for every encoder.

    reference : keyword arguments of ``Reference.from_space`` (``n_sections``, ``stride_px``); default ones if None.
    params : fields of :class:`~siibra_anchor.AnchorParams` that differ from the default, for ``sections``
        and the real-anatomy sections (before 2026-12-03, stop 33, the real ones ran with the defaults).
    real_split, real_seed : which real-anatomy volumes ("test" or "calibration") and which draw of sections.
    """
    from dataclasses import replace

    import siibra_anchor as sa
    from siibra_anchor.anchoring import AnchorParams
    from siibra_anchor.errors import AnchorError
    from siibra_anchor.evaluation.benchmark import make_section, simulated_set, user_hints
    from siibra_anchor.evaluation.patch_eval import patch_metrics
    from siibra_anchor.evaluation.simulate import section_error
    from siibra_anchor.reference import Reference

    specs = simulated_set(48, seed)[:cases]
    sims = [make_section(c) for c in specs]
    anchor_params = replace(AnchorParams(), **(params or {}))
    out: dict[str, Any] = {}
    for name in names:
        enc = load_any_encoder(name)
        ref = Reference.from_space("mni152", encoder=enc, **(reference or {}))
        pm = patch_metrics(sims, ref, enc)
        r: dict[str, Any] = {
            "reference_patches": ref.n_patches,
            "patch_median_mm": pm["median_mm"],
            "patch_p90_mm": pm["p90_mm"],
            "top1": pm["topk"][0],
            "top10": pm["topk"][9],
            "top50": pm["topk"][-1],
            "patch_median_mm_by_orientation": pm["median_mm_by_orientation"],
            "n_patches": pm["n"],
        }
        if sections:
            errs, times = [], []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for c, s in zip(specs, sims, strict=True):
                    t = time.perf_counter()
                    try:
                        res = sa.anchor(
                            s.section, reference=ref, encoder=enc, seed=0, params=anchor_params, **user_hints(c, s)
                        )
                        errs.append(section_error(res.affine, s.true_affine, s.section.mask))
                    except AnchorError:  # refused: a failure, as the benchmark counts it
                        errs.append(float("inf"))
                    times.append(time.perf_counter() - t)
            e = np.asarray(errs)
            r.update(
                section_median_mm=float(np.median(e)),
                section_p90_mm=float(np.percentile(e, 90)),
                failure_rate=float(np.mean(e > 10.0)),
                failing_cases=[int(i) for i in np.flatnonzero(e > 10.0)],
                refused_cases=[int(i) for i in np.flatnonzero(~np.isfinite(e))],
                median_time_s=float(np.median(times)),
            )
        if real_data is not None:
            from siibra_anchor.evaluation.real_tier import run_real_tier

            real = run_real_tier(real_data, n_per_volume=real_n, encoder=enc, encoder_name=name, reference=ref,
                                 raw_baseline=False, mounting_known=real_mounting_known, split=real_split,
                                 seed=real_seed, require_all=real_split == "calibration",
                                 params=anchor_params, refinement_floors=False)  # fmt: skip
            r["real"] = {k: real[k] for k in ("default", "by_contrast", "outcomes", "truth_uncertainty_mm")}
            r["real"]["cases"] = [
                {k: c[k] for k in ("name", "contrast", "default_error_mm", "default_confidence", "default_outcome")}
                for c in real["cases"]
            ]
        out[name] = r
    return out


def _parse_params(items: list[str], ap: argparse.ArgumentParser) -> dict[str, Any]:
    """``["k=12", "refine=false"]`` -> AnchorParams fields with the type of their default (exits on a bad one)."""
    from dataclasses import fields

    from siibra_anchor.anchoring import AnchorParams

    defaults = AnchorParams()
    known = {f.name: getattr(defaults, f.name) for f in fields(defaults)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known or isinstance(known[key], tuple):
            ap.error(f"--param {item!r}: expected NAME=VALUE with NAME a scalar AnchorParams field ({sorted(known)})")
        default = known[key]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            else:
                out[key] = type(default)(value)
        except ValueError:
            ap.error(f"--param {item!r}: {value!r} is not a {type(default).__name__}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m siibra_anchor.training.compare", description=__doc__.split("\n")[0])
    ap.add_argument("encoders", nargs="+", help="shipped encoder names or encoder.pt files")
    ap.add_argument("--sections", action="store_true", help="also anchor every section (a few minutes each)")
    ap.add_argument("--cases", type=int, default=48, help="the first N sections of the benchmark set")
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the simulated set (default 2026: the benchmark's; another: fresh sections)",
    )
    ap.add_argument("--n-sections", type=int, help="reference planes per orientation (default: the default reference)")
    ap.add_argument("--stride-px", type=int, help="patch stride on the reference planes, working pixels")
    ap.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="an AnchorParams field, for --sections"
    )
    ap.add_argument("--real-data", help="folder of the real-anatomy volumes: also run that tier (test split)")
    ap.add_argument("--real-n", type=int, default=3, help="real-anatomy sections per volume (default 3)")
    ap.add_argument(
        "--real-mounting-unknown", action="store_true", help="real-anatomy tier with the hemisphere hint only"
    )
    ap.add_argument(
        "--calibration",
        action="store_true",
        help="measure on the calibration set (its template-family seed and the real calibration split), not the test sets",
    )
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args(argv)
    seed, real_split, real_seed = (2026 if a.seed is None else a.seed), "test", 2026
    if a.calibration:
        from siibra_anchor.evaluation.calibrate import CALIBRATION_SEEDS

        if a.seed is not None:  # also --seed 2026: the calibration set never takes a seed of the test sets
            ap.error("--calibration draws the calibration's own sections: leave --seed out")
        seed, real_split, real_seed = CALIBRATION_SEEDS["sections"], "calibration", CALIBRATION_SEEDS["real"]
    reference = {k: v for k, v in (("n_sections", a.n_sections), ("stride_px", a.stride_px)) if v is not None}
    res = compare_encoders(
        a.encoders,
        sections=a.sections,
        cases=a.cases,
        seed=seed,
        reference=reference,
        params=_parse_params(a.param, ap),
        real_data=a.real_data,
        real_n=a.real_n,
        real_mounting_known=not a.real_mounting_unknown,
        real_split=real_split,
        real_seed=real_seed,
    )
    for name, r in res.items():
        line = (
            f"{name}: patch top-1 median {r['patch_median_mm']:.1f} mm, p90 {r['patch_p90_mm']:.1f} mm, "
            f"top-1 {r['top1']:.2f}, top-10 {r['top10']:.2f}, top-50 {r['top50']:.2f} ({r['n_patches']} patches; "
            f"reference {r['reference_patches']} patches)"
        )
        if "section_median_mm" in r:
            line += (
                f"; sections median {r['section_median_mm']:.2f} mm, p90 {r['section_p90_mm']:.2f} mm, "
                f"failures {100 * r['failure_rate']:.1f}% {r['failing_cases']}, "
                f"median time {r['median_time_s']:.2f} s"
            )
        if "real" in r:
            d = r["real"]["default"]
            line += (
                f"; real anatomy: median {d['median_mm']:.2f} mm, failures {d['failures']}/{d['n']}, "
                f"by contrast "
                + ", ".join(f"{c} {v['default']['median_mm']:.1f}" for c, v in r["real"]["by_contrast"].items())
            )
        print(line)
    if a.json:
        from siibra_anchor.cache import atomic_file

        with atomic_file(a.json, suffix=".json") as tmp:
            Path(tmp).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

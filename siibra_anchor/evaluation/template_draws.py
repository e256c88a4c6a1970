"""The template-family tier's generator on other draws: how much its 48-section figure depends on the draw.

    python -m siibra_anchor.evaluation.template_draws [--seeds 2028 2029 2030] [--n 48] [--json FILE]

The benchmark's template-family tier is one draw of 48 sections (``simulated_set(48, seed=2026)``). Every
candidate default has been gated on it, so its figures may be a lucky draw or, over many gates, a selected
one. This command anchors other draws of the same generator, the same way (the cached MNI152 reference, the
default encoder, the tier's hints: mounting and the hemisphere of one-sided sections), and prints each
draw's row and their pool. The seeds of :data:`DRAW_SEEDS` are used by nothing else: no training run, no
calibration (5150-5156), no comparison (``training.compare``: 2027) and no choice of a default or a
threshold; keep it so, or they stop measuring anything.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["DRAW_SEEDS", "run_draws", "format_draws", "main"]

#: draws of the template-family generator that nothing chooses on (the tier itself is seed 2026)
DRAW_SEEDS = (2028, 2029, 2030)


def _row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from .benchmark import calibration_report
    from .real_tier import _summary

    err = [r["error_mm"] for r in rows]
    cal = calibration_report([r["confidence"] for r in rows], err)
    return {
        **_summary(err, [r["refused"] is not None for r in rows], [r["time_s"] for r in rows]),
        "mirrored": int(sum(r["outcome"].startswith("mirrored") for r in rows)),
        "ece": cal["ece"],
        "false_alarms": cal["successes_with_confidence_lt_0.5"],
        "confident_failures": cal["failures_with_confidence_ge_0.5"],
    }


def run_draws(seeds: tuple[int, ...] = DRAW_SEEDS, n: int = 48) -> dict[str, Any]:
    """Anchor ``n`` sections of each draw ``seeds`` as the template-family tier anchors its own:
    ``{"seeds", "n", "cases": [...], "by_seed": {seed: row}, "pooled": row}``; a row holds the median, p90,
    failure rate and count (> 10 mm or refused), refusals, failures that are a mirror image of the truth
    (across the midline or the mounting; each case's ``outcome`` as the benchmark names it), ECE, false
    alarms, confident failures and the median seconds per section."""
    import siibra_anchor as sa

    from .benchmark import _mirror_errors, _outcome, anchor_scored, make_section, simulated_set, user_hints

    ref = sa.Reference.from_space("mni152")
    cases: list[dict[str, Any]] = []
    for seed in seeds:
        for i, case in enumerate(simulated_set(n, seed=seed)):
            sim = make_section(case)
            a = anchor_scored(sim, ref, user_hints(case, sim))
            outcome = "refused" if a["result"] is None else _outcome(_mirror_errors(a["result"].affine, sim))
            cases.append(
                {
                    "seed": int(seed),
                    "index": i,
                    "volume": case.volume,
                    "orientation": case.orientation,
                    "partial": case.partial,
                    "contrast": case.contrast,
                    "error_mm": a["error_mm"],
                    "confidence": a["confidence"],
                    "refused": a["refused"],
                    "outcome": outcome,
                    "time_s": a["time_s"],
                }
            )
    by_seed = {int(s): _row([c for c in cases if c["seed"] == s]) for s in seeds}
    return {"seeds": [int(s) for s in seeds], "n": int(n), "cases": cases, "by_seed": by_seed, "pooled": _row(cases)}


def format_draws(rep: dict[str, Any]) -> str:
    """The Markdown table of :func:`run_draws`' report: one row per draw, then the pool."""
    lines = [
        f"Template-family generator, {rep['n']} sections per draw (default encoder, MNI152, the tier's hints).",
        "",
        "| draw | n | median mm | p90 mm | failures | of them mirrored | refusals | ECE | false alarms "
        "| confident failures | s/section |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(f"seed {s}", rep["by_seed"][s]) for s in rep["seeds"]] + [("**pooled**", rep["pooled"])]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['n']} | {r['median_mm']:.2f} | {r['p90_mm']:.1f} | {r['failures']} "
            f"({r['failure_rate']:.0%}) | {r['mirrored']} | {r['refusals']} | {r['ece']:.3f} | {r['false_alarms']} | "
            f"{r['confident_failures']} | {r['time_median_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m siibra_anchor.evaluation.template_draws", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DRAW_SEEDS), help="draws of the generator")
    ap.add_argument("--n", type=int, default=48, help="sections per draw (the tier has 48)")
    ap.add_argument("--json", default=None, help="also write the whole report (every section) to this file")
    ns = ap.parse_args(args)
    if ns.n < 1 or not ns.seeds:
        ap.error("--n must be at least 1 and --seeds name at least one draw")
    logging.disable(logging.WARNING)
    rep = run_draws(tuple(ns.seeds), ns.n)
    from .benchmark import emit_report

    emit_report(format_draws(rep), rep, ns.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The calibrated confidence on the test tiers, beside the former hand-set one, in the same run.

For every test section the first pass runs once; its features give both confidences (the calibrated
model's and the former ``confidence_from_scores`` with its margin factor). Where either is below 0.5 the
wider second search runs once, and each rule keeps the better of the two passes as ``anchor()`` does. So
both pipelines (the wider search gated by the former confidence, as before issue #23, and by the
calibrated one) are measured on the same sections with the same passes: error, failures, time per
section (first pass, plus the wider pass where that rule asks for it), and the calibration of each
confidence (ECE, false alarms, confident failures).

    python -m siibra_anchor.evaluation.confidence_eval [--n 48] [--real-data DIR] [--out DIR]

Tiers: the benchmark's template-family sections (``simulated_set(n, 2026)``) and, with ``--real-data``,
the real-anatomy test split (docs/real-anatomy.md). The calibration set (:mod:`.calibrate`) shares no
section with either.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..anchoring import AnchorParams
from ..anchoring.pipeline import wider_params
from ..anchoring.stages import Run, confidence_from_scores
from ..cache import atomic_write_text
from ..confidence import WITHIN_MM, confidence_model
from ..encoders import load_default_encoder
from ..errors import AnchorError
from ..reference import Reference
from .benchmark import calibration_lines, calibration_report, make_section, simulated_set, user_hints
from .calibrate import run_pass
from .simulate import section_error

__all__ = ["evaluate_sections", "summarise", "format_summary", "main"]

log = logging.getLogger(__name__)


def _former(r: Run) -> float:
    """The confidence before issue #23: two hand-set sigmoids times the margin factor."""
    c = confidence_from_scores(r.consistency, r.best.score if r.ref.volume is not None else 0.05)
    if np.isfinite(r.margin):
        c *= 0.5 + 0.5 * float(np.tanh(max(r.margin, 0.0) / 0.08))
    return c


def evaluate_sections(items: list[tuple[str, Any, Any, dict[str, Any]]], progress: bool = True) -> list[dict[str, Any]]:
    """items: (name, section, truth affine, hints). One row per section with both rules' outcomes."""
    enc = load_default_encoder()
    ref = Reference.from_space("mni152", encoder=enc)
    model = confidence_model("volume")
    base = AnchorParams()
    rows = []
    for k, (name, section, true_affine, hints) in enumerate(items):
        row: dict[str, Any] = {"name": name}
        try:
            first, aff1, t1 = run_pass(section, ref, enc, base, hints)
        except AnchorError as exc:  # refused: a failure for both rules, confidence 0
            row.update(refused=type(exc).__name__, error_former=np.inf, error_calibrated=np.inf)
            row.update(conf_former=0.0, conf_calibrated=0.0, time_former=np.nan, time_calibrated=np.nan)
            rows.append(row)
            continue
        c_old, c_new = _former(first), model(first.features)
        err1 = section_error(aff1, true_affine, section.mask)
        out = {"former": (err1, c_old, t1), "calibrated": (err1, c_new, t1)}
        if min(c_old, c_new) < base.retry_below:
            wide, aff2, t2 = run_pass(section, ref, enc, wider_params(base), hints, reuse=first.emb)
            err2 = section_error(aff2, true_affine, section.mask)
            keep_wide = wide.best.score > first.best.score
            for rule, c in (("former", c_old), ("calibrated", c_new)):
                if c < base.retry_below:
                    conf = (_former(wide) if rule == "former" else model(wide.features)) if keep_wide else c
                    out[rule] = (err2 if keep_wide else err1, conf, t1 + t2)
        for rule, (e, c, t) in out.items():
            row[f"error_{rule}"], row[f"conf_{rule}"], row[f"time_{rule}"] = float(e), float(c), float(t)
        rows.append(row)
        if progress:
            log.warning("confidence eval %d/%d %s: %.1f mm, former %.2f, calibrated %.2f", k + 1, len(items), name,
                        row["error_calibrated"], row["conf_former"], row["conf_calibrated"])  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, time and calibration of both rules."""
    out: dict[str, Any] = {"n": len(rows), "refused": int(sum("refused" in r for r in rows))}
    for rule in ("former", "calibrated"):
        e = np.array([r[f"error_{rule}"] for r in rows], float)
        t = np.array([r[f"time_{rule}"] for r in rows], float)
        t = t[np.isfinite(t)]
        out[rule] = {
            "median_mm": float(np.median(e)),
            "p90_mm": float(np.percentile(e, 90)),
            "failure_rate": float(np.mean(e > WITHIN_MM)),
            "time_median_s": float(np.median(t)) if len(t) else float("nan"),
            "time_p90_s": float(np.percentile(t, 90)) if len(t) else float("nan"),
            "calibration": calibration_report([r[f"conf_{rule}"] for r in rows], list(e)),
        }
    return out


def format_summary(name: str, s: dict[str, Any]) -> str:
    lines = [f"{name}: {s['n']} sections, {s['refused']} refused"]
    lines.append(f"{'rule':<12}{'median mm':>10}{'p90 mm':>9}{'fail':>7}{'time med s':>12}{'time p90 s':>12}")
    for rule in ("former", "calibrated"):
        m = s[rule]
        lines.append(
            f"{rule:<12}{m['median_mm']:>10.2f}{m['p90_mm']:>9.2f}{m['failure_rate']:>7.0%}"
            f"{m['time_median_s']:>12.2f}{m['time_p90_s']:>12.2f}"
        )
    for rule in ("former", "calibrated"):
        lines += [f"-- {rule} confidence", *calibration_lines(s[rule]["calibration"])]
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Reliability diagrams of both confidences on every tier of ``report`` (one panel per tier), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .benchmark import plot_reliability

    tiers = [t for t in ("template-family", "real-anatomy") if t in report]
    fig, axes = plt.subplots(1, len(tiers), figsize=(6 * len(tiers), 5), squeeze=False)
    for ax, tier in zip(axes[0], tiers, strict=True):
        s = report[tier]["summary"]
        for rule in ("former", "calibrated"):
            plot_reliability(ax, s[rule]["calibration"], label=f"{rule} (ECE {s[rule]['calibration']['ece']:.3f})")
        ax.set_title(f"{tier}: {s['n']} sections")
        ax.legend(loc="upper left", fontsize=8)
    from ..cache import save_figure

    return save_figure(fig, path, dpi=110)


def _template_items(n: int) -> list[tuple[str, Any, Any, dict[str, Any]]]:
    out = []
    for i, case in enumerate(simulated_set(n, seed=2026)):
        sim = make_section(case)
        out.append((f"case{i}-{sim.section.name}", sim.section, sim.true_affine, user_hints(case, sim)))
    return out


def _real_items(real_dir: str, n_per_volume: int) -> list[tuple[str, Any, Any, dict[str, Any]]]:
    from .real_tier import real_sections

    secs, _ = real_sections(real_dir, split="test", n_per_volume=n_per_volume)
    return [
        (
            f"{s.subject}-{s.contrast}-{s.section.name}",
            s.section,
            s.true_affine,
            {"hemisphere": s.hemisphere, "flipped": False},
        )
        for s in secs
    ]


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m siibra_anchor.evaluation.confidence_eval", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--n", type=int, default=48, help="template-family test sections (the benchmark's first n)")
    ap.add_argument("--real-data", default=None, help="folder of the real-anatomy volumes (docs/real-anatomy.md)")
    ap.add_argument("--real-per-volume", type=int, default=3, help="sections cut from each real test volume")
    ap.add_argument("--out", default=None, help="write confidence_eval.json (and confidence-reliability.png) here")
    ap.add_argument("--replot", default=None, metavar="JSON", help="only draw the figure of a saved report into --out")
    ns = ap.parse_args(args)
    if ns.replot:
        rep = json.loads(Path(ns.replot).read_text())
        sys.stdout.write(f"wrote {plot_report(rep, Path(ns.out or '.') / 'confidence-reliability.png')}\n")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.simplefilter("ignore")
    report: dict[str, Any] = {
        "command": "python -m siibra_anchor.evaluation.confidence_eval",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    tiers = [("template-family", _template_items(ns.n))] if ns.n > 0 else []  # --n 0: the real tier only
    if ns.real_data:
        tiers.append(("real-anatomy", _real_items(ns.real_data, ns.real_per_volume)))
    for name, items in tiers:
        rows = evaluate_sections(items)
        report[name] = {"rows": rows, "summary": summarise(rows)}
        sys.stdout.write(format_summary(name, report[name]["summary"]) + "\n")
        sys.stdout.flush()
    if ns.out:
        Path(ns.out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(ns.out) / "confidence_eval.json", json.dumps(report, indent=1, default=float))
        plot_report(report, Path(ns.out) / "confidence-reliability.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

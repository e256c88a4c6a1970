"""Other draws of the template-family tier's generator (evaluation.template_draws)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siibra_anchor.evaluation.benchmark import simulated_set
from siibra_anchor.evaluation.template_draws import DRAW_SEEDS, format_draws, main, run_draws


@pytest.mark.filterwarnings("ignore")
def test_draws_are_anchored_like_the_tier_and_pooled(tmp_path):
    rep = run_draws((2026, 2028), n=2)
    assert rep["seeds"] == [2026, 2028] and len(rep["cases"]) == 4
    for seed in (2026, 2028):
        drawn = simulated_set(2, seed=seed)
        mine = [c for c in rep["cases"] if c["seed"] == seed]
        assert [c["volume"] for c in mine] == [d.volume for d in drawn]  # the generator's own draw
        assert [c["orientation"] for c in mine] == [d.orientation for d in drawn]
    first = rep["cases"][0]  # the tier's first section: a clean MNI152 section, placed well
    assert first["refused"] is None and first["error_mm"] < 3.0 and first["confidence"] > 0.5
    assert first["outcome"] == "correct"
    pooled, rows = rep["pooled"], rep["by_seed"].values()
    assert pooled["n"] == 4 and pooled["failures"] == sum(r["failures"] for r in rows)
    errs = np.array([c["error_mm"] for c in rep["cases"]])
    assert pooled["median_mm"] == pytest.approx(np.median(errs)) and pooled["failures"] == int((errs > 10).sum())
    assert pooled["mirrored"] == sum(c["outcome"].startswith("mirrored") for c in rep["cases"]) <= pooled["failures"]
    table = format_draws(rep)
    assert "| seed 2026 | 2 |" in table and "| **pooled** | 4 |" in table
    # the seeds it measures by default are no benchmark's (2026), comparison's or ambiguity set's (2027) and no
    # calibration draw's
    from siibra_anchor.evaluation.calibrate import CALIBRATION_SEEDS

    assert not set(DRAW_SEEDS) & ({2026, 2027} | set(CALIBRATION_SEEDS.values()))


@pytest.mark.filterwarnings("ignore")
def test_command_prints_the_table_and_writes_strict_json(tmp_path, capsys):
    out = tmp_path / "draws.json"
    assert main(["--seeds", "2028", "--n", "1", "--json", str(out)]) == 0
    assert "| seed 2028 | 1 |" in capsys.readouterr().out
    rep = json.loads(out.read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN or Infinity
    assert rep["by_seed"]["2028"]["n"] == 1 and len(rep["cases"]) == 1
    with pytest.raises(SystemExit):
        main(["--n", "0"])

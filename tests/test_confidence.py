"""The calibrated confidence (siibra_anchor.confidence), its fit (evaluation.calibrate) and the calibration
report of the benchmark (ECE, false alarms, confident failures)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siibra_anchor.confidence import FEATURES, ConfidenceModel, confidence_model, feature_vector
from siibra_anchor.errors import CorruptFileError, InvalidParameterError
from siibra_anchor.evaluation.benchmark import ECE_DRAWS, calibration_lines, calibration_report, ece_if_calibrated
from siibra_anchor.evaluation.calibrate import NO_VOLUME_FEATURES, VOLUME_FEATURES, fit_models, read_rows


def _rows(n=400, seed=0):
    """Rows whose correctness follows a known logistic law of two features (the others are noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        f = {k: float(rng.normal()) for k in VOLUME_FEATURES}
        f["margin"], f["mirror_margin"] = (float(rng.uniform(0.0, 0.3)) for _ in range(2))
        z = 3.0 * f["nmi_gain"] + 2.0 * f["consistency"] - 0.5
        correct = bool(rng.random() < 1 / (1 + np.exp(-z)))
        for p in ("first", "novol"):
            rows.append({"key": f"s-{i}-{p}", "kind": "sections", "pass": p, "features": f, "correct": correct})
    return rows


def test_fitted_model_reproduces_sklearn_and_finds_the_law():
    from sklearn.linear_model import LogisticRegression

    rows = _rows()
    out = fit_models(rows, {"what": "test"})
    m = ConfidenceModel.from_dict(out["models"]["volume"])
    use = [r for r in rows if r["pass"] == "first"]
    x = np.array([feature_vector(r["features"], VOLUME_FEATURES) for r in use])
    y = np.array([r["correct"] for r in use], int)
    mean, sd = x.mean(0), x.std(0)
    ref = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / sd, y).predict_proba((x - mean) / sd)[:, 1]
    got = np.array([m(r["features"]) for r in use])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    coef = dict(zip(m.names, m.coef, strict=True))
    assert coef["nmi_gain"] > 1.0 and coef["consistency"] > 0.7 and abs(coef["log_scale"]) < 0.6
    nv = ConfidenceModel.from_dict(out["models"]["no-volume"])
    assert nv.names == NO_VOLUME_FEATURES and "nmi_gain" not in nv.names
    assert m.provenance["n_rows"] == len(use) and json.dumps(out)  # serialisable
    # a candidate without one feature (calibrate --without): both models lose it, the law is still found
    cand = fit_models(rows, {}, without=("match_similarity",))
    for kind, names in (("volume", VOLUME_FEATURES), ("no-volume", NO_VOLUME_FEATURES)):
        got_names = ConfidenceModel.from_dict(cand["models"][kind]).names
        assert got_names == tuple(f for f in names if f != "match_similarity")
    c = ConfidenceModel.from_dict(cand["models"]["volume"])
    assert dict(zip(c.names, c.coef, strict=True))["nmi_gain"] > 1.0
    with pytest.raises(InvalidParameterError, match="no_such"):
        fit_models(rows, {}, without=("no_such",))


def test_shipped_models_load_and_give_probabilities():
    from pathlib import Path

    rows = read_rows(Path(__file__).parents[1] / "docs/confidence-calibration-rows.jsonl")
    for kind, passes in (("volume", ("first", "wide")), ("no-volume", ("novol",))):
        m = confidence_model(kind)
        assert set(m.names) <= set(FEATURES) and m.provenance["n_rows"] > 50
        assert "disjoint_from" in m.provenance and m.provenance["calibration_seeds"]
        use = [r for r in rows if r["pass"] in passes and "features" in r]
        p = np.array([m(r["features"]) for r in use])
        y = np.array([r["correct"] for r in use])
        assert np.all((p >= 0) & (p <= 1)) and p[y].mean() > 0.75 > p[~y].mean() + 0.3
        no_brain = [m(r["features"]) for r in use if r["kind"] == "non_brain"]
        assert max(no_brain) < 0.5  # images of no brain at all are never trusted


def test_bad_models_and_features_raise_typed_errors():
    with pytest.raises(CorruptFileError):
        ConfidenceModel.from_dict({"kind": "volume", "features": ["consistency"]})
    with pytest.raises(CorruptFileError):
        ConfidenceModel.from_dict(
            {"kind": "v", "features": ["no-such"], "mean": [0], "scale": [1], "coef": [1], "intercept": 0}
        )
    assert feature_vector({"margin": 0.0}, ("margin",))[0] == pytest.approx(np.log10(0.005))
    with pytest.raises(InvalidParameterError, match="nmi_gain"):
        feature_vector({"consistency": 0.5, "nmi_gain": float("nan")}, ("consistency", "nmi_gain"))
    with pytest.raises(InvalidParameterError):
        confidence_model("sometimes")


def test_calibration_report_against_a_hand_computation():
    conf = [0.05, 0.15, 0.45, 0.55, 0.95, 0.95, 0.95, 0.95]
    err = [20.0, 1.0, 2.0, 30.0, 1.0, 2.0, 1.5, 15.0]
    cal = calibration_report(conf, err)
    # tenths: [0,.1): 1 wrong; [.1,.2): 1 right; [.4,.5): 1 right; [.5,.6): 1 wrong; [.9,1]: 3 of 4 right
    ece = (abs(0.05 - 0) + abs(0.15 - 1) + abs(0.45 - 1) + abs(0.55 - 0) + 4 * abs(0.95 - 0.75)) / 8
    assert cal["ece"] == pytest.approx(ece)
    assert cal["successes_with_confidence_lt_0.5"] == 2 and cal["false_alarm_rate"] == pytest.approx(2 / 5)
    assert cal["failures_with_confidence_ge_0.5"] == 2
    top = cal["reliability_diagram"][9]
    assert top["n"] == 4 and top["observed_correct"] == pytest.approx(0.75)


def test_the_ece_of_a_calibrated_confidence_is_read_beside_the_observed_one():
    """Consistency resampling: the ECE a calibrated confidence shows on this many sections. A confidence
    that is calibrated is not flagged; one that says 0.95 where half are wrong is; fewer sections give a
    larger ECE to a calibrated confidence; the figures are seeded."""
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.3, 1.0, 400)
    calibrated = np.where(rng.random(400) < conf, 1.0, 30.0)  # within 10 mm with probability = confidence
    cal = calibration_report(conf.tolist(), calibrated.tolist())
    null = cal["ece_if_calibrated"]
    assert null["draws"] == ECE_DRAWS and null["median"] <= null["p90"]
    assert null["p_value"] > 0.05  # a calibrated confidence is not flagged
    assert cal["ece"] < null["p90"] + 0.02
    overconfident = np.where(rng.random(100) < 0.5, 1.0, 30.0)
    bad = calibration_report([0.95] * 100, overconfident.tolist())
    assert bad["ece"] > 0.3 and bad["ece_if_calibrated"]["p_value"] == 0.0
    small = ece_if_calibrated(conf[:40])
    assert small["median"] > null["median"]  # the sample size alone raises a calibrated ECE
    again = ece_if_calibrated(conf[:40])
    assert (again["median"], again["p90"]) == (small["median"], small["p90"]) and np.isnan(small["p_value"])
    assert ece_if_calibrated([])["draws"] == 0
    line = calibration_lines(cal)[1]
    assert line.startswith("ECE a calibrated confidence would show on these 400 sections")


def test_profile_times_every_stage(mni_reference):
    from siibra_anchor.evaluation.profile import format_profile, profile_sections

    rep = profile_sections(n=2)
    assert set(rep["stages"]) >= {"embed_s", "match_s", "guided_s", "refine_s"} and len(rep["rows"]) == 2
    for row in rep["rows"]:  # the stages of the kept pass fit inside the whole call
        stages = sum(v for k, v in row["stages"].items() if k != "total_s")
        assert 0 < stages <= row["wall_s"] + 1e-6
    assert "whole call" in format_profile(rep)


def test_profile_batch_throughput_writes_its_report(mni_reference, tmp_path, capsys):
    import json

    from siibra_anchor.evaluation.profile import main

    assert main(["--batch", "--n", "2", "--device", "cpu", "--json", str(tmp_path / "t.json")]) == 0
    rep = json.loads((tmp_path / "t.json").read_text())
    assert rep["n"] == 2 and rep["device"] == "cpu" and rep["machine"]["gpu"] is None
    assert rep["one_by_one_s"] > 0 and rep["batch_s"] > 0 and rep["max_affine_difference"] < 1e-6
    assert "one anchor_batch() call" in capsys.readouterr().out


def test_calibration_synthetic_brains_are_rendered_once_and_cut_with_a_truth(tmp_path):
    """The calibration set's synthetic brains: seeded renderings cached as NIfTI, cut like the benchmark."""
    import nibabel as nib

    from siibra_anchor.evaluation.benchmark import make_section
    from siibra_anchor.evaluation.calibrate import CALIBRATION_SEEDS, SYNTH_SECTIONS_PER_BRAIN, synth_cases

    a = synth_cases(SYNTH_SECTIONS_PER_BRAIN + 1, folder=tmp_path)
    files = sorted(tmp_path.glob("synth-*.nii.gz"))
    assert [f.name.split("-")[1] for f in files] == [str(CALIBRATION_SEEDS["synth"] * 1000 + i) for i in (0, 1)]
    assert a[0].volume == a[SYNTH_SECTIONS_PER_BRAIN - 1].volume != a[-1].volume
    stamp = files[0].stat().st_mtime_ns
    b = synth_cases(SYNTH_SECTIONS_PER_BRAIN + 1, folder=tmp_path)
    assert a == b and files[0].stat().st_mtime_ns == stamp  # reused, not rendered again
    img = nib.load(files[0])
    data = np.asarray(img.dataobj)
    assert data.ndim == 3 and data.max() > 0 and (data == 0).mean() > 0.2  # a brain on an empty background
    sim = make_section(a[0])
    assert sim.section.mask.mean() > 0.05 and np.isfinite(sim.true_affine).all()


def test_real_calibration_volumes_need_a_truth_their_two_registrations_agree_on(tmp_path):
    """A real calibration subject whose two truth registrations disagree is not used (its labels "within
    10 mm" would be noise); without the volumes the real calibration sections raise a typed error."""
    from siibra_anchor.errors import RealDataMissingError
    from siibra_anchor.evaluation.calibrate import MAX_TRUTH_SPREAD_MM, real_calibration_sections, untrusted_volumes

    vols = {
        "good": {"registration_spread": {"mean_mm": 0.6, "p90_mm": 0.9}},
        "edge": {"registration_spread": {"mean_mm": MAX_TRUTH_SPREAD_MM, "p90_mm": 3.0}},
        "bad": {"registration_spread": {"mean_mm": 16.4, "p90_mm": 22.9}},
        "nan": {"registration_spread": {"mean_mm": float("nan"), "p90_mm": float("nan")}},
    }
    out = untrusted_volumes(vols)
    assert sorted(out) == ["bad", "nan"] and "16.4 mm" in out["bad"]
    assert sorted(untrusted_volumes(vols, max_spread_mm=0.5)) == ["bad", "edge", "good", "nan"]
    with pytest.raises(RealDataMissingError):  # the calibration split's files are not committed
        real_calibration_sections(tmp_path)


def test_real_calibration_rows_cross_checked_on_rows_no_fit_saw(capsys):
    """calibrate --cross-check: each real calibration volume's rows (truth by brain-masked registration,
    reg-t2 through reg-t1) scored by models fitted without them; the shipped models hold no real row: they
    are the fit of the template-family, synthetic and piece rows, coefficient for coefficient."""
    from pathlib import Path

    from siibra_anchor.evaluation.calibrate import cross_check, evaluate_rows, main

    docs = Path(__file__).parents[1] / "docs"
    paths = [
        docs / "confidence-calibration-rows.jsonl",
        docs / "confidence-piece-calibration-rows.jsonl",
        docs / "confidence-real-calibration-rows.jsonl",
    ]
    rows = read_rows(paths)
    refit = fit_models(read_rows(paths[:2]), {})["models"]
    for kind in ("volume", "no-volume"):
        m = confidence_model(kind)
        assert m.coef == pytest.approx(tuple(refit[kind]["coef"]), rel=1e-6), kind
        assert m.intercept == pytest.approx(refit[kind]["intercept"], rel=1e-6)
    assert any(r.get("kind") == "piece" for r in rows)
    real = [r for r in rows if r.get("kind") == "real"]
    vols = {"reg-t1", "reg-t2", "reg-bold", "reg-dwi"}
    assert len(real) == len(read_rows(paths[2])) and {r["volume"] for r in real} == vols
    assert {r["pass"] for r in real} == {"first", "wide", "novol"}
    out = cross_check(rows)
    assert set(out) == vols
    held = [r for r in real if r["volume"] == "reg-t2"]
    vol = [r for r in held if r["pass"] in ("first", "wide")]
    rep = out["reg-t2"]["with_other_real"]["volume"]
    assert rep["n"] == len(vol) and out["reg-t2"]["without_real"]["no-volume"]["n"] == len(held) - len(vol)
    # by hand: the model fitted on every row but reg-t2's, applied to reg-t2's rows
    fitted = fit_models([r for r in rows if r.get("volume") != "reg-t2"], {})  # reg-bold and reg-dwi in
    m = ConfidenceModel.from_dict(fitted["models"]["volume"])
    conf = np.array([m(r["features"]) for r in vol])
    ok = np.array([r["correct"] for r in vol])
    assert rep["failures_with_confidence_ge_0.5"] == int(np.sum((conf >= 0.5) & ~ok))
    assert rep["log_loss"] == pytest.approx(-np.mean(np.log(np.where(ok, conf, 1 - conf))), rel=1e-6)
    # the shipped models were fitted on the template-family and synthetic rows only: the "without real" fit
    shipped = evaluate_rows(held)["volume"]
    assert shipped["log_loss"] == pytest.approx(out["reg-t2"]["without_real"]["volume"]["log_loss"], rel=1e-6)
    assert shipped["log_loss"] != pytest.approx(rep["log_loss"])
    assert main(["--cross-check", "--rows", *map(str, paths)]) == 0
    text = capsys.readouterr().out
    assert "reg-t1, volume model fitted with other real rows (48 rows, log loss" in text and "ECE" in text
    assert main(["--evaluate", "--rows", str(paths[2]), "--kind", "real"]) == 0
    assert f"volume model, {2 * 24 * len(vols)} rows" in capsys.readouterr().out

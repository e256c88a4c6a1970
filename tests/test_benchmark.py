"""The benchmark: simulated set (stable, saved, reloaded), mirror bookkeeping, SimpleITK baseline, and a
small end-to-end run whose JSON and figures are checked (never its wall time)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from siibra_anchor.evaluation.benchmark import (
    FIGURES,
    N_CLEAN,
    BenchConfig,
    _mirror_errors,
    _outcome,
    ambiguity_set,
    format_markdown,
    format_table,
    load_set,
    make_section,
    run_benchmark,
    simulated_set,
    trained_on_synthetic,
    training_volumes,
)
from siibra_anchor.evaluation.simulate import section_error, simulate_section


def _strict_json(path):
    def no_nan(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_set_is_stable_and_damage_only_on_the_new_cases():
    full, old = simulated_set(48), simulated_set(N_CLEAN)
    assert full[:N_CLEAN] == old  # extending the set leaves the original cases as they were
    assert all(c.tears == 0 and c.noise == 0 for c in old)
    new = full[N_CLEAN:]
    assert any(c.tears for c in new) and any(c.noise for c in new) and any(c.contrast == "remap" for c in new)
    assert simulated_set(48, seed=1) != full


def test_tears_only_remove_tissue():
    kw = {"volume": "fsl-mni152-t1", "orientation": "coronal", "rotation_deg": 40.0, "spacing_mm": 0.8, "seed": 3}
    clean, torn = simulate_section(**kw), simulate_section(tears=3, **kw)
    np.testing.assert_array_equal(clean.true_affine, torn.true_affine)
    assert torn.section.mask.shape == clean.section.mask.shape
    removed = clean.section.mask & ~torn.section.mask
    assert not (torn.section.mask & ~clean.section.mask).any()
    assert 0.005 < removed.sum() / clean.section.mask.sum() < 0.3
    assert np.all(torn.section.image[removed] == 0.0)  # background where the tissue is missing


def test_mirror_errors_classify_mirrored_placements():
    sim = make_section(replace(ambiguity_set(1, kinds=("hemisection",))[0], tilt_deg=3.0))
    t = sim.true_affine
    assert _outcome(_mirror_errors(t, sim)) == "correct"
    assert _outcome(_mirror_errors(np.diag([-1.0, 1, 1, 1]) @ t, sim)) == "mirrored-midline"
    w = sim.section.mask.shape[1]
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, w - 1.0
    assert _outcome(_mirror_errors(t @ flip, sim)) == "mirrored-mounting"
    shifted = t.copy()
    shifted[:3, 3] += [0.0, 40.0, 0.0]
    assert _outcome(_mirror_errors(shifted, sim)) == "wrong"


def test_sitk_baseline_registers_an_easy_section():
    pytest.importorskip("SimpleITK")
    from siibra_anchor.evaluation.baselines.sitk import SitkParams, sitk_register

    sim = simulate_section(
        volume="fsl-mni152-t1", orientation="coronal", offset_mm=10.0, rotation_deg=95.0, spacing_mm=1.0, seed=0
    )
    params = SitkParams(
        levels_mm=(8.0, 4.0, 2.0),
        orientations=("coronal",),
        n_rotations=4,
        offsets_mm=(-15.0, 0.0, 15.0),
        shifts_mm=0.0,
        keep=(0, 2, 1),
    )
    aff, info = sitk_register(sim.section, budget_s=60.0, params=params)
    assert aff.shape == (4, 4) and np.linalg.det(aff) > 0
    assert info["n_starts"] == 4 * 3 and info["n_optimised"] == 12 + 2 + 1
    assert section_error(aff, sim.true_affine, sim.section.mask) < 5.0


def test_template_floor_registration_recovers_a_known_motion(tmp_path):
    pytest.importorskip("SimpleITK")
    import nibabel as nib
    from scipy.spatial.transform import Rotation

    from siibra_anchor.cache import cache_dir
    from siibra_anchor.evaluation.baselines.template_floor import register_volumes, template_floor_mm
    from siibra_anchor.evaluation.series_bench import _registered_stats
    from siibra_anchor.templates import load_volume

    data, aff = load_volume("mni152")
    # the same voxels under a moved affine: the structure at p of the reference is at S p of the copy
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("z", 2.0, degrees=True).as_matrix()
    motion[:3, 3] = [3.0, -2.0, 1.0]
    path = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data), motion @ aff), path)
    t = register_volumes(path, "mni152")
    pts = np.c_[np.random.default_rng(1).uniform(-60, 60, (500, 3)), np.ones(500)]
    assert np.abs(pts @ (t @ motion).T - pts).max() < 0.15  # moving -> fixed undoes the motion
    entry = max(cache_dir("template-affines").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert np.allclose(register_volumes(path, "mni152"), t)  # from the cache
    entry.write_text("{ damaged")
    assert np.allclose(register_volumes(path, "mni152"), t, atol=1e-6)  # recomputed, same seed
    assert json.loads(entry.read_text())["moving_to_fixed"]
    # the floor of a section cut from the moved copy: the motion's displacement over its tissue
    sim = simulate_section(volume="mni152", orientation="axial", offset_mm=10.0, spacing_mm=1.0, seed=0)
    floor = template_floor_mm(sim.true_affine, sim.section.mask, np.linalg.inv(motion))
    assert floor == pytest.approx(
        section_error(np.linalg.inv(motion) @ sim.true_affine, sim.true_affine, sim.section.mask)
    )
    assert 1.0 < floor < 6.0
    rows = [
        {"template_floor_mm": f, "error_independent_registered_mm": 2 * f, "error_joint_registered_mm": f / 2}
        for f in (0.5, 1.0, 20.0)
    ]
    st = _registered_stats(rows)
    assert st["template_floor"]["median_mm"] == 1.0 and st["joint_registered"]["median_mm"] == 0.5
    assert st["independent_registered"]["failure_rate"] == pytest.approx(1 / 3)  # 40 mm > 10 mm
    assert st["joint_registered"]["failure_rate"] == 0.0  # 10 mm is not a failure
    assert _registered_stats([{"error_joint_mm": 1.0}]) == {}


@pytest.mark.slow
def test_small_benchmark_writes_every_figure_and_strict_json(tmp_path, mni_reference, monkeypatch):
    cfg = BenchConfig(
        name="test",
        cases=(36, 38),  # 38 is cut from the white-matter map, a volume the default encoder was trained on
        memory_every=1,
        patch_encoders=("default", "raw-pixel"),
        density_counts=(5,),
        density_cases=1,
        sitk_cases=1,
        sitk_budget_s=5.0,
        sitk_params={"levels_mm": (8.0, 4.0), "n_rotations": 4, "offsets_mm": (0.0,), "keep": (0, 1)},
        ambiguity_per_kind=1,
        ambiguity_kinds=("mirrored-mounting",),
    )
    monkeypatch.setenv("SIIBRA_ANCHOR_OFFLINE", "1")  # the BigBrain block needs siibra online: not measured
    rep = run_benchmark(config=cfg, out=tmp_path, progress=False, reference=mni_reference, bigbrain=4)
    data = _strict_json(tmp_path / "benchmark.json")
    assert set(data["bigbrain"]) == {"skipped"} and "SpaceUnavailableError" in data["bigbrain"]["skipped"]
    assert data["config"]["name"] == "test" and len(data["cases"]) == 2
    for key in ("default", "baseline_raw_pixel", "baseline_no_refine", "baseline_best_patch", "baseline_centroid"):
        assert data[key]["n"] == 2 and data[key]["median_mm"] >= 0
    assert data["cases"][0]["tears"] > 0
    ec = data["embed_ms_per_patch"]  # measured, never asserted against a time budget
    assert ec["default"] > 0 and ec["raw_pixel"] > 0 and ec["batch_size"] == 512  # the CPU batch (encoders.CPU_BATCH)
    topk = data["patch_level"]["default"]["topk"]
    assert len(topk) == 50 and np.all(np.diff(topk) >= 0) and 0 <= topk[0] <= topk[-1] <= 1
    # held out: only the section from a volume the encoder never saw, at section and at patch level
    ho = data["held_out"]
    assert ho["training_volumes"] == training_volumes(data["encoder_name"])
    assert "mni152-2009a-wm" in ho["training_volumes"]
    assert ho["cases"] == [0] and ho["default"]["median_mm"] == data["cases"][0]["error_mm"]
    for m in data["patch_level"].values():
        sec = np.asarray(m["section"])
        assert len(sec) == m["n"] and set(sec) == {0, 1} and m["n_held_out"] == int((sec == 0).sum())
        assert m["median_mm_held_out"] == pytest.approx(np.median(np.asarray(m["errors_mm"])[sec == 0]))
    assert sum(b["n"] for b in data["calibration"]["bins"]) == 2
    assert [c["n_sections"] for c in data["density"]["curve"]] == [5]
    assert data["density"]["dense_3d"]["n_sections"] == mni_reference.n_sections
    sk = data["baseline_sitk"]
    assert "skipped" not in sk and sk["sitk"]["n"] == 1 and sk["sitk"]["median_time_s"] > 0
    amb = data["ambiguity"]
    assert len(amb["cases"]) == 4 and {r["condition"] for r in amb["cases"]} == {
        "hints, refine",
        "hints, no refine",
        "no hints, refine",
        "no hints, no refine",
    }
    assert all(r["outcome"] in ("correct", "wrong") or r["outcome"].startswith("mirrored-") for r in amb["cases"])
    assert data["cases"][0]["peak_traced_mib"] > 0
    # every figure exists and is a PNG
    assert set(data["figures"]) == set(FIGURES)
    for name in data["figures"].values():
        head = (tmp_path / name).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n", name
    # the saved set is the measured set, pixel for pixel
    cases, sims = load_set(tmp_path)
    ref_sim = make_section(simulated_set(48)[36])
    assert cases[0] == simulated_set(48)[36]
    np.testing.assert_array_equal(sims[0].section.image, ref_sim.section.image)
    np.testing.assert_array_equal(sims[0].section.mask, ref_sim.section.mask)
    np.testing.assert_allclose(sims[0].true_affine, ref_sim.true_affine)
    text = format_table(rep)
    assert "SimpleITK" in text and "ambiguity" in text and "reference density" in text
    assert "held-out volumes only (not mni152, mni152-2009a-wm" in text
    assert "BigBrain sections through siibra: not measured (SpaceUnavailableError" in text
    md = format_markdown(rep)
    assert md.startswith("# Benchmarks") and "benchmark-density.png" in md
    assert "It was trained on mni152, mni152-2009a-wm" in md and "the *held-out* lines" in md
    if trained_on_synthetic(rep["encoder_name"]):
        assert "(and synthetic brains rendered from mni152" in md

"""Domain randomisation (siibra_anchor.training.synth): synthetic brains rendered from the reference, their
seeds, their variety (contrast order, deformation), and a training run that uses them."""

from __future__ import annotations

import numpy as np
import pytest
from siibra_anchor.training.config import load_config
from siibra_anchor.training.errors import TrainConfigError
from siibra_anchor.training.synth import SynthParams, SynthVolumes, load_volumes, render, tissue_classes
from siibra_anchor.training.volumes import load_training_volumes


@pytest.fixture(scope="module")
def classes():
    return tissue_classes(load_training_volumes(["mni152"])[0])


def test_tissue_classes_are_csf_grey_white_of_the_t1(classes):
    src = classes.source
    c = classes.centres
    assert c.shape == (3,) and np.all(np.diff(c) > 5)  # three distinct ascending classes
    vals = src.data[src.mask]
    assert vals.min() < c[0] and c[-1] < vals.max()
    # cropped to the brain, with room around it; the world positions stay those of the source
    full = load_training_volumes(["mni152"])[0]
    assert src.data.size < 0.7 * full.data.size
    assert src.mask.sum() == full.mask.sum()
    np.testing.assert_allclose(src.tissue_points_mm().mean(0), full.tissue_points_mm().mean(0), atol=1e-3)


def test_a_rendering_is_reproducible_and_each_seed_another_brain(classes):
    a, b, c = render(classes, 5), render(classes, 5), render(classes, 6)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.name == b.name != c.name
    assert not np.array_equal(a.data, c.data)
    src = classes.source
    for r in (a, c):
        assert r.data.shape == src.data.shape and np.array_equal(r.affine, src.affine)
        assert np.all(r.data[~r.mask] == 0) and np.all(r.data[r.mask] > 0)
        dice = 2 * (r.mask & src.mask).sum() / (r.mask.sum() + src.mask.sum())
        assert 0.9 < dice < 0.995  # deformed: not the source's mask, but the same brain


def test_renderings_cover_both_polarities_and_orders_of_the_classes(classes):
    src = classes.source
    both = src.mask.copy()
    corr, styles = [], set()
    for seed in range(12):
        r = render(classes, seed, SynthParams(deform_mm=0.0))
        m = both & r.mask
        corr.append(np.corrcoef(src.data[m], r.data[m])[0, 1])
        styles.add(r.name.split("(")[1].rstrip(")"))
        assert r.mask.sum() == src.mask.sum()  # no deformation: the source's mask
    assert min(corr) < -0.3 and max(corr) > 0.6  # T1-like and inverted (T2-, stain-like) renderings
    assert styles == {"random", "source-order", "reversed"}


def test_the_deformation_moves_tissue_by_about_deform_mm(classes):
    src = classes.source
    still = render(classes, 3, SynthParams(deform_mm=0.0, parcels=1, bias=0, texture=0, blur_mm=0, noise=0))
    moved = render(classes, 3, SynthParams(deform_mm=6.0, parcels=1, bias=0, texture=0, blur_mm=0, noise=0))
    assert np.array_equal(still.mask, src.mask)
    changed = (moved.mask != src.mask).sum() / src.mask.sum()
    small = render(classes, 3, SynthParams(deform_mm=1.5, parcels=1, bias=0, texture=0, blur_mm=0, noise=0))
    assert 0 < (small.mask != src.mask).sum() / src.mask.sum() < changed < 0.3


def test_synth_keys_window_seeds_and_bad_values(classes):
    v = load_volumes(["synth:5"])[0]
    np.testing.assert_array_equal(v.data, render(classes, 5).data)
    with pytest.raises(TrainConfigError, match="SEED an integer"):
        load_volumes(["synth:five"])
    with pytest.raises(TrainConfigError, match="deform_mm"):
        SynthParams(deform_mm=-1.0)
    with pytest.raises(TrainConfigError, match="synth.n"):
        load_config({"synth": {"n": -1}})
    sv = SynthVolumes(load_training_volumes(["mni152"])[0], n=2, every=3, seed=7)
    first = sv.refresh(0)
    assert first is not None and len(first) == 2 and first[0].name != first[1].name
    assert sv.refresh(2) is None and sv.volumes(2) is first
    nxt = sv.refresh(3)
    assert nxt is not None and nxt[0].name != first[0].name
    again = SynthVolumes(load_training_volumes(["mni152"])[0], n=2, every=3, seed=7).volumes(4)
    np.testing.assert_array_equal(again[1].data, nxt[1].data)  # a resumed run renders the same brains


def test_training_with_synthetic_brains_runs_reproducibly_and_validates_on_held_out_ones(tmp_path):
    from siibra_anchor.training.trainer import train

    cfg = {
        "volumes": ["mni152"],
        "synth": {"n": 1, "every": 2},
        "patch": {"spacing_mm": 3.0, "size_px": 16},
        "batch_size": 24,
        "groups": 2,
        "planes_per_group": 2,
        "far_per_plane": 4,
        "encoder": {"width": 4, "dim": 8},
        "steps": 4,
        "warmup_steps": 1,
        "threads": 1,
        "progress": False,
        "augment": {"rotate": 0.0, "elastic": 0.0},
        "val": {"queries": ["synth:900001"], "n_queries": 20, "ref_step_mm": 12, "ref_stride_px": 4},
    }
    a = train({**cfg, "out_dir": str(tmp_path / "a")}, command="pytest synth")
    b = train({**cfg, "out_dir": str(tmp_path / "b")}, command="pytest synth")
    assert a["sha256"] == b["sha256"]
    assert [r["loss"] for r in a["curves"]["train"]] == [r["loss"] for r in b["curves"]["train"]]
    assert any(k.startswith("synth:900001") for k in a["val"]["per_volume"])
    c = train({**cfg, "synth": {"n": 0}, "out_dir": str(tmp_path / "c")}, command="pytest no synth")
    assert [r["loss"] for r in c["curves"]["train"]] != [r["loss"] for r in a["curves"]["train"]]
    # rendering processes (the next window rendered while this one trains) change nothing that is learned
    w = train({**cfg, "synth": {"n": 1, "every": 2, "workers": 2}, "out_dir": str(tmp_path / "w")}, command="pytest")
    assert w["sha256"] == a["sha256"]
    with pytest.raises(TrainConfigError, match="exclude each other"):
        load_config({**cfg, "synth": {"n": 1, "workers": 2}, "num_workers": 2})


def test_rendering_processes_give_the_same_brains_window_by_window():
    src = load_training_volumes(["mni152"])[0]
    plain = SynthVolumes(src, n=2, every=3, seed=11)
    pooled = SynthVolumes(src, n=2, every=3, seed=11, workers=2)
    try:
        for step in (0, 1, 3, 9):  # window 0, the same window, the prefetched next one, one skipped to
            a, b = plain.volumes(step), pooled.volumes(step)
            assert [v.name for v in a] == [v.name for v in b]
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x.data, y.data)
                np.testing.assert_array_equal(x.mask, y.mask)
    finally:
        pooled.close()
    assert pooled.refresh(12) is not None  # closed: renders in this process again
    with pytest.raises(TrainConfigError, match="workers"):
        SynthVolumes(src, n=1, every=1, seed=0, workers=-1)


def test_echo_planar_renderings_are_shifted_blurred_and_leave_the_others_unchanged(classes):
    plain = render(classes, 5)
    assert render(classes, 5, SynthParams(epi=0.0)).name == plain.name
    np.testing.assert_array_equal(render(classes, 5, SynthParams(epi=0.0)).data, plain.data)
    epi = render(classes, 5, SynthParams(epi=1.0))
    assert epi.name == plain.name.replace(")", ", epi)")  # same contrast draw: the EPI look has its own generator
    m = plain.mask & epi.mask
    assert 0.5 < np.corrcoef(plain.data[m], epi.data[m])[0, 1] < 0.99  # the same brain, not the same image

    def sharpness(v):  # mean squared difference of neighbouring voxels inside the brain
        return float(np.mean(np.diff(v.data, axis=0)[v.mask[1:] & v.mask[:-1]] ** 2))

    assert sharpness(epi) < 0.7 * sharpness(plain)  # thick voxels
    lo, hi = (v[:, :, : v.shape[2] // 4] for v in (plain.mask, epi.mask))
    assert (lo != hi).mean() > 0.002  # the phase-encoding shift moves the base of the brain
    shares = [", epi)" in render(classes, s, SynthParams(epi=0.5, deform_mm=0.0)).name for s in range(8)]
    assert 0 < sum(shares) < 8
    with pytest.raises(TrainConfigError, match="synth.epi"):
        SynthParams(epi=1.5)

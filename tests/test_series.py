"""Series anchoring: the joint fit against plain computations, the plane prior of anchor(), the joint
pipeline on a real simulated series (re-anchoring a wrong placement), the Dask engine on a real local
cluster of 2 worker processes, and the ``series`` command."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import siibra_anchor as sa
from siibra_anchor.anchoring import PlanePrior
from siibra_anchor.anchoring.hypotheses import MatchVotes, prior_hypotheses
from siibra_anchor.anchoring.series import (
    SeriesResult,
    _choose_family,
    _Engine,
    _fit,
    _joint,
    _Placement,
    _Series,
    fit_series,
    snap_to_plane,
    tissue_centroid_px,
)
from siibra_anchor.errors import AnchoringFailedError, InvalidParameterError, InvalidSectionError
from siibra_anchor.evaluation.series_bench import SeriesSpec, simulated_series
from siibra_anchor.evaluation.simulate import section_error

# -- the joint fit, on placements with known truth ---------------------------------------------------


def _placements(n_true, numbers, slope, intercept, rng, angle_noise_deg=1.0, offset_noise_mm=0.4):
    e1 = np.cross(n_true, [1.0, 0, 0])
    e1 /= np.linalg.norm(e1)
    out = []
    for k in numbers:
        tilt = Rotation.from_rotvec(np.deg2rad(angle_noise_deg) * rng.normal(size=3) / np.sqrt(3))
        n = tilt.apply(n_true)
        c = (intercept + slope * k + rng.normal(0, offset_noise_mm)) * n_true + rng.normal(0, 5, 3) * (
            1 - np.abs(n_true)
        )
        out.append(_Placement(normal=n, centre=c, row_dir=tilt.apply(e1), scale=1.05, weight=0.9))
    return out


@pytest.mark.parametrize("thickness", [0.05, None])
def test_fit_series_recovers_plane_line_and_outliers(thickness):
    rng = np.random.default_rng(0)
    n_true = Rotation.from_rotvec([0.1, 0.0, 0.05]).apply([0.0, 1.0, 0.0])
    numbers = np.array([100, 140, 180, 260, 300, 340, 380, 460, 500, 540, 580, 620], float)  # gaps
    pls = _placements(n_true, numbers, 0.05, -20.0, rng)
    # three wrong placements: tilted 30 degrees, 25 mm off the line, mirrored normal
    pls[2].normal = Rotation.from_rotvec([0.5, 0, 0]).apply(pls[2].normal)
    pls[5].centre = pls[5].centre + 25.0 * n_true
    pls[8].normal = -pls[8].normal
    m = fit_series(pls, numbers, thickness_mm=thickness)
    assert np.degrees(np.arccos(abs(m.normal @ n_true))) < 1.0
    assert m.normal @ n_true > 0  # the majority's sign
    assert abs(m.slope_mm - 0.05) < (1e-12 if thickness else 0.01)
    pred = m.offset_mm(numbers[0])
    assert abs(pred - (-20.0 + 0.05 * numbers[0])) < 1.0
    assert set(np.flatnonzero(~m.inliers)) == {2, 5, 8}
    assert m.row_angle_deg is not None and m.angle_spread_deg < 5
    assert abs(m.scale - 1.05) < 1e-9


def test_fit_series_without_common_orientation_and_bad_input():
    rng = np.random.default_rng(1)
    n_true = np.array([0.0, 0.0, 1.0])
    numbers = np.arange(8, dtype=float)
    pls = _placements(n_true, numbers, 2.0, 5.0, rng)
    for i, p in enumerate(pls):  # sections mounted at unrelated rotations
        p.row_dir = Rotation.from_rotvec([0, 0, 0.8 * i]).apply(p.row_dir)
    m = fit_series(pls, numbers)
    assert m.row_angle_deg is None and m.row_dir() is None
    assert m.inliers.all()
    with pytest.raises(InvalidSectionError, match="at least 3"):
        fit_series(pls[:2], numbers[:2])


def test_fit_series_without_a_common_plane_raises_and_the_series_stays_independent():
    """Placements on three unrelated planes (coronal, sagittal, axial): no plane to fit. fit_series says
    so with a typed error; the series engine returns the independent placements, flagged, instead of
    failing (a test of the report found this with an IndexError)."""
    numbers = np.arange(3, dtype=float)
    e = np.eye(3)
    pls = [
        _Placement(normal=e[i], centre=2.0 * i * e[i], row_dir=e[(i + 1) % 3], scale=1.0, weight=0.9) for i in range(3)
    ]
    with pytest.raises(AnchoringFailedError, match="no common cutting plane"):
        fit_series(pls, numbers)


def test_snap_to_plane_matches_plain_geometry():
    lin = Rotation.from_rotvec([0.2, -0.1, 0.3]).as_matrix()[:, :2] * 0.5
    from siibra_anchor.planes import section_affine

    aff = section_affine(lin, [10.0, -5.0, 3.0], 0.5)
    n = np.array([0.0, 1.0, 0.0])
    cpx = np.array([40.0, 60.0])
    out = snap_to_plane(aff, cpx, n, 12.0, 1.1, (0.5, 0.5))
    new_lin = out[:3, :2]
    nn = np.cross(new_lin[:, 0], new_lin[:, 1])
    own = np.cross(lin[:, 0], lin[:, 1])
    assert abs(abs(nn @ n) / np.linalg.norm(nn) - 1) < 1e-12  # on the plane's orientation
    assert np.sign(nn @ n) == np.sign(own @ n)  # handedness (mounting) kept
    np.testing.assert_allclose(np.linalg.norm(new_lin, axis=0), [0.55, 0.55])
    centre = new_lin @ cpx + out[:3, 3]
    assert abs(centre @ n - 12.0) < 1e-9
    old_centre = lin @ cpx + aff[:3, 3]
    np.testing.assert_allclose(centre - (centre @ n) * n, old_centre - (old_centre @ n) * n, atol=1e-9)
    # the row direction is the old one projected into the plane
    r = lin[:, 0] - (lin[:, 0] @ n) * n
    np.testing.assert_allclose(new_lin[:, 0] / 0.55, r / np.linalg.norm(r), atol=1e-12)


def test_prior_hypotheses_vote_for_the_true_translation():
    rng = np.random.default_rng(3)
    n = np.array([0.0, 1.0, 0.0])
    r, c = np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0])  # cross(r, c) = -n: use that sign
    lin = 1.5 * np.stack([r, c], axis=1)
    t = np.array([-60.0, -12.0, 70.0])
    rc = rng.uniform(0, 100, (300, 2))
    xyz = rc @ lin.T + t + rng.normal(0, 1.5, (300, 3))
    bad = rng.random(300) < 0.6  # most matches are wrong
    xyz[bad] = rng.uniform(-80, 80, (bad.sum(), 3))
    prior = PlanePrior(normal=tuple(-n), offset_mm=float(-n @ t), row_dir=tuple(r))
    hyps = prior_hypotheses(prior, MatchVotes(rc, xyz, np.ones(300), 1.5, None, 7.5))
    assert hyps, "no hypothesis"
    best = hyps[0]
    err = np.linalg.norm(best.apply(rc) - (rc @ lin.T + t), axis=1).mean()
    assert err < 2.0
    assert prior.agrees(best, rc)
    # without an orientation the vote searches the rotation too
    prior2 = PlanePrior(normal=tuple(-n), offset_mm=float(-n @ t))
    best2 = prior_hypotheses(prior2, MatchVotes(rc, xyz, np.ones(300), 1.5, None, 7.5))[0]
    assert np.linalg.norm(best2.apply(rc) - (rc @ lin.T + t), axis=1).mean() < 6.0


# -- real anchoring ------------------------------------------------------------------------------------
SPEC = SeriesSpec(
    volume="fsl-mni152-t1",
    orientation="coronal",
    n_cut=4,
    thickness_known=True,
    tilt_deg=6.0,
    rotation_deg=30.0,
    jitter_deg=2.0,
    p_missing=0.0,
    p_damaged=0.0,
    seed=5,
)


@pytest.fixture(scope="module")
def small_series(mni_reference):
    sims, nums, thick = simulated_series(SPEC)
    assert len(sims) == 4 and np.all(np.diff(nums) > 0)
    kw = dict(n_patches=150, flipped=False, seed=0)
    return sims, nums, thick, kw


def test_plane_prior_places_section_on_the_prior_plane(mni_reference, small_series):
    sims, _, _, kw = small_series
    sim = sims[1]
    aff = sim.true_affine
    n = np.cross(aff[:3, 0], aff[:3, 1])
    n /= np.linalg.norm(n)
    c = aff[:3, :2] @ tissue_centroid_px(sim.section.mask) + aff[:3, 3]
    prior = PlanePrior(normal=tuple(n), offset_mm=float(c @ n), tolerance_mm=4.0)
    res = sa.anchor(sim.section, reference=mni_reference, plane_prior=prior, **kw)
    assert res.diagnostics["plane_prior"]["tolerance_mm"] == 4.0
    assert section_error(res.affine, aff, sim.section.mask) < 4.0


def test_joint_series_reanchors_a_wrong_placement(mni_reference, small_series):
    from siibra_anchor.anchoring import anchor

    sims, nums, thick, kw = small_series
    sections = [s.section for s in sims]
    first = [anchor(s, reference=mni_reference, **kw) for s in sections]
    errs = [section_error(r.affine, s.true_affine, s.section.mask) for r, s in zip(first, sims, strict=True)]
    assert max(errs) < 5.0
    # the independent placement of one section is wrong: 30 mm along the normal and rotated in-plane
    wrong = copy.deepcopy(first)
    bad = wrong[2].affine.copy()
    n = bad[:3, 2] / np.linalg.norm(bad[:3, 2])
    rot = Rotation.from_rotvec(np.deg2rad(40) * n).as_matrix()
    bad[:3, :2] = rot @ bad[:3, :2]
    bad[:3, 3] = bad[:3, 3] + 30.0 * n
    wrong[2].affine = bad
    assert section_error(bad, sims[2].true_affine, sims[2].section.mask) > 20
    res = _joint(
        sections, np.asarray(nums, float), thick, wrong, _Engine(None, 1), mni_reference, None, kw, True, 0, {}
    )
    assert isinstance(res, SeriesResult) and len(res) == 4
    assert res.flags[2] == ["outlier-reanchored"]
    assert all(f == [] for i, f in enumerate(res.flags) if i != 2)
    joint = [section_error(r.affine, s.true_affine, s.section.mask) for r, s in zip(res, sims, strict=True)]
    assert joint[2] < 5.0, joint
    assert np.median(joint) < 4.0
    assert res.diagnostics["n_outliers"] == 1 and res.diagnostics["n_reanchored_agree"] == 1
    assert 0.0 < res.confidence <= 1.0
    assert abs(abs(res.model.slope_mm) - thick) < 1e-12
    # every section now lies on the model's plane (offset residual ~0), the independent one is kept
    for r, k in zip(res, nums, strict=True):
        c = r.affine[:3, :2] @ tissue_centroid_px(r.mask) + r.affine[:3, 3]
        assert abs(c @ res.model.normal - res.model.offset_mm(k)) < 1.0
        assert r.diagnostics["series"]["independent_affine"] is not None
    d = res.to_dict()
    assert json.loads(json.dumps(d))["sections"][2]["flags"] == ["outlier-reanchored"]
    # joint=False: the independent placements as they were, the model only reported
    ind = _joint(
        sections,
        np.asarray(nums, float),
        thick,
        copy.deepcopy(wrong),
        _Engine(None, 1),
        mni_reference,
        None,
        kw,
        False,
        0,
        {},
    )
    np.testing.assert_array_equal(ind[2].affine, bad)
    assert ind.flags == [["independent"]] * 4 and ind.diagnostics["n_disagree"] == 1
    r2 = sa.AnchoringResult.from_dict(res[2].to_dict())
    assert r2.diagnostics["flags"] == ["outlier-reanchored"]


def test_two_families_the_images_choose_the_true_series(mni_reference):
    """Half the sections placed on the true series, half on a consistent but wrong one (20 mm along the
    normal, with higher confidences so that the geometric fit follows it): the summed NMI of all
    sections on each family's planes picks the true one, and the joint result is right everywhere."""
    from dataclasses import replace

    sims, nums, thick = simulated_series(replace(SPEC, n_cut=6, seed=11))
    assert len(sims) == 6
    sections = [s.section for s in sims]
    numbers = np.asarray(nums, float)
    first = []
    for i, sim in enumerate(sims):
        aff = sim.true_affine.copy()
        conf = 0.8
        if i % 2 == 1:  # the wrong family, more confident
            n = aff[:3, 2] / np.linalg.norm(aff[:3, 2])
            aff[:3, 3] = aff[:3, 3] + 20.0 * n
            conf = 0.9
        first.append(sa.AnchoringResult(affine=aff, space="mni152", confidence=conf, mask=sim.section.mask))
    ser = _Series(sections, numbers, thick, first, 0)
    assert ser.ok == [True] * 6
    model = _fit(ser, ser.ok)
    assert list(np.flatnonzero(model.inliers)) == [1, 3, 5]  # geometry alone follows the wrong family
    chosen, fams = _choose_family(model, ser, _Engine(None, 1), mni_reference)
    assert list(np.flatnonzero(chosen.inliers)) == [0, 2, 4]
    assert [f["chosen"] for f in fams] == [False, True]
    assert fams[1]["nmi_gain_sum"] > fams[0]["nmi_gain_sum"] + 0.1
    kw = dict(n_patches=150, flipped=False, seed=0)
    res = _joint(sections, numbers, thick, first, _Engine(None, 1), mni_reference, None, kw, True, 0, {})
    errs = [section_error(r.affine, s.true_affine, s.section.mask) for r, s in zip(res, sims, strict=True)]
    assert max(errs) < 5.0, errs
    assert res.diagnostics["families"][1]["chosen"]
    # one family only: nothing to choose, no extra work
    half = _Series(sections[::2], numbers[::2], thick, first[::2], 0)
    same, none = _choose_family(_fit(half, half.ok), half, _Engine(None, 1), mni_reference)
    assert none == [] and same.inliers.all()


def test_dask_engine_on_a_local_two_worker_cluster(mni_reference, small_series):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    sims, nums, thick, kw = small_series
    sections = [s.section for s in sims[:3]]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            res = sa.anchor_series(
                sections,
                reference=mni_reference,
                order=nums[:3],
                thickness_mm=thick,
                scheduler=client,
                **kw,
            )
            workers = client.run(lambda: __import__("torch").get_num_threads())
    assert len(workers) == 2 and set(workers.values()) == {1}
    assert isinstance(res, SeriesResult) and len(res) == 3
    assert res.diagnostics["engine"].startswith("dask")
    # the cluster's first pass is the in-process one: same seed, same placement
    here = sa.anchor(sections[0], reference=mni_reference, **kw)
    np.testing.assert_allclose(res[0].diagnostics["series"]["independent_affine"], here.affine, atol=1e-6)
    errs = [section_error(r.affine, s.true_affine, s.section.mask) for r, s in zip(res, sims[:3], strict=True)]
    assert max(errs) < 5.0, errs


def test_anchor_series_rejects_bad_input(mni_reference, small_series):
    sims, _, _, _ = small_series
    secs = [s.section for s in sims[:3]]
    with pytest.raises(InvalidSectionError, match="non-empty list"):
        sa.anchor_series([], reference=mni_reference)
    with pytest.raises(InvalidSectionError, match="not a siibra_anchor.Section"):
        sa.anchor_series([secs[0], np.zeros((4, 4))], reference=mni_reference)
    with pytest.raises(InvalidParameterError, match="same section number twice"):
        sa.anchor_series(secs, reference=mni_reference, order=[1, 2, 2])
    with pytest.raises(InvalidParameterError, match="one finite section number per section"):
        sa.anchor_series(secs, reference=mni_reference, order=[1, 2])
    with pytest.raises(InvalidParameterError, match="thickness_mm"):
        sa.anchor_series(secs, reference=mni_reference, thickness_mm=-1.0)
    with pytest.raises(InvalidParameterError, match="scheduler"):
        sa.anchor_series(secs, reference=mni_reference, scheduler=42)


def test_series_cli_writes_results_and_reports_typed_errors(mni_reference, small_series, tmp_path, capsys):
    from PIL import Image

    from siibra_anchor.cli import main
    from siibra_anchor.io.folders import series_images

    sims, _, _, _ = small_series
    folder = tmp_path / "series"
    folder.mkdir()
    for i, s in zip((8, 9, 10), sims[:3], strict=True):  # natural order: s8, s9, s10
        img8 = (np.clip(s.section.image, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(img8).save(folder / f"s{i}.png")
    assert [p.name for p in series_images(folder)] == ["s8.png", "s9.png", "s10.png"]
    out = tmp_path / "out"
    rc = main(
        ["--quiet", "series", str(folder), "--spacing-mm", "0.5", "--in-process", "--not-flipped", "--cut", "coronal"]
        + ["--n-patches", "150", "--numbers-from-names", "--out", str(out), "--report", str(out / "report.html")]
    )
    assert rc == 0
    summary = json.loads((out / "series.json").read_text())
    assert [s["name"] for s in summary["sections"]] == ["s8", "s9", "s10"]
    assert [s["number"] for s in summary["sections"]] == [8.0, 9.0, 10.0]
    for name in ("s8", "s9", "s10"):
        r = sa.AnchoringResult.load(out / f"{name}.anchor.json")
        assert "flags" in r.diagnostics
        assert r.diagnostics["cut"] == "coronal"  # the series' cutting-plane hint reached every section
    assert "series confidence" in capsys.readouterr().out
    assert main(["series", str(tmp_path / "nope")]) == 2
    assert "series folder not found" in capsys.readouterr().err
    html = (out / "report.html").read_text()  # the QC report of the series, self-contained
    assert all(name in html for name in ("s8", "s9", "s10"))
    assert html.count("data:image/png;base64,") >= 3 and "http://" not in html and "https://" not in html


def test_a_section_that_cannot_be_placed_does_not_fail_the_series(mni_reference, small_series, tmp_path):
    sims, _, _, kw = small_series
    tiny = np.zeros((20, 20))
    tiny[4:16, 4:16] = 1.0  # 6 mm of tissue: too small to anchor (ImageTooSmallError inside the series)
    secs = [sims[0].section, sims[1].section, sa.Section(tiny, spacing_mm=0.5, name="tiny")]
    res = sa.anchor_series(secs, reference=mni_reference, **kw)  # 2 placed: too few for a joint fit
    assert len(res) == 3 and [r.placed for r in res] == [True, True, False]
    bad = res[2]
    assert bad.confidence == 0.0 and "ImageTooSmallError" in bad.diagnostics["unplaced"]
    assert {"failed", "unplaced"} <= set(bad.diagnostics["flags"]) and "UNPLACED" in bad.summary()
    assert sa.AnchoringResult.load(bad.save(tmp_path / "tiny.json")).placed is False
    assert section_error(res[0].affine, sims[0].true_affine, sims[0].section.mask) < 5.0

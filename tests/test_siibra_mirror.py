"""siibra-anchor against the local EBRAINS mirror (tests/ebrains_mirror): siibra's real configuration JSON,
stand-in data in the real formats, a real HTTP server on 127.0.0.1. Every online path: Colin27 through its
``zip/nii`` archive, typed errors for 404s and stalls, anchoring in Colin27, Julich-Brain 3.1 regions in both
spaces, points warped MNI152 -> Colin27 through the transformation service's protocol."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from ebrains_mirror.mirror import COLIN27_AFFINE, COLIN27_FROM_MNI152, COLIN27_MEMBER, COLIN27_ZIP

import siibra_anchor as sa
from siibra_anchor.errors import SpaceUnavailableError


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty siibra-anchor cache (templates are fetched again); siibra's own download of the zip forgotten."""
    monkeypatch.setenv("SIIBRA_ANCHOR_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache"


def _forget_zip(mirror) -> None:
    from pathlib import Path

    from siibra.retrieval.requests import ZipfileRequest

    Path(ZipfileRequest(f"{mirror.url}/{COLIN27_ZIP}", COLIN27_MEMBER).cachefile).unlink(missing_ok=True)


def test_a_404_on_the_colin27_archive_is_a_typed_error_saying_what_to_do(ebrains_mirror, siibra_mirror, fresh_cache):
    from siibra_anchor.adapters.siibra_spaces import fetch_template

    _forget_zip(ebrains_mirror)
    ebrains_mirror.fail(COLIN27_ZIP, "404")
    with pytest.raises(SpaceUnavailableError, match="from_volume") as info:
        fetch_template("colin27", timeout_s=30)
    assert "colin27" in str(info.value)
    assert ebrains_mirror.count(COLIN27_ZIP) >= 1  # it did ask the server


def test_a_stalled_server_is_a_typed_error_within_the_timeout(ebrains_mirror, siibra_mirror, fresh_cache):
    from siibra_anchor.adapters.siibra_spaces import fetch_template

    _forget_zip(ebrains_mirror)
    ebrains_mirror.fail(COLIN27_ZIP, "stall")
    t = time.perf_counter()
    with pytest.raises(SpaceUnavailableError, match="did not finish within"):
        fetch_template("colin27", timeout_s=1.0)
    assert time.perf_counter() - t < 15  # 3 attempts of 1 s, 1 s + 2 s backoff


def test_a_pyramid_that_is_not_served_is_a_typed_error_not_an_attribute_error(siibra_mirror, fresh_cache):
    from siibra_anchor.adapters.siibra_spaces import fetch_template

    # the real BigBrain space declares only neuroglancer/precomputed; the mirror has no BigBrain pyramid
    with pytest.raises(SpaceUnavailableError, match="bigbrain"):
        fetch_template("bigbrain", timeout_s=30)


def test_precomputed_resolution_is_one_the_pyramid_has(siibra_mirror):
    from siibra_anchor.adapters.siibra_spaces import feasible_resolution

    tpl = siibra_mirror.spaces.get("colin27").get_template()  # its precomputed info: one 1 mm scale
    assert feasible_resolution(tpl, 0.32) == pytest.approx(1.0)  # 0.32 mm is not feasible: the finest is
    assert feasible_resolution(tpl, 2.0) == pytest.approx(2.0)


def test_colin27_template_comes_from_the_zip_archive_brain_masked_and_cached(ebrains_mirror, siibra_mirror):
    from siibra_anchor.adapters.siibra_spaces import fetch_template

    path = fetch_template("MNI Colin 27", timeout_s=120)
    assert path.name.startswith("colin27-") and path.is_file()
    assert ebrains_mirror.count(COLIN27_ZIP) >= 1 and ebrains_mirror.count("colin27_seg/1mm") == 0  # no chunks
    img = nib.load(str(path))
    assert img.shape == (181, 217, 181) and np.allclose(img.affine, COLIN27_AFFINE)
    head, brain = ebrains_mirror.truth["colin27_head"]()
    got = np.asarray(img.dataobj) > 0
    dice = 2 * (got & brain).sum() / (got.sum() + brain.sum())
    assert dice > 0.95, dice
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~brain)
    scalp = (dist > 7.5) & (dist < 11.5)
    assert head[scalp].mean() > 50 and not got[scalp].any()  # the scalp was there and is gone
    n = len(ebrains_mirror.requests)
    assert fetch_template("colin27") == path and len(ebrains_mirror.requests) == n  # cached: no request
    mask = nib.load(str(path).replace(".nii.gz", "-mask.nii.gz"))
    assert np.asarray(mask.dataobj)[got].all()  # the template is zero outside its stored brain mask


@pytest.mark.slow
def test_anchor_in_colin27_places_a_section_cut_from_the_mni152_family(siibra_mirror):
    from siibra_anchor.simulate import section_error, simulate_section

    ref = sa.Reference.from_space("colin27", n_sections=12, axis="coronal")
    assert ref.space == "colin27" and ref.n_patches > 1000
    sim = simulate_section("fsl-mni152-t1", orientation="coronal", seed=2, spacing_mm=0.4)
    res = sa.anchor(sim.section, space="colin27", reference=ref, seed=0)
    assert res.space == "colin27"
    truth = COLIN27_FROM_MNI152 @ sim.true_affine  # where the section lies in (stand-in) Colin27
    err = section_error(res.affine, truth, sim.section.mask)
    assert err < 4.0, err
    # the same affine read as MNI152 would be off by the MNI152 -> Colin27 difference
    assert section_error(res.affine, sim.true_affine, sim.section.mask) > err


def test_points_are_warped_mni152_to_colin27_through_the_transformation_service(ebrains_mirror, siibra_mirror):
    pc = siibra_mirror.PointCloud([(-10.0, -80.0, 5.0), (30.0, 10.0, 40.0)], space="mni152")
    before = ebrains_mirror.count("transform-points")
    out = pc.warp("colin27")
    assert ebrains_mirror.count("transform-points") == before + 1
    expected = np.c_[np.asarray(pc.coordinates), np.ones(2)] @ COLIN27_FROM_MNI152.T
    assert np.allclose(np.asarray(out.coordinates), expected[:, :3])


def _coronal_result(shape=(60, 80)):
    from siibra_anchor.planes import CANONICAL_PLANES, plane_affine

    r, c = CANONICAL_PLANES["coronal"]
    mask = np.zeros(shape, bool)
    mask[10:50, 10:70] = True
    return sa.AnchoringResult(
        plane_affine((0, -20, 10), r, c, 1.0, shape),
        "mni152",
        1.0,
        section={"name": "s", "shape": list(shape)},
        mask=mask,
    )


def test_transform_to_colin27_fits_the_warped_section_points(ebrains_mirror, siibra_mirror):
    res = _coronal_result()
    before = ebrains_mirror.count("transform-points")
    tr = res.transform.to_space("colin27")
    assert ebrains_mirror.count("transform-points") > before  # went through the service's protocol
    assert tr.space == "colin27" and tr.shape == (60, 80)
    assert tr.fit_residual_mm["rms"] < 1e-6  # the stand-in warp is affine, so the fit is exact
    rows, cols = np.array([0.0, 59.0, 30.0]), np.array([0.0, 79.0, 40.0])
    expected = np.c_[res.to_points(rows, cols), np.ones(3)] @ COLIN27_FROM_MNI152.T
    assert np.allclose(tr.apply(rows, cols), expected[:, :3], atol=1e-6)
    r2, c2, d = tr.inverse(expected[:, :3])
    assert np.allclose(r2, rows, atol=1e-6) and np.allclose(d, 0, atol=1e-6)


def test_to_siibra_in_another_space_gives_objects_all_in_that_space(siibra_mirror):
    res = _coronal_result()
    obj = res.to_siibra(space="colin27")
    names = {obj.space.name, obj.outline.space.name, obj.volume.space.name}
    assert names == {"MNI Colin 27"}
    img = obj.volume.fetch()
    # the volume's affine is the fitted Colin27 transform: its corner pixel lands where the warped corner is
    corner = COLIN27_FROM_MNI152 @ np.r_[res.to_points([0], [0])[0], 1.0]
    assert np.allclose(np.asarray(img.affine)[:3, 3], corner[:3], atol=1e-5)
    here = res.to_siibra()
    assert here.volume.space.name == here.outline.space.name == "MNI 152 ICBM 2009c Nonlinear Asymmetric"


@pytest.mark.parametrize("space", ["mni152", "colin27"])
def test_julich_brain_3_1_regions_through_siibra_in_both_spaces(ebrains_mirror, siibra_mirror, space, monkeypatch):
    from siibra_anchor.adapters import siibra_config
    from siibra_anchor.adapters.regions import load_table, section_region_labels

    from siibra_anchor.planes import CANONICAL_PLANES, pixel_to_world, plane_affine, sample_volume

    r, c = CANONICAL_PLANES["coronal"]
    shape = (120, 160)
    aff = plane_affine((0, -88, 5), r, c, 1.0, shape)  # through the occipital pole in MNI152
    if space == "colin27":
        aff = COLIN27_FROM_MNI152 @ aff  # the same tissue, in (stand-in) Colin27 mm
    res = sa.AnchoringResult(aff, space, 1.0, section={"shape": list(shape)})
    lab, names, source = section_region_labels(res, parcellation="julich", threshold=0.2)
    assert source == "siibra: Julich-Brain Cytoarchitectonic Atlas (v3.1)"
    assert {"Area hOc1 (V1, 17, CalcS) left", "Area hOc2 (V2, 18) right"} <= set(names.values())  # siibra's keys
    # reference: trilinear sampling of the maps the mirror serves for this space, argmax, threshold
    maps = ebrains_mirror.truth[f"{space}_maps"]()
    rr, cc = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    pts = pixel_to_world(aff, rr.ravel(), cc.ravel())
    region_names = [n.replace(" - ", " ").replace(" hemisphere", "") for n in maps["by_region"]]
    probs = np.stack([sample_volume(a, maps["affine"], pts) for a in maps["by_region"].values()])
    best = probs.argmax(axis=0)
    want = np.where(probs.max(axis=0) >= 0.2, best, -1).reshape(shape)
    got_names = np.vectorize(lambda v: names.get(int(v), ""))(lab)
    want_names = np.where(want >= 0, np.array(region_names, dtype=object)[np.maximum(want, 0)], "")
    assert np.mean(got_names == want_names) > 0.99
    # the table is cached: offline, the same name gives the same Julich-Brain maps (not the FSL atlas)
    siibra_config.reset()
    monkeypatch.setenv("SIIBRA_ANCHOR_OFFLINE", "1")
    t = load_table("julich", space, online=False)
    assert t.source == source


def test_bigbrain_sections_come_as_sections_with_their_affine(ebrains_mirror, siibra_mirror):
    from ebrains_mirror.mirror import BIGBRAIN_SECTION, BIGBRAIN_SECTION_Y_MM, bigbrain_to_mni
    from siibra_anchor.adapters.siibra_sections import bigbrain_sections

    from siibra_anchor.planes import sample_volume
    from siibra_anchor.templates import load_volume

    pairs = bigbrain_sections(limit=2, resolution_mm=0.32, timeout_s=120)
    assert len(pairs) == 1  # the configuration here declares one section
    sec, aff = pairs[0]
    assert sec.name.startswith("#1001") and sec.modality == "cell body staining"
    assert ebrains_mirror.count(BIGBRAIN_SECTION + "/320um/") > 0 and ebrains_mirror.count("/160um/") == 0
    assert np.allclose(sec.spacing_mm, 0.32)
    # every pixel sits on the plane y = const where the stand-in was cut, and shows what is there
    corners = np.array([[0, 0, 0, 1], [sec.shape[0] - 1, sec.shape[1] - 1, 0, 1]], float) @ aff.T
    # (siibra shifts precomputed voxels by half a voxel of the finest scale: 0.08 mm here)
    assert np.allclose(corners[:, 1], corners[0, 1]) and abs(corners[0, 1] - BIGBRAIN_SECTION_Y_MM) < 0.1
    # the stand-in BigBrain shows the MNI152 template where its (nonlinear) warp to MNI puts each point
    data, vaff = load_volume("mni152")
    rr, cc = np.meshgrid(np.arange(sec.shape[0]), np.arange(sec.shape[1]), indexing="ij")
    world_bb = np.stack([rr.ravel(), cc.ravel(), np.zeros(rr.size), np.ones(rr.size)], 1) @ aff.T
    cut = sample_volume(data, vaff, bigbrain_to_mni(world_bb[:, :3])).reshape(sec.shape[:2])
    cut = cut / cut.max() * 255.0
    inner = (slice(5, -5), slice(5, -5))
    assert np.corrcoef(cut[inner].ravel(), sec.image[inner].ravel())[0, 1] > 0.98
    assert aff[2, 0] < 0 and aff[0, 1] > 0  # rows run superior -> inferior, columns towards +x
    ref = sa.Reference.from_sections(pairs, space="bigbrain", stride_px=8)
    assert ref.space == "bigbrain" and ref.n_patches > 10
    # a resolution finer than the pyramid has is asked at its finest scale, not refused
    finer = bigbrain_sections(limit=1, resolution_mm=0.05, timeout_s=120)
    assert np.allclose(finer[0][0].spacing_mm, 0.16) and ebrains_mirror.count("/160um/") > 0


def test_sections_from_volume_orient_rows_down_and_columns_right():
    """(offline) slabs of any orientation become Sections whose affine reproduces them from the volume."""
    from siibra_anchor.adapters.siibra_sections import section_from_volume

    from siibra_anchor.planes import cut_plane
    from siibra_anchor.templates import load_volume, volume_path

    img = nib.load(str(volume_path("mni152")))
    data, vaff = load_volume("mni152")
    for sl, normal in (
        ((slice(None), slice(100, 101)), 1),
        ((slice(80, 81),), 0),
        ((slice(None), slice(None), slice(90, 91)), 2),
    ):
        sec, aff = section_from_volume(img.slicer[sl])
        assert np.array_equal(cut_plane(data, vaff, aff, sec.shape[:2], order=1), sec.image)
        assert np.allclose(np.abs(aff[:3, 2]), np.eye(3)[normal]) and np.linalg.det(aff) > 0
        down = 1 if normal == 2 else 2
        assert aff[down, 0] < 0  # rows run superior -> inferior (anterior -> posterior for axial)


def test_a_warp_the_service_refuses_is_a_typed_error(ebrains_mirror, siibra_mirror):
    res = _coronal_result(shape=(62, 84))  # points no earlier test warped: siibra's request cache cannot answer
    # a space the service does not know answers HTTP 400
    ebrains_mirror.fail("siibra-spatial-backend.apps.ebrains.eu/v1/transform-points", "400")
    with pytest.raises(SpaceUnavailableError, match="bigbrain"):
        res.transform.to_space("bigbrain", timeout_s=30)
    ebrains_mirror.fail("siibra-spatial-backend.apps.ebrains.eu/v1/transform-points", "404")
    with pytest.raises(SpaceUnavailableError, match="colin27"):
        res.to_siibra(space="colin27", timeout_s=30)


def test_bigbrain_tier_measures_the_anchoring_against_the_services_nonlinear_warp(ebrains_mirror, siibra_mirror):
    """The BigBrain block of the real-anatomy tier, end to end through siibra: the section listed and fetched
    from its precomputed pyramid, its tissue warped BigBrain -> MNI152 by the transformation service, anchored
    in MNI152 in its histological geometry, the error taken against the warp."""
    from ebrains_mirror.mirror import BIGBRAIN_TO_MNI152, BIGBRAIN_WARP_MM, bigbrain_to_mni
    from siibra_anchor.adapters.siibra_sections import bigbrain_sections

    from siibra_anchor.evaluation.bigbrain_tier import (
        affine_of_points,
        bigbrain_truth,
        format_bigbrain_tier,
        run_bigbrain_tier,
        select_bigbrain_sections,
    )

    assert select_bigbrain_sections(5, timeout_s=60) == [next(iter(select_bigbrain_sections(1, timeout_s=60)))]
    ((sec, aff),) = bigbrain_sections(limit=1, resolution_mm=0.64, timeout_s=120)
    before = ebrains_mirror.count("transform-points")
    rc, xyz = bigbrain_truth(sec, aff, timeout_s=60)
    assert ebrains_mirror.count("transform-points") > before and len(rc) > 1000  # > 1000 points: several requests
    bb = rc @ aff[:3, :2].T + aff[:3, 3]
    np.testing.assert_allclose(xyz, bigbrain_to_mni(bb), atol=1e-6)  # the service's answer, point for point
    assert np.all(sec.mask[rc[:, 0].astype(int), rc[:, 1].astype(int)])
    fit, resid = affine_of_points(rc, xyz)
    # the warp is not affine; its displacement is at most BIGBRAIN_WARP_MM along each axis
    assert 0.2 < resid.mean() < BIGBRAIN_WARP_MM * np.sqrt(3)

    rep = run_bigbrain_tier(n=4, resolution_mm=0.64, timeout_s=120)
    assert rep["n"] == 1  # the mirror's configuration declares one section
    (c,) = rep["cases"]
    assert c["number"] == 1001 and c["flipped_hint"] is False and c["hemisphere_hint"] is None
    # a coronal section: rows run along z (BigBrain shrunk 1.44 against MNI), columns along x (1.12)
    assert c["truth_scale"] == pytest.approx([BIGBRAIN_TO_MNI152[2, 2], BIGBRAIN_TO_MNI152[0, 0]], abs=0.03)
    assert c["affine_floor_mm"] == pytest.approx(rep["affine_floor_mm"]) and c["affine_floor_mm"] > 0.2
    # the stand-in shows the template itself: the anchoring finds it, stretched unevenly as the truth is
    assert c["default_error_mm"] < 3.5 and c["default_confidence"] > 0.5
    rows_scale, cols_scale = c["default_scale"]
    # z's 1.44 is reached: the prior bounds the mean scale, not each axis (it clipped rows to 1.40 before)
    assert rows_scale > 1.41 and rows_scale / cols_scale > 1.2
    assert c["raw_pixel_error_mm"] is not None and rep["raw_pixel"]["n"] == 1
    text = format_bigbrain_tier(rep)
    assert "| #1001 |" in text and "affine floor" in text and "nonlinear" in text

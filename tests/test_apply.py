"""Applying an anchoring at full resolution: the section's pixels written at their world positions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import zarr

import siibra_anchor as sa
from siibra_anchor.cli import main
from siibra_anchor.errors import FileFormatError, InvalidSectionError, SpacingError
from siibra_anchor.io.apply import full_resolution_affine, resample_to_space
from siibra_anchor.io.formats import write_ome_zarr
from siibra_anchor.planes import cut_plane, plane_affine, sample_volume
from siibra_anchor.result import AnchoringResult
from siibra_anchor.templates import load_volume

H = 480  # full-resolution pixels across, 0.25 mm/px -> 120 mm


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    """A tilted, rotated section cut from the MNI152 template at 0.25 mm/px, stored as a 3-level OME-Zarr,
    and the result of 'anchoring' its 4x reduced copy with the true affine."""
    vol, vaff = load_volume("mni152")
    a_full = plane_affine([2.0, -10.0, 8.0], [0.1, 0.2, -1.0], [1.0, 0.05, 0.1], 0.25, (H, H), thickness_mm=0.25)
    img = cut_plane(vol, vaff, a_full, (H, H))
    path = write_ome_zarr(tmp_path_factory.mktemp("apply") / "sec.ome.zarr", img, 0.25, levels=3, chunks=128)
    sec = sa.Section.from_file(path, target_spacing_mm=1.0, reduce=True)
    m = np.eye(4)
    m[0, 0] = m[1, 1] = 4.0
    m[0, 3] = m[1, 3] = 1.5  # reduced pixel i is the mean of full-res pixels 4i .. 4i+3
    res = AnchoringResult(affine=a_full @ m, space="mni152", confidence=1.0, section={"shape": list(sec.shape)})
    return {"vol": vol, "vaff": vaff, "a_full": a_full, "img": img, "path": path, "sec": sec, "res": res}


def test_full_resolution_affine_inverts_block_reduction(cut):
    np.testing.assert_allclose(full_resolution_affine(cut["res"].affine, (4, 4)), cut["a_full"], atol=1e-12)


@pytest.mark.parametrize("source", ["section", "path"])
def test_section_grid_is_the_full_resolution_image_with_its_affine(cut, tmp_path, source):
    src = cut["sec"] if source == "section" else str(cut["path"])
    assert cut["sec"].shape == (120, 120) and cut["sec"].downsample == (4.0, 4.0)
    out = resample_to_space(cut["res"], src, tmp_path / "full.nii.gz", grid="section")
    img = nib.load(out)
    data = np.asarray(img.dataobj)
    assert data.shape == (H, H, 1) and data.dtype == np.float32
    np.testing.assert_allclose(data[..., 0], cut["img"], atol=1e-5)
    np.testing.assert_allclose(img.affine[:3, [0, 1, 3]], cut["a_full"][:3, [0, 1, 3]], atol=1e-4)
    # coarser output: block means of the full-resolution pixels, centred where the convention says
    out = resample_to_space(cut["res"], src, tmp_path / "half.nii", spacing_mm=0.5, grid="section")
    half = nib.load(out)
    ref = cut["img"].reshape(H // 2, 2, H // 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(np.asarray(half.dataobj)[..., 0], ref, atol=1e-4)
    np.testing.assert_allclose(
        half.affine[:3, [0, 1, 3]], full_resolution_affine(cut["a_full"], (0.5, 0.5))[:3, [0, 1, 3]], atol=1e-4
    )


def _written(volume, affine, cut):
    """World points of the written voxels, their values, the template there and on the plane."""
    ijk = np.argwhere(volume != 0)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    a = cut["a_full"]
    n = np.cross(a[:3, 0], a[:3, 1])
    n /= np.linalg.norm(n)
    d = (xyz - a[:3, 3]) @ n
    on_plane = xyz - d[:, None] * n
    vals = volume[volume != 0]
    return d, vals, sample_volume(cut["vol"], cut["vaff"], xyz), sample_volume(cut["vol"], cut["vaff"], on_plane)


def test_reference_grid_agrees_with_the_template_where_the_section_is(cut, tmp_path):
    out = resample_to_space(cut["res"], cut["sec"], tmp_path / "ref.nii.gz", grid="reference")
    img = nib.load(out)
    vol = np.asarray(img.dataobj)
    assert vol.shape == cut["vol"].shape
    np.testing.assert_allclose(img.affine, cut["vaff"], atol=1e-6)
    d, vals, templ, plane = _written(vol, img.affine, cut)
    assert len(vals) > 5000  # ~ the section's 120 x 120 mm at 1 mm voxels, minus background
    assert np.abs(d).max() <= 0.5 * np.sqrt(3) + 1e-6  # only voxels the plane crosses
    assert np.corrcoef(vals, templ)[0, 1] > 0.97
    assert np.corrcoef(vals, plane)[0, 1] > 0.98
    rng = float(np.ptp(cut["img"]))
    assert np.median(np.abs(vals - plane)) < 0.02 * rng


def test_default_nifti_overlays_on_the_template_with_nilearn(cut, tmp_path):
    """The default NIfTI output is on the template grid with sform/qform code 4 (MNI152); nilearn's
    resample_to_img onto the template keeps the section where the plane is. The oblique section grid does not."""
    from nilearn.image import resample_to_img

    from siibra_anchor.templates import volume_path

    out = resample_to_space(cut["res"], cut["sec"], tmp_path / "default.nii.gz")
    img = nib.load(out)
    assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4
    template = nib.load(volume_path("mni152"))
    on = resample_to_img(img, template, interpolation="nearest", force_resample=True, copy_header=True)
    vol = np.asarray(on.dataobj)
    assert vol.shape == template.shape
    d, vals, templ, plane = _written(vol, on.affine, cut)
    assert len(vals) > 5000  # the overlay is not empty ...
    assert np.abs(d).max() <= 0.5 * np.sqrt(3) + 1e-6  # ... it is on the plane ...
    assert np.corrcoef(vals, templ)[0, 1] > 0.97  # ... and shows the template's anatomy there
    oblique = resample_to_space(cut["res"], cut["sec"], tmp_path / "oblique.nii.gz", grid="section", spacing_mm=1.0)
    lost = resample_to_img(
        nib.load(oblique), template, interpolation="continuous", force_resample=True, copy_header=True
    )
    assert np.count_nonzero(np.asarray(lost.dataobj)) < 0.05 * len(vals)


def test_xform_codes_and_templates_of_other_spaces(cut, tmp_path):
    from siibra_anchor.errors import SpaceUnavailableError
    from siibra_anchor.templates import volume_path

    custom = AnchoringResult(cut["res"].affine, "custom:mine", 1.0, section=cut["res"].section)
    out = resample_to_space(custom, cut["sec"], tmp_path / "c.nii.gz", template=volume_path("mni152"))
    img = nib.load(out)
    assert img.shape == cut["vol"].shape and int(img.header["sform_code"]) == 2
    colin = AnchoringResult(cut["res"].affine, "colin27", 1.0, section=cut["res"].section)
    with pytest.raises(SpaceUnavailableError, match="template"):
        resample_to_space(colin, cut["sec"], tmp_path / "x.nii.gz", grid="reference")
    world = nib.load(resample_to_space(colin, cut["sec"], tmp_path / "w.nii.gz", spacing_mm=2.0))
    assert int(world.header["qform_code"]) == 5 and np.allclose(np.diag(world.affine)[:3], 2.0)


def test_world_grid_ome_zarr_matches_nifti_and_stores_only_crossed_chunks(cut, tmp_path):
    z = resample_to_space(cut["res"], cut["path"], tmp_path / "w.ome.zarr", spacing_mm=0.5, chunk=32)
    n = resample_to_space(cut["res"], cut["path"], tmp_path / "w.nii", spacing_mm=0.5, grid="world", chunk=32)
    g = zarr.open_group(str(z), mode="r")
    ms = g.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    scale, trans = (t for t in ms["datasets"][0]["coordinateTransformations"])
    arr = np.asarray(g["0"]).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    nii = nib.load(n)
    np.testing.assert_array_equal(arr, np.asarray(nii.dataobj))
    np.testing.assert_allclose(scale["scale"], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(trans["translation"][::-1], nii.affine[:3, 3])
    d, vals, templ, plane = _written(arr, nii.affine, cut)
    assert np.corrcoef(vals, plane)[0, 1] > 0.995
    stored = sum(1 for p in (z / "0").rglob("*") if p.is_file() and not p.name.startswith("."))
    total = int(np.prod([int(np.ceil(s / 32)) for s in arr.shape]))
    assert 0 < stored < total / 2


def test_apply_errors(cut, tmp_path):
    res = cut["res"]
    with pytest.raises(FileFormatError, match="oblique"):
        resample_to_space(res, cut["sec"], tmp_path / "x.zarr", grid="section")
    with pytest.raises(FileFormatError, match=".nii"):
        resample_to_space(res, cut["sec"], tmp_path / "x.tif", format="nifti")
    with pytest.raises(SpacingError, match="spacing_mm"):
        resample_to_space(res, cut["sec"], tmp_path / "x.nii", spacing_mm=-1.0)
    small = sa.Section(cut["img"][:100, :100], 0.25)
    with pytest.raises(InvalidSectionError, match="anchored"):
        resample_to_space(res, small, tmp_path / "x.nii")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_apply(cut, tmp_path, capsys):
    rj = cut["res"].save(tmp_path / "r.anchor.json")
    out = tmp_path / "cli.nii.gz"
    assert (
        main(["apply", str(rj), str(cut["path"]), "--out", str(out), "--spacing-mm", "1.0", "--grid", "section"]) == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert nib.load(out).shape == (H // 4, H // 4, 1)
    assert main(["apply", str(rj), str(tmp_path / "missing.zarr"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err

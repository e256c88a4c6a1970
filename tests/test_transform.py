"""SectionTransform (siibra_anchor/transform.py) and what results keep: the transform, the tissue mask and
the pixel grid, through save/load; old result files still load."""

from __future__ import annotations

import json

import numpy as np
import pytest

import siibra_anchor as sa
from siibra_anchor.errors import CorruptFileError, InvalidParameterError
from siibra_anchor.planes import CANONICAL_PLANES, plane_affine
from siibra_anchor.result import decode_mask, encode_mask
from siibra_anchor.transform import SectionTransform, fit_section_affine


def _tilted(shape=(40, 60)):
    r, c = CANONICAL_PLANES["coronal"]
    rot = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    return plane_affine((3.0, -20.0, 10.0), rot @ np.asarray(r), rot @ np.asarray(c), 0.5, shape)


def test_apply_and_inverse_agree_with_plain_matrix_algebra():
    aff = _tilted()
    tr = SectionTransform(aff, "mni152", (40, 60))
    rng = np.random.default_rng(0)
    rows, cols = rng.uniform(0, 39, 50), rng.uniform(0, 59, 50)
    pts = tr.apply(rows, cols)
    ref = (aff @ np.c_[rows, cols, np.zeros(50), np.ones(50)].T).T[:, :3]  # the DESIGN.md convention
    assert np.allclose(pts, ref)
    normal = aff[:3, 2] / np.linalg.norm(aff[:3, 2])
    off = rng.uniform(-3, 3, 50)
    r2, c2, d = tr.inverse(pts + off[:, None] * normal)
    assert np.allclose(r2, rows) and np.allclose(c2, cols) and np.allclose(d, off)


def test_fit_recovers_an_affine_and_reports_its_residual():
    aff = _tilted()
    tr = SectionTransform(aff, "mni152", (40, 60))
    rows, cols = tr.grid_pixels(5)
    fit, resid = fit_section_affine(rows, cols, tr.apply(rows, cols), float(np.linalg.norm(aff[:3, 2])))
    assert np.allclose(fit, aff) and resid.max() < 1e-9
    bent = tr.apply(rows, cols) + np.c_[np.zeros(25), np.zeros(25), 0.01 * (rows - 20) ** 2]  # not affine
    _, resid = fit_section_affine(rows, cols, bent)
    assert resid.max() > 0.1
    with pytest.raises(InvalidParameterError):
        fit_section_affine([0, 1, 2], [0, 1, 2], np.zeros((3, 3)))  # collinear pixels


def test_transform_round_trips_through_json():
    tr = SectionTransform(_tilted(), "colin27", (40, 60), {"file": "/x.tif", "reduction": [4.0, 4.0]}, {"rms": 0.1})
    back = SectionTransform.from_dict(json.loads(json.dumps(tr.to_dict())))
    assert np.array_equal(back.matrix, tr.matrix) and back.space == "colin27" and back.shape == (40, 60)
    assert back.pixel_grid["reduction"] == [4.0, 4.0] and back.fit_residual_mm == {"rms": 0.1}
    with pytest.raises(InvalidParameterError):
        SectionTransform(np.zeros((4, 4)), "mni152")


def test_masks_compress_and_come_back_exactly():
    rng = np.random.default_rng(1)
    m = rng.random((37, 53)) > 0.6
    d = encode_mask(m)
    assert np.array_equal(decode_mask(json.loads(json.dumps(d))), m)
    big = np.zeros((2000, 2000), bool)
    big[300:1700, 200:1800] = True
    assert len(encode_mask(big)["data"]) < 10_000  # 4 Mpx of tissue mask in a few kB
    with pytest.raises(CorruptFileError):
        decode_mask({**d, "data": "!!"})


def test_results_keep_mask_and_pixel_grid_and_old_files_still_load(tmp_path):
    aff = _tilted()
    mask = np.zeros((40, 60), bool)
    mask[5:30, 10:50] = True
    res = sa.AnchoringResult(
        aff,
        "mni152",
        0.7,
        section={"name": "s", "shape": [40, 60]},
        mask=mask,
        pixel_grid={"file": "/data/s.tif", "reduction": [8.0, 8.0]},
    )
    back = sa.AnchoringResult.load(res.save(tmp_path / "r.json"))
    assert np.array_equal(back.mask, mask) and back.pixel_grid == res.pixel_grid
    assert back.transform.pixel_grid["reduction"] == [8.0, 8.0] and back.transform.shape == (40, 60)
    assert np.allclose(back.transform.apply([3], [4]), res.to_points([3], [4]))
    old = res.to_dict()
    del old["tissue_mask"], old["pixel_grid"]  # a file written before these fields existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    prev = sa.AnchoringResult.load(tmp_path / "old.json")
    assert prev.mask is None and prev.pixel_grid == {} and np.array_equal(prev.affine, aff)
    bad = {**res.to_dict(), "tissue_mask": encode_mask(np.ones((3, 3), bool))}
    with pytest.raises(CorruptFileError, match="tissue mask"):
        sa.AnchoringResult.from_dict(bad)


def test_regions_of_a_loaded_result_count_only_its_tissue(tmp_path):
    r, c = CANONICAL_PLANES["coronal"]
    shape = (120, 160)
    mask = np.zeros(shape, bool)
    mask[:, :80] = True  # only the left half of the image is tissue
    res = sa.AnchoringResult(
        plane_affine((0, -88, 5), r, c, 1.0, shape), "mni152", 1.0, section={"shape": list(shape)}, mask=mask
    )
    back = sa.AnchoringResult.load(res.save(tmp_path / "r.json"))
    df = back.assign_regions(parcellation="fsl-juelich", online=False)
    full = sa.AnchoringResult(res.affine, "mni152", 1.0, section={"shape": list(shape)})
    df_all = full.assign_regions(parcellation="fsl-juelich", online=False)
    assert df.attrs["tissue_area_mm2"] == pytest.approx(mask.sum() * 1.0)
    assert df["pixels"].sum() < df_all["pixels"].sum()


def test_cli_regions_counts_only_the_tissue_saved_with_the_result(tmp_path):
    import subprocess
    import sys

    r, c = CANONICAL_PLANES["coronal"]
    shape = (120, 160)
    mask = np.zeros(shape, bool)
    mask[20:100, 10:70] = True
    res = sa.AnchoringResult(
        plane_affine((0, -88, 5), r, c, 1.0, shape), "mni152", 1.0, section={"shape": list(shape)}, mask=mask
    )
    path = res.save(tmp_path / "r.json")
    run = [sys.executable, "-m", "siibra_anchor.cli", "regions", str(path), "--offline", "--parcellation"]
    p = subprocess.run([*run, "fsl-juelich", "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["tissue_area_mm2"] == pytest.approx(float(mask.sum()))  # 1 mm pixels: tissue only
    assert all(not reg["region"].endswith("right") for reg in out["regions"][:3])  # tissue is the left half

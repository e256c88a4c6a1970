"""AnchoringResult: JSON round trip, QuickNII round trip, coordinate convention with nibabel."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import siibra_anchor as sa
from siibra_anchor.errors import CorruptFileError, SchemaVersionError, SectionFileNotFoundError
from siibra_anchor.planes import plane_affine, sample_volume
from siibra_anchor.result import AnchoringResult
from siibra_anchor.templates import load_volume


def _result(h=120, w=90):
    aff = plane_affine([3.5, -17.25, 8.125], [0.1, 0.05, -1.0], [1.0, 0.2, 0.1], 0.4, (h, w))
    rng = np.random.default_rng(0)
    matches = {
        "row": rng.uniform(0, h, 7),
        "col": rng.uniform(0, w, 7),
        "x": rng.normal(size=7),
        "y": rng.normal(size=7),
        "z": rng.normal(size=7),
        "similarity": rng.uniform(size=7),
        "residual_mm": rng.uniform(0, 9, 7),
        "inlier": rng.random(7) > 0.5,
    }
    alt = [{"affine": aff + 0.1, "score": 0.05, "inlier_fraction": 0.2, "label": "other hemisphere"}]
    return AnchoringResult(
        aff,
        "mni152",
        0.83,
        matches=matches,
        alternatives=alt,
        section={"name": "s1", "shape": [h, w], "spacing_mm": [0.4, 0.4], "modality": "t1"},
        diagnostics={"timings": {"total_s": 1.23}},
    )


def test_save_load_round_trips_exactly(tmp_path):
    r = _result()
    p = r.save(tmp_path / "r.anchor.json")
    r2 = AnchoringResult.load(p)
    np.testing.assert_array_equal(r2.affine, r.affine)
    assert r2.confidence == r.confidence and r2.space == r.space
    assert r2.matches.equals(r.matches)
    np.testing.assert_array_equal(np.asarray(r2.alternatives[0]["affine"]), np.asarray(r.alternatives[0]["affine"]))
    assert r2.to_dict() == r.to_dict()


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(SectionFileNotFoundError):
        AnchoringResult.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CorruptFileError):
        AnchoringResult.load(bad)
    d = _result().to_dict()
    d["schema_version"] = 99
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(d))
    with pytest.raises(SchemaVersionError):
        AnchoringResult.load(newer)
    d = _result().to_dict()
    d["affine"] = [[1, 2], [3, 4]]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(d))
    with pytest.raises(CorruptFileError):
        AnchoringResult.load(wrong)
    d = _result().to_dict()
    del d["space"]
    (tmp_path / "nospace.json").write_text(json.dumps(d))
    with pytest.raises(CorruptFileError):
        AnchoringResult.load(tmp_path / "nospace.json")


def test_quicknii_round_trip_and_meaning():
    r = _result(h=120, w=90)
    q = r.to_quicknii()
    o, u, v = np.split(np.asarray(q["anchoring"]), 3)
    # QuickNII: pixel centre (row, col) at o + (col + .5)/W u + (row + .5)/H v
    for row, col in [(0, 0), (119, 89), (17, 63)]:
        want = r.to_points([row], [col])[0]
        got = o + (col + 0.5) / q["width"] * u + (row + 0.5) / q["height"] * v
        np.testing.assert_allclose(got, want, atol=1e-9)
    back = AnchoringResult.affine_from_quicknii(
        q["anchoring"], q["width"], q["height"], thickness_mm=float(np.linalg.norm(r.affine[:3, 2]))
    )
    np.testing.assert_allclose(back, r.affine, atol=1e-9)


def test_affine_places_section_like_nibabel():
    """nibabel.Nifti1Image(image[..., None], result.affine) puts each pixel where to_points says,
    and resampling the template through the affine reproduces a section cut with the same affine."""
    data, vaff = load_volume("mni152")
    r = _result(h=60, w=50)
    img = nib.Nifti1Image(np.zeros((60, 50, 1), np.float32), r.affine)
    for row, col in [(0, 0), (59, 49), (30, 7)]:
        np.testing.assert_allclose(nib.affines.apply_affine(img.affine, [row, col, 0]), r.to_points([row], [col])[0])
    # third column: unit normal x thickness, positive determinant
    n = np.cross(r.affine[:3, 0], r.affine[:3, 1])
    np.testing.assert_allclose(r.affine[:3, 2] / np.linalg.norm(r.affine[:3, 2]), n / np.linalg.norm(n))
    assert np.linalg.det(r.affine) > 0
    # a voxel sampled at a pixel's world position equals the template value there
    p = r.to_points([10], [20])[0]
    ijk = np.linalg.inv(vaff) @ np.r_[p, 1]
    assert sample_volume(data, vaff, p[None])[0] == pytest.approx(
        float(__import__("scipy").ndimage.map_coordinates(data, ijk[:3, None], order=1)[0]), rel=1e-5
    )


def test_summary_mentions_space_and_confidence():
    s = _result().summary()
    assert "mni152" in s and "0.83" in s


@pytest.mark.parametrize("spacing", ["\U0010a98e", {"a": 1}, [[1, 2], [3]], None, [0.5, 0.5]])
def test_summary_of_a_loaded_result_with_any_stated_spacing(spacing):
    """A result read back from a file may hold anything as its stated spacing (the reliability fuzzing
    found an untyped error here): the summary still prints, with the scale line only for a valid one."""
    d = _result().to_dict()
    d["section"]["spacing_mm"] = spacing
    s = AnchoringResult.from_dict(json.loads(json.dumps(d))).summary()
    assert "confidence  0.83" in s and (("anisotropy" in s) == (spacing == [0.5, 0.5]))


def test_public_api_names():
    for name in ("Section", "Reference", "AnchoringResult", "anchor", "anchor_series", "errors"):
        assert hasattr(sa, name)


def test_ambiguity_names_the_hint_that_settles_it():
    r = _result()
    r.diagnostics.update({"nmi_gain": 0.20, "hemisphere": None, "flipped": None})
    r.alternatives[0]["score"] = 0.19  # the other hemisphere scores almost as well
    amb = r.ambiguity()
    assert amb is not None and "hemisphere='left' or 'right'" in amb and "--hemisphere" in amb
    assert "AMBIGUOUS" in r.summary()
    r.alternatives[0]["score"] = 0.10  # clearly worse: not ambiguous
    assert r.ambiguity() is None and "AMBIGUOUS" not in r.summary()
    r.alternatives[0].update(score=0.195, label="mirrored / reversed normal")
    assert "--not-flipped" in (r.ambiguity() or "")
    r.diagnostics["flipped"] = False  # the hint was given: what is left is a generic warning
    amb = r.ambiguity()
    assert amb is not None and "flipped" not in amb and "mm away" in amb
    r.diagnostics.pop("nmi_gain")  # without a score there is nothing to compare
    assert r.ambiguity() is None

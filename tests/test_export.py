"""CSV tables (siibra_anchor.io.tables) and the ``export`` command (siibra_anchor.cli.export)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import siibra_anchor as sa
from siibra_anchor.cli import main as cli_main
from siibra_anchor.io.tables import matches_table, points_table
from siibra_anchor.planes import section_affine
from siibra_anchor.result import AnchoringResult


def main(args):
    """``siibra-anchor export ARGS``."""
    return cli_main(["export", *args])


def _axial(name="brain_s004", z=2.0, n_matches=5):
    """An axial section at z mm, 1 mm/px: pixel (row, col) -> (col - 100, row - 120, z)."""
    aff = section_affine([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]], [-100.0, -120.0, z], 1.0)
    rng = np.random.default_rng(1)
    m = {c: rng.uniform(0, 100, n_matches) for c in ("row", "col", "x", "y", "z", "similarity", "residual_mm")}
    m["inlier"] = rng.random(n_matches) > 0.5
    return AnchoringResult(
        aff, "mni152", 0.8, matches=m, section={"name": name, "shape": [180, 200], "spacing_mm": [1.0, 1.0]}
    )


def test_points_table_places_pixels_and_names_regions():
    r = _axial()
    df = points_table(r, rows=[28, 140, 0], cols=[92, 140, 0], parcellation="fsl-juelich")
    np.testing.assert_allclose(df[["x_mm", "y_mm", "z_mm"]].to_numpy(), [[-8, -92, 2], [40, 20, 2], [-100, -120, 2]])
    np.testing.assert_allclose(df[["x_mm", "y_mm", "z_mm"]].to_numpy(), r.to_points(df.row, df.col))
    assert "V1" in df.region[0] and "left" in df.region[0] and df.probability[0] > 0.5
    assert df.region[2] == "" and df.probability[2] == 0  # outside the brain
    assert list(df.columns[:6]) == ["section", "row", "col", "x_mm", "y_mm", "z_mm"]


def test_points_grid_default_and_mask():
    r = _axial()
    df = points_table(r)
    assert df.row.min() >= 0 and df.row.max() <= 179 and df.col.max() <= 199
    assert len(df) == 45 * 50 and set(np.diff(np.unique(df.col))) == {4}  # step ceil(200 / 64) = 4 px
    mask = np.zeros((180, 200), bool)
    mask[:90] = True
    r.mask = mask
    half = points_table(r)
    assert 0 < len(half) < len(df) and half.row.max() < 90


def test_matches_table_keeps_every_match_of_every_result():
    a, b = _axial("a", n_matches=5), _axial("b", n_matches=3)
    df = matches_table([a, b])
    assert list(df.section) == ["a"] * 5 + ["b"] * 3
    pd.testing.assert_frame_equal(df[df.section == "b"].drop(columns="section").reset_index(drop=True), b.matches)


def _explorer_point_nm(js):
    """siibra-explorer's Point.fromSANDS, in Python: (space id, (3,) nm) of a SANDS point, or an error."""
    if js["@type"] != "https://openminds.ebrains.eu/sands/CoordinatePoint":
        raise ValueError(js["@type"])
    vals = []
    for c in js["coordinates"]:
        if c["unit"]["@id"] != "id.link/mm":
            raise ValueError("Unit does not parse")
        vals.append(c["value"] * 1e6)
    return js["coordinateSpace"]["@id"], np.array(vals)


def test_explorer_annotations_are_sands_points_in_the_space(tmp_path):
    import zipfile

    from siibra_anchor.errors import InvalidParameterError
    from siibra_anchor.io.explorer import write_explorer_annotations
    from siibra_anchor.spaces import SPACE_IDS

    r = _axial(n_matches=6)
    path = write_explorer_annotations(r, tmp_path / "ann.zip")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        got = [_explorer_point_nm(json.loads(z.read(n))) for n in names]
    n_in = int(r.matches["inlier"].sum())
    assert len(names) == 5 + n_in and all(n.endswith(".sands.json") for n in names)
    assert {sid for sid, _ in got} == {SPACE_IDS["mni152"]}
    pts_mm = np.array([p for _, p in got]) / 1e6
    want = r.to_points([-0.5, -0.5, 179.5, 179.5, 89.5], [-0.5, 199.5, 199.5, -0.5, 99.5])
    np.testing.assert_allclose(pts_mm[:5], want)
    inl = r.matches[r.matches.inlier]
    np.testing.assert_allclose(pts_mm[5:], r.to_points(inl.row, inl.col))
    custom = AnchoringResult(r.affine, "custom:x", 0.5, section=r.section)
    with pytest.raises(InvalidParameterError, match="siibra-explorer"):
        write_explorer_annotations(custom, tmp_path / "c.zip")
    assert not (tmp_path / "c.zip").exists()


def test_cli_export_writes_quint_xml_points_matches(tmp_path, capsys):
    paths = [_axial("x_s002").save(tmp_path / "a.json"), _axial("x_s001", z=-4.0).save(tmp_path / "b.json")]
    rc = main(
        [
            *map(str, paths),
            "--quint",
            str(tmp_path / "series.json"),
            "--xml",
            "--points",
            str(tmp_path / "points.csv"),
            "--step",
            "20",
            "--matches",
            str(tmp_path / "matches.csv"),
            "--explorer",
            str(tmp_path / "ann.zip"),
        ]
    )
    assert rc == 0
    series = json.loads((tmp_path / "series.json").read_text())
    assert [s["filename"] for s in series["slices"]] == ["x_s002.png", "x_s001.png"]
    assert [s["nr"] for s in series["slices"]] == [2, 1] and series["name"] == "series"
    back = sa.import_quint(tmp_path / "series.xml", thickness_mm=1.0)
    np.testing.assert_allclose(back[1].affine, AnchoringResult.load(paths[1]).affine, atol=1e-9)
    pts = pd.read_csv(tmp_path / "points.csv")
    assert set(pts.section) == {"x_s002", "x_s001"} and len(pts) == 2 * 9 * 10
    assert np.allclose(pts.z_mm[pts.section == "x_s001"], -4.0)
    assert len(pd.read_csv(tmp_path / "matches.csv")) == 10
    import zipfile

    with zipfile.ZipFile(tmp_path / "ann.zip") as z:
        assert len(z.namelist()) == 2 * 5 + sum(AnchoringResult.load(p).matches.inlier.sum() for p in paths)
    assert "series.json" in capsys.readouterr().out


def test_cli_export_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    good = _axial().save(tmp_path / "a.json")
    assert main([str(good)]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json"), "--matches", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("siibra-anchor: error:") and err.count("\n") == 1 and "missing.json" in err
    assert main([str(good), "--xml", "--points", str(tmp_path / "p.csv")]) == 2
    colin = AnchoringResult(np.eye(4), "colin27", 0.5, section={"name": "c", "shape": [10, 10]})
    assert main([str(colin.save(tmp_path / "c.json")), "--quint", str(tmp_path / "s.json")]) == 2
    assert "target" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "s.json").exists()
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2

"""Neuroglancer viewer: state JSON against the affine, precomputed writer, and a real headless render."""

from __future__ import annotations

import json
import os
import time
import urllib.parse

import numpy as np
import pytest
from conftest import chromium_missing

ng = pytest.importorskip("neuroglancer")

from siibra_anchor.viewer.state import (  # noqa: E402
    EBRAINS_PREFIX,
    MNI152_2009C_AFFINE,
    build_state,
    fetch_precomputed_affine,
    precomputed_affine,
    result_url,
    section_orientation,
    transform_json,
)

from siibra_anchor.result import AnchoringResult  # noqa: E402

H, W, SP = 100, 160, 0.5  # section pixels and spacing (mm)


def _rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    a, b, c = np.radians([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _oblique_result(center=(8.0, -20.0, 6.0), n_matches: int = 12, h: int = H, w: int = W, sp: float = SP):
    """Coronal-ish oblique section: rows go down (-z), columns go right (+x), then rotated."""
    base = np.stack([[0, 0, -1], [1, 0, 0], [0, 1, 0]], axis=1).astype(float)
    rot = _rotation(8.0, -12.0, 25.0) @ base
    a = np.eye(4)
    a[:3, 0] = rot[:, 0] * sp
    a[:3, 1] = rot[:, 1] * sp
    a[:3, 2] = np.cross(rot[:, 0], rot[:, 1]) * sp
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0, 0.0])
    a[:3, 3] = np.asarray(center) - a[:3, :3] @ c
    rng = np.random.default_rng(0)
    rows, cols = rng.uniform(0, h - 1, n_matches), rng.uniform(0, w - 1, n_matches)
    pts = (a @ np.stack([rows, cols, np.zeros(n_matches), np.ones(n_matches)]))[:3].T
    matches = {
        "row": rows,
        "col": cols,
        "x": pts[:, 0],
        "y": pts[:, 1],
        "z": pts[:, 2],
        "similarity": rng.uniform(0.5, 1, n_matches),
        "residual_mm": np.zeros(n_matches),
        "inlier": np.arange(n_matches) % 3 != 0,
    }
    return AnchoringResult(
        a,
        "mni152",
        0.9,
        matches=matches,
        section={"name": "test-section", "shape": [h, w], "spacing_mm": [sp, sp], "modality": "nissl"},
    )


def _quat_to_matrix(q) -> np.ndarray:
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _layer(js: dict, name: str) -> dict:
    for layer in js["layers"]:
        if layer["name"] == name:
            return layer
    raise AssertionError(f"no layer {name!r} in {[la['name'] for la in js['layers']]}")


def test_section_corners_map_where_the_affine_says():
    res = _oblique_result()
    js = build_state(res, section_source="precomputed://http://127.0.0.1:1/data/section").to_json()
    js = json.loads(json.dumps(js))  # exactly what a link carries
    src = _layer(js, "test-section")["source"][0]
    tr = src["transform"]
    assert list(tr["outputDimensions"]) == ["x", "y", "z"]
    assert all(v == [0.001, "m"] for v in tr["outputDimensions"].values())
    assert all(v == [0.001, "m"] for v in tr["inputDimensions"].values())  # 1 mm index unit, as written
    m = np.asarray(tr["matrix"], dtype=np.float64)
    assert m.shape == (3, 4)
    for r, c in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]:
        # precomputed voxel (x=r, y=c, z=0) has its centre at (r + 0.5, c + 0.5, 0.5)
        got = m @ np.array([r + 0.5, c + 0.5, 0.5, 1.0])
        want = (res.affine @ np.array([r, c, 0.0, 1.0]))[:3]
        np.testing.assert_allclose(got, want, atol=1e-9)
    # the view: centred on the section, cross-section in its plane (right = columns, down = rows)
    center = (res.affine @ np.array([(H - 1) / 2, (W - 1) / 2, 0, 1]))[:3]
    np.testing.assert_allclose(js["position"], center, atol=1e-4)
    rot = _quat_to_matrix(js["crossSectionOrientation"])
    np.testing.assert_allclose(rot[:, 0], res.affine[:3, 1] / SP, atol=1e-5)
    np.testing.assert_allclose(rot[:, 1], res.affine[:3, 0] / SP, atol=1e-5)
    r2, _ = section_orientation(res.affine)
    np.testing.assert_allclose(r2, rot, atol=1e-5)


def test_template_transform_and_annotations():
    res = _oblique_result()
    tpl_aff = np.array([[1.0, 0, 0, -96], [0, 1, 0, -132], [0, 0, 1, -78], [0, 0, 0, 1]])
    js = build_state(res, template_source=("precomputed://http://x/t", tpl_aff)).to_json()
    m = np.asarray(_layer(js, "template")["source"][0]["transform"]["matrix"])
    for ijk in [(0, 0, 0), (192, 228, 192), (96, 132, 78)]:
        np.testing.assert_allclose(m @ np.r_[np.add(ijk, 0.5), 1], (tpl_aff @ np.r_[ijk, 1])[:3])
    outline = _layer(js, "section outline")
    lines = [a for a in outline["annotations"] if a["type"] == "line"]
    assert len(lines) == 4
    corner = (res.affine @ np.array([-0.5, -0.5, 0, 1]))[:3]
    np.testing.assert_allclose(lines[0]["pointA"], corner, atol=1e-4)
    inl, outl = _layer(js, "matches (inliers)"), _layer(js, "matches (outliers)")
    assert inl["annotationColor"] != outl["annotationColor"]
    n_in = int(res.matches["inlier"].sum())
    assert sum(a["type"] == "point" for a in inl["annotations"]) == n_in
    assert sum(a["type"] == "point" for a in outl["annotations"]) == len(res.matches) - n_in
    p0 = next(a for a in inl["annotations"] if a["type"] == "point")
    i = int(p0["id"][1:])
    want = res.to_points([res.matches["row"].iat[i]], [res.matches["col"].iat[i]])[0]
    np.testing.assert_allclose(p0["point"], want, atol=2e-3)


def test_result_url_is_a_pure_link():
    res = _oblique_result()
    url = res.neuroglancer_url()
    assert url.startswith(EBRAINS_PREFIX + "#!")
    js = json.loads(urllib.parse.unquote(url.split("#!", 1)[1]))
    names = [la["name"] for la in js["layers"]]
    assert names[0] == "template" and "section outline" in names
    assert "neuroglancer.humanbrainproject.eu/precomputed" in js["layers"][0]["source"][0]["url"]
    assert result_url(res, prefix="http://127.0.0.1:9/", matches=False).startswith("http://127.0.0.1:9/#!")
    from siibra_anchor.errors import AnchorError

    with pytest.raises(AnchorError):
        result_url(res, prefix="ftp://x")
    with pytest.raises(ValueError):
        build_state(res, image=np.zeros((H + 1, W)))


def test_default_link_is_short_and_the_state_json_keeps_the_matches(tmp_path):
    res = _oblique_result(n_matches=300)
    url = result_url(res, state_path=tmp_path / "r.ng.json", online=False)
    assert len(url) < 8000
    js = json.loads(urllib.parse.unquote(url.split("#!", 1)[1]))
    assert not any(la["name"].startswith("matches") for la in js["layers"])
    full = json.loads((tmp_path / "r.ng.json").read_text())
    points = [a for la in full["layers"] if la["name"].startswith("matches") for a in la["annotations"]]
    assert sum(a["type"] == "point" for a in points) == 300  # every patch centre, in the state file
    assert [la["name"] for la in full["layers"]][: len(js["layers"])] == [la["name"] for la in js["layers"]]
    long = result_url(res, inline_matches=True, online=False)
    assert len(long) > 8000 and "matches (inliers)" in urllib.parse.unquote(long)


def test_template_transform_is_read_from_transform_json(tmp_path, monkeypatch):
    """A served precomputed template carries transform.json (EBRAINS convention); the state uses it online and
    the assumed MNI152 grid offline."""
    from siibra_anchor.viewer.serve import serve_result

    monkeypatch.delenv("SIIBRA_ANCHOR_OFFLINE", raising=False)
    monkeypatch.setenv("SIIBRA_ANCHOR_CACHE", os.environ.get("SIIBRA_ANCHOR_CACHE", str(tmp_path / "cache")))
    # the convention, against siibra's shift_ng_transfrom for an axis-aligned volume (translation + half voxel)
    a = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    t = transform_json(a, [2e6, 2e6, 2e6])
    np.testing.assert_allclose(np.asarray(t)[:3, 3], (a[:3, 3] - 1.0) * 1e6)
    np.testing.assert_allclose(precomputed_affine({"scales": [{"resolution": [2e6] * 3}]}, t), a)
    res = _oblique_result(h=4, w=6, sp=12.0)
    with serve_result(res, np.ones((4, 6), np.float32), open_browser=False) as server:
        tpl = server.data_url + "template"
        np.testing.assert_allclose(fetch_precomputed_affine(tpl, timeout_s=10), MNI152_2009C_AFFINE)
        # a template whose transform.json says 2 mm voxels shifted: the layer follows it, not the assumption
        d = server.data_dir / "shifted"
        (d).mkdir()
        info = json.loads((server.data_dir / "template" / "info").read_text())
        info["scales"][0]["resolution"] = [2e6, 2e6, 2e6]
        (d / "info").write_text(json.dumps(info))
        (d / "transform.json").write_text(json.dumps(t))
        js = build_state(res, template_source="precomputed://" + server.data_url + "shifted", online=True).to_json()
        m = np.asarray(_layer(js, "template")["source"][0]["transform"]["matrix"])
        for ijk in [(0, 0, 0), (10, 20, 30)]:
            np.testing.assert_allclose(m @ np.r_[np.add(ijk, 0.5), 1], (a @ np.r_[ijk, 1])[:3])
        off = build_state(res, template_source="precomputed://" + server.data_url + "shifted", online=False)
        m_off = np.asarray(_layer(off.to_json(), "template")["source"][0]["transform"]["matrix"])
        np.testing.assert_allclose(m_off[:, 3], MNI152_2009C_AFFINE[:3, 3] - 0.5)
    assert fetch_precomputed_affine("precomputed://http://127.0.0.1:9/none", timeout_s=2) is None


def test_write_precomputed_roundtrip(tmp_path):
    from siibra_anchor.viewer.serve import write_precomputed

    vol = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    out = write_precomputed(vol, tmp_path / "v", chunk=(4, 4, 2))
    info = json.loads((out / "info").read_text())
    assert info["scales"][0]["size"] == [5, 7, 3]
    chunk = (out / "s0" / "4-5_4-7_2-3").read_bytes()
    got = np.frombuffer(chunk, np.uint8).reshape((1, 3, 1), order="F")
    np.testing.assert_array_equal(got, vol[4:5, 4:7, 2:3])


@pytest.mark.slow
@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
@pytest.mark.parametrize(
    ("h", "w", "sp"),
    [(100, 160, 0.5), (4, 6, 12.0)],  # fine; coarse, where half a pixel off would be 20 screen pixels
    ids=["fine", "coarse"],
)
def test_headless_chromium_draws_the_section_where_it_belongs(tmp_path, monkeypatch, h, w, sp):
    from PIL import Image
    from siibra_anchor.viewer.screenshot import screenshot

    monkeypatch.setenv("SIIBRA_ANCHOR_CACHE", os.environ.get("SIIBRA_ANCHOR_CACHE", str(tmp_path / "cache")))
    res = _oblique_result(h=h, w=w, sp=sp)
    img = np.ones((h, w), np.float32)
    img[: h // 2, : w // 2] = 0.5  # dimmer top-left quadrant: checks orientation, not only position
    vw, vh, margin = 400, 300, 1.25
    t0 = time.monotonic()
    out = screenshot(
        res, img, tmp_path / "s.png", size=(vw, vh), timeout_s=60, value_range=(0.0, 1.0), matches=False, margin=margin
    )
    elapsed = time.monotonic() - t0
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(np.int32)
    assert rgb.shape == (vh, vw, 3)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    tinted = (r - b > 60) & (g < 0.85 * r)  # the orange section (the template is grey, the outline yellow)
    bright = tinted & (r > 200)
    dim = tinted & (r <= 200)
    # view: centred on the section centre (world mm), screen right = columns, down = rows
    mm_per_px = margin * max(h, w) * sp / min(vw, vh)
    exp_w, exp_h = w * sp / mm_per_px, h * sp / mm_per_px  # 240 x 150 px
    ys, xs = np.nonzero(tinted)
    assert tinted.sum() == pytest.approx(exp_w * exp_h, rel=0.06), f"section area {tinted.sum()} px in {out}"
    print(f"{out}: bbox x {xs.min()}..{xs.max()} y {ys.min()}..{ys.max()}, dim {dim.sum()} bright {bright.sum()}")
    assert xs.min() == pytest.approx((vw - exp_w) / 2, abs=4) and xs.max() == pytest.approx((vw + exp_w) / 2, abs=4)
    assert ys.min() == pytest.approx((vh - exp_h) / 2, abs=4) and ys.max() == pytest.approx((vh + exp_h) / 2, abs=4)
    # the dim quadrant is the top-left one, a quarter of the area
    dy, dx = np.nonzero(dim)
    assert dim.sum() == pytest.approx(exp_w * exp_h / 4, rel=0.1)
    assert dx.mean() == pytest.approx(vw / 2 - exp_w / 4, abs=4)
    assert dy.mean() == pytest.approx(vh / 2 - exp_h / 4, abs=4)
    assert bright.sum() == pytest.approx(3 * exp_w * exp_h / 4, rel=0.08)
    # the template is rendered around the section (grey, untinted, not black)
    grey = (np.abs(r - b) < 12) & (np.abs(r - g) < 12) & (r > 40)
    assert grey[~tinted].sum() > 0.05 * vw * vh, "template not visible around the section"
    assert elapsed < 90


def test_serve_result_offline_with_cors(tmp_path, monkeypatch):
    import urllib.request

    from siibra_anchor.viewer.serve import serve_result

    monkeypatch.setenv("SIIBRA_ANCHOR_CACHE", os.environ.get("SIIBRA_ANCHOR_CACHE", str(tmp_path / "cache")))
    res = _oblique_result(h=4, w=6, sp=12.0)
    with serve_result(res, np.ones((4, 6), np.float32), open_browser=False) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.data_url + "section/info", timeout=10) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            info = json.loads(resp.read())
        assert info["scales"][0]["size"] == [4, 6, 1]
        with urllib.request.urlopen(server.data_url + "template/info", timeout=10) as resp:
            assert json.loads(resp.read())["scales"][0]["size"] == [193, 229, 193]
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            assert b"<html" in resp.read().lower()
        js = server.state.to_json()
        urls = [la["source"][0]["url"] for la in js["layers"] if la["type"] == "image"]
        assert all(u.startswith("precomputed://http://127.0.0.1:") for u in urls) and len(urls) == 2
        data_dir = server.data_dir
    assert not data_dir.exists()  # temporary section data removed on stop


@pytest.mark.slow
@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_view_cli_screenshot(tmp_path, monkeypatch):
    import argparse

    from PIL import Image
    from siibra_anchor.viewer.cli import add_view_arguments, view_main

    monkeypatch.setenv("SIIBRA_ANCHOR_CACHE", os.environ.get("SIIBRA_ANCHOR_CACHE", str(tmp_path / "cache")))
    res = _oblique_result(h=8, w=12, sp=6.0)
    res.save(tmp_path / "r.json")
    pix = np.full((8, 12), 250, np.uint8)
    pix[0, 0] = pix[-1, -1] = 150  # not constant; symmetric, so the centroid stays central
    Image.fromarray(pix).save(tmp_path / "s.png")
    parser = add_view_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            str(tmp_path / "r.json"),
            "--image",
            str(tmp_path / "s.png"),
            "--screenshot",
            str(tmp_path / "o.png"),
            "--size",
            "320x240",
            "--no-browser",
        ]
    )
    assert view_main(args) == 0
    rgb = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(np.int32)
    assert rgb.shape == (240, 320, 3)
    tinted = (rgb[..., 0] - rgb[..., 2] > 60) & (rgb[..., 1] < 0.85 * rgb[..., 0])
    ys, xs = np.nonzero(tinted)
    assert tinted.sum() > 0.2 * 320 * 240
    assert abs(xs.mean() - 160) < 4 and abs(ys.mean() - 120) < 4

"""The command line, run as a subprocess like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from siibra_anchor.evaluation.simulate import section_error, simulate_section
from siibra_anchor.result import AnchoringResult


def _run(args, tmp_path):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "siibra_anchor.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


def test_cli_anchor_writes_result_and_prints_summary(tmp_path, mni_reference):
    sim = simulate_section(
        volume="fsl-mni152-t1",
        orientation="coronal",
        rotation_deg=120.0,
        tilt_deg=6.0,
        spacing_mm=0.5,
        seed=8,
        contrast="inverted",
    )
    # a brightfield-like PNG: dark tissue on a bright background
    png = tmp_path / "s0042.png"
    Image.fromarray((np.clip(sim.section.image, 0, 1) * 255).astype(np.uint8)).save(png)
    out = tmp_path / "s0042.anchor.json"
    args = [
        "--quiet",
        "anchor",
        str(png),
        "--spacing-mm",
        "0.5",
        "--out",
        str(out),
        "--not-flipped",
        "--cut",
        "coronal",
    ]
    p = _run(args, tmp_path)
    assert p.returncode == 0, p.stderr
    for word in ("space", "confidence", "centre", "plane", "rotation"):
        assert word in p.stdout
    res = AnchoringResult.load(out)
    assert res.space == "mni152"
    assert res.section["shape"] == list(sim.section.shape)
    # the result is the section's placement: compare with the truth (tissue detected from the PNG)
    err = section_error(res.affine, sim.true_affine, sim.section.mask)
    assert np.isfinite(err)
    assert json.loads(out.read_text())["schema_version"] == 1
    # the cutting-plane hint reached anchor(): recorded, and the plane is within 30 degrees of coronal (plus the refinement's few)
    assert res.diagnostics["cut"] == "coronal" and res.diagnostics["hints_unmet"] is False
    n = np.cross(res.affine[:3, 0], res.affine[:3, 1])
    assert abs(n[1]) / np.linalg.norm(n) >= np.cos(np.deg2rad(35.0))
    # what later steps need: the pixel grid of the affine (this file, not reduced) and the tissue mask
    assert res.pixel_grid == {"file": str(png.resolve()), "reduction": [1.0, 1.0]}
    assert res.mask is not None and res.mask.shape == tuple(sim.section.shape) and res.mask.any()


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((50, 50)) * 255).astype(np.uint8)).save(png)
    p = _run(["anchor", str(png)], tmp_path)  # no spacing anywhere
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("siibra-anchor: error:")
    assert "spacing" in p.stderr
    p = _run(["anchor", str(tmp_path / "missing.tif"), "--spacing-mm", "0.1"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = _run(["anchor", str(png), "--spacing-mm", "0.5", "--space", "narnia"], tmp_path)
    assert p.returncode == 2 and "unknown space" in p.stderr
    p = _run(["anchor", str(png), "--spacing-mm", "0.5", "--device", "banana"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "not a torch device" in p.stderr
    p = _run(["anchor", str(png), "--spacing-mm", "0.5", "--cut", "oblique"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--cut" in p.stderr and "coronal" in p.stderr


def test_cli_demo_reports_error_against_truth(tmp_path, mni_reference):
    p = _run(["--quiet", "demo", "--out", str(tmp_path / "demo")], tmp_path)
    assert p.returncode == 0, p.stderr
    line = [x for x in p.stdout.splitlines() if x.startswith("error")][0]
    err = float(line.split()[1])
    assert err < 4.0, p.stdout
    assert (tmp_path / "demo" / "result.json").is_file()
    assert (tmp_path / "demo" / "neuroglancer_url.txt").read_text().startswith("http")


def test_cli_demo_without_the_viewer_extra_says_how_to_get_it_once(tmp_path, mni_reference):
    """Installed without [viewer] (neuroglancer cannot be imported): the demo still anchors and writes its
    result, and says once how to install the viewer."""
    code = (
        "import sys; sys.modules['neuroglancer'] = None; from siibra_anchor.cli import main; "
        f"sys.exit(main(['--quiet', 'demo', '--out', {str(tmp_path / 'demo')!r}]))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    line = [x for x in p.stdout.splitlines() if x.startswith("neuroglancer")][0]
    assert "not available" in line and line.count("pip install 'siibra-anchor[viewer]'") == 1, line
    assert (tmp_path / "demo" / "result.json").is_file()
    assert not (tmp_path / "demo" / "neuroglancer_url.txt").exists()

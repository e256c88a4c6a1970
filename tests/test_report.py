"""HTML series report from real anchorings, opened in headless Chromium."""

from __future__ import annotations

import copy
import re
import tempfile

import numpy as np
import pytest
from conftest import chromium_missing

import siibra_anchor as sa
from siibra_anchor.errors import InvalidParameterError, InvalidSectionError
from siibra_anchor.evaluation.simulate import simulate_section
from siibra_anchor.report import write_series_report


@pytest.fixture(scope="module")
def series(mni_reference):
    """Three small sections of one brain (FSL template, not the reference), anchored by anchor_series."""
    cases = [
        dict(orientation="coronal", offset_mm=-20.0, tilt_deg=5.0, rotation_deg=10.0, seed=1),
        dict(orientation="coronal", offset_mm=15.0, tilt_deg=3.0, rotation_deg=-20.0, seed=2),
        dict(orientation="sagittal", offset_mm=-30.0, tilt_deg=6.0, rotation_deg=5.0, seed=3),
    ]
    sims = [
        simulate_section(volume="fsl-mni152-t1", spacing_mm=1.0, name=f"series <s{i:02d}>", **c)
        for i, c in enumerate(cases)
    ]
    sections = [s.section for s in sims]
    results = sa.anchor_series(sections, reference=mni_reference, seed=0, n_patches=100, hemisphere=None)
    results[2].diagnostics["flags"] = ["out of order in the series"]  # what the series engineer sets
    return sections, results


def test_report_is_self_contained_and_ordered(series, tmp_path):
    sections, results = series
    out = write_series_report(results, sections, tmp_path / "rep" / "report.html", title="Test series")
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "external URL in the report"
    assert "<script src" not in page and "<link" not in page
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == 1 + len(results)  # overview + one thumbnail per section
    for r in results:
        assert str(r.section["name"]).replace("<", "&lt;").replace(">", "&gt;") in page
    assert "out of order in the series" in page
    confs = [float(c) for c in re.findall(r'data-conf="([0-9.]+)"', page)]
    assert confs == sorted(confs) and len(confs) == 3  # low confidence first
    assert not list(out.parent.glob(".report.html.*"))


def test_report_flags_and_missing_images(series, tmp_path):
    from siibra_anchor.qc import section_flags

    sections, results = series
    low = copy.copy(results[0])
    low.confidence = 0.2  # the flag logic, on a real result with its confidence lowered
    low.diagnostics = dict(low.diagnostics)
    assert section_flags(low)[-1].startswith("low confidence (0.20)")
    amb = copy.copy(results[1])
    amb.alternatives = [{"affine": np.eye(4), "score": 0.0, "inlier_fraction": 0.5, "label": "other hemisphere"}]
    amb.diagnostics = {**amb.diagnostics, "nmi_gain": 0.01}
    assert "ambiguous: other hemisphere" in section_flags(amb)
    loaded = sa.AnchoringResult.from_dict(results[1].to_dict())  # no image, no file
    page = write_series_report([low, loaded], None, tmp_path / "r.html").read_text()
    assert "no image for QC" in page and "low confidence (0.20)" in page
    with pytest.raises(InvalidSectionError, match="one section per result"):
        write_series_report(results, sections[:2], tmp_path / "x.html")
    with pytest.raises(InvalidParameterError, match="at least one result"):
        write_series_report([], None, tmp_path / "x.html")


@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_report_opens_in_headless_chromium(series, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from siibra_anchor.viewer.screenshot import _CHROME_FLAGS, chromium_paths

    sections, results = series
    out = write_series_report(results, sections, tmp_path / "report.html")
    chrome, driver_path = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for f in _CHROME_FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='sa-report-chromium-', dir=tmp_path)}")
    opts.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(out.resolve().as_uri())
        names = driver.execute_script(
            "return Array.from(document.querySelectorAll('#sections td.section-name')).map(e => e.textContent);"
        )
        assert sorted(names) == sorted(str(r.section["name"]) for r in results)
        driver.execute_script(
            "window._imgs = Promise.all(Array.from(document.images).map(i => i.decode().then(() => 1, () => 0)));"
        )
        decoded = driver.execute_async_script("const done = arguments[0]; window._imgs.then(done);")
        sizes = driver.execute_script("return Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight]);")
        assert decoded == [1] * (1 + len(results)), decoded
        assert all(w > 0 and h > 0 for w, h in sizes) and len(sizes) == 1 + len(results)
        # thumbnails: three panels side by side, each at most 150 px high
        assert all(h <= 150 and w > 2 * h for w, h in sizes[1:])

        def confs():
            return [
                float(c)
                for c in driver.execute_script(
                    "return Array.from(document.querySelectorAll('#sections tbody tr')).map(r => r.dataset.conf);"
                )
            ]

        assert confs() == sorted(confs())
        driver.execute_script("document.querySelector('#sections th[data-key=conf]').click();")
        assert confs() == sorted(confs(), reverse=True)  # clicking the sorted column reverses it
        driver.execute_script("document.querySelector('#sections th[data-key=name]').click();")
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#sections td.section-name')).map(e => e.textContent);"
        )
        assert shown == sorted(shown, key=str.lower)
    finally:
        driver.quit()

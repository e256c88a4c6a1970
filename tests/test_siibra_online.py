"""The same paths against EBRAINS itself: run only with the internet (``pytest -m online``), skipped without."""

from __future__ import annotations

import numpy as np
import pytest
from siibra_anchor.adapters import siibra_config

import siibra_anchor as sa
from siibra_anchor.net import is_online
from siibra_anchor.planes import CANONICAL_PLANES, plane_affine

pytestmark = [
    pytest.mark.online,
    pytest.mark.skipif(not is_online(), reason="needs the internet (siibra's servers)"),
]


@pytest.fixture(scope="module")
def siibra_online():
    siibra_config.reset()
    siibra = siibra_config.use_online(timeout_s=120)
    yield siibra
    siibra_config.reset()


def _occipital_result(space="mni152"):
    r, c = CANONICAL_PLANES["coronal"]
    return sa.AnchoringResult(
        plane_affine((0.0, -88.0, 5.0), r, c, 0.75, (160, 200)), space, 1.0, section={"shape": [160, 200]}
    )


def test_colin27_template_through_siibra_and_anchoring_there(siibra_online):
    from siibra_anchor.adapters.siibra_spaces import fetch_template

    from siibra_anchor.evaluation.simulate import simulate_section

    path = fetch_template(siibra_online.spaces["colin27"])
    assert path.is_file() and path.name.startswith("colin27-")
    sim = simulate_section(volume=str(path), orientation="coronal", spacing_mm=0.5, seed=3)
    res = sa.anchor(sim.section, space="colin27")
    assert res.space == "colin27"


def test_julich_brain_regions_online(siibra_online):
    df = _occipital_result().assign_regions(parcellation="julich", threshold=0.2, online=True)
    assert df.attrs["source"].startswith("siibra: ") and "Julich" in df.attrs["source"]
    assert any("hOc1" in r and "left" in r for r in df["region"])
    assert any("hOc1" in r and "right" in r for r in df["region"])


def test_warp_to_colin27_online(siibra_online):
    res = _occipital_result()
    here, there = res.to_siibra(), res.to_siibra(space="colin27")
    assert there.space.name == "MNI Colin 27"
    d = np.linalg.norm(np.asarray(there.outline.coordinates) - np.asarray(here.outline.coordinates), axis=1)
    assert np.median(d) < 15.0


def test_bigbrain_cellbody_sections_online(siibra_online):
    from siibra_anchor.adapters.siibra_sections import bigbrain_sections

    ((sec, aff),) = bigbrain_sections(limit=1, resolution_mm=0.64)
    assert sec.shape[0] > 50 and sec.shape[1] > 50
    assert np.allclose(np.abs(aff[:3, 2]) / np.linalg.norm(aff[:3, 2]), [0, 1, 0], atol=1e-6)

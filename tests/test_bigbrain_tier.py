"""(offline) The BigBrain block's own arithmetic, and its typed refusal without siibra online. The block end to
end through siibra runs against the EBRAINS mirror in tests/test_siibra_mirror.py."""

from __future__ import annotations

import numpy as np
import pytest

from siibra_anchor.errors import SpaceUnavailableError
from siibra_anchor.evaluation.bigbrain_tier import _axis_scales, _number, affine_of_points, run_bigbrain_tier


def test_affine_of_points_is_exact_on_an_affine_and_leaves_the_nonlinear_rest():
    rng = np.random.default_rng(0)
    rc = rng.uniform(0, 400, size=(500, 2))
    lin = np.array([[0.0, 0.36], [0.02, 0.0], [-0.46, 0.0]])  # coronal, rows 1.44 x, cols 1.12 x 0.32 mm
    t = np.array([-70.0, -24.0, 60.0])
    xyz = rc @ lin.T + t
    aff, res = affine_of_points(rc, xyz)
    np.testing.assert_allclose(aff[:3, :2], lin, atol=1e-9)
    np.testing.assert_allclose(aff[:3, 3], t, atol=1e-7)
    assert res.max() < 1e-8 and np.linalg.det(aff) > 0
    np.testing.assert_allclose(_axis_scales(aff, 0.32), np.linalg.norm(lin, axis=0) / 0.32)
    bent = xyz + np.stack([np.sin(rc[:, 0] / 40.0), np.zeros(len(rc)), np.zeros(len(rc))], 1)
    _, res = affine_of_points(rc, bent)
    assert 0.1 < res.mean() < 1.0  # a bend no affine follows


def test_section_numbers_order_the_series():
    names = ["#1001: selected 1 micron scans", "#47: selected", "#150: x", "no number"]
    assert sorted(names, key=_number) == ["#47: selected", "#150: x", "#1001: selected 1 micron scans", "no number"]


def test_without_siibra_online_the_block_is_a_typed_error(monkeypatch):
    from siibra_anchor.adapters import siibra_config

    monkeypatch.setenv("SIIBRA_ANCHOR_OFFLINE", "1")
    siibra_config.reset()
    try:
        with pytest.raises(SpaceUnavailableError, match="online"):
            run_bigbrain_tier(2, raw_baseline=False)
    finally:
        siibra_config.reset()

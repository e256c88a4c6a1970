"""Patch-level evaluation: top-k curve and patch errors, trained encoder vs baselines."""

from __future__ import annotations

import numpy as np
import torch

import siibra_anchor as sa
from siibra_anchor.encoders import ClassicalFeatureEncoder, RawPixelEncoder, check_encoder, load_default_encoder
from siibra_anchor.evaluation.patch_eval import patch_metrics
from siibra_anchor.evaluation.simulate import simulate_section


def test_classical_encoder_contract_and_inversion_of_gradients():
    enc = ClassicalFeatureEncoder()
    assert check_encoder(enc, 32) == 16 + 16 + 4 * 8
    x = torch.rand(3, 1, 32, 32)
    z = enc(x)
    np.testing.assert_allclose(z.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_trained_encoder_beats_raw_pixels_on_an_unseen_contrast(mni_reference):
    sims = [
        simulate_section(volume="mni152-2009a-gm", orientation=o, rotation_deg=r, tilt_deg=6.0, spacing_mm=0.6, seed=i)
        for i, (o, r) in enumerate([("coronal", 30.0), ("axial", 200.0)])
    ]
    default = patch_metrics(sims, mni_reference, load_default_encoder(), k_max=20)
    raw = RawPixelEncoder()
    raw_ref = sa.Reference.from_space("mni152", encoder=raw)
    base = patch_metrics(sims, raw_ref, raw, k_max=20)
    assert default["n"] == base["n"] > 50
    assert np.all(np.diff(default["topk"]) >= 0)  # a cumulative curve
    assert default["median_mm"] < 0.5 * base["median_mm"]
    assert default["topk"][9] > base["topk"][9]
    assert set(default["median_mm_by_orientation"]) == {"coronal", "axial"}
    assert default["median_mm_mirror_tolerant"] <= default["median_mm"]
    e = np.asarray(default["errors_mm"])
    assert min(default["median_mm_by_orientation"].values()) <= np.median(e)
    assert max(default["median_mm_by_orientation"].values()) >= np.median(e)

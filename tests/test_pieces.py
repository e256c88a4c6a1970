"""Small pieces of tissue (evaluation.simulate.tissue_piece, evaluation.pieces)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siibra_anchor.evaluation.pieces import BANDS_MM, PIECE_SIDES_MM, TEST_SEED, main, piece_cases, run_pieces
from siibra_anchor.evaluation.simulate import simulate_section, tissue_piece
from siibra_anchor.planes import cut_plane
from siibra_anchor.templates import load_volume


@pytest.mark.parametrize("histology", [False, True])
def test_a_piece_is_the_volume_where_its_truth_puts_it(histology):
    sim = simulate_section("mni152-2009a-t1", "coronal", offset_mm=5.0, rotation_deg=30.0, tilt_deg=4.0,
                           spacing_mm=0.5, seed=3, histology=histology)  # fmt: skip
    piece = tissue_piece(sim, 30.0, np.random.default_rng(0))
    m = piece.section.mask
    img = np.asarray(piece.section.image)
    # 30 mm of tissue-filled window (70 % or more) with 4 mm of background around it
    assert m.shape[0] == m.shape[1] and abs(piece.params["piece_mm"] - 30.0) < 1.0
    assert not m[:8].any() and not m[:, -8:].any() and m.mean() > 0.7 * (30 / 38) ** 2
    data, vaff = load_volume("mni152-2009a-t1")
    if histology:
        # the truth is per pixel: the section's pixel at each piece pixel
        r0, c0 = piece.params["piece_origin_px"]
        whole = np.asarray(sim.section.image)
        inner = img[8:-8, 8:-8]
        assert np.array_equal(inner, whole[r0 : r0 + inner.shape[0], c0 : c0 + inner.shape[1]])
        assert np.isfinite(piece.true_points[m]).all() and piece.error(piece.true_affine) < 2.0
    else:
        cut = cut_plane(data, vaff, piece.true_affine, m.shape)
        assert np.corrcoef(cut[m], img[m])[0, 1] > 0.99  # the shifted truth cuts the same image
        wrong = cut_plane(data, vaff, sim.true_affine, m.shape)  # the whole section's origin: elsewhere
        assert np.corrcoef(wrong[m], img[m])[0, 1] < 0.9
        assert piece.error(piece.true_affine) == 0.0


def test_a_piece_that_fits_nowhere_shrinks_and_the_draw_is_reproducible():
    sim = simulate_section("fsl-mni152-t1", "axial", offset_mm=60.0, spacing_mm=0.5, seed=1)
    piece = tissue_piece(sim, 200.0, np.random.default_rng(1))  # wider than the section: shrunk
    assert piece.params["piece_mm"] < 200.0 * 0.8
    a, b = piece_cases(4, seed=11), piece_cases(4, seed=11)
    assert a == b and all(PIECE_SIDES_MM[0] <= p.side_mm <= PIECE_SIDES_MM[1] for p in a)
    from siibra_anchor.evaluation.calibrate import CALIBRATION_SEEDS

    assert TEST_SEED not in set(CALIBRATION_SEEDS.values()) | {2026, 2027, 2028, 2029, 2030}


@pytest.mark.filterwarnings("ignore")
def test_pieces_report_counts_what_it_anchored(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["--seed", "7", "--n", "3", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["n"] == 3 and len(rep["cases"]) == 3 and rep["all"]["n"] == 3
    errs = [c["error_mm"] for c in rep["cases"]]
    assert rep["all"]["within_10mm"] == sum(e <= 10 for e in errs)
    assert sum(b["n"] for b in rep["bands"].values()) == 3 and len(rep["bands"]) == len(BANDS_MM)
    assert rep["all"]["confident_failures"] == sum(c["error_mm"] > 10 and c["confidence"] >= 0.5 for c in rep["cases"])
    assert "| **all** | 3 |" in capsys.readouterr().out
    again = run_pieces(seed=7, n=1)
    assert again["cases"][0]["side_mm"] == rep["cases"][0]["side_mm"]

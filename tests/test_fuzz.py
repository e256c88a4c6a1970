"""Property-based tests: every input either works or raises a typed siibra-anchor error, never another exception.

The strategies live in :func:`siibra_anchor.evaluation.reliability.fuzz_targets` (the reliability report runs the same
ones with more examples). Damaged files are real files of each format, truncated or bit-flipped.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siibra_anchor.errors import AnchorError, CorruptFileError, InvalidPointsError
from siibra_anchor.evaluation.reliability import _read_any, damaged_variants, fuzz_targets, sample_files

FUZZ = settings(
    max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
TARGETS = fuzz_targets()


def _works_or_typed(fn, *args):
    try:
        fn(*args)
    except AnchorError:
        pass  # any other exception fails the test with its traceback


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name):
    strategy, fn = TARGETS[name]

    @FUZZ
    @given(strategy)
    def prop(v):
        _works_or_typed(fn, v)

    prop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return sample_files(tmp_path_factory.mktemp("fuzz-files"))


@pytest.mark.parametrize("kind", ["png", "tiff", "ome-tiff", "nii", "nii.gz", "ome-zarr", "ome-zarr-v3", "result-json"])
def test_damaged_files_work_or_raise_typed(files, kind, tmp_path):
    _read_any(kind, files[kind])  # the undamaged file reads
    outcomes = []
    for d in damaged_variants(files[kind], tmp_path / ("x-" + files[kind].name), n=16, seed=1):
        try:
            _read_any(kind, d)
            outcomes.append("works")
        except AnchorError as exc:
            outcomes.append(type(exc).__name__)
    # truncation to a random length and emptying are among the damages: at least those are refused
    assert sum(o != "works" for o in outcomes) >= 4, outcomes


@settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from(["png", "tif", "nii", "nii.gz", "json"]),
    body=st.binary(min_size=0, max_size=600),
    magic=st.booleans(),
)
def test_random_bytes_are_refused(tmp_path_factory, kind, body, magic):
    prefix = {"png": b"\x89PNG\r\n\x1a\n", "tif": b"II*\x00", "nii": (348).to_bytes(4, "little"), "nii.gz": b"\x1f\x8b"}
    p = tmp_path_factory.mktemp("rand") / f"random.{kind}"
    p.write_bytes((prefix.get(kind, b"") if magic else b"") + body)
    with pytest.raises(AnchorError):
        _read_any("result-json" if kind == "json" else "section", p)


def test_damaged_reference_store_is_always_refused(tmp_path):
    """A reference store carries a sha256 manifest: no damage to it goes unnoticed."""
    import siibra_anchor as sa

    rng = np.random.default_rng(0)
    n = 40
    ref = sa.Reference(
        space="custom:fuzz",
        spec=sa.PatchSpec(),
        centres_mm=rng.normal(size=(n, 3)),
        embeddings=rng.normal(size=(n, 8)).astype(np.float32),
        plane_ids=np.zeros(n, np.int32),
        pixels=rng.random((n, 2)).astype(np.float32),
        planes=np.eye(4)[None],
        encoder_hash="0" * 16,
    )
    path = ref.save(tmp_path / "ref.zarr")
    sa.Reference.load(path, verify=True)
    for d in damaged_variants(path, tmp_path / "bad.zarr", n=12, seed=3):
        with pytest.raises(CorruptFileError):
            sa.Reference.load(d)


def test_fits_reject_nan_and_too_few_points():
    from siibra_anchor.affine_fit import affine_fit, similarity_fit

    src, dst = np.random.default_rng(0).random((5, 2)), np.random.default_rng(1).random((5, 3))
    dst[2, 1] = np.nan
    with pytest.raises(InvalidPointsError, match="NaN"):
        similarity_fit(src, dst)
    with pytest.raises(InvalidPointsError, match="at least 3"):
        affine_fit(src[:2], np.zeros((2, 3)))
    with pytest.raises(InvalidPointsError, match="same N"):
        affine_fit(src, np.zeros((4, 3)))

"""Faults and refusals: killed and concurrent reference builds, corrupt cache entries, no network, bad input
at every public entry point, low confidence for images that are not a human brain section, the CLI."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import siibra_anchor as sa
from siibra_anchor.cache import MANIFEST_NAME, cache_lock
from siibra_anchor.errors import (
    AnchorError,
    CacheLockTimeoutError,
    CorruptCacheWarning,
    ImageTooSmallError,
    LowConfidenceWarning,
    SpaceUnavailableError,
)
from siibra_anchor.evaluation.reliability import (
    bad_inputs,
    build_in_subprocess,
    fault_reference,
    kill_build_in_subprocess,
    no_network,
    non_brain_sections,
    sample_files,
)


@pytest.fixture(scope="module")
def fault_cache(tmp_path_factory):
    """A cache folder whose small reference was built after a build was killed mid-write, by two processes
    racing for it."""
    cache = tmp_path_factory.mktemp("fault-cache")
    left = kill_build_in_subprocess(cache, when="save")
    assert ".tmp" in left  # the kill hit while the temporary store was being written
    outs = build_in_subprocess(cache, n=2)
    return cache, left, outs


@pytest.mark.slow
def test_killed_build_then_concurrent_builds(fault_cache):
    cache, _, outs = fault_cache
    errs = [err for _, err in outs]
    # exactly one process built (and removed the killed build's temporary store); the other waited and loaded
    assert sum("building reference" in e for e in errs) == 1
    assert sum("loaded cached reference" in e for e in errs) == 1
    assert sum("interrupted reference build" in e for e in errs) == 1
    assert outs[0][0] == outs[1][0]  # same patch count and embedding sum
    names = sorted(p.name for p in (cache / "references").iterdir())
    assert not [n for n in names if n.endswith(".tmp") or ".old-" in n], names
    entry = next((cache / "references").glob("*.zarr"))
    assert (entry / MANIFEST_NAME).is_file()
    sa.Reference.load(entry, verify=True)


@pytest.mark.parametrize("damage", ["flip", "delete"])  # the report also truncates and garbles metadata
def test_corrupt_cache_entry_is_detected_and_rebuilt(fault_cache, damage):
    cache, _, _ = fault_cache
    good = fault_reference(cache)
    entry = next((cache / "references").glob("*.zarr"))
    chunk = max((f for f in (entry / "embeddings").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    if damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:100])
    elif damage == "flip":
        b = bytearray(chunk.read_bytes())
        b[len(b) // 3] ^= 0x01
        chunk.write_bytes(bytes(b))
    elif damage == "garble":
        (entry / "zarr.json").write_text("{ not json")
    else:
        for f in (entry / "pixels").rglob("*"):
            if f.is_file():
                f.unlink()
    with pytest.raises(sa.errors.CorruptFileError, match="rebuild"):
        sa.Reference.load(entry)
    with pytest.warns(CorruptCacheWarning, match="unusable"):
        ref = fault_reference(cache)
    np.testing.assert_array_equal(ref.embeddings, good.embeddings)
    np.testing.assert_array_equal(ref.centres_mm, good.centres_mm)
    sa.Reference.load(entry, verify=True)  # the rebuilt entry is whole again


def test_lock_timeout_is_typed(fault_cache, monkeypatch):
    cache, _, _ = fault_cache
    entry = next((cache / "references").glob("*.zarr"))
    monkeypatch.setenv("SIIBRA_ANCHOR_LOCK_TIMEOUT", "0.3")
    with cache_lock(entry):  # another holder: a second lock object on the same file
        t = time.perf_counter()
        with pytest.raises(CacheLockTimeoutError, match="locked by another process"):
            fault_reference(cache)
        assert time.perf_counter() - t < 30


def test_no_network_fails_fast_with_a_typed_error():
    with no_network():
        with pytest.raises(OSError):
            import socket

            socket.create_connection(("example.org", 80), timeout=5)
        for space in ("colin27", "bigbrain"):
            with pytest.raises(SpaceUnavailableError, match="from_volume"):
                sa.Reference.from_space(space)


def test_every_bad_input_raises_a_typed_error(fault_cache, tmp_path):
    cache, _, _ = fault_cache
    small = fault_reference(cache)
    files = sample_files(tmp_path / "files")
    from PIL import Image

    Image.open(files["png"]).save(files["png"].with_name("nospacing.png"))
    failures = []
    n = 0
    for kind, fns in bad_inputs(small, files, tmp_path).items():
        for i, fn in enumerate(fns):
            n += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn()
                failures.append(f"{kind} #{i}: accepted")
            except AnchorError as exc:
                assert str(exc), f"{kind} #{i}: empty message"
            except Exception as exc:
                failures.append(f"{kind} #{i}: {type(exc).__name__}: {exc}")
    assert n > 50
    assert not failures, failures


@pytest.mark.slow
def test_non_brain_images_get_low_confidence_and_a_warning(mni_reference, caplog):
    inputs = non_brain_sections(seed=0)
    with pytest.raises(ImageTooSmallError, match="mm of tissue across"):  # a mouse-sized brain
        sa.anchor(inputs["rodent"], reference=mni_reference)
    caplog.set_level(logging.WARNING, logger="siibra_anchor")
    with pytest.warns(LowConfidenceWarning, match="low confidence"):
        res = sa.anchor(inputs["text"], reference=mni_reference, seed=0, n_patches=200, flipped=False)
    assert res.confidence < 0.5
    assert any("low confidence" in r.getMessage() for r in caplog.records)


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "siibra_anchor.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_errors_are_one_line(tmp_path):
    p = _cli("anchor", str(tmp_path / "missing.png"), "--spacing-mm", "0.5", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "section file not found" in p.stderr
    assert "Traceback" not in p.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    p = _cli("anchor", str(bad), "--spacing-mm", "0.5", cwd=tmp_path)
    assert p.returncode == 2 and "corrupt" in p.stderr and "Traceback" not in p.stderr


def test_cli_unexpected_error_is_one_line_with_a_hint(capsys):
    from siibra_anchor.cli import main

    assert main(["--quiet", "demo", "--out", "/dev/null/demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--debug" in err and "unexpected error" in err
    with pytest.raises(OSError):
        main(["--quiet", "--debug", "demo", "--out", "/dev/null/demo"])


def test_damaged_downloaded_template_is_dropped_and_fetched_again(tmp_path, monkeypatch):
    from siibra_anchor.adapters.siibra_spaces import template_cache_path

    monkeypatch.setenv("SIIBRA_ANCHOR_CACHE", str(tmp_path))
    target = template_cache_path("colin27")
    target.write_bytes(b"\x1f\x8b" + b"\x00" * 100)  # a download cut short
    with no_network(), pytest.raises(SpaceUnavailableError):  # fetching again needs the network
        sa.Reference.from_space("colin27")
    assert not target.exists()

"""Shared fixtures: an isolated cache folder and the embedded MNI152 reference built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Each test session gets its own cache unless SIIBRA_ANCHOR_CACHE is set (CI sets it to reuse builds)."""
    if not os.environ.get("SIIBRA_ANCHOR_CACHE"):
        os.environ["SIIBRA_ANCHOR_CACHE"] = str(tmp_path_factory.mktemp("sa-cache"))
    yield


@pytest.fixture(scope="session")
def mni_reference():
    import siibra_anchor as sa

    return sa.Reference.from_space("mni152")


def chromium_missing() -> str | None:
    """Why the headless-browser tests cannot run here, or None when Chromium, its driver and selenium exist."""
    for p in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(os.environ.get("CHROMIUM_BINARY" if "chromium" == Path(p).name else "CHROMEDRIVER", p)).exists():
            return f"{p} is absent (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@pytest.fixture(scope="session")
def ebrains_mirror(tmp_path_factory):
    """The local EBRAINS mirror (tests/ebrains_mirror): real siibra configuration JSON, stand-in data."""
    from ebrains_mirror import start_mirror

    mirror = start_mirror(tmp_path_factory.mktemp("ebrains-mirror"))
    mirror.cache = tmp_path_factory.mktemp("ebrains-mirror-cache")
    yield mirror
    mirror.stop()


@pytest.fixture
def siibra_mirror(ebrains_mirror, monkeypatch):
    """siibra configured from the mirror (mode "local"), its service URLs pointed at it; undone afterwards.

    siibra-anchor's cache points at the mirror's own folder: stand-in templates and tables never reach the
    session's cache (where an offline test would find them)."""
    from siibra_anchor.adapters import siibra_config

    monkeypatch.setenv("SIIBRA_ANCHOR_CACHE", str(ebrains_mirror.cache))
    siibra_config.reset()
    siibra = siibra_config.use_local(ebrains_mirror.config)
    from siibra.locations.location import Location
    from siibra.volumes.sparsemap import SparseIndex

    monkeypatch.setattr(Location, "SPACEWARP_SERVER", ebrains_mirror.warp_url)
    monkeypatch.setattr(SparseIndex, "_DATAPROXY_BASEURL", ebrains_mirror.sparse_url)
    yield siibra
    ebrains_mirror.clear_failures()
    siibra_config.reset()

"""Shared fixtures: an isolated cache folder and the embedded MNI152 reference built once per session."""

from __future__ import annotations

import os

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

"""Old import paths of modules that moved in 0.2 (the package layout step): they keep working for one
release, with a :class:`DeprecationWarning` that names the new path."""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["alias"]


def alias(old: str, new: str) -> None:
    """Make module ``old`` the module ``new`` (called from the stub left at the old path)."""
    warnings.warn(f"{old} moved to {new}; the old path works until the next release", DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)

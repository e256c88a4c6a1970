"""Names of reference spaces: canonical keys, aliases, and which are embedded (offline)."""

from __future__ import annotations

import re
from typing import Any

from .errors import UnknownSpaceError

__all__ = ["canonical_space", "EMBEDDED_SPACES", "ONLINE_SPACES", "SPACE_NAMES"]

#: Spaces whose template ships with installed packages (work offline).
EMBEDDED_SPACES = ("mni152",)
#: Spaces known to siibra whose template needs the network (see siibra_anchor.adapters).
ONLINE_SPACES = ("colin27", "bigbrain")

#: canonical key -> siibra's full name
SPACE_NAMES = {
    "mni152": "MNI 152 ICBM 2009c Nonlinear Asymmetric",
    "colin27": "MNI Colin 27",
    "bigbrain": "Big Brain (Histology)",
}

_ALIASES = {
    "mni152": [
        "mni152",
        "mni",
        "icbm2009c",
        "icbm152",
        "mni152icbm2009cnonlinearasymmetric",
        "mni152icbm2009c",
        "icbm2009cnonlasym",
        "mni152icbm2009cnonlinearasym",
    ],
    "colin27": ["colin27", "colin", "mnicolin27", "mnicolin"],
    "bigbrain": ["bigbrain", "bigbrainhistology", "bigbrainmicroscopytemplate"],
}


def _squeeze(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def canonical_space(space: Any) -> str:
    """Canonical key ("mni152", "colin27", "bigbrain", or a user key ``"custom:<name>"``) of a space spec.

    Accepts the keys, siibra's names and short names (case and punctuation ignored) and siibra ``Space``
    objects (anything with a ``name`` attribute). Raises :class:`UnknownSpaceError` otherwise.
    """
    if hasattr(space, "name") and not isinstance(space, str):
        space = space.name
    if not isinstance(space, str) or not space.strip():
        raise UnknownSpaceError(f"space must be a name such as 'mni152' or 'colin27', got {space!r}")
    if space.startswith("custom:"):
        return space
    sq = _squeeze(space)
    for key, aliases in _ALIASES.items():
        if sq in aliases or sq == _squeeze(SPACE_NAMES[key]):
            return key
    raise UnknownSpaceError(
        f"unknown space {space!r}; known: {sorted(_ALIASES)} (embedded offline: {list(EMBEDDED_SPACES)}). "
        "For another template use sa.Reference.from_volume(path, space='custom:<name>')"
    )

"""Names of reference spaces: canonical keys, aliases, and which are embedded (offline)."""

from __future__ import annotations

import re
from typing import Any

from .errors import UnknownSpaceError

__all__ = ["canonical_space", "EMBEDDED_SPACES", "ONLINE_SPACES", "SPACE_NAMES", "SPACE_IDS"]

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

#: canonical key -> siibra (EBRAINS knowledge graph) space id
SPACE_IDS = {
    "mni152": "minds/core/referencespace/v1.0.0/dafcffc5-4826-4bf1-8ff6-46b8a31ff8e2",
    "colin27": "minds/core/referencespace/v1.0.0/7f39f7be-445b-47c0-9791-e971c0b6d992",
    "bigbrain": "minds/core/referencespace/v1.0.0/a1655b99-82f1-420f-a3c2-fe80fd4c8588",
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
        "icbm2009cnonlinearasymmetric",
        "icbm152nonlinearasymmetric2009c",
    ],
    "colin27": ["colin27", "colin", "mnicolin27", "mnicolin", "colin27t1", "mnicolin27t1"],
    "bigbrain": [
        "bigbrain",
        "bigbrainhistology",
        "bigbrainmicroscopytemplate",
        "bigbrainmicroscopictemplate",
        "bigbrainmicroscopictemplatehistology",
        "bigbrain2015",
    ],
}


def _squeeze(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def canonical_space(space: Any) -> str:
    """Canonical key ("mni152", "colin27", "bigbrain", or a user key ``"custom:<name>"``) of a space spec.

    Accepts the keys, siibra's names, short names and space ids (case and punctuation ignored) and siibra
    ``Space`` objects (anything with an ``id`` or ``name`` attribute). Raises :class:`UnknownSpaceError`
    otherwise; names only siibra knows resolve through :func:`siibra_anchor.adapters.siibra_spaces.resolve_space`.
    """
    if hasattr(space, "name") and not isinstance(space, str):
        for key, sid in SPACE_IDS.items():
            if getattr(space, "id", None) == sid:
                return key
        space = space.name
    if not isinstance(space, str) or not space.strip():
        raise UnknownSpaceError(f"space must be a name such as 'mni152' or 'colin27', got {space!r}")
    if space.startswith("custom:"):
        return space
    for key, sid in SPACE_IDS.items():
        if space == sid:
            return key
    sq = _squeeze(space)
    for key, aliases in _ALIASES.items():
        if sq in aliases or sq == _squeeze(SPACE_NAMES[key]):
            return key
    raise UnknownSpaceError(
        f"unknown space {space!r}; known: {sorted(_ALIASES)} (embedded offline: {list(EMBEDDED_SPACES)}). "
        "For another template use sa.Reference.from_volume(path, space='custom:<name>')"
    )

"""siibra-anchor: place histological sections of the human brain in a 3D reference space.

Importing the package does no I/O and imports no heavy dependency (torch, siibra, neuroglancer): the
public names below load their modules on first use.

>>> import siibra_anchor as sa                      # doctest: +SKIP
>>> result = sa.anchor(sa.Section(image, spacing_mm=0.5), space="mni152")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Section": ".section",
    "Reference": ".reference",
    "AnchoringResult": ".result",
    "anchor": ".anchoring",
    "anchor_series": ".anchoring",
    "anchor_batch": ".anchoring",
    "SeriesResult": ".anchoring",
    "PlanePrior": ".anchoring",
    "AnchorParams": ".anchoring",
    "PatchSpec": ".patches",
    "errors": ".errors",
    "templates": ".templates",
    "export_quint": ".io.quint",
    "import_quint": ".io.quint",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'siibra_anchor' has no attribute {name!r}")
    m = importlib.import_module(mod, __name__)
    value = m if name in ("errors", "templates") else getattr(m, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

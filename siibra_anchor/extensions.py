"""Extension points: where a core class hands work to a layer above the core.

Core modules never import ``io/``, ``adapters/`` or ``viewer/`` (``tests/test_architecture.py`` walks
the imports). A few conveniences of the core classes need them all the same: :meth:`Section.from_file`
reads files (``io.formats``), :meth:`Reference.from_space` fetches templates through siibra
(``adapters.siibra_spaces``), :class:`AnchoringResult` hands itself to siibra and Neuroglancer. They ask
for a named extension here. Extensions are entry points of group ``siibra_anchor.extensions``, declared
in ``pyproject.toml``; another installed package can declare its own the same way (a reader for a new
image format, a template source), and one of its names takes precedence over siibra-anchor's.

>>> from siibra_anchor.extensions import extension          # doctest: +SKIP
>>> read = extension("read_section_image")                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache
from importlib import metadata
from typing import Any

from .errors import MissingDependencyError

__all__ = ["GROUP", "extension", "extension_names"]

#: the entry-point group the extensions are declared in
GROUP = "siibra_anchor.extensions"


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        own = ep.value.startswith("siibra_anchor.")
        if ep.name not in found or not own:  # another package's extension overrides the built-in one
            found[ep.name] = ep
    return found


def extension_names() -> list[str]:
    """Names of the declared extensions."""
    return sorted(_entry_points())


@cache
def extension(name: str) -> Callable[..., Any]:
    """The callable declared as extension ``name`` (loaded, and so imported, on first use).

    Raises :class:`~siibra_anchor.errors.MissingDependencyError` (an ``ImportError``) when no installed
    package declares it (siibra-anchor run from a source tree without ``pip install -e .``) or when its
    module cannot be imported (an optional dependency missing).
    """
    ep = _entry_points().get(name)
    if ep is None:
        raise MissingDependencyError(
            f"no siibra-anchor extension {name!r} is installed (declared: {extension_names() or 'none'}); "
            "install the package (pip install -e . in a clone) so that its entry points are registered"
        )
    try:
        return ep.load()
    except ImportError as exc:
        raise MissingDependencyError(
            f"extension {name!r} ({ep.value}) cannot be imported: {exc}; install what it needs "
            "(e.g. pip install 'siibra-anchor[siibra,viewer]')"
        ) from exc

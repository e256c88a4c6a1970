"""siibra_anchor.viewer: the anchored section inside the reference volume, in Neuroglancer.

* :func:`~siibra_anchor.viewer.state.build_state` / :func:`~siibra_anchor.viewer.state.result_url` --
  Neuroglancer state and link (template, section placed by its affine, outline and matches).
* :func:`~siibra_anchor.viewer.serve.serve_result` -- offline viewer on 127.0.0.1.
* :func:`siibra_anchor.viewer.screenshot.screenshot` -- PNG through headless Chromium (module
  ``siibra_anchor.viewer.screenshot``).

Submodules import ``neuroglancer`` (and selenium for screenshots) only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_state", "result_url", "serve_result"]

_LAZY = {
    "build_state": "state",
    "result_url": "state",
    "serve_result": "serve",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

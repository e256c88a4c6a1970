"""Typed errors of :mod:`siibra_anchor.viewer` (subclasses of :class:`siibra_anchor.errors.AnchorError`)."""

from __future__ import annotations

from siibra_anchor.errors import AnchorError

__all__ = ["ViewerError", "ViewerArgumentError", "BrowserUnavailableError", "ViewerTimeoutError"]


class ViewerError(AnchorError, RuntimeError):
    """The viewer could not be served or rendered."""


class ViewerArgumentError(AnchorError, ValueError):
    """An argument of a viewer function is invalid (bad URL prefix, size, image...)."""


class BrowserUnavailableError(ViewerError, FileNotFoundError):
    """Headless Chromium, chromedriver or selenium is not installed."""


class ViewerTimeoutError(ViewerError, TimeoutError):
    """The viewer did not finish loading its data in time."""

"""Typed errors of the training package (subclasses of :class:`siibra_anchor.errors.AnchorError`)."""

from __future__ import annotations

from siibra_anchor.errors import AnchorError

__all__ = ["TrainingError", "TrainConfigError", "PatchShapeError", "TrainingFileNotFoundError"]


class TrainingError(AnchorError, RuntimeError):
    """Training cannot go on (no checkpoint to resume from where one is required, a broken store, ...)."""


class TrainConfigError(AnchorError, ValueError):
    """A training configuration (file, field or override) is invalid; the message names the field."""


class PatchShapeError(AnchorError, ValueError):
    """A patch batch or embedding array does not have the documented shape."""


class TrainingFileNotFoundError(AnchorError, FileNotFoundError):
    """A file training needs (a config, a volume, a patch store, a run's output) does not exist."""

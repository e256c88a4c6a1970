"""Typed exceptions of siibra-anchor.

Every error is a subclass of :class:`AnchorError` *and* of the builtin exception a caller would
naturally catch (``ValueError``, ``FileNotFoundError``, ``ConnectionError``, ...), so both
``except sa.errors.AnchorError`` and ``except ValueError`` work. Messages say what was wrong, with
the offending value, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AnchorError",
    "InvalidSectionError",
    "SpacingError",
    "EmptyMaskError",
    "ImageTooSmallError",
    "FileFormatError",
    "CorruptFileError",
    "UnknownSpaceError",
    "SpaceUnavailableError",
    "UnknownParcellationError",
    "SchemaVersionError",
    "InvalidReferenceError",
    "EncoderError",
    "WeightsChecksumError",
    "AnchoringFailedError",
    "NetworkError",
    "SectionFileNotFoundError",
    "InvalidParameterError",
    "SearchBackendError",
    "CacheLockTimeoutError",
    "InvalidPointsError",
    "AnchorWarning",
    "LowConfidenceWarning",
    "CorruptCacheWarning",
    "MissingDependencyError",
    "RealDataMissingError",
    "RealDataChecksumError",
]


class AnchorError(Exception):
    """Base class of every error raised on purpose by siibra-anchor."""


class InvalidSectionError(AnchorError, ValueError):
    """The section image is unusable: wrong shape or dtype, NaN/inf, constant, ..."""


class SpacingError(AnchorError, ValueError):
    """Pixel spacing is missing, non-positive, non-finite or implausible."""


class EmptyMaskError(AnchorError, ValueError):
    """The tissue mask is empty, all-true, or covers too little to place patches."""


class ImageTooSmallError(AnchorError, ValueError):
    """The section is too small (at the working resolution) to hold a single patch."""


class FileFormatError(AnchorError, ValueError):
    """The file type is not supported (or the extension does not match the content)."""


class CorruptFileError(AnchorError, ValueError):
    """A file exists but cannot be decoded (truncated, corrupt, wrong content)."""


class UnknownSpaceError(AnchorError, KeyError):
    """No reference space of that name is known."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class SpaceUnavailableError(AnchorError, ConnectionError):
    """The space is known but its template cannot be obtained here (typically: no network)."""


class UnknownParcellationError(AnchorError, KeyError):
    """No parcellation / map of that name is available."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SchemaVersionError(AnchorError, ValueError):
    """A saved result or reference was written by an incompatible (newer) schema version."""


class InvalidReferenceError(AnchorError, ValueError):
    """A reference index is unusable (empty, inconsistent with the encoder, corrupt)."""


class EncoderError(AnchorError, ValueError):
    """The encoder does not map (N, C, P, P) patches to (N, D) embeddings as required."""


class WeightsChecksumError(AnchorError, ValueError):
    """Shipped or given encoder weights do not match their recorded sha256."""


class AnchoringFailedError(AnchorError, RuntimeError):
    """No placement could be estimated at all (too few usable matches)."""


class NetworkError(AnchorError, ConnectionError):
    """A network resource could not be reached within its timeout."""


class SectionFileNotFoundError(AnchorError, FileNotFoundError):
    """A section, volume, reference or result file does not exist."""


class InvalidParameterError(AnchorError, ValueError):
    """A parameter is out of its allowed range or of the wrong kind (threshold, step, interpolation, ...)."""


class SearchBackendError(AnchorError, ValueError):
    """An unknown nearest-neighbour search backend was asked for, or its package is not installed."""


class CacheLockTimeoutError(AnchorError, TimeoutError):
    """Another process held a cache entry's lock (building it) for longer than the timeout."""


class InvalidPointsError(AnchorError, ValueError):
    """Point pairs given to an affine fit have the wrong shape, too few rows, or NaN/inf values."""


class MissingDependencyError(AnchorError, ImportError):
    """An optional part needs a package that is not installed (the message names the pip extra)."""


class SitkUnavailableError(MissingDependencyError):
    """SimpleITK (the classical registration baseline of the benchmarks) is not installed."""


class RealDataMissingError(AnchorError, FileNotFoundError):
    """A volume of the real-anatomy benchmark tier is not in the data folder (the message says how to get it)."""


class RealDataChecksumError(AnchorError, ValueError):
    """A volume of the real-anatomy tier does not match the sha256 its manifest records."""


class AnchorWarning(UserWarning):
    """Base class of the warnings siibra-anchor emits (``warnings.simplefilter("error", AnchorWarning)``
    turns them into exceptions)."""


class LowConfidenceWarning(AnchorWarning):
    """An anchoring result has low confidence (< 0.5): the placement may well be wrong. Check the image
    (is it a human brain section?), its spacing and mask, or treat the result as unplaced."""


class CorruptCacheWarning(AnchorWarning):
    """A cache entry failed its checksum or could not be read; it is rebuilt."""

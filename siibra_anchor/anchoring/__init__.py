"""Anchoring: place sections in a reference space.

:func:`anchor` runs the pipeline of :mod:`.stages` (sample -> propose -> guide -> score -> disambiguate ->
assemble) on one section; :func:`anchor_series` anchors the sections of one brain jointly
(:mod:`.series`). :class:`AnchorParams` holds the matcher's tuning, :class:`PlanePrior` where a plane is
expected; :mod:`.hypotheses` proposes placements.
"""

from .pipeline import (
    LOW_CONFIDENCE,
    AnchorParams,
    PlanePrior,
    anchor,
    confidence_from_scores,
    mounting_mirrored,
    peak_memory_of,
    plane_views,
)
from .series import SeriesModel, SeriesResult, anchor_series, fit_series

__all__ = [
    "LOW_CONFIDENCE",
    "AnchorParams",
    "PlanePrior",
    "SeriesModel",
    "SeriesResult",
    "anchor",
    "anchor_series",
    "confidence_from_scores",
    "fit_series",
    "mounting_mirrored",
    "peak_memory_of",
    "plane_views",
]

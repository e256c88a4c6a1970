"""Anchoring: place sections in a reference space.

:func:`anchor` (:mod:`.pipeline`) runs the stages of :mod:`.stages` (sample -> propose -> guide -> score ->
disambiguate -> assemble) on one section; :func:`anchor_batch` runs many, their patches encoded together
(on a GPU with ``device="cuda"``); :func:`anchor_series` anchors the sections of one brain jointly
(:mod:`.series`). :class:`AnchorParams` holds the matcher's tuning and :class:`PlanePrior` where a plane
is expected (:mod:`.params`); :mod:`.hypotheses` proposes placements.
"""

from .hypotheses import mounting_mirrored, plane_views
from .params import LOW_CONFIDENCE, AnchorParams, PlanePrior
from .pipeline import anchor, anchor_batch, peak_memory_of
from .series import SeriesModel, SeriesResult, anchor_series, fit_series
from .stages import confidence_from_scores

__all__ = [
    "LOW_CONFIDENCE",
    "AnchorParams",
    "PlanePrior",
    "SeriesModel",
    "SeriesResult",
    "anchor",
    "anchor_batch",
    "anchor_series",
    "confidence_from_scores",
    "fit_series",
    "mounting_mirrored",
    "peak_memory_of",
    "plane_views",
]

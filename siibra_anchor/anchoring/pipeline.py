"""``anchor()``: place one section in a reference space.

Data flows one way: section -> working-resolution image -> patches at several in-plane angles ->
embeddings -> cosine top-k matches -> RANSAC hypotheses -> guided re-matching -> image-similarity choice
and refinement -> :class:`~siibra_anchor.result.AnchoringResult` (the stages of :mod:`.stages`). A
placement the confidence doubts is searched once more, wider.
"""

from __future__ import annotations

import logging
import time
import tracemalloc
import warnings
from dataclasses import replace
from typing import Any

from ..encoders import encoder_hash, load_default_encoder
from ..errors import EncoderError, LowConfidenceWarning
from ..reference import Reference
from ..result import AnchoringResult
from ..section import Section
from ..spaces import canonical_space
from .hypotheses import mounting_mirrored, plane_views
from .params import LOW_CONFIDENCE, AnchorParams, PlanePrior, check_anchor_call
from .stages import Run, confidence_from_scores, run_stages

__all__ = [
    "anchor",
    "AnchorParams",
    "PlanePrior",
    "confidence_from_scores",
    "LOW_CONFIDENCE",
    "mounting_mirrored",
    "plane_views",
    "peak_memory_of",
    "wider_params",
]

log = logging.getLogger(__name__)


def anchor(
    section: Section,
    space: Any = "mni152",
    reference: Any = None,
    encoder: Any = None,
    n_patches: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    hemisphere: str | None = None,
    flipped: bool | None = None,
    params: AnchorParams | None = None,
    plane_prior: PlanePrior | None = None,
) -> AnchoringResult:
    """Find where ``section`` lies in ``space``.

    Parameters
    ----------
    section : :class:`~siibra_anchor.section.Section` (image, spacing in mm, tissue mask).
    space : space name ("mni152" embedded; others via siibra) -- ignored when ``reference`` is given.
    reference : a prebuilt :class:`~siibra_anchor.reference.Reference` (default: the space's cached one).
    encoder : torch module mapping (N, 1, P, P) to (N, D); default the shipped encoder. Must be the
        encoder the reference was built with.
    n_patches : about how many section patches to use (default: every grid point, ~1000 on a whole
        coronal section).
    seed : seeds every random choice; same inputs and seed give the same result.
    device : torch device for the encoder ("cpu", "cuda", ...).
    progress : show a progress bar for the reference build.
    hemisphere : "left" / "right" if the section holds only that hemisphere (a hint, not a constraint
        on whole sections).
    flipped : True if mounted face down (mirrored), False if not, None to consider both.
    params : matcher tuning (:class:`AnchorParams`).
    plane_prior : :class:`PlanePrior`, where the plane is expected (series anchoring passes the series'
        plane): matching is restricted to reference patches near it, placements on it are proposed, and
        placements off it are rejected unless nothing else is left.

    Returns
    -------
    :class:`AnchoringResult` whose ``affine`` maps original pixel (row, col, 0, 1) to world mm.

    Raises
    ------
    InvalidSectionError (not a Section), InvalidParameterError (any other argument), EncoderError (the
    reference was built with another encoder), EmptyMaskError / ImageTooSmallError (nothing to match),
    AnchoringFailedError (no placement at all); offline spaces raise SpaceUnavailableError.
    """
    check_anchor_call(section, hemisphere, flipped, n_patches, seed, reference, params, device, plane_prior)
    t_start = time.perf_counter()
    enc = encoder if encoder is not None else load_default_encoder()
    if reference is None:
        canonical_space(space)
        reference = Reference.from_space(space, encoder=enc, progress=progress)
    if reference.encoder_hash != encoder_hash(enc):
        raise EncoderError(
            f"the reference was built with encoder {reference.encoder_hash} but anchoring uses {encoder_hash(enc)}; "
            "build the reference with the same encoder (Reference.from_space(..., encoder=enc))"
        )
    p = params or AnchorParams()
    run = Run(section, reference, enc, p, seed, hemisphere, flipped, plane_prior, n_patches, device)
    run.timings["reference_s"] = time.perf_counter() - t_start
    result = _pass(run, t_start)
    if run.confidence < p.retry_below and p.retry_widen > 1.0 and reference.volume is not None:
        result = _wider(run, result, t_start)
    if result.confidence < LOW_CONFIDENCE:
        msg = (
            f"low confidence {result.confidence:.2f} for section {section.name!r}: the placement may be wrong "
            f"(consistency {result.diagnostics.get('consistency', float('nan')):.2f}, "
            f"NMI gain {result.diagnostics.get('nmi_gain') or float('nan'):.3f}); check that it is a human brain "
            "section with the right spacing_mm, or treat it as unplaced"
        )
        log.warning(msg)
        warnings.warn(msg, LowConfidenceWarning, stacklevel=2)
    return result


def _pass(run: Run, t_start: float) -> AnchoringResult:
    """One pass of every stage; the total time counts from ``t_start``."""
    result = run_stages(run)
    run.timings["total_s"] = time.perf_counter() - t_start
    return result


def _wider(first: Run, result: AnchoringResult, t_start: float) -> AnchoringResult:
    """A hard section (a small block, an unusual contrast): the right placement is often among the matches
    but not among the few RANSAC hypotheses. Search again with ``retry_widen`` times more coarse patches,
    matches per patch, RANSAC trials and hypotheses, and votes on the canonical planes; keep the placement
    with the higher NMI gain."""
    wide = wider_params(first.params)
    again_run = Run(
        first.section,
        first.ref,
        first.encoder,
        wide,
        first.seed,
        first.hemisphere,
        first.flipped,
        first.plane_prior,
        first.n_patches,
        first.device,
        reuse_views=first.emb,
    )
    t_again = time.perf_counter()
    again_run.timings["reference_s"] = 0.0
    again = _pass(again_run, t_again)
    gain = float(first.best.score)
    kept = again if (again.diagnostics.get("nmi_gain") or -1.0) > gain else result
    kept.diagnostics["retried_wider"] = {
        "first_pass": {"confidence": first.confidence, "nmi_gain": gain, "consistency": first.consistency},
        "kept": "wider" if kept is again else "first",
    }
    kept.diagnostics["timings"]["total_s"] = time.perf_counter() - t_start
    return kept


def wider_params(p: AnchorParams) -> AnchorParams:
    """The wider second search's parameters: ``retry_widen`` times more coarse patches, matches per patch,
    RANSAC trials and hypotheses, votes on the canonical planes, and no third search."""
    w = p.retry_widen
    return replace(
        p,
        k=int(round(p.k * w)),
        n_coarse=int(round(p.n_coarse * w)),
        ransac_trials=int(round(p.ransac_trials * w)),
        n_hypotheses=int(round(p.n_hypotheses * w)),
        retry_below=0.0,
        canonical_votes=True,
    )


def peak_memory_of(fn, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Run ``fn`` and return (its result, peak traced Python/numpy memory in MiB)."""
    tracemalloc.start()
    try:
        out = fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak / 2**20

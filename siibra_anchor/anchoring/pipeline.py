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
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..encoders import encoder_hash, load_default_encoder
from ..errors import AnchorError, AnchoringFailedError, EncoderError, InvalidParameterError, LowConfidenceWarning
from ..reference import Reference
from ..result import AnchoringResult
from ..section import Section
from ..spaces import canonical_space
from ..views import encode_together
from .hypotheses import mounting_mirrored, plane_views
from .params import LOW_CONFIDENCE, AnchorParams, PlanePrior, check_anchor_call
from .stages import Run, confidence_from_scores, prepare, run_stages

__all__ = [
    "anchor",
    "anchor_batch",
    "anchor_many",
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
    cut: str | None = None,
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
    cut : "coronal", "sagittal" or "axial" if the section was cut near that plane of the reference space
        (a hint, as in QuickNII and DeepSlice): matching is restricted to reference patches of that
        orientation and placements more than ``params.cut_max_angle_deg`` (30) degrees off it are rejected
        unless nothing else is left. None (default): any plane.

    Returns
    -------
    :class:`AnchoringResult` whose ``affine`` maps original pixel (row, col, 0, 1) to world mm.

    Raises
    ------
    InvalidSectionError (not a Section), InvalidParameterError (any other argument), EncoderError (the
    reference was built with another encoder), EmptyMaskError / ImageTooSmallError (nothing to match),
    AnchoringFailedError (no placement at all); offline spaces raise SpaceUnavailableError.
    """
    check_anchor_call(section, hemisphere, flipped, n_patches, seed, reference, params, device, plane_prior, cut)
    t_start = time.perf_counter()
    enc, reference = _resolve(space, reference, encoder, progress)
    p = params or AnchorParams()
    run = Run(section, reference, enc, p, seed, hemisphere, flipped, plane_prior, n_patches, device, cut=cut)
    run.timings["reference_s"] = time.perf_counter() - t_start
    return _finish(run, _first_pass(run, t_start), t_start, stacklevel=3)


def _resolve(space: Any, reference: Any, encoder: Any, progress: bool) -> tuple[Any, Reference]:
    """The encoder (default the shipped one) and the reference of ``space`` built with it (or ``reference``,
    checked to be built with it)."""
    enc = encoder if encoder is not None else load_default_encoder()
    if reference is None:
        canonical_space(space)
        reference = Reference.from_space(space, encoder=enc, progress=progress)
    if reference.encoder_hash != encoder_hash(enc):
        raise EncoderError(
            f"the reference was built with encoder {reference.encoder_hash} but anchoring uses {encoder_hash(enc)}; "
            "build the reference with the same encoder (Reference.from_space(..., encoder=enc))"
        )
    return enc, reference


def _can_widen(run: Run) -> bool:
    """Whether a second, wider search is allowed (a template volume to choose by, retries not switched off)."""
    p = run.params
    return p.retry_below > 0 and p.retry_widen > 1.0 and run.ref.volume is not None


def _first_pass(run: Run, t_start: float, prepared: bool = False) -> AnchoringResult | None:
    """The first pass; None when it found no consistent placement at all but the wider search may (a small
    block whose few coarse matches give RANSAC nothing: that is a section to search harder, not to refuse)."""
    try:
        return _pass(run, t_start, prepared=prepared)
    except AnchoringFailedError as exc:
        if not _can_widen(run):
            raise
        log.info("%s; searching again wider", exc)
        return None


def _finish(run: Run, result: AnchoringResult | None, t_start: float, stacklevel: int = 2) -> AnchoringResult:
    """The wider second search when the confidence doubts the first, the first found nothing, or nothing it
    found respected the hints; the low-confidence warning."""
    if result is None or ((run.confidence < run.params.retry_below or run.hints_unmet) and _can_widen(run)):
        result = _wider(run, result, t_start)
    if result.diagnostics.get("hints_unmet"):
        msg = (
            f"no placement of section {run.section.name!r} respects the hints (hemisphere={run.hemisphere!r}, "
            f"cut={run.cut!r}); the result is the best one that does not: check the hints, or treat it as unplaced"
        )
        log.warning(msg)
    if result.confidence < LOW_CONFIDENCE:
        msg = (
            f"low confidence {result.confidence:.2f} for section {run.section.name!r}: the placement may be wrong "
            f"(consistency {result.diagnostics.get('consistency', float('nan')):.2f}, "
            f"NMI gain {result.diagnostics.get('nmi_gain') or float('nan'):.3f}); check that it is a human brain "
            "section with the right spacing_mm, or treat it as unplaced"
        )
        log.warning(msg)
        warnings.warn(msg, LowConfidenceWarning, stacklevel=stacklevel)
    return result


def _pass(run: Run, t_start: float, prepared: bool = False) -> AnchoringResult:
    """One pass of every stage; the total time counts from ``t_start``."""
    result = run_stages(run, prepared=prepared)
    run.timings["total_s"] = time.perf_counter() - t_start
    return result


def _per_section(value: Any, n: int, name: str) -> list[Any]:
    """A hint given once for all sections, or one per section."""
    if value is None or isinstance(value, (str, bool)):
        return [value] * n
    vals = list(value)
    if len(vals) != n:
        raise InvalidParameterError(f"{name} must be one value or one per section ({n}), got {len(vals)} values")
    return vals


def anchor_many(
    sections: Sequence[Section],
    space: Any = "mni152",
    reference: Any = None,
    encoder: Any = None,
    n_patches: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    hemisphere: Any = None,
    flipped: Any = None,
    params: AnchorParams | None = None,
    batch_size: int = 4096,
    cut: Any = None,
) -> list[AnchoringResult | AnchorError]:
    """:func:`anchor_batch`, where a section that cannot be placed gives the typed error that stopped it
    (an :class:`~siibra_anchor.errors.AnchorError` object, not raised) in its place."""
    secs = list(sections)
    hems = _per_section(hemisphere, len(secs), "hemisphere")
    flips = _per_section(flipped, len(secs), "flipped")
    cuts = _per_section(cut, len(secs), "cut")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    for s, h, f, c in zip(secs, hems, flips, cuts, strict=True):
        check_anchor_call(s, h, f, n_patches, seed, reference, params, device, None, c)
    t_start = time.perf_counter()
    enc, ref = _resolve(space, reference, encoder, progress)
    p = params or AnchorParams()
    t_ref = time.perf_counter() - t_start
    out: list[AnchoringResult | AnchorError | None] = [None] * len(secs)
    runs: list[tuple[int, Run]] = []
    t0 = time.perf_counter()
    for i, (s, h, f, c) in enumerate(zip(secs, hems, flips, cuts, strict=True)):
        run = Run(s, ref, enc, p, seed, h, f, None, n_patches, device, cut=c)
        try:
            prepare(run)
        except AnchorError as exc:
            out[i] = exc
            continue
        runs.append((i, run))
    n_encoded = encode_together([r.emb for _, r in runs], [r.coarse for _, r in runs], device, batch_size)
    shared = (time.perf_counter() - t0) / max(1, len(runs))  # the batch's preparation and encoding, per section
    log.info(
        "batch of %d sections: %d coarse patch views encoded together on %s", len(runs), n_encoded, device or "cpu"
    )
    for i, run in runs:
        t_sec = time.perf_counter()
        run.timings["reference_s"] = t_ref
        run.timings["batch_shared_s"] = shared
        try:
            out[i] = _finish(run, _first_pass(run, t_sec - shared, prepared=True), t_sec - shared, stacklevel=4)
        except AnchorError as exc:
            out[i] = exc
    return [o for o in out if o is not None]


def anchor_batch(
    sections: Sequence[Section],
    space: Any = "mni152",
    reference: Any = None,
    encoder: Any = None,
    n_patches: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    hemisphere: Any = None,
    flipped: Any = None,
    params: AnchorParams | None = None,
    batch_size: int = 4096,
    cut: Any = None,
) -> list[AnchoringResult]:
    """Anchor many sections at once: each placed as :func:`anchor` places it, with the encoder run on all
    their coarse patches together and the reference's embeddings uploaded once (on a GPU this fills the
    device's batches; ``device="cuda"``).

    Parameters
    ----------
    sections : the sections (any mix of brains and planes; for one brain's series see
        :func:`~siibra_anchor.anchor_series`, which also fits them jointly).
    hemisphere, flipped, cut : one value for all sections, or a sequence with one per section.
    batch_size : patches per encoder call.
    Other parameters : as for :func:`anchor`.

    Returns
    -------
    One :class:`~siibra_anchor.result.AnchoringResult` per section, in order. A section that cannot be
    placed (no tissue, too small, no consistent placement) comes back unplaced (``placed`` False,
    confidence 0, ``diagnostics["unplaced"]`` saying why) instead of stopping the batch. Invalid
    arguments raise as in :func:`anchor`. Each result's ``diagnostics["timings"]["batch_shared_s"]`` is its
    share of the batch's joint preparation and encoding, counted in its ``total_s``.
    """
    secs = list(sections)
    done = anchor_many(
        secs, space, reference, encoder, n_patches, seed, device, progress, hemisphere, flipped, params, batch_size, cut
    )
    return [
        r if isinstance(r, AnchoringResult) else AnchoringResult.unplaced(s, reason=f"{type(r).__name__}: {r}")
        for r, s in zip(done, secs, strict=True)
    ]


def _wider(first: Run, result: AnchoringResult | None, t_start: float) -> AnchoringResult:
    """A hard section (a small block, an unusual contrast): the right placement is often among the matches
    but not among the few RANSAC hypotheses. Search again with ``retry_widen`` times more coarse patches,
    matches per patch, RANSAC trials and hypotheses, and votes on the canonical planes; keep the placement
    with the higher NMI gain (or the one that respects the hints, where only one does)."""
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
        cut=first.cut,
    )
    t_again = time.perf_counter()
    again_run.timings["reference_s"] = 0.0
    again = _pass(again_run, t_again)  # raises when the first pass found nothing and this one neither
    if result is None:
        kept = again
        kept.diagnostics["retried_wider"] = {"first_pass": None, "kept": "wider"}
    else:
        if first.hints_unmet != again_run.hints_unmet:  # the one that respects the hints
            kept = result if again_run.hints_unmet else again
        else:  # the higher score: NMI gain less the share of tissue outside the brain (AnchorParams.outside_weight)
            kept = again if float(again_run.best.score) > float(first.best.score) else result
        gain = first.features.get("nmi_gain")
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

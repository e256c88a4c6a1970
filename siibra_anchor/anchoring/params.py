"""What :func:`~siibra_anchor.anchor` is asked: the matcher's tuning (:class:`AnchorParams`), where a plane
is expected (:class:`PlanePrior`), and the checks of its arguments (typed errors naming the field)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..affine_fit import SectionMap
from ..errors import InvalidParameterError, InvalidReferenceError, InvalidSectionError
from ..section import Section

__all__ = [
    "AnchorParams",
    "PlanePrior",
    "LOW_CONFIDENCE",
    "SEARCH_BACKENDS",
    "CUTS",
    "check_anchor_call",
    "check_device",
]

#: Below this confidence :func:`~siibra_anchor.anchor` logs a warning and emits
#: :class:`~siibra_anchor.errors.LowConfidenceWarning`.
LOW_CONFIDENCE = 0.5

#: global top-k search back ends (:func:`siibra_anchor.matching.search_topk`)
SEARCH_BACKENDS = ("auto", "exact", "faiss", "faiss-hnsw")

#: The cutting planes the ``cut`` hint of :func:`~siibra_anchor.anchor` names (the reference space's canonical
#: planes, :data:`~siibra_anchor.planes.CANONICAL_PLANES`).
CUTS = ("coronal", "sagittal", "axial")


def _bad(name: str, value: Any, want: str) -> InvalidParameterError:
    return InvalidParameterError(f"AnchorParams.{name} must be {want}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class AnchorParams:
    """Tuning of the matcher (defaults are what the benchmark measures). Checked on construction:
    a value out of range raises :class:`~siibra_anchor.errors.InvalidParameterError` naming the field."""

    n_rotations: int = 12
    k: int = 8
    n_coarse: int = 200
    coarse_dim: int = 48
    ransac_trials: int = 3000
    ransac_threshold_mm: float = 7.5
    n_hypotheses: int = 6
    #: range of a placement's mean pixel scale (true / stated spacing, the geometric mean over the two in-plane
    #: axes; with ``max_anisotropy`` one axis reaches up to 1.4 * sqrt(1.35) = 1.63)
    scale_range: tuple[float, float] = (0.7, 1.4)
    #: largest ratio of the two fitted in-plane scales the intensity refinement may reach (histology shrinks
    #: anisotropically: BigBrain's shrinkage relative to MNI, 1.12 / 1.23 / 1.44 along x / y / z, gives
    #: ratios 1.29 on coronal, 1.17 on sagittal and 1.10 on axial sections; 1.35 holds all three. It was
    #: 1.15 before 2026-12-03: docs/real-anatomy.md has both tiers and the histology block with each)
    max_anisotropy: float = 1.35
    guided_radii_mm: tuple[float, ...] = (16.0, 10.0, 7.0)
    inlier_mm: float = 5.0
    max_guided_iterations: int = 4
    dense_below: int = 250
    converged_mm: float = 0.5
    refine: bool = True
    n_sample_points: int = 2000
    n_refine: int = 2
    #: Powell evaluations of the intensity refinement: (coarse, fine). Coarse: each of the best ``n_refine``
    #: candidates against the template smoothed by 2 voxels; fine: the winner at 1 and 0 voxels, and the
    #: winner's mirror image. (240, 320) refines real brains' correct placements closer to their truth but
    #: loses template-tier sections (docs/method.md has both in one benchmark run)
    refine_evals: tuple[int, int] = (120, 160)
    #: the refinement's optimiser climbs NMI from a linearly binned histogram (continuous in the placement)
    #: instead of the hard-binned one every score uses. Off by default: on the test tiers (one benchmark run)
    #: 17 real-anatomy failures instead of 19, ECE 0.07 on both tiers, but the template-family tier 2
    #: failures instead of 1, the real median 4.0 mm instead of 3.9 (docs/method.md)
    refine_smooth_nmi: bool = False
    #: weight of the share of the tissue a placement puts outside the template's brain, subtracted from the
    #: NMI gain that ranks and refines placements (the confidence still reads the NMI gain itself). NMI
    #: alone draws a section larger than the brain where its tissue is dark (echo-planar signal dropout):
    #: the dark tissue then lies on the template's background. Off by default: 0.5 (chosen on the
    #: calibration set) gave the real-anatomy tier 12 failures of 84 instead of 18 (median 3.3 mm instead
    #: of 3.8) but the template-family tier 2 failures of 48 instead of 1 (docs/method.md)
    outside_weight: float = 0.0
    # a placement with confidence below ``retry_below`` is searched again with ``retry_widen`` times more
    # coarse patches, matches per patch, RANSAC trials and hypotheses; the better-scoring placement is kept
    retry_below: float = 0.5
    retry_widen: float = 2.0
    #: also vote for placements on the reference's canonical planes
    #: (:func:`~siibra_anchor.anchoring.hypotheses.canonical_hypotheses`); the wider second search switches it on
    canonical_votes: bool = False
    #: densest vote cells kept per canonical orientation as hypotheses (each is re-matched and scored)
    canonical_keep: int = 6
    #: with the ``cut`` hint (``anchor(cut="coronal")``): placements whose plane is further than this from
    #: the named canonical plane are rejected (sections are cut within a few degrees of one; a brain's own
    #: axes may sit 10-15 degrees off the template's)
    cut_max_angle_deg: float = 30.0
    #: when > 0, the intensity refinement's winner is refined once more from its plane turned onto the
    #: nearest canonical plane of the reference (the hinted one with ``cut=``) when it lies 3 to
    #: ``snap_max_deg`` degrees off it, and replaced when that scores a higher NMI gain (the refinement can
    #: stop in a tilted local optimum). Not with a ``plane_prior``. Off by default: 25 gave the real-anatomy
    #: tier 17 failures instead of 19 but the template-family tier 2 instead of 1, 0.35 s more per section
    #: (docs/method.md)
    snap_max_deg: float = 0.0
    #: global top-k search: "auto" (faiss from 1e6 reference patches if installed), "exact", "faiss", "faiss-hnsw"
    search: str = "auto"

    def __post_init__(self) -> None:
        positive_ints: tuple[str, ...] = ("n_rotations", "k", "n_coarse", "coarse_dim", "ransac_trials", "n_hypotheses")
        positive_ints += ("n_sample_points", "canonical_keep")
        for name in positive_ints:
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise _bad(name, v, "a positive integer")
        for name in ("max_guided_iterations", "dense_below", "n_refine"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise _bad(name, v, "a non-negative integer")
        for name in ("ransac_threshold_mm", "inlier_mm", "converged_mm", "retry_widen"):
            v = getattr(self, name)
            if not _is_num(v) or v <= 0:
                raise _bad(name, v, "a positive number")
        if not _is_num(self.cut_max_angle_deg) or not 0.0 < self.cut_max_angle_deg < 90.0:
            raise _bad("cut_max_angle_deg", self.cut_max_angle_deg, "a number of degrees in (0, 90)")
        if not _is_num(self.snap_max_deg) or not 0.0 <= self.snap_max_deg < 90.0:
            raise _bad("snap_max_deg", self.snap_max_deg, "a number of degrees in [0, 90)")
        if not _is_num(self.outside_weight) or self.outside_weight < 0.0:
            raise _bad("outside_weight", self.outside_weight, "a number >= 0")
        if not _is_num(self.max_anisotropy) or self.max_anisotropy < 1.0:
            raise _bad("max_anisotropy", self.max_anisotropy, "a number >= 1")
        if not _is_num(self.retry_below) or not 0.0 <= self.retry_below <= 1.0:
            raise _bad("retry_below", self.retry_below, "a number in [0, 1]")
        ev = self.refine_evals
        if not (isinstance(ev, (tuple, list)) and len(ev) == 2 and all(_is_int(x) and x >= 1 for x in ev)):
            raise _bad("refine_evals", ev, "a pair (coarse, fine) of positive integers")
        sr = self.scale_range
        if not (isinstance(sr, (tuple, list)) and len(sr) == 2 and all(_is_num(x) for x in sr) and 0 < sr[0] <= sr[1]):
            raise _bad("scale_range", sr, "a pair (low, high) with 0 < low <= high")
        radii = self.guided_radii_mm
        if not (isinstance(radii, (tuple, list)) and radii and all(_is_num(r) and r > 0 for r in radii)):
            raise _bad("guided_radii_mm", radii, "a non-empty tuple of positive radii in mm")
        for name in ("refine", "canonical_votes", "refine_smooth_nmi"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise _bad(name, getattr(self, name), "True or False")
        if self.search not in SEARCH_BACKENDS:
            raise _bad("search", self.search, f"one of {', '.join(SEARCH_BACKENDS)}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready field values (tuples as lists), as a result's diagnostics record them."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) for v in [getattr(self, f.name)]}


@dataclass(frozen=True)
class PlanePrior:
    """Where a section's plane is expected to lie (e.g. from the rest of its series).

    normal : (3,) unit world normal ``cross(row dir, col dir)`` the placement should have (its sign
        follows the mounting; both signs are tried when ``anchor(flipped=None)``).
    offset_mm : ``normal . x`` for the points ``x`` of the expected plane (mm).
    tolerance_mm : how far from that plane reference patches are matched and placements accepted.
    row_dir : optional (3,) unit world direction of increasing rows (the expected in-plane orientation).
    scale : expected true / stated pixel spacing.
    max_angle_deg : placements whose normal is further off than this are rejected.
    """

    normal: tuple[float, float, float]
    offset_mm: float
    tolerance_mm: float = 6.0
    row_dir: tuple[float, float, float] | None = None
    scale: float = 1.0
    max_angle_deg: float = 10.0

    def agrees(self, m: SectionMap, tissue_rc: NDArray) -> bool:
        """True if map ``m`` puts the tissue (working pixels ``tissue_rc``) on the expected plane (either sign)."""
        n = np.asarray(self.normal, float)
        cos = abs(float(m.normal @ n))
        off = float(m.apply(tissue_rc).mean(axis=0) @ n) - self.offset_mm
        return cos >= np.cos(np.deg2rad(self.max_angle_deg)) and abs(off) <= self.tolerance_mm

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready field values."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) for v in [getattr(self, f.name)]}


def check_anchor_call(
    section: Any,
    hemisphere: Any,
    flipped: Any,
    n_patches: Any,
    seed: Any,
    reference: Any,
    params: Any,
    device: Any,
    plane_prior: Any = None,
    cut: Any = None,
) -> None:
    """Typed errors for the arguments of :func:`~siibra_anchor.anchor`: the section
    (:class:`~siibra_anchor.errors.InvalidSectionError`), the reference
    (:class:`~siibra_anchor.errors.InvalidReferenceError`), every other argument
    (:class:`~siibra_anchor.errors.InvalidParameterError`, naming it)."""
    from ..reference import Reference

    if not isinstance(section, Section):
        raise InvalidSectionError(
            f"anchor() needs a siibra_anchor.Section, got {type(section).__name__}; "
            "wrap arrays with sa.Section(image, spacing_mm=...)"
        )
    if hemisphere not in (None, "left", "right"):
        raise InvalidParameterError(f"hemisphere must be None, 'left' or 'right', got {hemisphere!r}")
    if flipped not in (None, True, False):
        raise InvalidParameterError(f"flipped must be None, True or False, got {flipped!r}")
    if cut is not None and cut not in CUTS:
        raise InvalidParameterError(f"cut must be None or one of {', '.join(map(repr, CUTS))}, got {cut!r}")
    if n_patches is not None and (not _is_int(n_patches) or n_patches < 6):
        raise InvalidParameterError(f"n_patches must be an integer >= 6 or None, got {n_patches!r}")
    if not _is_int(seed) or seed < 0:
        raise InvalidParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if reference is not None and not isinstance(reference, Reference):
        raise InvalidReferenceError(
            f"reference must be a siibra_anchor.Reference, got {type(reference).__name__}; "
            "build one with sa.Reference.from_space(...) or load it with sa.Reference.load(path)"
        )
    if params is not None and not isinstance(params, AnchorParams):
        raise InvalidParameterError(f"params must be an AnchorParams, got {type(params).__name__}")
    if plane_prior is not None and not isinstance(plane_prior, PlanePrior):
        raise InvalidParameterError(f"plane_prior must be a PlanePrior or None, got {type(plane_prior).__name__}")
    if device is not None:
        check_device(device)


def check_device(device: Any) -> None:
    """A torch device this machine has: a name ("cpu", "cuda", "cuda:1", "mps") or a ``torch.device``;
    otherwise :class:`InvalidParameterError` saying what to pass."""
    import torch

    if not isinstance(device, str) and type(device).__name__ != "device":
        raise InvalidParameterError(f"device must be a torch device name such as 'cpu' or 'cuda', got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InvalidParameterError(f"device {device!r} is not a torch device name such as 'cpu' or 'cuda'") from exc
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise InvalidParameterError(
                f"device {device!r}: this machine has {n} CUDA device(s) usable by torch "
                f"{torch.__version__}; pass device='cpu' (or None), or install a CUDA build of torch"
            )
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InvalidParameterError(f"device {device!r}: no Apple MPS device here; pass device='cpu' (or None)")

"""Series anchoring: sections of one brain, anchored one by one and then fitted jointly.

Sections cut from one block are near-parallel, ordered, and evenly spaced when the cutting thickness is
known. :func:`anchor_series` anchors every section independently (in-process or on a Dask cluster), fits a
:class:`SeriesModel` to the placements robustly (a common normal, the position along it as a linear
function of the section number, a common in-plane orientation and pixel-scale error when the sections
share them), re-anchors the sections that disagree with the model using the model's plane as a prior
(:class:`~siibra_anchor.anchoring.PlanePrior`), moves every section onto the model's plane and refines its
in-plane position by mutual information with the template, and flags what still disagrees.

Coordinates follow DESIGN.md: affines map pixel ``(row, col, 0, 1)`` to world mm (RAS+).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import AnchorError, AnchoringFailedError, InvalidParameterError, InvalidSectionError
from ..planes import plane_basis
from ..result import AnchoringResult
from ..section import Section
from .params import PlanePrior

__all__ = ["SeriesModel", "SeriesResult", "fit_series", "anchor_series", "dask_client", "series_confidence"]

log = logging.getLogger(__name__)


# -- geometry of one placement ------------------------------------------------------------------------
def _unit(v: NDArray) -> NDArray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def tissue_centroid_px(mask: NDArray) -> NDArray:
    """(2,) mean (row, col) of the tissue pixels of an (H, W) mask."""
    rr, cc = np.nonzero(np.asarray(mask, bool))
    return np.array([rr.mean(), cc.mean()], float)


@dataclass
class _Placement:
    """What the joint fit needs of one section's placement: unit normal, tissue centroid (mm), unit row
    direction, pixel-scale factor (true / stated spacing) and weight (confidence)."""

    normal: NDArray
    centre: NDArray
    row_dir: NDArray
    scale: float
    weight: float

    @classmethod
    def of(cls, affine: NDArray, centroid_px: NDArray, spacing_mm: Sequence[float], weight: float) -> _Placement:
        lin = affine[:3, :2]
        sc = np.linalg.norm(lin, axis=0) / np.asarray(spacing_mm, float)
        return cls(
            normal=_unit(np.cross(lin[:, 0], lin[:, 1])),
            centre=lin @ centroid_px + affine[:3, 3],
            row_dir=_unit(lin[:, 0]),
            scale=float(np.mean(sc)),
            weight=float(weight),
        )


# -- the joint model ----------------------------------------------------------------------------------
@dataclass
class SeriesModel:
    """Robust fit of a series' placements.

    normal : (3,) unit normal shared by the sections (sign: that of the majority's ``cross(row, col)``).
    intercept_mm, slope_mm : the tissue centre of section number ``k`` lies at ``intercept + slope * k``
        along ``normal`` (mm); ``slope_fixed`` when it came from the given cutting thickness.
    row_angle_deg : common in-plane orientation (angle of the row direction in :meth:`basis`), or None
        when the sections are mounted at unrelated rotations (spread above ``max_spread_deg``).
    scale : median true / stated pixel spacing; ``scale_spread`` its robust relative spread.
    sigma_mm : robust spread of the positions along the normal about the line.
    inliers : (N,) bool, the sections that agree with the model.
    """

    normal: NDArray
    intercept_mm: float
    slope_mm: float
    slope_fixed: bool
    row_angle_deg: float | None
    angle_spread_deg: float
    scale: float
    scale_spread: float
    sigma_mm: float
    inliers: NDArray
    residual_mm: NDArray = field(default_factory=lambda: np.zeros(0))
    angle_off_deg: NDArray = field(default_factory=lambda: np.zeros(0))

    def basis(self) -> tuple[NDArray, NDArray]:
        return plane_basis(self.normal)

    def offset_mm(self, number: float) -> float:
        """Position along :attr:`normal` of the plane of section number ``number`` (mm)."""
        return float(self.intercept_mm + self.slope_mm * number)

    def row_dir(self) -> NDArray | None:
        if self.row_angle_deg is None:
            return None
        e1, e2 = self.basis()
        a = np.deg2rad(self.row_angle_deg)
        return np.cos(a) * e1 + np.sin(a) * e2

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": self.normal.tolist(),
            "intercept_mm": self.intercept_mm,
            "slope_mm": self.slope_mm,
            "slope_fixed": self.slope_fixed,
            "row_angle_deg": self.row_angle_deg,
            "angle_spread_deg": self.angle_spread_deg,
            "scale": self.scale,
            "scale_spread": self.scale_spread,
            "sigma_mm": self.sigma_mm,
            "n_inliers": int(self.inliers.sum()),
        }


def _wmedian(x: NDArray, w: NDArray) -> float:
    """Weighted median of ``x``."""
    o = np.argsort(x)
    cw = np.cumsum(w[o])
    return float(x[o][np.searchsorted(cw, 0.5 * cw[-1])])


def _common_normal(normals: NDArray, w: NDArray, max_angle_deg: float) -> tuple[NDArray, NDArray]:
    """Sign-insensitive robust mean direction: principal axis of the weighted scatter, recomputed twice on
    the normals within ``max_angle_deg`` of it. Returns (normal, inlier mask)."""
    keep = np.ones(len(normals), bool)
    n = normals[0]
    for _ in range(3):
        ww = w * keep
        if ww.sum() <= 0:
            ww = keep.astype(float)
        scatter = (normals * ww[:, None]).T @ normals
        n = np.linalg.eigh(scatter)[1][:, -1]
        keep = np.abs(normals @ n) >= np.cos(np.deg2rad(max_angle_deg))
    sgn = np.sign(normals @ n)
    if float((w * sgn * keep).sum()) < 0:
        n = -n
    return n, keep


def _fit_line(
    k: NDArray, d: NDArray, w: NDArray, thickness_mm: float | None, threshold_mm: float, rng: np.random.Generator
) -> tuple[float, float, NDArray]:
    """Robust ``d ~ a + b k``: with ``thickness_mm`` the slope is +-thickness (the better sign wins),
    otherwise RANSAC over section pairs then weighted least squares on the inliers. Returns (a, b, inliers)."""
    cands: list[tuple[float, float]] = []
    if thickness_mm is not None:
        for b in (thickness_mm, -thickness_mm):
            cands.append((_wmedian(d - b * k, w), b))
    else:
        pairs = [(i, j) for i in range(len(k)) for j in range(i + 1, len(k)) if k[i] != k[j]]
        if len(pairs) > 3000:
            sel = rng.choice(len(pairs), 3000, replace=False)
            pairs = [pairs[s] for s in sel]
        for i, j in pairs:
            b = (d[j] - d[i]) / (k[j] - k[i])
            cands.append((d[i] - b * k[i], b))
        if not cands:  # every section has the same number: a constant position
            cands.append((_wmedian(d, w), 0.0))
    best = max(cands, key=lambda ab: float((w * (np.abs(d - ab[0] - ab[1] * k) < threshold_mm)).sum()))
    a, b = best
    inl = np.abs(d - a - b * k) < threshold_mm
    if inl.sum() >= 2:
        ww = np.maximum(w[inl], 1e-6)
        if thickness_mm is not None:
            a = _wmedian(d[inl] - b * k[inl], ww)
        elif np.ptp(k[inl]) > 0:
            A = np.stack([np.ones(inl.sum()), k[inl]], axis=1) * np.sqrt(ww)[:, None]
            a, b = np.linalg.lstsq(A, d[inl] * np.sqrt(ww), rcond=None)[0]
        inl = np.abs(d - a - b * k) < threshold_mm
    return float(a), float(b), inl


def fit_series(
    placements: Sequence[_Placement],
    numbers: NDArray,
    thickness_mm: float | None = None,
    max_angle_deg: float = 6.0,
    offset_tol_mm: float = 3.0,
    max_spread_deg: float = 15.0,
    seed: int = 0,
) -> SeriesModel:
    """Fit a :class:`SeriesModel` to independent placements.

    numbers : (N,) section numbers (positions in the cutting order; gaps allowed).
    A section is an inlier when its normal is within ``max_angle_deg`` of the common one (and has the
    majority's sign), its tissue centre within ``max(offset_tol_mm, 3 sigma)`` of the line, and, when the
    series has a common orientation, its row direction within 20 degrees of it.
    """
    if len(placements) < 3:
        raise InvalidSectionError(f"a joint series fit needs at least 3 placed sections, got {len(placements)}")
    k = np.asarray(numbers, float)
    normals = np.stack([p.normal for p in placements])
    w = np.array([max(p.weight, 1e-3) for p in placements])
    n, ok_n = _common_normal(normals, w, max_angle_deg)
    ok_n &= normals @ n > 0
    if ok_n.sum() < 2:
        raise AnchoringFailedError(
            f"no common cutting plane: at most one of the {len(placements)} placed sections lies within "
            f"{max_angle_deg:g} degrees of the sections' principal normal (the independent placements "
            "disagree on the plane); the series is returned as placed independently"
        )
    d = np.stack([p.centre for p in placements]) @ n
    rng = np.random.default_rng(seed)
    a, b, ok_d = _fit_line(k[ok_n], d[ok_n], w[ok_n], thickness_mm, offset_tol_mm, rng)
    res = d - a - b * k
    sub = ok_n.copy()
    sub[ok_n] = ok_d
    sigma = float(max(1.4826 * _wmedian(np.abs(res[sub]), w[sub]), 0.25)) if sub.any() else offset_tol_mm
    ok_d_all = np.abs(res) <= max(offset_tol_mm, 3.0 * sigma)
    # in-plane orientation in the common plane's basis
    e1, e2 = plane_basis(n)
    ang = np.array([np.arctan2(p.row_dir @ e2, p.row_dir @ e1) for p in placements])
    base = sub if sub.any() else np.ones(len(k), bool)
    c = np.exp(1j * ang[base])
    mean_ang = float(np.angle((w[base] * c).sum()))
    dev = np.angle(np.exp(1j * (ang - mean_ang)))
    spread = float(np.rad2deg(1.4826 * _wmedian(np.abs(dev[base]), w[base])))
    common_angle: float | None = None
    angle_off = np.rad2deg(np.abs(dev))
    ok_a = np.ones(len(k), bool)
    if spread <= max_spread_deg:
        med = mean_ang + _wmedian(dev[base], w[base])
        common_angle = float(np.rad2deg(med))
        angle_off = np.rad2deg(np.abs(np.angle(np.exp(1j * (ang - med)))))
        ok_a = angle_off <= 20.0
    scales = np.array([p.scale for p in placements])
    scale = _wmedian(scales[base], w[base])
    scale_spread = float(1.4826 * _wmedian(np.abs(scales[base] / scale - 1.0), w[base]))
    inl = ok_n & ok_d_all & ok_a
    return SeriesModel(
        normal=n,
        intercept_mm=a,
        slope_mm=b,
        slope_fixed=thickness_mm is not None,
        row_angle_deg=common_angle,
        angle_spread_deg=spread,
        scale=float(scale),
        scale_spread=scale_spread,
        sigma_mm=sigma,
        inliers=inl,
        residual_mm=res,
        angle_off_deg=angle_off,
    )


# -- moving a section onto the model's plane ---------------------------------------------------------
def snap_to_plane(
    affine: NDArray,
    centroid_px: NDArray,
    normal: NDArray,
    offset_mm: float,
    scale: float | None,
    spacing_mm: Sequence[float],
    row_dir: NDArray | None = None,
) -> NDArray:
    """The placement closest to ``affine`` whose plane is ``normal . x = offset_mm``.

    The section keeps its handedness (mounting), the tissue centre moves along the normal onto the
    plane, the row direction is projected into the plane (or set to ``row_dir``), and the pixel size
    becomes ``scale * spacing_mm`` when ``scale`` is given. Returns a (4, 4) affine.
    """
    from ..planes import section_affine

    lin = affine[:3, :2]
    own_n = _unit(np.cross(lin[:, 0], lin[:, 1]))
    nn = normal if float(own_n @ normal) >= 0 else -normal
    r = lin[:, 0] if row_dir is None else np.asarray(row_dir, float)
    r = _unit(r - (r @ nn) * nn)
    cdir = np.cross(nn, r)
    size = np.linalg.norm(lin, axis=0) if scale is None else float(scale) * np.asarray(spacing_mm, float)
    new = np.stack([r * size[0], cdir * size[1]], axis=1)
    centre = lin @ centroid_px + affine[:3, 3]
    centre = centre + (offset_mm - float(centre @ normal)) * normal
    return section_affine(new, centre - new @ centroid_px, float(np.linalg.norm(affine[:3, 2])))


def _nmi_points(section: Section, reference: Any, seed: int) -> tuple[Any, NDArray]:
    """The 2000 seeded tissue sample points the NMI scores use, at the reference's working spacing, and
    the (2,) factor from original to working pixels."""
    from ..patches import normalize_intensity
    from ..refine import sample_points

    img, msk, sc = section.at_spacing(reference.spec.spacing_mm)
    return sample_points(normalize_intensity(img, msk), msk, 2000, np.random.default_rng(seed)), sc


def refine_in_plane(
    section: Section, affine: NDArray, reference: Any, seed: int = 0, max_evals: int = 200
) -> tuple[NDArray, float]:
    """Refine a placement within its plane (rotation about the normal, two translations) by NMI with the
    template, coarse to fine. Returns (affine, NMI gain over planes shifted 15 mm away)."""
    from scipy import optimize
    from scipy.spatial.transform import Rotation

    from ..planes import section_affine
    from ..refine import nmi_gain, plane_nmi

    pts, sc = _nmi_points(section, reference, seed)
    lin = affine[:3, :2] * sc[None, :]  # working pixels
    t = affine[:3, 3]
    n = _unit(np.cross(lin[:, 0], lin[:, 1]))
    e1, e2 = plane_basis(n)
    c_px = pts.rc.mean(axis=0)
    c0 = lin @ c_px + t

    def compose(p: NDArray, lin0: NDArray, t0: NDArray) -> tuple[NDArray, NDArray]:
        rot = Rotation.from_rotvec(p[0] * 0.05 * n).as_matrix()
        li = rot @ lin0
        cen = lin0 @ c_px + t0 + p[1] * e1 + p[2] * e2
        return li, cen - li @ c_px

    for sg in (1.0, 0.0):
        vol = reference.smoothed_volume(sg)

        def cost(p: NDArray, vol: NDArray = vol, lin0: NDArray = lin, t0: NDArray = t) -> float:
            li, ti = compose(p, lin0, t0)
            return -plane_nmi(pts, li, ti, vol, reference.volume_affine)

        r = optimize.minimize(cost, np.zeros(3), method="Powell", options={"maxfev": max_evals, "xtol": 1e-2})
        lin, t = compose(r.x, lin, t)
    moved = float(np.linalg.norm(lin @ c_px + t - c0))
    log.debug("in-plane refinement moved %r by %.2f mm", section.name, moved)
    gain = nmi_gain(pts, lin, t, reference.volume, reference.volume_affine)
    return section_affine(lin / sc[None, :], t, float(np.linalg.norm(affine[:3, 2]))), gain


def placement_nmi_gain(section: Section, affine: NDArray, reference: Any, seed: int = 0) -> float:
    """NMI gain (over planes shifted 15 mm away) of ``section`` placed by ``affine``, without refinement."""

    from ..refine import nmi_gain

    pts, sc = _nmi_points(section, reference, seed)
    return float(nmi_gain(pts, affine[:3, :2] * sc[None, :], affine[:3, 3], reference.volume, reference.volume_affine))


# -- engines -------------------------------------------------------------------------------------------
_WORKER_STATE: dict[str, Any] = {}


def _worker_setup() -> None:
    """Once per process: one torch thread (the cluster's workers are the parallelism)."""
    if not _WORKER_STATE.get("setup"):
        import torch

        torch.set_num_threads(1)
        _WORKER_STATE["setup"] = True


def _encoder(encoder: Any) -> Any:
    if encoder is not None:
        return encoder
    if "encoder" not in _WORKER_STATE:
        from ..encoders import load_default_encoder

        _WORKER_STATE["encoder"] = load_default_encoder()
    return _WORKER_STATE["encoder"]


def _anchor_task(
    item: tuple[Section, dict[str, Any]], reference: Any, encoder: Any, in_worker: bool = False
) -> AnchoringResult | AnchorError:
    """Anchor one section (runs on a worker). A typed failure comes back as the exception object so one
    bad section does not stop the series."""
    from .pipeline import anchor

    if in_worker:
        _worker_setup()
    section, kw = item
    try:
        return anchor(section, reference=reference, encoder=_encoder(encoder), **kw)
    except AnchorError as exc:
        return exc


def _score_task(
    item: tuple[Section, NDArray, int], reference: Any, encoder: Any = None, in_worker: bool = False
) -> float:
    if in_worker:
        _worker_setup()
    section, affine, seed = item
    return placement_nmi_gain(section, affine, reference, seed=seed)


def _refine_task(
    item: tuple[Section, NDArray, int], reference: Any, encoder: Any = None, in_worker: bool = False
) -> tuple[NDArray, float]:
    if in_worker:
        _worker_setup()
    section, affine, seed = item
    return refine_in_plane(section, affine, reference, seed=seed)


def dask_client(scheduler: Any = "local", n_workers: int = 2) -> tuple[Any, Callable[[], None]]:
    """A ``distributed.Client`` and a function that releases what was started here.

    scheduler : "local" (a new ``LocalCluster`` of ``n_workers`` single-threaded processes), a scheduler
        address ("tcp://host:8786"), or an existing ``distributed.Client`` (used as is, not closed).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # the dask extra is optional
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            "series anchoring on Dask needs dask and distributed: pip install 'siibra-anchor[dask]', "
            "or anchor in this process (scheduler=None; CLI: --in-process)"
        ) from exc
    if isinstance(scheduler, Client):
        return scheduler, lambda: None
    if scheduler == "local":
        if not isinstance(n_workers, int) or n_workers < 1:
            raise InvalidParameterError(f"n_workers must be a positive integer, got {n_workers!r}")
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)

        def close() -> None:
            client.close()
            cluster.close()

        return client, close
    if not isinstance(scheduler, str) or not scheduler:
        raise InvalidParameterError(
            f"scheduler must be None, 'local', an address like 'tcp://host:8786' or a Client, got {scheduler!r}"
        )
    from ..errors import NetworkError

    try:
        client = Client(scheduler, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise NetworkError(
            f"cannot reach the Dask scheduler at {scheduler!r} within 30 s ({exc}); start it "
            "(`dask scheduler`) or leave --scheduler out for a local cluster"
        ) from exc
    return client, client.close


class _Engine:
    """Maps a task over items, in this process or on a Dask cluster; shared inputs are sent once."""

    def __init__(self, scheduler: Any, n_workers: int) -> None:
        self.client = None
        self._close: Callable[[], None] = lambda: None
        self._shared: dict[int, Any] = {}
        if scheduler is not None:
            self.client, self._close = dask_client(scheduler, n_workers)

    def shared(self, obj: Any) -> Any:
        """``obj`` as the tasks receive it: itself in-process, a future of one broadcast copy on Dask."""
        if self.client is None or obj is None:
            return obj
        if id(obj) not in self._shared:
            self._shared[id(obj)] = self.client.scatter(obj, broadcast=True, hash=False)
        return self._shared[id(obj)]

    def map(self, fn: Callable[..., Any], items: list[Any], progress: bool = False, **shared: Any) -> list[Any]:
        if not items:
            return []
        if self.client is None:
            it: Any = items
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(items, desc="sections", unit="section")
            return [fn(x, **shared) for x in it]
        futs = self.client.map(fn, items, pure=False, in_worker=True, **{k: self.shared(v) for k, v in shared.items()})
        if progress:
            from distributed import as_completed
            from tqdm.auto import tqdm

            for _ in tqdm(as_completed(futs), total=len(futs), desc="sections", unit="section"):
                pass
        return self.client.gather(futs)

    def close(self) -> None:
        self._close()


# -- results -------------------------------------------------------------------------------------------
class SeriesResult(list):
    """The :class:`~siibra_anchor.result.AnchoringResult` of every section (in input order), plus the joint
    fit: ``model`` (:class:`SeriesModel` or None), ``confidence`` (series level, in [0, 1]), ``flags``
    (per-section lists of strings) and ``diagnostics``."""

    def __init__(
        self,
        results: Sequence[AnchoringResult],
        model: SeriesModel | None,
        confidence: float,
        diagnostics: dict[str, Any],
    ) -> None:
        super().__init__(results)
        self.model = model
        self.confidence = float(confidence)
        self.diagnostics = diagnostics

    @property
    def flags(self) -> list[list[str]]:
        return [list(r.diagnostics.get("flags", [])) for r in self]

    def to_dict(self) -> dict[str, Any]:
        """Series-level summary (JSON-able): model, confidence, per-section name/confidence/flags."""
        return {
            "confidence": self.confidence,
            "model": self.model.to_dict() if self.model is not None else None,
            "sections": [
                {
                    "name": r.section.get("name"),
                    "number": r.diagnostics.get("series", {}).get("number"),
                    "confidence": r.confidence,
                    "own_confidence": r.diagnostics.get("series", {}).get("own_confidence"),
                    "flags": r.diagnostics.get("flags", []),
                    "affine": r.affine.tolist(),
                }
                for r in self
            ],
            "diagnostics": self.diagnostics,
        }


def _validate(sections: Sequence[Section], order: Sequence[float] | None, thickness_mm: float | None) -> NDArray:
    if not isinstance(sections, Sequence) or isinstance(sections, (str, bytes)) or len(sections) == 0:
        raise InvalidSectionError(f"anchor_series needs a non-empty list of Sections, got {type(sections).__name__}")
    for i, s in enumerate(sections):
        if not isinstance(s, Section):
            raise InvalidSectionError(
                f"anchor_series: item {i} is a {type(s).__name__}, not a siibra_anchor.Section; "
                "wrap arrays with sa.Section(image, spacing_mm=...)"
            )
    if thickness_mm is not None and not (np.isfinite(thickness_mm) and thickness_mm > 0):
        raise InvalidParameterError(f"thickness_mm must be a positive number of mm or None, got {thickness_mm!r}")
    if order is None:
        return np.arange(len(sections), dtype=float)
    k = np.asarray(order, dtype=float)
    if k.shape != (len(sections),) or not np.all(np.isfinite(k)):
        raise InvalidParameterError(
            f"order must hold one finite section number per section ({len(sections)}), got {list(order)!r}"
        )
    if len(np.unique(k)) != len(k):
        raise InvalidParameterError("order holds the same section number twice; give each section its own number")
    return k


def anchor_series(
    sections: Sequence[Section],
    space: Any = "mni152",
    order: Sequence[float] | None = None,
    thickness_mm: float | None = None,
    reference: Any = None,
    encoder: Any = None,
    seed: int = 0,
    hemisphere: str | None = None,
    flipped: bool | None = None,
    params: Any = None,
    joint: bool = True,
    scheduler: Any = None,
    n_workers: int = 2,
    progress: bool = False,
    **kwargs: Any,
) -> SeriesResult:
    """Anchor the sections of one brain, jointly consistent.

    Parameters
    ----------
    sections : the series' :class:`~siibra_anchor.section.Section` objects, any order.
    space : space name (ignored when ``reference`` is given).
    order : section numbers in the cutting order, one per section (gaps allowed); default 0, 1, 2, ...
        in the given order.
    thickness_mm : cutting thickness: consecutive numbers lie this far apart along the normal. Unknown
        (None): the spacing is fitted.
    reference, encoder, seed, hemisphere, flipped, params : as for :func:`~siibra_anchor.anchor`, shared by
        all sections; other keyword arguments (``n_patches``, ``device``, ``cut``: one cutting plane for the
        whole series) go to it too.
    joint : False gives the independent placements (with the series fit only reported).
    scheduler : None (in this process), "local" (a Dask ``LocalCluster`` of ``n_workers`` processes), a
        scheduler address, or a ``distributed.Client``.

    Returns
    -------
    :class:`SeriesResult`: one result per section in input order, each with ``diagnostics["flags"]``
    (``"outlier-reanchored"``, ``"disagrees-with-series"``, ``"failed"``, ...) and
    ``diagnostics["series"]``; ``.confidence`` is the series-level confidence.
    """
    from ..encoders import load_default_encoder
    from ..reference import Reference

    numbers = _validate(sections, order, thickness_mm)
    t_start = time.perf_counter()
    enc = encoder if encoder is not None else load_default_encoder()
    if reference is None:
        reference = Reference.from_space(space, encoder=enc, progress=progress)
    base_kw = dict(seed=seed, hemisphere=hemisphere, flipped=flipped, params=params, **kwargs)
    engine = _Engine(scheduler, n_workers)
    if engine.client is not None:
        # a copy without the lazily built caches (smoothed volumes, k-d tree: 124 MB -> 52 MB pickled for the
        # embedded MNI152 reference); measured cheaper than each worker loading it from the cache (3 s)
        from dataclasses import replace

        reference = replace(reference)
    try:
        # on Dask with the shipped encoder, each worker loads it itself (no transfer)
        task_enc = enc if engine.client is None else encoder
        t0 = time.perf_counter()
        if engine.client is None:
            # in this process: one batch, the sections' coarse patches encoded together (anchor_batch)
            from .pipeline import anchor_many

            first = anchor_many(sections, reference=reference, encoder=enc, **base_kw)
        else:
            first = engine.map(
                _anchor_task, [(s, base_kw) for s in sections], progress=progress, reference=reference, encoder=task_enc
            )
        timings = {"independent_s": time.perf_counter() - t0}
        out = _joint(sections, numbers, thickness_mm, first, engine, reference, task_enc, base_kw, joint, seed, timings)
    finally:
        engine.close()
    out.diagnostics["timings"]["total_s"] = time.perf_counter() - t_start
    out.diagnostics["engine"] = (
        "in-process" if scheduler is None else f"dask ({scheduler if isinstance(scheduler, str) else 'client'})"
    )
    return out


@dataclass
class _Series:
    """What the steps of a joint fit share: the sections, their numbers in cutting order, the cutting
    thickness (None: fitted), each section's independent result (an AnchoringResult, or the error that
    stopped it), which were placed, their tissue centroids (px) and the seed."""

    sections: Sequence[Section]
    numbers: NDArray
    thickness_mm: float | None
    first: list[Any]
    seed: int
    ok: list[bool] = field(init=False)
    cent: list[NDArray] = field(init=False)

    def __post_init__(self) -> None:
        self.ok = [isinstance(r, AnchoringResult) for r in self.first]
        self.cent = [tissue_centroid_px(sec.mask) for sec in self.sections]

    def placement(self, i: int, affine: NDArray | None = None) -> _Placement:
        """Section ``i`` placed by ``affine`` (default: its independent result), weighted by its confidence."""
        r = self.first[i]
        return _Placement.of(
            r.affine if affine is None else affine, self.cent[i], self.sections[i].spacing_mm, r.confidence
        )


def _joint(
    sections: Sequence[Section],
    numbers: NDArray,
    thickness_mm: float | None,
    first: list[Any],
    engine: _Engine,
    reference: Any,
    enc: Any,
    base_kw: dict[str, Any],
    joint: bool,
    seed: int,
    timings: dict[str, float],
) -> SeriesResult:
    """Fit the series to the independent placements, re-anchor outliers with the model's prior, move every
    section onto the model's plane and refine it in-plane, flag what still disagrees."""
    ser = _Series(sections, numbers, thickness_mm, first, seed)
    n, ok, cent = len(sections), ser.ok, ser.cent
    flags: list[list[str]] = [[] if o else ["failed"] for o in ok]
    if sum(ok) < 3 or not joint:
        return _independent_series(ser, flags, joint, timings)
    independent = [r.affine.copy() if isinstance(r, AnchoringResult) else None for r in first]
    t0 = time.perf_counter()
    try:
        model = _fit(ser, ok)
    except AnchoringFailedError as exc:  # no common plane among the placements: nothing to fit jointly
        log.warning("series: %s", exc)
        return _independent_series(ser, [f + ["no-common-plane"] for f in flags], joint, timings, reason=str(exc))
    timings["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, families = _choose_family(model, ser, engine, reference)
    timings["family_s"] = time.perf_counter() - t0
    own = [r if isinstance(r, AnchoringResult) else None for r in first]
    outl = [i for i in range(n) if not (ok[i] and model.inliers[i])]
    t0 = time.perf_counter()
    chosen, agree = _reanchor_outliers(ser, own, outl, model, flags, engine, reference, enc, base_kw)
    timings["reanchor_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    snapped = _snap_and_refine(ser, chosen, model, engine, reference)
    timings["refine_s"] = time.perf_counter() - t0
    results: list[AnchoringResult] = []
    for i in range(n):
        ci = chosen[i]
        if ci is None:
            results.append(_placed_by_series(sections[i], i, numbers, model, chosen, cent, agree))
            flags[i].append("placed-by-series")
            continue
        ci.diagnostics["flags"] = flags[i]
        results.append(
            _on_series_plane(ci, snapped[i], bool(agree[i]), independent[i], cent[i], sections[i], numbers[i], model)
        )
    for r, f in zip(results, flags, strict=True):
        r.diagnostics["flags"] = f
    agree_frac = float(np.mean(agree))
    confs = np.array([r.confidence for r in results])
    series_conf = agree_frac * float(np.median(confs)) * float(np.exp(-((model.sigma_mm / 5.0) ** 2)))
    diag = {
        "timings": timings,
        "n_sections": n,
        "joint": True,
        "n_outliers": len(outl),
        "n_reanchored_agree": int(sum("outlier-reanchored" in f for f in flags)),
        "n_disagree": int(sum("disagrees-with-series" in f for f in flags)),
        "n_failed": int(sum("failed" in f for f in flags)),
        "agree_fraction": agree_frac,
        "families": families,
    }
    return SeriesResult(results, model, series_conf, diag)


def _independent_series(
    ser: _Series, flags: list[list[str]], joint: bool, timings: dict[str, float], reason: str | None = None
) -> SeriesResult:
    """The independent placements as the series' result (asked for, fewer than 3 placed sections, or no
    common plane among them: ``reason``); the model is fitted only to report how many disagree."""
    sections, numbers = ser.sections, ser.numbers
    done = [_fill_failed(r, sec) for r, sec in zip(ser.first, sections, strict=True)]
    for r, f, k in zip(done, flags, numbers, strict=True):
        r.diagnostics["flags"] = f + ([] if r.placed else ["unplaced"]) + ([] if joint else ["independent"])
        r.diagnostics["series"] = {
            "number": float(k),
            "own_confidence": r.confidence,
            "independent_affine": r.affine.tolist(),
        }
    conf = float(np.median([r.confidence for r in done]))
    diag: dict[str, Any] = {"timings": timings, "n_sections": len(sections), "joint": False}
    model = None
    if reason is not None:
        diag["not_joint_because"] = reason
    elif sum(ser.ok) >= 3:
        try:
            model = _fit(ser, ser.ok)
            diag["n_disagree"] = int((~model.inliers).sum())
        except AnchoringFailedError as exc:
            diag["not_joint_because"] = str(exc)
    return SeriesResult(done, model, conf, diag)


def _reanchor_outliers(
    ser: _Series,
    own: list[AnchoringResult | None],
    outl: list[int],
    model: SeriesModel,
    flags: list[list[str]],
    engine: _Engine,
    reference: Any,
    enc: Any,
    base_kw: dict[str, Any],
) -> tuple[list[AnchoringResult | None], NDArray]:
    """Anchor the outliers (and failures) again with the model's plane as prior. Returns each section's
    chosen result (None: still unplaced) and whether it agrees with the model; flags say what happened."""
    sections, numbers = ser.sections, ser.numbers
    tol = float(max(3.0, 3.0 * model.sigma_mm))
    rd = model.row_dir()

    def prior_for(i: int) -> PlanePrior:
        return PlanePrior(
            normal=tuple(float(v) for v in model.normal),  # type: ignore[arg-type]
            offset_mm=model.offset_mm(float(numbers[i])),
            tolerance_mm=tol + 3.0,
            row_dir=None if rd is None else tuple(float(v) for v in rd),  # type: ignore[arg-type]
            scale=model.scale,
        )

    tasks = [(sections[i], {**base_kw, "plane_prior": prior_for(i)}) for i in outl]
    re = engine.map(_anchor_task, tasks, reference=reference, encoder=enc)
    chosen: list[AnchoringResult | None] = list(own)
    agree = model.inliers.copy()
    for i, r in zip(outl, re, strict=True):
        if not isinstance(r, AnchoringResult):
            flags[i].append("disagrees-with-series")
            continue
        pl = _Placement.of(r.affine, ser.cent[i], sections[i].spacing_mm, r.confidence)
        good = _agrees(pl, model, float(numbers[i]), tol)
        agree[i] = good
        flags[i].append("outlier-reanchored" if good else "disagrees-with-series")
        mine = own[i]
        if mine is not None and not good:
            # keep the independent placement as an alternative the user can inspect
            r.alternatives.append(
                {
                    "affine": mine.affine,
                    "score": float(mine.diagnostics.get("nmi_gain") or 0.0),
                    "inlier_fraction": float(mine.diagnostics.get("consistency") or 0.0),
                    "label": "independent placement (disagrees with the series)",
                }
            )
        chosen[i] = r
    return chosen, agree


def _snap_and_refine(
    ser: _Series, chosen: list[AnchoringResult | None], model: SeriesModel, engine: _Engine, reference: Any
) -> dict[int, tuple[NDArray, float | None]]:
    """Every placed section moved onto the model's plane, then refined in-plane by NMI (when the reference
    has a volume). Returns {section index: (affine, NMI gain or None)}."""
    sections, numbers, cent, seed = ser.sections, ser.numbers, ser.cent, ser.seed
    use_scale = model.scale if model.scale_spread < 0.05 else None
    items, idx = [], []
    for i, ci in enumerate(chosen):
        if ci is None:
            continue
        a = snap_to_plane(
            ci.affine, cent[i], model.normal, model.offset_mm(float(numbers[i])), use_scale, sections[i].spacing_mm
        )
        items.append((sections[i], a, seed))
        idx.append(i)
    refined = engine.map(_refine_task, items, reference=reference) if reference.volume is not None else []
    return {i: refined[j] if refined else (items[j][1], None) for j, i in enumerate(idx)}


def _on_series_plane(
    r: AnchoringResult,
    snapped: tuple[NDArray, float | None],
    agrees: bool,
    independent: NDArray | None,
    centroid: NDArray,
    section: Section,
    number: float,
    model: SeriesModel,
) -> AnchoringResult:
    """``r`` moved to its snapped, refined placement, with the series diagnostics (its own placement and
    how far it was from the model), and its confidence recomputed for that placement
    (:func:`series_confidence`)."""
    own_aff = r.affine
    r.affine, gain = snapped
    own_conf = r.confidence
    r.confidence = series_confidence(r, gain, section)
    pl = _Placement.of(own_aff, centroid, section.spacing_mm, own_conf)
    r.diagnostics["series"] = {
        "number": float(number),
        "own_confidence": own_conf,
        "own_affine": own_aff.tolist(),
        "independent_affine": None if independent is None else independent.tolist(),
        "offset_residual_mm": float(pl.centre @ model.normal - model.offset_mm(float(number))),
        "normal_angle_deg": float(np.rad2deg(np.arccos(np.clip(abs(pl.normal @ model.normal), 0, 1)))),
        "nmi_gain_joint": gain,
        "agrees_with_series": bool(agrees),
    }
    return r


def series_confidence(r: AnchoringResult, gain: float | None, section: Section) -> float:
    """The calibrated confidence of ``r`` on its series placement: the features of its own anchoring with
    the NMI gain (when the in-plane refinement measured it) and the fitted scale of the new affine."""
    from ..confidence import confidence_model

    feats = dict(r.diagnostics.get("confidence_features") or {})
    if not feats:  # placed without features (e.g. loaded from an older result): nothing to recompute from
        return float(r.confidence)
    sv = np.linalg.svd(r.affine[:3, :2] / np.asarray(section.spacing_mm, float)[None, :], compute_uv=False)
    feats["log_scale"] = float(abs(np.log(sv.mean())))
    feats["anisotropy"] = float(sv.max() / sv.min() - 1.0)
    if gain is not None and "nmi_gain" in feats:
        feats["nmi_gain"] = float(gain)
    r.diagnostics["confidence_features"] = feats
    return confidence_model("volume" if "nmi_gain" in feats else "no-volume")(feats)


def _choose_family(
    model: SeriesModel, ser: _Series, engine: _Engine, reference: Any, min_share: float = 0.25
) -> tuple[SeriesModel, list[dict[str, Any]]]:
    """The series model the images support best, when the placements form two families.

    The sections the first fit calls outliers may be a second consistent series: typically the mirror
    image of the first across the mid-sagittal plane (a near-symmetric brain makes each sagittal section
    look the same on either side, and with the cutting direction unknown both families are perfect lines).
    When they carry at least ``min_share`` of the placed weight, a second model is fitted to them and the
    two are compared by the summed NMI gain of *every* placed section moved onto each model's planes
    (:func:`placement_nmi_gain`): the evidence of all sections, not of each family's own members.
    Returns (chosen model, one summary dict per candidate).
    """
    if reference.volume is None:
        return model, []
    first, sections, numbers, cent, seed = ser.first, ser.sections, ser.numbers, ser.cent, ser.seed
    placed = np.array(ser.ok, bool)
    rest = placed & ~model.inliers
    w = np.array([max(float(r.confidence), 1e-3) if o else 0.0 for r, o in zip(first, ser.ok, strict=True)])
    if rest.sum() < 3 or w[rest].sum() < min_share * w[placed].sum():
        return model, []
    try:
        alt = _fit(ser, list(rest))
    except InvalidSectionError:
        return model, []
    tol = float(max(3.0, 3.0 * alt.sigma_mm))
    alt_in = np.zeros(len(first), bool)
    for i in (int(j) for j in np.flatnonzero(placed)):
        alt_in[i] = _agrees(ser.placement(i), alt, float(numbers[i]), tol)
    alt.inliers = alt_in
    if alt_in.sum() < 3:
        return model, []
    cands = [model, alt]
    idx = [int(j) for j in np.flatnonzero(placed)]
    items = []
    for m in cands:
        sc = m.scale if m.scale_spread < 0.05 else None
        for i in idx:
            a = snap_to_plane(
                first[i].affine, cent[i], m.normal, m.offset_mm(float(numbers[i])), sc, sections[i].spacing_mm
            )
            items.append((sections[i], a, seed))
    gains = np.asarray(engine.map(_score_task, items, reference=reference), float).reshape(len(cands), len(idx))
    totals = gains.sum(axis=1)
    best = int(np.argmax(totals))
    summary = [
        {
            "n_inliers": int(m.inliers.sum()),
            "nmi_gain_sum": float(totals[j]),
            "normal": [float(v) for v in m.normal],
            "chosen": j == best,
        }
        for j, m in enumerate(cands)
    ]
    log.info(
        "series: two families of placements (%d and %d sections); summed NMI gain %.3f vs %.3f -> family %d",
        int(model.inliers.sum()),
        int(alt_in.sum()),
        totals[0],
        totals[1],
        best,
    )
    return cands[best], summary


def _agrees(pl: _Placement, model: SeriesModel, number: float, tol: float) -> bool:
    """Same test as the model's inliers, for one new placement."""
    if float(pl.normal @ model.normal) < np.cos(np.deg2rad(6.0)):
        return False
    if abs(float(pl.centre @ model.normal) - model.offset_mm(number)) > tol:
        return False
    rd = model.row_dir()
    if rd is not None:
        r = _unit(pl.row_dir - (pl.row_dir @ model.normal) * model.normal)
        if float(r @ rd) < np.cos(np.deg2rad(20.0)):
            return False
    return True


def _fit(ser: _Series, use: list[bool]) -> SeriesModel:
    """:func:`fit_series` on the placed sections ``use`` selects; the others are outliers of the model."""
    sel = [i for i in range(len(ser.first)) if use[i]]
    m = fit_series([ser.placement(i) for i in sel], ser.numbers[sel], ser.thickness_mm, seed=ser.seed)
    full = np.zeros(len(ser.first), bool)
    full[sel] = m.inliers
    res = np.full(len(ser.first), np.nan)
    res[sel] = m.residual_mm
    m.inliers, m.residual_mm = full, res
    return m


def _fill_failed(r: Any, section: Section) -> AnchoringResult:
    """``r`` itself when it is a result; for a section that could not be anchored and that no series model
    can place (fewer than 3 placed sections, or independent anchoring), an unplaced result that says why
    (:attr:`AnchoringResult.placed` False, confidence 0) instead of failing the whole series."""
    if isinstance(r, AnchoringResult):
        return r
    return AnchoringResult.unplaced(section, reason=f"{type(r).__name__}: {r}")


def _placed_by_series(
    section: Section,
    i: int,
    numbers: NDArray,
    model: SeriesModel,
    chosen: list[AnchoringResult | None],
    cent: list[NDArray],
    agree: NDArray,
) -> AnchoringResult:
    """A section nothing could place: its plane from the model, its in-plane centre and orientation from
    the nearest agreeing sections (confidence 0)."""
    from ..planes import section_affine

    cand = [j for j in range(len(chosen)) if chosen[j] is not None and agree[j]]
    if not cand:
        cand = [j for j in range(len(chosen)) if chosen[j] is not None]
    j = min(cand, key=lambda j: abs(numbers[j] - numbers[i]))
    nb = chosen[j]
    lin = nb.affine[:3, :2]  # type: ignore[union-attr]
    cn = lin @ cent[j] + nb.affine[:3, 3]  # type: ignore[union-attr]
    cn = cn + (model.offset_mm(float(numbers[i])) - float(cn @ model.normal)) * model.normal
    size = model.scale * np.asarray(section.spacing_mm, float)
    new = lin / np.linalg.norm(lin, axis=0) * size
    aff = section_affine(new, cn - new @ cent[i], float(np.mean(section.spacing_mm)))
    return AnchoringResult(
        affine=aff,
        space=nb.space,  # type: ignore[union-attr]
        confidence=0.0,
        section={"name": section.name, "shape": list(section.shape), "spacing_mm": list(section.spacing_mm)},
        diagnostics={"series": {"number": float(numbers[i]), "own_confidence": 0.0, "neighbour": int(j)}},
        encoder_hash=nb.encoder_hash,  # type: ignore[union-attr]
        reference=nb.reference,  # type: ignore[union-attr]
        mask=section.mask,
    )

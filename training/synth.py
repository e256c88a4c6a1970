"""Domain randomisation: synthetic brains of random contrast and anatomy, rendered from one labelled volume.

In the spirit of SynthSeg (Billot et al. 2023): the encoder should not care whose brain or which contrast
it sees, so it is trained on renderings that share nothing with a real acquisition but the anatomy's
layout. Each rendering of a source volume (by default the reference, the 2009c T1, which no benchmark tier
tests on):

1. **Another individual's anatomy**: a random smooth 3D deformation (a displacement on a coarse control
   grid, ``deform_mm`` standard deviation, cubic-spline upsampled) moves tissue by a few mm, as the
   anatomy of another brain differs from the template after an affine. The deformation is *not* undone in
   the patches' positions: at ``sigma_mm`` 8 of the spatial loss, a few mm is label noise the loss
   tolerates, and it keeps the sampler unchanged.
2. **Another contrast**: the source's intensities are split into tissue classes (three k-means classes of
   the brain's intensities: CSF, grey and white matter of a T1) and mapped by a random piecewise-linear
   function through the class centres, so the partial-volume mixtures stay smooth. Half of the renderings
   draw the class intensities freely (any order: T2-, PD-, FLAIR-like and contrasts no scanner makes),
   a quarter keep the source's order, a quarter reverse it (a cell-body stain: grey darker than white).
3. **Regions that differ**: the brain is cut into ``parcels`` random Voronoi regions, each with its own
   intensity offset (nuclei that are darker in one contrast and not in another).
4. **Acquisition**: a smooth multiplicative bias field, a smooth within-tissue texture, a Gaussian blur
   (resolution), Gaussian noise; for a share ``epi`` of the renderings first an echo-planar look (fMRI,
   diffusion): distortion along the phase-encoding axis, signal dropout at the base of the brain, thick
   anisotropic voxels.

Everything is drawn from one seed, so a training run stays reproducible: the trainer renders
``synth.n`` new brains every ``synth.every`` steps with seeds derived from the run's seed and the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import TrainConfigError
from .volumes import VolumeSource, _crop_to_mask, load_training_volumes

__all__ = [
    "SynthParams",
    "TissueClasses",
    "tissue_classes",
    "render",
    "SynthVolumes",
    "SYNTH_PREFIX",
    "synth_volume",
    "load_volumes",
]

#: a volume key ``synth:SEED`` (or ``synth:SEED:SOURCE``) names a rendering of the source (default the
#: reference ``mni152``) with that seed; validation uses such keys with seeds no training window draws
SYNTH_PREFIX = "synth:"


@dataclass(frozen=True)
class SynthParams:
    """How far a rendering may stray from its source (see the module docstring)."""

    deform_mm: float = 3.0
    control_mm: float = 24.0
    parcels: int = 24
    parcel_std: float = 0.08
    bias: float = 0.3
    texture: float = 0.05
    blur_mm: float = 1.2
    noise: float = 0.04
    #: share of renderings that look like echo-planar scans (fMRI, diffusion): see :func:`_epi`
    epi: float = 0.0
    epi_shift_mm: float = 4.0
    epi_voxel_mm: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.epi) <= 1.0:
            raise TrainConfigError(f"synth.epi is a share of the renderings, in [0, 1]; got {self.epi}")
        for name in ("deform_mm", "parcel_std", "bias", "texture", "blur_mm", "noise", "epi_shift_mm", "epi_voxel_mm"):
            if not float(getattr(self, name)) >= 0:
                raise TrainConfigError(f"synth.{name} must be >= 0, got {getattr(self, name)}")
        if not self.control_mm > 0:
            raise TrainConfigError(f"synth.control_mm must be > 0, got {self.control_mm}")
        if self.parcels < 1:
            raise TrainConfigError(f"synth.parcels must be >= 1, got {self.parcels}")


@dataclass(frozen=True)
class TissueClasses:
    """A source volume with its tissue classes: ``centres`` (3,) ascending class intensities of the brain,
    ``lo`` / ``hi`` its lowest and highest brain intensity."""

    source: VolumeSource
    centres: NDArray
    lo: float
    hi: float


def _kmeans_1d(x: NDArray, k: int, iterations: int = 30) -> NDArray:
    c = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        lab = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        new = np.array([x[lab == i].mean() if np.any(lab == i) else c[i] for i in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return np.sort(c)


def tissue_classes(volume: VolumeSource, k: int = 3, margin: int = 8) -> TissueClasses:
    """Three (``k``) intensity classes of the brain by 1D k-means: for a T1, CSF, grey and white matter.

    The source is cropped to its brain mask (``margin`` voxels around it, room for the deformation): the
    renderings are cheaper and cut the same planes.
    """
    volume = _crop_to_mask(volume, margin=margin)
    vals = np.asarray(volume.data, np.float64)[volume.mask]
    if vals.size < 100 or float(vals.max() - vals.min()) <= 0:
        raise TrainConfigError(f"volume {volume.name!r} has no brain intensities to split into tissue classes")
    sample = vals[:: max(1, vals.size // 200_000)]
    return TissueClasses(volume, _kmeans_1d(sample, k), float(vals.min()), float(vals.max()))


def _smooth_field(shape: tuple[int, ...], step_vox: float, rng: np.random.Generator, order: int = 1) -> NDArray:
    """A smooth random field of ``shape``: standard normal on a coarse grid every ``step_vox``, upsampled."""
    from scipy import ndimage

    coarse = tuple(max(2, int(np.ceil(s / step_vox)) + 1) for s in shape)
    g = rng.standard_normal(coarse)
    zoom = [s / c for s, c in zip(shape, coarse, strict=True)]
    out = ndimage.zoom(g, zoom, order=order, mode="nearest", grid_mode=True)
    return out[tuple(slice(0, s) for s in shape)].astype(np.float32)


def _class_values(rng: np.random.Generator, k: int) -> tuple[NDArray, str]:
    u = rng.random()
    v = rng.uniform(0.05, 1.0, k)
    if u < 0.5:
        return v, "random"
    v = np.sort(v)
    return (v, "source-order") if u < 0.75 else (v[::-1].copy(), "reversed")


def _shift_axis1(a: NDArray, shift: NDArray) -> NDArray:
    """``a`` resampled at (i, j + shift, k), linearly along the second axis only; zero outside."""
    n = a.shape[1]
    pos = np.arange(n, dtype=np.float32)[None, :, None] + shift
    i0 = np.floor(pos)
    w = (pos - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    out = np.zeros(a.shape, np.float32)
    for off, weight in ((0, 1.0 - w), (1, w)):
        idx = i0 + off
        ok = (idx >= 0) & (idx < n)
        out += np.where(ok, np.take_along_axis(a, np.clip(idx, 0, n - 1), axis=1), 0.0) * weight
    return out


def _epi(img: NDArray, mask: NDArray, vox: float, p: SynthParams, rng: np.random.Generator) -> tuple[NDArray, NDArray]:
    """What an echo-planar acquisition does to a brain: a smooth shift along the phase-encoding axis (the
    second voxel axis, anterior-posterior in RAS-ordered volumes) up to ``epi_shift_mm``, strongest at the
    base of the brain where air and bone meet tissue; signal lost in smooth patches there (dropout); and
    voxels of about ``epi_voxel_mm``, thicker across the slices (the third axis) than within them."""
    from scipy import ndimage

    shape = img.shape
    base = np.linspace(1.0, 0.3, shape[2], dtype=np.float32)[None, None, :]  # inferior (low z) first
    shift = _smooth_field(shape, 40.0 / vox, rng) * np.float32(p.epi_shift_mm * rng.uniform(0.3, 1.0) / vox) * base
    img, m = _shift_axis1(img, shift), _shift_axis1(mask.astype(np.float32), shift)
    mask = m > 0.5
    del shift, m
    loss = np.clip(_smooth_field(shape, 20.0 / vox, rng) - 0.8, 0.0, None) * np.float32(rng.uniform(0.0, 1.2)) * base
    img = (img * np.clip(1.0 - loss, 0.05, 1.0)).astype(np.float32)
    fwhm = p.epi_voxel_mm * rng.uniform(0.7, 1.0)
    sigma = np.array([fwhm, fwhm, fwhm * rng.uniform(1.0, 1.6)]) / 2.355 / vox
    return ndimage.gaussian_filter(img, sigma).astype(np.float32), mask


def render(classes: TissueClasses, seed: int | Sequence[int], params: SynthParams | None = None) -> VolumeSource:
    """One synthetic brain from ``classes``' source volume (same grid and affine; see the module docstring).

    Returns a :class:`VolumeSource` named ``synth:<seed>`` whose mask is the deformed brain mask.
    """
    from scipy import ndimage

    p = params or SynthParams()
    rng = np.random.default_rng(seed)
    src = classes.source
    vox = float(np.abs(np.linalg.det(src.affine[:3, :3])) ** (1 / 3))
    shape = src.data.shape
    data = np.asarray(src.data, np.float32)
    mask = src.mask
    # 1. deformation: coordinates + a smooth displacement (voxels)
    if p.deform_mm > 0:
        step = p.control_mm / vox
        disp = [_smooth_field(shape, step, rng) * (p.deform_mm / vox) for _ in range(3)]
        grid = np.indices(shape, dtype=np.float32)
        coords = [grid[i] + disp[i] for i in range(3)]
        data = ndimage.map_coordinates(data, coords, order=1, mode="constant", cval=0.0)
        mask = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant", cval=0.0) > 0.5
        del grid, coords, disp
    # 2. contrast: piecewise-linear map through the class centres (background stays 0)
    k = len(classes.centres)
    values, style = _class_values(rng, k)
    xs = np.concatenate([[classes.lo], classes.centres, [classes.hi]])
    ys = np.concatenate([[values[0] * rng.uniform(0.0, 1.0)], values, [values[-1]]])
    order = np.argsort(xs, kind="stable")
    img = np.interp(data, xs[order], ys[order]).astype(np.float32)
    # 3. regions: a random Voronoi parcellation of the brain, one offset each
    n_parcels = int(rng.integers(1, p.parcels + 1))
    if n_parcels > 1 and p.parcel_std > 0:
        from scipy.spatial import cKDTree

        brain = np.argwhere(mask)
        seeds = brain[rng.choice(len(brain), n_parcels, replace=False)]
        coarse = np.indices(tuple(int(np.ceil(s / 4)) for s in shape)).reshape(3, -1).T * 4 + 2
        _, lab = cKDTree(seeds).query(coarse)
        lab = lab.reshape(tuple(int(np.ceil(s / 4)) for s in shape))
        lab = np.repeat(np.repeat(np.repeat(lab, 4, 0), 4, 1), 4, 2)[tuple(slice(0, s) for s in shape)]
        offsets = rng.normal(0.0, p.parcel_std * rng.random(), n_parcels).astype(np.float32)
        img = img + offsets[lab]
    # 3b. an echo-planar look for a share of the renderings, from a generator of its own: with epi 0 every
    # rendering is the one it was before the option existed, and with epi > 0 the others still are
    epi = None
    if p.epi > 0:
        erng = np.random.default_rng([*(np.atleast_1d(seed).tolist()), 3141])
        if erng.random() < p.epi:
            epi = erng
            img, mask = _epi(img, mask, vox, p, erng)
    # 4. texture, bias, blur, noise
    if p.texture > 0:
        img = img + _smooth_field(shape, 3.0 / vox, rng) * np.float32(p.texture * rng.random())
    if p.bias > 0:
        img = img * np.exp(_smooth_field(shape, 60.0 / vox, rng) * np.float32(p.bias * rng.random()))
    if p.blur_mm > 0:
        img = ndimage.gaussian_filter(img, p.blur_mm * rng.random() / vox)
    if p.noise > 0:
        img = img + rng.normal(0.0, p.noise * rng.random(), shape).astype(np.float32)
    img = np.where(mask, np.clip(img, 1e-3, None), 0.0).astype(np.float32)
    name = f"{SYNTH_PREFIX}{seed if isinstance(seed, int) else '-'.join(str(s) for s in seed)} ({style}{', epi' if epi is not None else ''})"
    return VolumeSource(name, img, src.affine, mask)


@lru_cache(maxsize=4)
def _classes_of(source: str, npz: str | None = None) -> TissueClasses:
    return tissue_classes(load_training_volumes([source], npz=npz)[0])


def synth_volume(key: str, params: SynthParams | None = None, npz: str | None = None) -> VolumeSource:
    """The rendering a ``synth:SEED[:SOURCE]`` key names (source default ``mni152``, read from ``npz`` when
    it holds it)."""
    parts = key[len(SYNTH_PREFIX) :].split(":", 1)
    try:
        seed = int(parts[0])
    except ValueError as exc:
        raise TrainConfigError(
            f"volume key {key!r}: expected synth:SEED or synth:SEED:SOURCE, SEED an integer"
        ) from exc
    return render(_classes_of(parts[1] if len(parts) > 1 else "mni152", npz), seed, params)


def load_volumes(keys: Sequence[str], npz: str | None = None, params: SynthParams | None = None) -> list[VolumeSource]:
    """:func:`~siibra_anchor.training.volumes.load_training_volumes`, where ``synth:SEED`` keys are renderings."""
    return [
        synth_volume(k, params, npz) if str(k).startswith(SYNTH_PREFIX) else load_training_volumes([k], npz=npz)[0]
        for k in keys
    ]


#: a rendering process's source classes and parameters, set once by :func:`_pool_init` when it starts
_POOL_STATE: tuple[TissueClasses, SynthParams] | None = None


def _pool_init(classes: TissueClasses, params: SynthParams) -> None:
    global _POOL_STATE
    _POOL_STATE = (classes, params)


def _pool_render(seed: list[int]) -> VolumeSource:
    assert _POOL_STATE is not None, "worker started without _pool_init"
    return render(_POOL_STATE[0], seed, _POOL_STATE[1])


class SynthVolumes:
    """``n`` renderings per window of ``every`` steps, seeded by (run seed, window, index): reproducible.

    The training seeds are ``[seed, 7919, window, j]``; ``synth:SEED`` keys (one integer) never collide.

    ``workers`` > 0 renders in that many processes (spawned, not forked: the trainer may hold a CUDA
    context and threads): the next window's brains are rendered while the current window trains, so a
    fast device never waits for them. The renderings are the same with or without workers (same seeds).
    """

    def __init__(
        self,
        source: VolumeSource,
        n: int,
        every: int,
        seed: int,
        params: SynthParams | None = None,
        workers: int = 0,
    ):
        if n < 1 or every < 1:
            raise TrainConfigError(f"synth needs n >= 1 and every >= 1, got n={n}, every={every}")
        if workers < 0:
            raise TrainConfigError(f"synth.workers must be >= 0, got {workers}")
        self.classes = tissue_classes(source)
        self.n, self.every, self.seed, self.params = int(n), int(every), int(seed), params or SynthParams()
        self._window: int | None = None
        self._volumes: list[VolumeSource] = []
        self._pool: Any = None
        self._pending: tuple[int, list[Any]] | None = None
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=int(workers),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_pool_init,
                initargs=(self.classes, self.params),
            )

    def window(self, step: int) -> int:
        return int(step) // self.every

    def volumes(self, step: int) -> list[VolumeSource]:
        """The renderings in use at ``step`` (rendered when its window starts, kept until it ends)."""
        self.refresh(step)
        return self._volumes

    def _seeds(self, w: int) -> list[list[int]]:
        return [[self.seed, 7919, w, j] for j in range(self.n)]

    def _submit(self, w: int) -> tuple[int, list[Any]]:
        return w, [self._pool.submit(_pool_render, s) for s in self._seeds(w)]

    def refresh(self, step: int) -> list[VolumeSource] | None:
        """The new renderings when ``step`` starts another window than the last call's, else None."""
        w = self.window(step)
        if w == self._window:
            return None
        if self._pool is None:
            self._volumes = [render(self.classes, s, self.params) for s in self._seeds(w)]
        else:
            pending = self._pending if self._pending is not None and self._pending[0] == w else self._submit(w)
            if self._pending is not None and self._pending is not pending:
                for f in self._pending[1]:
                    f.cancel()
            self._volumes = [f.result() for f in pending[1]]
            self._pending = self._submit(w + 1)  # the next window renders while this one trains
        self._window = w
        return self._volumes

    def close(self) -> None:
        """Stop the rendering processes (no-op without workers)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._pending = None, None

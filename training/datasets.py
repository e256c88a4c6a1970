"""Patch datasets with known 3D centres (world mm), for spatial contrastive training.

Three sources, one output: every dataset has ``sample(batch_size, seed) -> PatchBatch`` with
``patches`` (B, S, S) float32 in [0, 1] (tissue normalised as at inference by
:func:`siibra_anchor.patches.normalize_intensity`, background 0) and ``centres`` (B, 3) float32 mm.
``S`` is the patch size, or a larger *context* size when the trainer rotates/warps patches and crops the
centre afterwards.

* :class:`PlanePatchSampler` cuts planes in any orientation from volumes, on the GPU or CPU with torch.
* :class:`RegisteredSectionDataset` samples registered histological sections ``(Section, affine)``.
* :class:`ZarrPatchDataset` streams precomputed patches from a zarr store (:func:`write_patch_store`),
  for datasets larger than memory.

Batches are *grouped*: a batch holds ``groups`` clusters of patches around random anchor points (patches
within a few cm of each other, possibly from several planes/contrasts through that neighbourhood) plus a
fraction of patches from anywhere. Only then do the RBF targets of the spatial loss (bandwidth ~ 1 cm) say
something: in a batch of patches drawn uniformly from a brain nearly every pair is far apart.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from siibra_anchor.patches import PatchSpec, extract_patches, grid_centres, normalize_intensity
from siibra_anchor.planes import CANONICAL_PLANES, pixel_to_world

from .errors import PatchShapeError, TrainConfigError, TrainingError, TrainingFileNotFoundError
from .volumes import VolumeSource

__all__ = [
    "PatchBatch",
    "SeedLike",
    "make_rng",
    "random_plane_frames",
    "normalize_planes",
    "cut_planes",
    "PlanePatchSampler",
    "RegisteredSectionDataset",
    "write_patch_store",
    "ZarrPatchDataset",
]

log = logging.getLogger(__name__)

SeedLike = int | Sequence[int] | np.random.Generator | None


class PatchBatch(NamedTuple):
    """patches : (B, S, S) float32 tensor in [0, 1]; centres : (B, 3) float32 tensor, world mm."""

    patches: torch.Tensor
    centres: torch.Tensor


def make_rng(seed: SeedLike) -> np.random.Generator:
    """A numpy Generator from an int, a sequence of ints (e.g. ``[seed, rank, step]``) or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(rng.integers(0, 2**62)))
    return g


def _split(total: int, parts: int) -> list[int]:
    """``total`` items over ``parts`` bins as evenly as possible."""
    base, extra = divmod(int(total), int(parts))
    return [base + (1 if i < extra else 0) for i in range(int(parts))]


# -- plane geometry ----------------------------------------------------------------------------------------


def _rotate(v: NDArray, axis: NDArray, angle: NDArray) -> NDArray:
    """Rodrigues rotation of vectors v (n, 3) about unit axes (n, 3) by angles (n,) radians."""
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return v * c + np.cross(axis, v) * s + axis * (axis * v).sum(1, keepdims=True) * (1 - c)


def random_plane_frames(
    rng: np.random.Generator,
    n: int,
    families: Sequence[str] = ("coronal", "sagittal", "axial"),
    tilt_deg: float = 15.0,
    inplane_rotation_deg: float = 180.0,
    mirror_prob: float = 0.5,
    orientation: str = "canonical",
) -> tuple[NDArray, NDArray]:
    """Random in-plane unit directions of ``n`` planes.

    Parameters
    ----------
    families : canonical planes (keys of :data:`siibra_anchor.planes.CANONICAL_PLANES`) to start from.
    tilt_deg : the plane normal is tilted by an angle uniform in [0, tilt_deg] about a random in-plane axis.
    inplane_rotation_deg : the frame is then rotated in-plane by an angle uniform in +-this.
    mirror_prob : probability of flipping the column direction (the plane seen from its other side).
    orientation : ``"canonical"`` (above) or ``"random"`` (uniformly random planes and frames).

    Returns
    -------
    rows, cols : (n, 3) float64 unit vectors (world direction of one row / one column step), orthogonal.
    """
    if orientation == "random":
        q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
        q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
        rows, cols = q[:, :, 0], q[:, :, 1]
    elif orientation == "canonical":
        unknown = [f for f in families if f not in CANONICAL_PLANES]
        if unknown or not families:
            raise TrainConfigError(f"plane families must be among {sorted(CANONICAL_PLANES)}, got {list(families)}")
        fam = rng.integers(0, len(families), n)
        rows = np.stack([CANONICAL_PLANES[families[i]][0] for i in fam]).astype(np.float64)
        cols = np.stack([CANONICAL_PLANES[families[i]][1] for i in fam]).astype(np.float64)
        # tilt: rotate the frame about a random axis lying in the plane
        phi = rng.uniform(0, 2 * np.pi, n)
        axis = rows * np.cos(phi)[:, None] + cols * np.sin(phi)[:, None]
        tilt = np.deg2rad(rng.uniform(0.0, float(tilt_deg), n))
        rows, cols = _rotate(rows, axis, tilt), _rotate(cols, axis, tilt)
    else:
        raise TrainConfigError(f"orientation must be 'canonical' or 'random', got {orientation!r}")
    normal = np.cross(rows, cols)
    a = np.deg2rad(rng.uniform(-float(inplane_rotation_deg), float(inplane_rotation_deg), n))
    rows, cols = _rotate(rows, normal, a), _rotate(cols, normal, a)
    flip = rng.random(n) < float(mirror_prob)
    cols = np.where(flip[:, None], -cols, cols)
    return rows, cols


def _volume_tensor(v: VolumeSource, device: torch.device) -> torch.Tensor:
    """(1, 2, I, J, K) float32: intensities and brain mask as two channels."""
    return torch.from_numpy(np.stack([np.asarray(v.data, np.float32), v.mask.astype(np.float32)]))[None].to(device)


def cut_planes(
    volume: torch.Tensor,
    affine: NDArray,
    centres_mm: NDArray,
    rows: NDArray,
    cols: NDArray,
    spacing_mm: float,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear resampling of a volume on ``n`` square planes (the torch twin of ``planes.cut_plane``).

    Parameters
    ----------
    volume : (1, C, I, J, K) float32 tensor (channel 0 intensities, channel 1 the brain mask as 0/1).
    affine : (4, 4) voxel -> mm of the volume.
    centres_mm : (n, 3) world mm of each plane's centre pixel ``((size-1)/2, (size-1)/2)``.
    rows, cols : (n, 3) unit world directions of a row / column step.
    spacing_mm : pixel spacing; size : plane side in pixels.

    Returns
    -------
    images (n, size, size) float32 and masks (n, size, size) bool (mask channel > 0.5), zero outside the
    volume, on ``volume``'s device. Pixel (i, j) of plane q samples
    ``centre_q + (i - (size-1)/2) * spacing * rows_q + (j - (size-1)/2) * spacing * cols_q``.
    """
    dev = volume.device
    n = int(centres_mm.shape[0])
    inv = np.linalg.inv(np.asarray(affine, np.float64))
    # voxel-space origin and steps of each plane (float64 on the host, then float32 on the device)
    c_vox = centres_mm @ inv[:3, :3].T + inv[:3, 3]
    r_vox = (rows * spacing_mm) @ inv[:3, :3].T
    k_vox = (cols * spacing_mm) @ inv[:3, :3].T
    off = torch.arange(size, device=dev, dtype=torch.float32) - (size - 1) / 2.0
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
    ijk = (
        t(c_vox)[:, None, None, :]
        + off[None, :, None, None] * t(r_vox)[:, None, None, :]
        + off[None, None, :, None] * t(k_vox)[:, None, None, :]
    )  # (n, size, size, 3) voxel (i, j, k)
    shape = torch.tensor(volume.shape[2:], dtype=torch.float32, device=dev)
    norm = 2.0 * ijk / (shape - 1).clamp_min(1.0) - 1.0
    grid = norm.flip(-1)[None]  # grid_sample wants (x=k, y=j, z=i)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    img = out[0]
    mask = out[1] > 0.5 if out.shape[0] > 1 else img > 0
    return img.reshape(n, size, size), mask.reshape(n, size, size)


def normalize_planes(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Batched :func:`siibra_anchor.patches.normalize_intensity`: per plane 1st/99th tissue percentile -> [0, 1].

    images : (n, H, W) float; masks : (n, H, W) bool. Returns (n, H, W) float32, background 0.
    """
    n = images.shape[0]
    if n == 0:
        return images.float()
    x = images.float().reshape(n, -1)
    m = masks.reshape(n, -1)
    vals = torch.where(m, x, torch.full_like(x, float("nan")))
    q = torch.tensor([0.01, 0.99], device=x.device, dtype=torch.float32)
    # NaN where a plane has no tissue; chunked because some torch versions cap quantile inputs at 2**24
    step = max(1, (1 << 23) // max(1, vals.shape[1]))
    lo, hi = torch.cat([torch.nanquantile(vals[a : a + step], q, dim=1) for a in range(0, n, step)], dim=1)
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    out = ((x - lo[:, None]) / scale[:, None]).clamp(0.0, 1.0)
    out = torch.where(m, out, torch.zeros_like(out))
    return torch.nan_to_num(out, nan=0.0).reshape(images.shape)


def _box_fraction(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Tissue fraction in the (size, size) window around each pixel, as ``scipy.ndimage.uniform_filter``."""
    # integral image: window of pixel i covers [i - size//2, i - size//2 + size - 1], zeros outside
    m = masks.float()
    h, w = m.shape[-2:]
    a = size // 2
    pad = F.pad(m, (a + 1, size - a, a + 1, size - a))
    ii = pad.cumsum(1).cumsum(2)
    s = (
        ii[:, size : size + h, size : size + w]
        - ii[:, :h, size : size + w]
        - ii[:, size : size + h, :w]
        + ii[:, :h, :w]
    )
    return s / float(size * size)


def _extract(planes: torch.Tensor, rc: torch.Tensor, size: int) -> torch.Tensor:
    """Axis-aligned (size, size) patches at (n, m, 2) sub-pixel centres of (n, H, W) planes -> (n, m, S, S)."""
    n, m = rc.shape[:2]
    h, w = planes.shape[-2:]
    off = torch.arange(size, device=planes.device, dtype=torch.float32) - (size - 1) / 2.0
    rows = rc[:, :, 0, None, None] + off[None, None, :, None]  # (n, m, S, 1)
    cols = rc[:, :, 1, None, None] + off[None, None, None, :]  # (n, m, 1, S)
    rows, cols = torch.broadcast_tensors(rows, cols)
    grid = torch.stack([2 * cols / (w - 1) - 1, 2 * rows / (h - 1) - 1], dim=-1).reshape(n, m * size, size, 2)
    out = F.grid_sample(planes[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(n, m, size, size)


class PlanePatchSampler:
    """Grouped patch batches from planes cut through volumes in any orientation (torch, CPU or GPU).

    Each batch: ``groups`` anchor points drawn uniformly in the brain; around each, ``planes_per_group``
    planes through points within ``group_radius_mm`` of the anchor (each plane from a random volume when
    ``mix_volumes``, so one neighbourhood is seen in several contrasts), each contributing patches centred
    within ``group_radius_mm`` (in-plane) of its point; plus ``far_fraction`` of the batch from planes
    through random brain points, ``far_per_plane`` patches each, anywhere in the tissue.
    A plane is normalised as a whole section would be at inference (tissue 1st/99th percentile).

    Parameters
    ----------
    volumes : training volumes (all in the same world space).
    spec : working spacing (mm/px), patch size and min tissue fraction of a patch window (default PatchSpec()).
    context_px : side of the returned patches (>= ``spec.size_px``); default ``spec.size_px``.
    families, tilt_deg, inplane_rotation_deg, mirror_prob, orientation : see :func:`random_plane_frames`.
    device : where planes are cut ("cpu", "cuda", ...).
    """

    def __init__(
        self,
        volumes: Sequence[VolumeSource],
        spec: PatchSpec | None = None,
        context_px: int | None = None,
        families: Sequence[str] = ("coronal", "sagittal", "axial"),
        tilt_deg: float = 15.0,
        inplane_rotation_deg: float = 180.0,
        mirror_prob: float = 0.5,
        orientation: str = "canonical",
        scale_jitter: float = 0.0,
        groups: int = 8,
        planes_per_group: int = 4,
        group_radius_mm: float = 15.0,
        far_fraction: float = 0.25,
        far_per_plane: int = 4,
        mix_volumes: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        if not volumes:
            raise TrainConfigError("PlanePatchSampler needs at least one volume")
        spec = spec or PatchSpec()
        self.spec = spec
        self.context_px = int(context_px or spec.size_px)
        if self.context_px < spec.size_px:
            raise TrainConfigError(f"context_px {self.context_px} is smaller than the patch size {spec.size_px}")
        self.frame_args: dict[str, Any] = dict(
            families=tuple(families),
            tilt_deg=float(tilt_deg),
            inplane_rotation_deg=float(inplane_rotation_deg),
            mirror_prob=float(mirror_prob),
            orientation=str(orientation),
        )
        random_plane_frames(np.random.default_rng(0), 1, **self.frame_args)  # validate early
        if not 0.0 <= scale_jitter < 0.5:
            raise TrainConfigError(f"scale_jitter must be in [0, 0.5), got {scale_jitter}")
        self.scale_jitter = float(scale_jitter)
        self.groups = int(groups)
        self.planes_per_group = int(planes_per_group)
        self.group_radius_mm = float(group_radius_mm)
        if not 0.0 <= far_fraction <= 1.0:
            raise TrainConfigError(f"far_fraction must be in [0, 1], got {far_fraction}")
        self.far_fraction = float(far_fraction)
        self.far_per_plane = int(far_per_plane)
        self.mix_volumes = bool(mix_volumes)
        self.device = torch.device(device)
        self.set_volumes(volumes)

    def set_volumes(self, volumes: Sequence[VolumeSource]) -> None:
        """Cut planes from these volumes from now on (the trainer swaps in new synthetic brains this way)."""
        if not volumes:
            raise TrainConfigError("PlanePatchSampler needs at least one volume")
        self.volumes = list(volumes)
        self._tensors = [_volume_tensor(v, self.device) for v in self.volumes]
        self._tissue = [v.tissue_points_mm() for v in self.volumes]
        self._inv = [np.linalg.inv(v.affine) for v in self.volumes]
        cr = [v.brain_centre_radius() for v in self.volumes]
        self._centre = np.mean([c for c, _ in cr], axis=0)
        radius = max(r + float(np.linalg.norm(c - self._centre)) for c, r in cr)
        half = radius + self.context_px * self.spec.spacing_mm / 2.0
        # planes cut with smaller pixels (scale jitter) still cover the brain
        self.plane_px = int(math.ceil(2 * half / (self.spec.spacing_mm * (1.0 - self.scale_jitter)))) + 1

    # -- random draws on the host --------------------------------------------------------------------------
    def _random_tissue_point(self, rng: np.random.Generator, vol: int) -> NDArray:
        pts = self._tissue[vol]
        return pts[rng.integers(0, len(pts))].astype(np.float64) + rng.uniform(-0.5, 0.5, 3)

    def _in_tissue(self, vol: int, p: NDArray) -> bool:
        ijk = np.rint(self._inv[vol][:3, :3] @ p + self._inv[vol][:3, 3]).astype(int)
        m = self.volumes[vol].mask
        return bool(np.all(ijk >= 0) and np.all(ijk < m.shape) and m[tuple(ijk)])

    def _near_point(self, rng: np.random.Generator, vol: int, anchor: NDArray) -> NDArray:
        for _ in range(8):
            d = rng.standard_normal(3)
            p = anchor + d / np.linalg.norm(d) * self.group_radius_mm * rng.random() ** (1 / 3)
            if self._in_tissue(vol, p):
                return p
        return anchor

    # -- sampling --------------------------------------------------------------------------------------
    def _planes_patches(
        self,
        rng: np.random.Generator,
        gen: torch.Generator,
        vols: NDArray,
        points: NDArray,
        per_plane: int,
        radius_mm: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patches around ``points`` (n, 3) on random planes through them -> (n*m, S, S), (n*m, 3), valid."""
        n, spacing, size, ctx = len(points), self.spec.spacing_mm, self.plane_px, self.context_px
        rows, cols = random_plane_frames(rng, n, **self.frame_args)
        normal = np.cross(rows, cols)
        # centre each plane on the brain centre projected onto it, so the whole section is normalised
        centres = self._centre - ((self._centre - points) * normal).sum(1, keepdims=True) * normal
        # pixel-size error: rows/cols become steps of (1 + u) working pixels (world positions follow)
        px = np.ones((n, 1))
        if self.scale_jitter > 0:
            px = 1.0 + rng.uniform(-self.scale_jitter, self.scale_jitter, (n, 1))
            rows, cols = rows * px, cols * px
        imgs = torch.zeros(n, size, size, device=self.device)
        masks = torch.zeros(n, size, size, dtype=torch.bool, device=self.device)
        for v in np.unique(vols):
            sel = np.nonzero(vols == v)[0]
            im, mk = cut_planes(
                self._tensors[v], self.volumes[v].affine, centres[sel], rows[sel], cols[sel], spacing, size
            )
            idx = torch.as_tensor(sel, device=self.device)
            imgs[idx], masks[idx] = im, mk
        norm = normalize_planes(imgs, masks)
        cand = masks & (_box_fraction(masks, self.spec.size_px) >= self.spec.min_tissue)
        weights = cand.float() + 1e-4 * masks.float() + 1e-12
        if radius_mm is not None:
            c = (size - 1) / 2.0
            pr = torch.as_tensor(
                ((points - centres) * rows).sum(1) / (spacing * px[:, 0] ** 2) + c,
                dtype=torch.float32,
                device=self.device,
            )
            pc = torch.as_tensor(
                ((points - centres) * cols).sum(1) / (spacing * px[:, 0] ** 2) + c,
                dtype=torch.float32,
                device=self.device,
            )
            ii = torch.arange(size, device=self.device, dtype=torch.float32)
            d2 = (ii[None, :, None] - pr[:, None, None]) ** 2 + (ii[None, None, :] - pc[:, None, None]) ** 2
            near = d2 <= (radius_mm / spacing) ** 2
            weights = weights + (cand & near).float() * 1e4
        pick = torch.multinomial(weights.reshape(n, -1), per_plane, replacement=True, generator=gen)  # (n, m)
        r = (pick // size).float() + torch.rand(pick.shape, generator=gen, device=self.device) - 0.5
        cc = (pick % size).float() + torch.rand(pick.shape, generator=gen, device=self.device) - 0.5
        valid = torch.gather(cand.reshape(n, -1), 1, pick)
        patches = _extract(norm, torch.stack([r, cc], dim=-1), ctx)
        # world mm of the (sub-pixel) patch centres
        off_r, off_c = r - (size - 1) / 2.0, cc - (size - 1) / 2.0
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        world = (
            t(centres)[:, None]
            + off_r[..., None] * t(rows * spacing)[:, None]
            + off_c[..., None] * t(cols * spacing)[:, None]
        )
        return patches.reshape(-1, ctx, ctx), world.reshape(-1, 3), valid.reshape(-1)

    def sample(self, batch_size: int, seed: SeedLike = None) -> PatchBatch:
        """One grouped batch of ``batch_size`` patches.

        Returns a :class:`PatchBatch` on the sampler's device: patches (B, context_px, context_px).
        """
        rng = make_rng(seed)
        gen = _torch_generator(rng, self.device)
        n_far = int(round(self.far_fraction * batch_size))
        n_grp = int(batch_size) - n_far
        nv = len(self.volumes)
        out_p, out_c, out_v = [], [], []
        if n_grp > 0 and self.groups > 0:
            g, k = self.groups, self.planes_per_group
            per_plane = int(math.ceil(n_grp / (g * k)))
            vols, points = [], []
            for _ in range(g):
                va = int(rng.integers(nv))
                anchor = self._random_tissue_point(rng, va)
                for _ in range(k):
                    v = int(rng.integers(nv)) if self.mix_volumes else va
                    vols.append(v)
                    points.append(self._near_point(rng, v, anchor))
            p, c, ok = self._planes_patches(rng, gen, np.array(vols), np.array(points), per_plane, self.group_radius_mm)
            keep = torch.cat(
                [
                    torch.ones(n_grp, dtype=torch.bool, device=self.device),
                    torch.zeros(p.shape[0] - n_grp, dtype=torch.bool, device=self.device),
                ]
            )
            # trim surplus evenly: drop the last patches of each plane rather than whole groups
            order = torch.arange(p.shape[0], device=self.device).reshape(g * k, per_plane).T.reshape(-1)
            idx = order[keep]
            out_p.append(p[idx])
            out_c.append(c[idx])
            out_v.append(ok[idx])
        if n_far > 0:
            n_planes = int(math.ceil(n_far / self.far_per_plane))
            far_vols = rng.integers(0, nv, n_planes)
            far_points = np.array([self._random_tissue_point(rng, int(v)) for v in far_vols])
            p, c, ok = self._planes_patches(rng, gen, far_vols, far_points, self.far_per_plane, None)
            out_p.append(p[:n_far])
            out_c.append(c[:n_far])
            out_v.append(ok[:n_far])
        patches, centres, valid = torch.cat(out_p), torch.cat(out_c), torch.cat(out_v)
        if not bool(valid.all()) and bool(valid.any()):
            # the rare patch without tissue at its centre is replaced by a valid one: B stays fixed
            good = torch.nonzero(valid)[:, 0]
            repl = good[torch.randint(len(good), (len(valid),), generator=gen, device=self.device)]
            idx = torch.where(valid, torch.arange(len(valid), device=self.device), repl)
            patches, centres = patches[idx], centres[idx]
        return PatchBatch(patches.contiguous(), centres.contiguous())


# -- registered sections -----------------------------------------------------------------------------------


class RegisteredSectionDataset:
    """Grouped patch batches from histological sections already registered to the space.

    Parameters
    ----------
    pairs : ``(Section, affine)`` pairs; ``affine`` (4, 4) maps the section's pixel ``(row, col, 0, 1)``
        to world mm. The working-resolution affine is ``affine @ diag(scale_r, scale_c, 1, 1)`` with
        ``scale`` from ``Section.at_spacing``.
    spec : working spacing, patch size, min tissue fraction.
    context_px : side of returned patches (>= ``spec.size_px``).
    groups, group_radius_mm, far_fraction : batch structure (see :class:`PlanePatchSampler`); a group is
        the candidate patches within ``group_radius_mm`` (3D) of a random anchor patch, from any section.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Any, NDArray]],
        spec: PatchSpec | None = None,
        context_px: int | None = None,
        groups: int = 8,
        group_radius_mm: float = 15.0,
        far_fraction: float = 0.25,
    ) -> None:
        from scipy.spatial import cKDTree

        if not pairs:
            raise TrainConfigError("RegisteredSectionDataset needs at least one (Section, affine) pair")
        spec = spec or PatchSpec()
        self.spec = spec
        self.context_px = int(context_px or spec.size_px)
        self.groups, self.group_radius_mm, self.far_fraction = int(groups), float(group_radius_mm), float(far_fraction)
        self.images: list[NDArray] = []
        self.affines: list[NDArray] = []
        rc_all, sec_all = [], []
        for i, (section, affine) in enumerate(pairs):
            a = np.asarray(affine, np.float64)
            if a.shape != (4, 4):
                raise PatchShapeError(f"affine of section {i} must be (4, 4), got {a.shape}")
            img, mask, scale = section.at_spacing(spec.spacing_mm)
            self.images.append(normalize_intensity(img, mask))
            self.affines.append(a @ np.diag([scale[0], scale[1], 1.0, 1.0]))
            rc = grid_centres(mask, spec, stride_px=1)
            rc_all.append(rc)
            sec_all.append(np.full(len(rc), i))
        self.rc = np.concatenate(rc_all)
        self.section = np.concatenate(sec_all)
        if len(self.rc) == 0:
            raise TrainConfigError(f"no section has a {spec.size_px}px tissue window at {spec.spacing_mm} mm/px")
        self.world = np.concatenate(
            [pixel_to_world(self.affines[s], rc[:, 0], rc[:, 1]) for s, rc in enumerate(rc_all)]
        )
        self._tree = cKDTree(self.world)

    def __len__(self) -> int:
        """Number of candidate patch centres (tissue pixels with enough tissue around) at the working spacing."""
        return len(self.rc)

    def _patches(self, idx: NDArray, rng: np.random.Generator) -> tuple[NDArray, NDArray]:
        rc = self.rc[idx] + rng.uniform(-0.5, 0.5, (len(idx), 2))
        out = np.zeros((len(idx), self.context_px, self.context_px), np.float32)
        world = np.zeros((len(idx), 3))
        for s in np.unique(self.section[idx]):
            sel = np.nonzero(self.section[idx] == s)[0]
            out[sel] = extract_patches(self.images[s], rc[sel], self.context_px)[:, 0]
            world[sel] = pixel_to_world(self.affines[s], rc[sel, 0], rc[sel, 1])
        return out, world

    def sample(self, batch_size: int, seed: SeedLike = None) -> PatchBatch:
        """One grouped batch: patches (B, context_px, context_px) and centres (B, 3) mm, CPU tensors."""
        rng = make_rng(seed)
        n_far = int(round(self.far_fraction * batch_size))
        idx = [rng.integers(0, len(self), n_far)]
        for m in _split(int(batch_size) - n_far, max(self.groups, 1)):
            if m == 0:
                continue
            anchor = self.world[rng.integers(0, len(self))]
            near = np.asarray(self._tree.query_ball_point(anchor, self.group_radius_mm), dtype=np.int64)
            idx.append(rng.choice(near, m, replace=len(near) < m))
        sel = np.concatenate(idx)
        p, w = self._patches(sel, rng)
        return PatchBatch(torch.from_numpy(p), torch.from_numpy(w.astype(np.float32)))


# -- zarr patch store --------------------------------------------------------------------------------------


def _morton_key(cells: NDArray) -> NDArray:
    """Z-order key of non-negative int cell coordinates (n, 3), 16 bits per axis."""
    key = np.zeros(len(cells), np.uint64)
    c = cells.astype(np.uint64)
    for bit in range(16):
        for axis in range(3):
            key |= ((c[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return key


def _create_array(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str) -> Any:
    create = getattr(group, "create_array", None) or group.create_dataset  # zarr 3 / zarr 2
    return create(name=name, shape=shape, chunks=chunks, dtype=dtype)


def write_patch_store(
    path: str | os.PathLike[str],
    patches: NDArray,
    centres: NDArray,
    chunk_size: int = 256,
    cell_mm: float = 16.0,
    dtype: str = "uint8",
    spacing_mm: float | None = None,
) -> Path:
    """Write patches and their 3D centres to a zarr store, sorted so that each chunk is one neighbourhood.

    Parameters
    ----------
    patches : (N, S, S) float in [0, 1] (a ``np.memmap`` works: it is read chunk by chunk).
    centres : (N, 3) world mm.
    chunk_size : patches per chunk (the unit :class:`ZarrPatchDataset` reads).
    cell_mm : patches are ordered by the Z-order (Morton) key of their ``cell_mm`` 3D cell, so a chunk holds
        patches of a few adjacent cells: a batch made of a few chunks is spatially grouped.
    dtype : ``"uint8"`` (round(x * 255), 4x smaller) or ``"float32"``.
    spacing_mm : pixel spacing of the patches, stored as an attribute.

    The store is written to a temporary folder next to ``path`` and renamed into place.
    """
    import zarr

    c = np.asarray(centres, np.float64)
    n = len(c)
    if patches.ndim != 3 or patches.shape[0] != n or patches.shape[1] != patches.shape[2] or c.shape != (n, 3):
        raise PatchShapeError(f"need patches (N, S, S) and centres (N, 3), got {patches.shape} and {c.shape}")
    if dtype not in ("uint8", "float32"):
        raise TrainConfigError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
    cells = np.floor((c - c.min(axis=0)) / float(cell_mm)).astype(np.int64) if n else np.zeros((0, 3), np.int64)
    order = np.argsort(_morton_key(cells), kind="stable")
    out = Path(path)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    g = zarr.open_group(str(tmp), mode="w")
    s = int(patches.shape[1])
    pa = _create_array(g, "patches", (n, s, s), (int(chunk_size), s, s), dtype)
    ca = _create_array(g, "centres", (n, 3), (int(chunk_size), 3), "float64")
    for a in range(0, n, int(chunk_size)):
        sel = np.sort(order[a : a + int(chunk_size)])  # sorted reads are kind to memmaps
        block = np.asarray(patches[sel], np.float32)
        pa[a : a + len(sel)] = np.rint(np.clip(block, 0, 1) * 255).astype(np.uint8) if dtype == "uint8" else block
        ca[a : a + len(sel)] = c[sel]
    g.attrs.update(
        {
            "kind": "siibra-anchor-patches",
            "version": 1,
            "encoding": dtype,
            "size_px": s,
            "spacing_mm": spacing_mm,
            "chunk_size": int(chunk_size),
            "cell_mm": float(cell_mm),
            "n": n,
        }
    )
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


class ZarrPatchDataset:
    """Patches streamed from a store written by :func:`write_patch_store`; only the chunks used are read.

    ``len(ds)``, ``ds[i] -> (patch (S, S) float32, centre (3,) float64)``, grouped random batches with
    :meth:`sample` (a few whole chunks = a few neighbourhoods, plus patches from other random chunks) and a
    full pass in shuffled chunk order with :meth:`iter_batches`.
    """

    def __init__(self, path: str | os.PathLike[str], groups: int = 8, far_fraction: float = 0.25) -> None:
        import zarr

        p = Path(path)
        if not p.exists():
            raise TrainingFileNotFoundError(f"patch store {p} not found; write it with write_patch_store()")
        g = zarr.open_group(str(p), mode="r")
        if g.attrs.get("kind") != "siibra-anchor-patches":
            raise TrainingError(f"{p} is not a siibra-anchor patch store (attribute kind={g.attrs.get('kind')!r})")
        self.path = p
        attrs: dict[str, Any] = dict(g.attrs)
        self._patches: Any = g["patches"]
        self._centres: Any = g["centres"]
        self.encoding = str(attrs["encoding"])
        self.chunk_size = int(attrs["chunk_size"])
        self.size_px = int(attrs["size_px"])
        self.spacing_mm: float | None = attrs.get("spacing_mm")
        self.groups, self.far_fraction = int(groups), float(far_fraction)

    def __len__(self) -> int:
        return int(self._patches.shape[0])

    @property
    def n_chunks(self) -> int:
        return int(math.ceil(len(self) / self.chunk_size))

    def _decode(self, a: NDArray) -> NDArray:
        return a.astype(np.float32) / 255.0 if self.encoding == "uint8" else np.asarray(a, np.float32)

    def __getitem__(self, i: int) -> tuple[NDArray, NDArray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"patch index {i} out of range for {len(self)} patches")
        return self._decode(self._patches[i]), np.asarray(self._centres[i], np.float64)

    def read_chunk(self, k: int) -> tuple[NDArray, NDArray]:
        """Chunk ``k``: patches (n, S, S) float32 and centres (n, 3) float64."""
        a, b = k * self.chunk_size, min((k + 1) * self.chunk_size, len(self))
        return self._decode(self._patches[a:b]), np.asarray(self._centres[a:b], np.float64)

    def sample(self, batch_size: int, seed: SeedLike = None) -> PatchBatch:
        """A grouped batch from ``groups`` random chunks plus ``far_fraction`` from ``groups`` other chunks."""
        rng = make_rng(seed)
        n_far = int(round(self.far_fraction * batch_size))
        plan = [(m, True) for m in _split(int(batch_size) - n_far, self.groups)]
        plan += [(m, False) for m in _split(n_far, self.groups)]
        ps, cs = [], []
        for m, _ in plan:
            if m == 0:
                continue
            p, c = self.read_chunk(int(rng.integers(self.n_chunks)))
            sel = rng.choice(len(p), m, replace=len(p) < m)
            ps.append(p[sel])
            cs.append(c[sel])
        return PatchBatch(torch.from_numpy(np.concatenate(ps)), torch.from_numpy(np.concatenate(cs).astype(np.float32)))

    def iter_batches(self, batch_size: int, seed: SeedLike = None) -> Iterator[PatchBatch]:
        """One pass over every patch: chunks in random order, ``groups`` chunks shuffled together per batch."""
        rng = make_rng(seed)
        order = rng.permutation(self.n_chunks)
        buf_p: list[NDArray] = []
        buf_c: list[NDArray] = []
        for i in range(0, len(order), max(self.groups, 1)):
            blocks = [self.read_chunk(int(k)) for k in order[i : i + max(self.groups, 1)]]
            p = np.concatenate([b[0] for b in blocks] + buf_p)
            c = np.concatenate([b[1] for b in blocks] + buf_c)
            perm = rng.permutation(len(p))
            p, c = p[perm], c[perm]
            full = (len(p) // batch_size) * batch_size
            for a in range(0, full, batch_size):
                yield PatchBatch(
                    torch.from_numpy(p[a : a + batch_size]), torch.from_numpy(c[a : a + batch_size].astype(np.float32))
                )
            buf_p, buf_c = [p[full:]], [c[full:]]
        if buf_p and len(buf_p[0]):
            yield PatchBatch(torch.from_numpy(buf_p[0]), torch.from_numpy(buf_c[0].astype(np.float32)))

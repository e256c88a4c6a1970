"""Patch augmentations that make the encoder generalise across contrasts, resolutions and damage.

Every block is a small callable working on a batch of 1-channel patches ``(N, P, P)`` (or
``(N, 1, P, P)``), float32 in [0, 1] with background exactly 0, given as a numpy array or a torch tensor
(on any device: the work is done with torch ops on the batch's device, so a GPU batch is augmented on the
GPU). It returns the same type and shape, still in [0, 1], with background still 0::

    out = RandomGamma(p=1.0)(patches, seed=0)

Each sample is transformed with probability ``p``, with its own random parameters. Randomness comes from a
``torch.Generator`` (pass ``generator=``) or from ``seed=``; the same seed gives the same output.

Inside a :class:`Compose`, blocks pass a tissue mask ``(N, 1, P, P)`` bool along: intensity blocks change
tissue values only, geometric blocks (rotation, warp, tears, crop) move or remove tissue and update the
mask, so "background is 0" stays true however blocks are chained. Called alone, a block takes the tissue
to be ``x > 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .errors import PatchShapeError

__all__ = [
    "Augmentation",
    "ContrastInversion",
    "IntensityRemap",
    "RandomGamma",
    "RandomBlur",
    "ResolutionChange",
    "GaussianNoise",
    "ElasticWarp",
    "Tears",
    "RandomRotation",
    "TissueCrop",
    "CenterCrop",
    "Compose",
    "default_pipeline",
]

Batch = Any  # numpy array or torch tensor


def _as_batch(x: Batch) -> tuple[torch.Tensor, bool, bool]:
    """(N, 1, P, P) float32 tensor, was-numpy flag, had-channel flag."""
    is_np = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if is_np else x
    if not isinstance(t, torch.Tensor):
        raise PatchShapeError(f"patches must be a numpy array or torch tensor, got {type(x).__name__}")
    if t.ndim == 3:
        return t.float()[:, None], is_np, False
    if t.ndim == 4 and t.shape[1] == 1:
        return t.float(), is_np, True
    raise PatchShapeError(f"patches must be (N, P, P) or (N, 1, P, P), got shape {tuple(t.shape)}")


def _from_batch(t: torch.Tensor, is_np: bool, channel: bool) -> Batch:
    out = t if channel else t[:, 0]
    return out.cpu().numpy() if is_np else out


def _generator(device: torch.device, generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _pixel_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offsets from the patch centre in pixels, (H, W) each."""
    r = torch.arange(h, device=device, dtype=torch.float32) - (h - 1) / 2.0
    c = torch.arange(w, device=device, dtype=torch.float32) - (w - 1) / 2.0
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    return rr, cc


class Augmentation:
    """Base block: ``block(x, generator=None, seed=None)`` on a batch; subclasses implement :meth:`apply`.

    Parameters
    ----------
    p : probability that a sample is transformed.
    """

    p: float = 0.5

    def __call__(self, x: Batch, generator: torch.Generator | None = None, seed: int | None = None) -> Batch:
        t, is_np, channel = _as_batch(x)
        gen = _generator(t.device, generator, seed)
        mask = t > 0
        out, mask = self.apply(t, mask, gen)
        out = torch.where(mask, out.clamp(0.0, 1.0), torch.zeros((), device=out.device))
        return _from_batch(out, is_np, channel)

    def _selected(self, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        """(N, 1, 1, 1) bool: which samples this block transforms."""
        return (torch.rand(n, generator=gen, device=device) < float(self.p)).view(n, 1, 1, 1)

    def apply(self, x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform ``x`` (N, 1, P, P) float32 with tissue ``mask`` (N, 1, P, P) bool -> (x, mask)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


# -- intensity blocks -------------------------------------------------------------------------------------


class ContrastInversion(Augmentation):
    """Invert tissue intensities (``1 - x``), background stays 0: T1 versus a cell-body stain look inverted."""

    def __init__(self, p: float = 0.3) -> None:
        self.p = float(p)

    def apply(self, x, mask, gen):
        sel = self._selected(x.shape[0], gen, x.device)
        return torch.where(sel & mask, 1.0 - x, x), mask


class IntensityRemap(Augmentation):
    """Random smooth, generally non-monotone intensity map of the tissue (a random look-up table).

    The map is ``f(v) = a v + sum_b h_b exp(-(v - mu_b)^2 / (2 w_b^2))`` with 1..``max_bumps`` Gaussian
    bumps of random sign, then rescaled to [0, 1] over v in [0, 1]. A bump on the grey-matter intensity of a
    T1 patch gives a grey-matter-map-like patch; other draws mimic stains or PLI transmittance.
    """

    def __init__(
        self, p: float = 0.5, max_bumps: int = 3, width: tuple[float, float] = (0.05, 0.3), lut_size: int = 65
    ):
        self.p = float(p)
        self.max_bumps = int(max_bumps)
        self.width = (float(width[0]), float(width[1]))
        self.lut_size = int(lut_size)

    def apply(self, x, mask, gen):
        n, dev, k = x.shape[0], x.device, self.lut_size
        v = torch.linspace(0.0, 1.0, k, device=dev)
        slope = _uniform(n, -1.0, 1.0, gen, dev)[:, None]
        lut = slope * v[None]
        nb = self.max_bumps
        present = torch.rand(n, nb, generator=gen, device=dev) < 0.7
        present[:, 0] = True
        height = _uniform(n * nb, -1.5, 1.5, gen, dev).view(n, nb) * present
        mu = torch.rand(n, nb, generator=gen, device=dev)
        w = _uniform(n * nb, *self.width, gen, dev).view(n, nb)
        lut = lut + (
            height[:, :, None] * torch.exp(-((v[None, None] - mu[:, :, None]) ** 2) / (2 * w[:, :, None] ** 2))
        ).sum(1)
        lo, hi = lut.amin(dim=1, keepdim=True), lut.amax(dim=1, keepdim=True)
        ok = (hi - lo) > 1e-3
        lut = torch.where(ok, (lut - lo) / (hi - lo).clamp_min(1e-3), v[None].expand(n, k))
        # piecewise-linear evaluation of the LUT at every pixel
        pos = x.clamp(0.0, 1.0).view(n, -1) * (k - 1)
        i0 = pos.floor().long().clamp(0, k - 2)
        frac = pos - i0
        y = torch.gather(lut, 1, i0) * (1 - frac) + torch.gather(lut, 1, i0 + 1) * frac
        y = y.view_as(x)
        sel = self._selected(n, gen, dev)
        return torch.where(sel & mask, y, x), mask


class RandomGamma(Augmentation):
    """Gamma curve ``x ** exp(g)`` on tissue, ``g`` uniform in ``log_gamma`` (natural log of gamma)."""

    def __init__(self, p: float = 0.5, log_gamma: tuple[float, float] = (-0.7, 0.7)) -> None:
        self.p = float(p)
        self.log_gamma = (float(log_gamma[0]), float(log_gamma[1]))

    def apply(self, x, mask, gen):
        n = x.shape[0]
        g = torch.exp(_uniform(n, *self.log_gamma, gen, x.device)).view(n, 1, 1, 1)
        y = x.clamp_min(0.0) ** g
        sel = self._selected(n, gen, x.device)
        return torch.where(sel & mask, y, x), mask


def _masked_blur(x: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur of the tissue (normalised convolution, so the outline does not darken).

    x, mask : (N, 1, P, P); sigma : (N,) pixels.
    """
    n, _, h, w = x.shape
    radius = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    off = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(off[None] ** 2) / (2.0 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)  # (N, K)
    m = mask.to(x.dtype)

    def sep(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(1, n, h, w)
        t = F.conv2d(t, k.view(n, 1, -1, 1), padding=(radius, 0), groups=n)
        t = F.conv2d(t, k.view(n, 1, 1, -1), padding=(0, radius), groups=n)
        return t.reshape(n, 1, h, w)

    num, den = sep(x * m), sep(m)
    return torch.where(den > 1e-4, num / den.clamp_min(1e-4), x)


class RandomBlur(Augmentation):
    """Gaussian blur of the tissue with sigma uniform in ``sigma_px`` (pixels of the patch)."""

    def __init__(self, p: float = 0.3, sigma_px: tuple[float, float] = (0.3, 1.5)) -> None:
        self.p = float(p)
        self.sigma_px = (float(sigma_px[0]), float(sigma_px[1]))

    def apply(self, x, mask, gen):
        n = x.shape[0]
        sigma = _uniform(n, *self.sigma_px, gen, x.device)
        sel = self._selected(n, gen, x.device)
        return torch.where(sel & mask, _masked_blur(x, mask, sigma), x), mask


class ResolutionChange(Augmentation):
    """Downsample by a factor from ``factors`` (area average over tissue) and upsample back (bilinear).

    Mimics sections scanned at a coarser resolution than the working spacing.
    """

    def __init__(self, p: float = 0.3, factors: Sequence[float] = (1.5, 2.0, 3.0)) -> None:
        self.p = float(p)
        self.factors = tuple(float(f) for f in factors)

    def apply(self, x, mask, gen):
        n, _, h, w = x.shape
        sel = self._selected(n, gen, x.device)
        which = torch.randint(len(self.factors), (n,), generator=gen, device=x.device)
        out = x
        m = mask.to(x.dtype)
        for i, f in enumerate(self.factors):
            pick = (which == i).view(n, 1, 1, 1) & sel
            size = (max(2, round(h / f)), max(2, round(w / f)))
            num = F.interpolate(x * m, size=size, mode="area")
            den = F.interpolate(m, size=size, mode="area")
            low = torch.where(den > 1e-4, num / den.clamp_min(1e-4), torch.zeros_like(num))
            up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
            out = torch.where(pick & mask, up, out)
        return out, mask


class GaussianNoise(Augmentation):
    """Additive Gaussian noise on tissue with standard deviation uniform in ``std``, then clipped to [0, 1]."""

    def __init__(self, p: float = 0.5, std: tuple[float, float] = (0.01, 0.08)) -> None:
        self.p = float(p)
        self.std = (float(std[0]), float(std[1]))

    def apply(self, x, mask, gen):
        n = x.shape[0]
        s = _uniform(n, *self.std, gen, x.device).view(n, 1, 1, 1)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        sel = self._selected(n, gen, x.device)
        return torch.where(sel & mask, (x + s * noise).clamp(0.0, 1.0), x), mask


# -- geometric blocks --------------------------------------------------------------------------------------


def _resample(x: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample x and mask at ``grid`` (N, P, P, 2) in grid_sample's normalised (x=col, y=row) coordinates."""
    m = mask.to(x.dtype)
    num = F.grid_sample(x * m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    den = F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    new_mask = den > 0.5
    return torch.where(new_mask, num / den.clamp_min(1e-4), torch.zeros_like(num)), new_mask


def _identity_grid(n: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    theta = torch.eye(2, 3, device=device)[None].expand(n, 2, 3)
    return F.affine_grid(theta, [n, 1, h, w], align_corners=False)


class RandomRotation(Augmentation):
    """Rotate the patch about its centre by an angle uniform in [-max_deg, max_deg] degrees.

    Corners that come from outside the patch become background; apply it to a larger context patch and
    crop the centre afterwards (see :class:`Compose`'s ``crop_to``) to avoid them.
    """

    def __init__(self, p: float = 0.5, max_deg: float = 180.0) -> None:
        self.p = float(p)
        self.max_deg = float(max_deg)

    def apply(self, x, mask, gen):
        n, _, h, w = x.shape
        a = torch.deg2rad(_uniform(n, -self.max_deg, self.max_deg, gen, x.device))
        sel = self._selected(n, gen, x.device).view(n)
        a = torch.where(sel, a, torch.zeros_like(a))
        cos, sin = torch.cos(a), torch.sin(a)
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin * h / w, sin * w / h, cos
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        y, m = _resample(x, mask, grid)
        s = sel.view(n, 1, 1, 1)
        return torch.where(s, y, x), torch.where(s, m, mask)


class ElasticWarp(Augmentation):
    """Small smooth random deformation: displacement up to ``alpha_px`` pixels, ``grid`` control points a side."""

    def __init__(self, p: float = 0.3, alpha_px: tuple[float, float] = (0.5, 2.5), grid: int = 4) -> None:
        self.p = float(p)
        self.alpha_px = (float(alpha_px[0]), float(alpha_px[1]))
        self.grid = int(grid)

    def apply(self, x, mask, gen):
        n, _, h, w = x.shape
        coarse = torch.randn(n, 2, self.grid, self.grid, generator=gen, device=x.device)
        disp = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        peak = disp.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        alpha = _uniform(n, *self.alpha_px, gen, x.device).view(n, 1, 1, 1)
        disp = disp / peak * alpha  # pixels
        grid = _identity_grid(n, h, w, x.device)
        grid = grid + torch.stack([disp[:, 1] * 2.0 / w, disp[:, 0] * 2.0 / h], dim=-1)
        y, m = _resample(x, mask, grid)
        s = self._selected(n, gen, x.device)
        return torch.where(s, y, x), torch.where(s, m, mask)


class Tears(Augmentation):
    """Tears and missing tissue: up to ``max_items`` random lines (cracks) or blobs (holes) set to background."""

    def __init__(
        self,
        p: float = 0.2,
        max_items: int = 3,
        width_px: tuple[float, float] = (1.0, 3.0),
        blob_radius_px: tuple[float, float] = (2.0, 6.0),
    ) -> None:
        self.p = float(p)
        self.max_items = int(max_items)
        self.width_px = (float(width_px[0]), float(width_px[1]))
        self.blob_radius_px = (float(blob_radius_px[0]), float(blob_radius_px[1]))

    def apply(self, x, mask, gen):
        n, _, h, w = x.shape
        k, dev = self.max_items, x.device
        rr, cc = _pixel_grid(h, w, dev)
        present = torch.rand(n, k, generator=gen, device=dev) < 0.6
        present[:, 0] = True
        is_line = torch.rand(n, k, generator=gen, device=dev) < 0.5
        pr = (torch.rand(n, k, generator=gen, device=dev) - 0.5) * h
        pc = (torch.rand(n, k, generator=gen, device=dev) - 0.5) * w
        ang = torch.rand(n, k, generator=gen, device=dev) * math.pi
        width = _uniform(n * k, *self.width_px, gen, dev).view(n, k)
        radius = _uniform(n * k, *self.blob_radius_px, gen, dev).view(n, k)
        dr = rr[None, None] - pr[..., None, None]
        dc = cc[None, None] - pc[..., None, None]
        line_dist = (dr * torch.cos(ang)[..., None, None] - dc * torch.sin(ang)[..., None, None]).abs()
        hit_line = line_dist <= width[..., None, None] / 2.0
        hit_blob = dr**2 + dc**2 <= radius[..., None, None] ** 2
        hit = torch.where(is_line[..., None, None], hit_line, hit_blob) & present[..., None, None]
        cut = hit.any(dim=1, keepdim=True) & self._selected(n, gen, dev)
        return torch.where(cut, torch.zeros_like(x), x), mask & ~cut


class TissueCrop(Augmentation):
    """Partial sections: cut the tissue along a random straight line, keeping the side with the patch centre.

    The line lies between ``min_dist_px`` and ``max_frac`` x half the patch from the centre.
    """

    def __init__(self, p: float = 0.2, min_dist_px: float = 2.0, max_frac: float = 1.0) -> None:
        self.p = float(p)
        self.min_dist_px = float(min_dist_px)
        self.max_frac = float(max_frac)

    def apply(self, x, mask, gen):
        n, _, h, w = x.shape
        dev = x.device
        rr, cc = _pixel_grid(h, w, dev)
        ang = torch.rand(n, generator=gen, device=dev) * 2 * math.pi
        dist = _uniform(n, self.min_dist_px, max(self.min_dist_px, self.max_frac * min(h, w) / 2.0), gen, dev)
        proj = rr[None] * torch.cos(ang)[:, None, None] + cc[None] * torch.sin(ang)[:, None, None]
        cut = (proj > dist[:, None, None])[:, None] & self._selected(n, gen, dev)
        return torch.where(cut, torch.zeros_like(x), x), mask & ~cut


class CenterCrop(Augmentation):
    """Crop the central ``size`` x ``size`` pixels (not random: ``p`` is ignored). Changes the patch size."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.p = 1.0

    def apply(self, x, mask, gen):
        h, w = x.shape[-2:]
        if self.size > min(h, w):
            raise PatchShapeError(f"cannot crop {self.size} px from {h}x{w} patches")
        r0, c0 = (h - self.size) // 2, (w - self.size) // 2
        sl = (..., slice(r0, r0 + self.size), slice(c0, c0 + self.size))
        return x[sl], mask[sl]


class Compose(Augmentation):
    """Apply blocks in order, passing the tissue mask along; optionally crop the centre at the end.

    Parameters
    ----------
    blocks : augmentation blocks.
    mask_threshold : tissue is ``x > mask_threshold`` in the input batch.
    """

    def __init__(self, blocks: Sequence[Augmentation], mask_threshold: float = 0.0) -> None:
        self.blocks = list(blocks)
        self.mask_threshold = float(mask_threshold)
        self.p = 1.0

    def __call__(self, x: Batch, generator: torch.Generator | None = None, seed: int | None = None) -> Batch:
        t, is_np, channel = _as_batch(x)
        gen = _generator(t.device, generator, seed)
        out, mask = self.apply(t, t > self.mask_threshold, gen)
        out = torch.where(mask, out.clamp(0.0, 1.0), torch.zeros((), device=out.device))
        return _from_batch(out, is_np, channel)

    def apply(self, x, mask, gen):
        for b in self.blocks:
            if b.p > 0:
                x, mask = b.apply(x, mask, gen)
                x = torch.where(mask, x.clamp(0.0, 1.0), torch.zeros_like(x))
        return x, mask

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(b) for b in self.blocks)
        return f"Compose([\n  {inner}\n])"


def default_pipeline(probabilities: dict[str, float] | None = None, crop_to: int | None = None) -> Compose:
    """The training pipeline: geometry first (on a context patch), crop, then damage, contrast and noise.

    probabilities : per-block probability keyed by ``rotate, elastic, tissue_crop, tears, remap, invert,
        gamma, blur, resolution, noise`` (missing keys take the defaults below; 0 disables a block).
    crop_to : final patch size; ``None`` keeps the input size.
    """
    p = {
        "rotate": 0.25,
        "elastic": 0.3,
        "tissue_crop": 0.15,
        "tears": 0.15,
        "remap": 0.5,
        "invert": 0.25,
        "gamma": 0.5,
        "blur": 0.25,
        "resolution": 0.25,
        "noise": 0.4,
    }
    unknown = set(probabilities or {}) - set(p)
    if unknown:
        raise PatchShapeError(f"unknown augmentation block(s) {sorted(unknown)}; known: {sorted(p)}")
    p.update(probabilities or {})
    blocks: list[Augmentation] = [RandomRotation(p["rotate"]), ElasticWarp(p["elastic"])]
    if crop_to is not None:
        blocks.append(CenterCrop(crop_to))
    blocks += [
        TissueCrop(p["tissue_crop"]),
        Tears(p["tears"]),
        IntensityRemap(p["remap"]),
        ContrastInversion(p["invert"]),
        RandomGamma(p["gamma"]),
        RandomBlur(p["blur"]),
        ResolutionChange(p["resolution"]),
        GaussianNoise(p["noise"]),
    ]
    return Compose(blocks)

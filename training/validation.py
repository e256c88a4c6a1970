"""Validation during training: where does the nearest reference patch of a query patch lie?

The reference patch set is cut from the anchoring reference volume (``"mni152"``) along canonical planes, the
query patches from planes through *other* volumes or contrasts (tilted, as real sections are), with the
same numpy code path as anchoring uses (``cut_plane`` -> ``normalize_intensity`` -> ``grid_centres`` ->
``extract_patches``). The metric is the 3D distance (mm) between a query patch's centre and the centre of
its top-1 cosine-similarity neighbour among the reference patches; lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from siibra_anchor.encoders import embed_patches
from siibra_anchor.patches import PatchSpec, extract_patches, grid_centres, normalize_intensity
from siibra_anchor.planes import CANONICAL_PLANES, cut_plane, pixel_to_world, plane_affine

from .datasets import random_plane_frames
from .volumes import VolumeSource

__all__ = ["ValidationSet", "cut_section_patches", "build_validation_set", "evaluate"]


@dataclass
class ValidationSet:
    """Reference patches (R, P, P) with centres (R, 3) mm; query patches and centres per query volume."""

    ref_patches: NDArray
    ref_centres: NDArray
    queries: dict[str, tuple[NDArray, NDArray]] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {"reference": len(self.ref_patches), **{k: len(v[0]) for k, v in self.queries.items()}}


def cut_section_patches(
    volume: VolumeSource, affine: NDArray, shape: tuple[int, int], spec: PatchSpec, stride_px: int
) -> tuple[NDArray, NDArray]:
    """Cut one plane (section affine, (H, W) at ``spec.spacing_mm``) and return its grid patches.

    Returns patches (N, P, P) float32 (normalised like an anchored section) and centres (N, 3) mm.
    """
    img = cut_plane(volume.data, volume.affine, affine, shape)
    mask = cut_plane(volume.mask.astype(np.float32), volume.affine, affine, shape) > 0.5
    if not mask.any():
        return np.zeros((0, spec.size_px, spec.size_px), np.float32), np.zeros((0, 3))
    norm = normalize_intensity(img, mask)
    rc = grid_centres(mask, spec, stride_px=stride_px)
    if len(rc) == 0:
        return np.zeros((0, spec.size_px, spec.size_px), np.float32), np.zeros((0, 3))
    patches = extract_patches(norm, rc, spec.size_px)[:, 0]
    return patches, pixel_to_world(affine, rc[:, 0], rc[:, 1])


def build_validation_set(
    reference: VolumeSource,
    queries: Sequence[VolumeSource],
    spec: PatchSpec,
    axes: Sequence[str] = ("coronal",),
    ref_step_mm: float = 4.0,
    ref_stride_px: int = 3,
    n_queries: int = 300,
    tilt_deg: float = 10.0,
    inplane_rotation_deg: float = 0.0,
    seed: int = 12345,
) -> ValidationSet:
    """Reference patches along ``axes`` every ``ref_step_mm``; ``n_queries`` patches per query volume.

    Query planes are canonical planes of ``axes`` tilted up to ``tilt_deg`` through random brain points,
    6 patches per plane at random grid positions (stride 2 px). Seeded.
    """
    centre, radius = reference.brain_centre_radius()
    half = radius + spec.size_px * spec.spacing_mm / 2.0
    size = int(math.ceil(2 * half / spec.spacing_mm)) + 1
    ref_p, ref_c = [], []
    for ax in axes:
        row, col = CANONICAL_PLANES[ax]
        normal = np.cross(row, col)
        for t in np.arange(-radius, radius + 1e-9, ref_step_mm):
            aff = plane_affine(centre + t * normal, row, col, spec.spacing_mm, (size, size))
            p, c = cut_section_patches(reference, aff, (size, size), spec, ref_stride_px)
            ref_p.append(p)
            ref_c.append(c)
    vset = ValidationSet(np.concatenate(ref_p), np.concatenate(ref_c))
    rng = np.random.default_rng(seed)
    per_plane = 6
    for vol in queries:
        tissue = vol.tissue_points_mm()
        qc, qr = vol.brain_centre_radius()
        qsize = int(math.ceil(2 * (qr + spec.size_px * spec.spacing_mm / 2.0) / spec.spacing_mm)) + 1
        ps, cs = [], []
        got = 0
        for _ in range(20 * int(math.ceil(n_queries / per_plane))):
            if got >= n_queries:
                break
            rows, cols = random_plane_frames(
                rng,
                1,
                families=tuple(axes),
                tilt_deg=tilt_deg,
                inplane_rotation_deg=inplane_rotation_deg,
                mirror_prob=0.0,
            )
            r, c = rows[0], cols[0]
            n = np.cross(r, c)
            point = tissue[rng.integers(len(tissue))].astype(np.float64)
            plane_centre = qc - ((qc - point) @ n) * n
            aff = plane_affine(plane_centre, r, c, spec.spacing_mm, (qsize, qsize))
            p, w = cut_section_patches(vol, aff, (qsize, qsize), spec, stride_px=2)
            if len(p) == 0:
                continue
            sel = rng.choice(len(p), min(per_plane, len(p), n_queries - got), replace=False)
            ps.append(p[sel])
            cs.append(w[sel])
            got += len(sel)
        vset.queries[vol.name] = (np.concatenate(ps), np.concatenate(cs))
    return vset


def _top1(q: NDArray, ref: NDArray, device: torch.device, chunk: int = 1024) -> NDArray:
    r = torch.from_numpy(ref).to(device)
    out = []
    for a in range(0, len(q), chunk):
        s = torch.from_numpy(q[a : a + chunk]).to(device) @ r.T
        out.append(s.argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def evaluate(
    model: torch.nn.Module, vset: ValidationSet, device: str | torch.device = "cpu", batch_size: int = 1024
) -> dict[str, Any]:
    """Top-1 nearest-neighbour errors (mm) of every query volume's patches against the reference patches.

    Returns ``{"median_mm", "p90_mm", "within_10mm", "per_volume": {name: {...same keys...}}}`` where
    the top-level numbers pool all query volumes.
    """
    dev = torch.device(device)
    was_training = model.training
    ref = embed_patches(model, vset.ref_patches, batch_size=batch_size, device=str(dev))
    errors_all = []
    per: dict[str, dict[str, float]] = {}
    for name, (qp, qc) in vset.queries.items():
        z = embed_patches(model, qp, batch_size=batch_size, device=str(dev))
        nn_idx = _top1(z, ref, dev)
        err = np.linalg.norm(vset.ref_centres[nn_idx] - qc, axis=1)
        errors_all.append(err)
        per[name] = _stats(err)
    model.train(was_training)
    out: dict[str, Any] = dict(_stats(np.concatenate(errors_all) if errors_all else np.zeros(0)))
    out["per_volume"] = per
    return out


def _stats(err: NDArray) -> dict[str, float]:
    if err.size == 0:
        return {"median_mm": float("nan"), "p90_mm": float("nan"), "within_10mm": float("nan")}
    return {
        "median_mm": float(np.median(err)),
        "p90_mm": float(np.percentile(err, 90)),
        "within_10mm": float(np.mean(err <= 10.0)),
    }

"""Patch-level evaluation, as in the method's poster: top-k accuracy and 3D patch errors.

For each test section (with its true affine) patches are cut on the section's grid, in the view that makes
them look like the reference sections of the closest orientation (the truth gives that view; this isolates
the embedding from the rotation search). Each query is compared with every reference patch of that
orientation. Reported:

* top-k accuracy: fraction of queries whose geometrically closest reference patch (to the query's true 3D
  centre) is among its k most similar reference patches, k = 1..k_max (poster figure A);
* patch error: distance (mm) between a query's true centre and the centre of its most similar reference
  patch (figure B: boxplot with whiskers at the 90th percentile; figure C: histogram of the outliers).

Also reported, to show where the errors come from: the median per section orientation, and the median
when a match on the query's mirror position across the mid-sagittal plane (x -> -x) counts as right.
A sagittal patch and its mirror image on the other side of the midline look alike in a near-symmetric
brain (in a symmetric template they are the same image), so no patch embedding can tell them apart; the
whole-section pipeline settles it with hints and image similarity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..affine_fit import SectionMap
from ..anchoring import plane_views
from ..patches import grid_centres, normalize_intensity, rotation_angles
from ..planes import pixel_to_world
from ..views import PatchViews

__all__ = ["patch_metrics", "global_top1", "plot_patch_metrics"]


def patch_metrics(
    sims: list[Any],
    ref: Any,
    encoder: Any,
    k_max: int = 50,
    n_rotations: int = 12,
    max_per_section: int = 150,
    seed: int = 0,
) -> dict[str, Any]:
    """Top-k accuracy curve and patch errors of ``encoder`` against ``ref`` on simulated sections.

    sims : :class:`~siibra_anchor.evaluation.simulate.SimulatedSection` list; ref : a Reference built with ``encoder``.
    Returns ``{"topk": (k_max,) list, "errors_mm": list, "median_mm", "p90_mm", "n", "section": list}``
    (``section``: for each error, the index in ``sims`` of the section it came from).
    """
    from ..matching import topk_cosine

    rng = np.random.default_rng(seed)
    spec = ref.spec
    axes = ref.plane_axes
    plane_normals = np.cross(axes[:, :, 0], axes[:, :, 1])
    hits = np.zeros(k_max)
    errors: list[float] = []
    errors_lr: list[float] = []
    orient: list[str] = []
    section: list[int] = []
    n = 0
    for si, sim in enumerate(sims):
        img, msk, scale = sim.section.at_spacing(spec.spacing_mm)
        true_w = sim.true_affine @ np.diag([scale[0], scale[1], 1.0, 1.0])
        cen = grid_centres(msk, spec)
        if len(cen) == 0:
            continue
        if len(cen) > max_per_section:
            cen = cen[np.sort(rng.choice(len(cen), max_per_section, replace=False))]
        m = SectionMap(true_w[:3, :2], true_w[:3, 3])
        views = plane_views(m, axes, n_rotations, [False, True])
        # the reference orientation closest to the section plane
        best_plane = int(np.argmax(np.abs(plane_normals @ m.normal)))
        view = int(views[best_plane])
        if view < 0:
            continue
        same = np.abs(plane_normals @ plane_normals[best_plane]) > 0.99
        ref_mask = same[ref.plane_ids]
        pv = PatchViews(
            normalize_intensity(img, msk), cen, spec.size_px, rotation_angles(n_rotations), [False, True], encoder
        )
        q = pv.take(np.arange(len(cen)), np.full(len(cen), view))
        _, idx, _ = topk_cosine(q, ref.embeddings, k_max, ref_mask=ref_mask)
        true_xyz = pixel_to_world(true_w, cen[:, 0], cen[:, 1])
        cand = np.flatnonzero(ref_mask)
        d_all = np.linalg.norm(ref.centres_mm[cand][None] - true_xyz[:, None], axis=2)
        closest = cand[np.argmin(d_all, axis=1)]
        rank_hit = idx == closest[:, None]  # (Q, k)
        first = np.where(rank_hit.any(axis=1), rank_hit.argmax(axis=1), k_max)
        for f in first:
            if f < k_max:
                hits[f:] += 1
        matched = ref.centres_mm[idx[:, 0]]
        e_true = np.linalg.norm(matched - true_xyz, axis=1)
        e_mirror = np.linalg.norm(matched - true_xyz * np.array([-1.0, 1.0, 1.0]), axis=1)
        errors.extend(e_true.tolist())
        errors_lr.extend(np.minimum(e_true, e_mirror).tolist())
        orient += [("sagittal", "coronal", "axial")[int(np.argmax(np.abs(m.normal)))]] * len(cen)
        section += [si] * len(cen)
        n += len(cen)
    e = np.asarray(errors)
    o = np.asarray(orient)

    def med(x: NDArray) -> float:
        return float(np.median(x)) if x.size else float("nan")

    return {
        "topk": (hits / max(n, 1)).tolist(),
        "errors_mm": e.tolist(),
        "median_mm": med(e),
        "p90_mm": float(np.percentile(e, 90)) if e.size else float("nan"),
        "n": int(n),
        "section": section,
        "median_mm_by_orientation": {k: med(e[o == k]) for k in ("coronal", "sagittal", "axial") if (o == k).any()},
        "median_mm_mirror_tolerant": med(np.asarray(errors_lr)),
    }


def global_top1(
    sim: Any,
    ref: Any,
    encoder: Any,
    n_rotations: int = 12,
    mirrors: tuple[bool, ...] = (False,),
    max_patches: int = 150,
    seed: int = 0,
) -> dict[str, NDArray]:
    """What the matches say before any affine is fitted: each section patch's most similar reference patch.

    Unlike :func:`patch_metrics` nothing of the truth is used to choose the view: every in-plane angle
    (and mirror state in ``mirrors``) is tried against every reference patch, as the first step of
    :func:`~siibra_anchor.anchor` does. ``sim`` : a :class:`~siibra_anchor.evaluation.simulate.SimulatedSection`.

    Returns ``{"similarity": (Q,), "matched_mm": (Q, 3), "true_mm": (Q, 3)}`` (world mm) for at most
    ``max_patches`` patches on the section's grid (seeded subsample); Q = 0 when no patch fits.
    """
    from ..matching import topk_cosine

    rng = np.random.default_rng(seed)
    spec = ref.spec
    img, msk, scale = sim.section.at_spacing(spec.spacing_mm)
    true_w = sim.true_affine @ np.diag([scale[0], scale[1], 1.0, 1.0])
    cen = grid_centres(msk, spec)
    if len(cen) > max_patches:
        cen = cen[np.sort(rng.choice(len(cen), max_patches, replace=False))]
    if len(cen) == 0:
        return {"similarity": np.zeros(0), "matched_mm": np.zeros((0, 3)), "true_mm": np.zeros((0, 3))}
    pv = PatchViews(
        normalize_intensity(img, msk), cen, spec.size_px, rotation_angles(n_rotations), list(mirrors), encoder
    )
    sims, idx, _ = topk_cosine(pv.all_views(np.arange(len(cen))), ref.embeddings, 1)
    return {
        "similarity": sims[:, 0].astype(float),
        "matched_mm": ref.centres_mm[idx[:, 0]],
        "true_mm": pixel_to_world(true_w, cen[:, 0], cen[:, 1]),
    }


def plot_patch_metrics(metrics: dict[str, dict[str, Any]], out_png: str, outlier_mm: float = 10.0) -> NDArray | None:
    """Figures A (top-k curves), B (error boxplot, whiskers at p90), C (outlier histogram) in one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, m in metrics.items():
        ax[0].plot(np.arange(1, len(m["topk"]) + 1), m["topk"], label=name)
    ax[0].set(xlabel="k", ylabel="top-k accuracy", title="A: top-k accuracy", ylim=(0, 1))
    ax[0].legend()
    names = list(metrics)
    ax[1].boxplot([metrics[n]["errors_mm"] for n in names], whis=(0, 90), showfliers=False)
    ax[1].set_xticks(range(1, len(names) + 1), names, rotation=15)
    ax[1].set(ylabel="top-1 patch error (mm)", title="B: patch errors (whiskers at p90)")
    bins = np.linspace(outlier_mm, 150, 30)
    for name in names:
        e = np.asarray(metrics[name]["errors_mm"])
        ax[2].hist(e[e > outlier_mm], bins=bins, histtype="step", label=name)
    ax[2].set(xlabel="error (mm)", ylabel="patches", title=f"C: outliers (> {outlier_mm:.0f} mm)")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return None

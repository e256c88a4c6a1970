"""Contrastive losses for patch embeddings.

Both losses take raw embeddings and L2-normalise them first, so similarities are cosine similarities.

Spatial contrastive loss (the method's training target)
-------------------------------------------------------
For embeddings ``z_i`` (N, D) of patches whose centres ``c_i`` (N, 3) are known in mm, with
``s_ij = cos(z_i, z_j) / temperature`` and ``d_ij = |c_i - c_j|``:

* predicted distribution over the *other* patches of the batch::

      p_ij = exp(s_ij) / sum_{k != i} exp(s_ik)                     (j != i)

* soft target from an RBF kernel on 3D distance, row-normalised over the other patches::

      t_ij = exp(-d_ij^2 / (2 sigma^2)) / sum_{k != i} exp(-d_ik^2 / (2 sigma^2))      (j != i)

  (computed as a softmax of ``-d^2 / (2 sigma^2)``, which is the same number without underflow);

* per-row cross-entropy ``l_i = -sum_{j != i} t_ij log p_ij``, and the loss is the mean of ``l_i`` over
  the *valid* rows. A row is valid when some other patch lies within ``max_distance_sigmas * sigma`` of
  patch ``i``; a row without such a neighbour has a target that says nothing about its position, so it
  is only used as a negative for the other rows. ``max_distance_sigmas=None`` keeps every row. Without
  any valid row the loss is 0 (with a gradient path, so DDP and AMP stay happy).

Two views of the same patch have ``d = 0`` and therefore receive the largest target weight.

InfoNCE
-------
Standard two-view InfoNCE (SimCLR/CLIP style): with ``s_ij = cos(z1_i, z2_j) / temperature``,
``L_12 = mean_i -log(exp(s_ii) / sum_j exp(s_ij))``; the symmetric version (default) averages ``L_12``
and ``L_21`` (the same with the roles of the two views swapped).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .errors import PatchShapeError

__all__ = ["spatial_contrastive_loss", "info_nce_loss", "rbf_targets"]


def _check_embeddings(z: torch.Tensor, name: str = "z") -> None:
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise PatchShapeError(f"{name} must be an (N, D) tensor, got {shape}")


def rbf_targets(centres_mm: torch.Tensor, sigma_mm: float) -> torch.Tensor:
    """Row-normalised RBF targets ``t`` (N, N) excluding self (diagonal 0), see the module docstring.

    centres_mm : (N, 3) patch centres in mm, N >= 2.
    """
    c = centres_mm
    d2 = torch.cdist(c, c, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    eye = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
    logk = (-d2 / (2.0 * float(sigma_mm) ** 2)).masked_fill(eye, float("-inf"))
    return torch.softmax(logk, dim=1)


def spatial_contrastive_loss(
    z: torch.Tensor,
    centres_mm: torch.Tensor,
    sigma_mm: float,
    temperature: float = 0.1,
    max_distance_sigmas: float | None = 3.0,
) -> torch.Tensor:
    """Spatial contrastive loss with RBF soft targets on 3D distance (formula in the module docstring).

    Parameters
    ----------
    z : (N, D) embeddings (normalised here), any float dtype; the loss is computed in ``z``'s dtype
        promoted to at least float32.
    centres_mm : (N, 3) patch centres in mm (world coordinates of the space).
    sigma_mm : RBF bandwidth in mm.
    temperature : softmax temperature of the cosine similarities.
    max_distance_sigmas : rows whose nearest other patch is farther than this many sigmas are left out
        of the mean; ``None`` keeps all rows.

    Returns
    -------
    Scalar tensor.
    """
    _check_embeddings(z)
    n = z.shape[0]
    if centres_mm.shape != (n, 3):
        raise PatchShapeError(f"centres_mm must be ({n}, 3) to match z {tuple(z.shape)}, got {tuple(centres_mm.shape)}")
    if not sigma_mm > 0 or not temperature > 0:
        raise PatchShapeError(f"sigma_mm and temperature must be > 0, got {sigma_mm} and {temperature}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    if n < 2:
        return z.to(dtype).sum() * 0.0
    zn = F.normalize(z.to(dtype), dim=1)
    c = centres_mm.to(device=z.device, dtype=dtype)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (zn @ zn.T / float(temperature)).masked_fill(eye, float("-inf"))
    logp = torch.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
    t = rbf_targets(c, sigma_mm)
    rows = -(t * logp).sum(dim=1)
    if max_distance_sigmas is None:
        return rows.mean()
    d = torch.cdist(c, c, compute_mode="donot_use_mm_for_euclid_dist").masked_fill(eye, float("inf"))
    valid = d.amin(dim=1) <= float(max_distance_sigmas) * float(sigma_mm)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return rows.sum() * 0.0
    return (rows * valid.to(dtype)).sum() / n_valid


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, symmetric: bool = True) -> torch.Tensor:
    """Two-view InfoNCE: row ``i`` of ``z1`` and of ``z2`` are two views of the same patch.

    z1, z2 : (N, D) embeddings (normalised here). Returns a scalar tensor (formula in the module docstring).
    """
    _check_embeddings(z1, "z1")
    _check_embeddings(z2, "z2")
    if z1.shape != z2.shape:
        raise PatchShapeError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise PatchShapeError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(torch.promote_types(z1.dtype, z2.dtype), torch.float32)
    a = F.normalize(z1.to(dtype), dim=1)
    b = F.normalize(z2.to(dtype), dim=1)
    logits = a @ b.T / float(temperature)
    labels = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss

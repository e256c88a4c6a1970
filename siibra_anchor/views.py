"""Section patch embeddings in several views (in-plane angle x mirror), computed on demand.

A section patch is compared with reference patches in the view that makes it look like them: for the
global search every view is needed (the rotation is unknown), but once a placement is hypothesised each
reference section asks for one predicted view. Computing views lazily and caching them keeps the number
of encoder calls near ``n_coarse * V + n_patches * (a few)`` instead of ``n_patches * V``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import AnchoringFailedError
from .patches import extract_patches

__all__ = ["PatchViews", "encode_together"]


class PatchViews:
    """Embeddings of patches at ``centres`` of ``image`` in V = len(angles) * len(mirrors) views.

    View ``v = m * len(angles) + a`` is angle ``angles[a]`` with mirror flag ``mirrors[m]`` (see
    :func:`~siibra_anchor.patches.extract_patches`). Embeddings are (D,) float32, L2-normalised.
    """

    def __init__(
        self,
        image: NDArray,
        centres: NDArray,
        size_px: int,
        angles: NDArray,
        mirrors: list[bool],
        encoder: Any,
        device: str | None = None,
        batch_size: int = 1024,
    ) -> None:
        self.image = image
        self.centres = np.asarray(centres, float)
        self.size_px = int(size_px)
        self.angles = np.asarray(angles, float)
        self.mirrors = list(mirrors)
        self.encoder = encoder
        self.device = device
        self.batch_size = batch_size
        self._emb: NDArray | None = None
        self._done = np.zeros((len(self.centres), self.n_views), bool)
        self.n_encoded = 0

    @property
    def n(self) -> int:
        return len(self.centres)

    @property
    def n_views(self) -> int:
        return len(self.angles) * len(self.mirrors)

    def ensure(self, rows: NDArray, views: NDArray) -> None:
        """Encode the (row, view) pairs not computed yet."""
        from .encoders import embed_patches

        pairs, patches = self.pending(rows, views)
        if len(pairs):
            self.store(pairs, embed_patches(self.encoder, patches, batch_size=self.batch_size, device=self.device))

    def pending(self, rows: NDArray, views: NDArray) -> tuple[NDArray, NDArray]:
        """The (view, row) pairs among ``rows`` x ``views`` (element-wise) not encoded yet, (P, 2) int64, and
        their patches (P, size, size) float32: what :meth:`store` wants back with their embeddings."""
        rows = np.asarray(rows, np.int64).ravel()
        views = np.asarray(views, np.int64).ravel()
        todo = ~self._done[rows, views]
        if not todo.any():
            return np.zeros((0, 2), np.int64), np.zeros((0, self.size_px, self.size_px), np.float32)
        pairs = np.unique(np.stack([views[todo], rows[todo]], axis=1), axis=0)
        patches = np.empty((len(pairs), self.size_px, self.size_px), np.float32)
        starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
        for s, e in zip(starts, np.r_[starts[1:], len(pairs)], strict=True):
            v = int(pairs[s, 0])
            a, m = v % len(self.angles), v // len(self.angles)
            patches[s:e] = extract_patches(
                self.image, self.centres[pairs[s:e, 1]], self.size_px, [self.angles[a]], mirror=self.mirrors[m]
            )[:, 0]
        return pairs, patches

    def store(self, pairs: NDArray, emb: NDArray) -> None:
        """Keep the embeddings (P, D) of the (view, row) ``pairs`` that :meth:`pending` returned."""
        if self._emb is None:
            self._emb = np.zeros((self.n, self.n_views, emb.shape[1]), np.float32)
        self._emb[pairs[:, 1], pairs[:, 0]] = emb
        self._done[pairs[:, 1], pairs[:, 0]] = True
        self.n_encoded += len(pairs)

    def all_view_pairs(self, rows: NDArray) -> tuple[NDArray, NDArray]:
        """(rows, views) of every view of ``rows``, element-wise, as :meth:`ensure` and :meth:`pending` take."""
        rows = np.asarray(rows, np.int64)
        return np.repeat(rows, self.n_views), np.tile(np.arange(self.n_views), len(rows))

    def take(self, rows: NDArray, views: NDArray) -> NDArray:
        """(P, D) embeddings of the (row, view) pairs."""
        rows = np.asarray(rows, np.int64)
        views = np.asarray(views, np.int64)
        if rows.size == 0:
            return np.zeros((0, 0 if self._emb is None else self._emb.shape[2]), np.float32)
        self.ensure(rows, views)
        emb = self._emb
        if emb is None:  # unreachable: ensure() encoded at least one pair
            raise AnchoringFailedError("no patch embeddings were computed")
        return emb[rows, views]

    def all_views(self, rows: NDArray) -> NDArray:
        """(R, V, D) embeddings of the given rows in every view."""
        rr, vv = self.all_view_pairs(rows)
        return self.take(rr, vv).reshape(len(rows), self.n_views, -1)


def encode_together(
    views: Sequence[PatchViews], rows: Sequence[NDArray], device: str | None = None, batch_size: int = 4096
) -> int:
    """Encode every view of ``rows[i]`` of ``views[i]`` for all i in one encoder call (one batch stream on
    ``device``): many sections' patches fill a GPU batch that one section's would not. All ``views`` must
    share one encoder. Returns how many patches were encoded."""
    from .encoders import embed_patches

    todo = [pv.pending(*pv.all_view_pairs(r)) for pv, r in zip(views, rows, strict=True)]
    n = [len(pairs) for pairs, _ in todo]
    if sum(n) == 0:
        return 0
    emb = embed_patches(views[0].encoder, np.concatenate([p for _, p in todo]), batch_size=batch_size, device=device)
    start = 0
    for pv, (pairs, _), k in zip(views, todo, n, strict=True):
        if k:
            pv.store(pairs, emb[start : start + k])
        start += k
    return int(sum(n))

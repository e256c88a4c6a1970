"""Approximate nearest-neighbour search of reference embeddings with faiss (the ``faiss`` extra).

The exact search (:func:`siibra_anchor.matching.topk_cosine`) costs ``Q * A * R * D`` multiply-adds, which
grows with the reference; for references of millions of patches an inverted-file (IVF) or HNSW index over
the L2-normalised embeddings answers the same inner-product (= cosine) question in a fraction of the time,
missing a few true neighbours. :func:`recall_at_k` measures how many.

faiss is imported when an index is built, never at import time of this module.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import InvalidParameterError, SearchBackendError

__all__ = ["FaissIndex", "build_index", "topk_faiss", "recall_at_k", "cached_index", "faiss_available"]

log = logging.getLogger(__name__)

#: Default number of reference patches from which ``search="auto"`` uses faiss instead of exact search.
AUTO_THRESHOLD = 1_000_000


def faiss_available() -> bool:
    """True if ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise SearchBackendError(
            "approximate search needs faiss: pip install 'siibra-anchor[faiss]' (faiss-cpu), or use search='exact'"
        ) from exc
    return faiss


@dataclass
class FaissIndex:
    """A faiss inner-product index over (R, D) L2-normalised reference embeddings.

    ``kind`` is "ivf" (IndexIVFFlat, ``nlist`` cells, ``nprobe`` searched) or "hnsw" (IndexHNSWFlat,
    ``ef_search``). ``n`` reference rows, ``dim`` embedding length.
    """

    index: Any
    kind: str
    n: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    ef_search: int = 0

    def search(self, queries: NDArray, k: int, allowed: NDArray | None = None) -> tuple[NDArray, NDArray]:
        """(Q, D) float32 -> similarity (Q, k) float32 descending, index (Q, k) int64 (-1 = no hit).

        ``allowed`` : optional (R,) bool; only those references are returned (a faiss ID selector, so
        the k best *allowed* references are found, not the allowed ones among the k best).
        """
        faiss = _faiss()
        q = np.ascontiguousarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise SearchBackendError(f"queries must be (Q, {self.dim}), got {q.shape}")
        k = int(min(k, self.n))
        bits = None
        sel = None
        if allowed is not None:
            bits = np.packbits(np.asarray(allowed, bool), bitorder="little")
            sel = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits))
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        else:
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.ef_search, k))
        sim, idx = self.index.search(q, k, params=params)
        del bits  # the selector points into it until here
        return sim.astype(np.float32), idx.astype(np.int64)


def build_index(
    refs: NDArray,
    kind: str = "ivf",
    nlist: int | None = None,
    nprobe: int | None = None,
    ef_search: int = 128,
    seed: int = 0,
    max_train: int = 256 * 1024,
) -> FaissIndex:
    """Build a faiss inner-product index over ``refs`` (R, D) float32, L2-normalised.

    Parameters
    ----------
    kind : "ivf" (default; trains k-means on ``64 * nlist`` (at least 50k, at most ``max_train``) rows
        drawn with ``seed``) or "hnsw" (graph, 32 links per node; no training, slower to build).
    nlist : IVF cells (default ``2 * sqrt(R)``, at least 1 and at most R / 39).
    nprobe : IVF cells searched per query (default ``max(8, nlist // 16)``: more = higher recall, slower).
    ef_search : HNSW candidate list length.
    """
    faiss = _faiss()
    x = np.ascontiguousarray(refs, np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise SearchBackendError(f"refs must be a non-empty (R, D) array, got shape {x.shape}")
    n, d = x.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(x)
        return FaissIndex(index, "hnsw", n, d, ef_search=int(ef_search))
    if kind != "ivf":
        raise SearchBackendError(f"faiss index kind must be 'ivf' or 'hnsw', got {kind!r}")
    nl = int(nlist) if nlist is not None else int(2 * math.sqrt(n))
    nl = max(1, min(nl, n // 39 if n >= 39 else 1))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    n_train = min(n, int(max_train), max(64 * nl, 50_000))
    train = x if n <= n_train else x[np.sort(rng.choice(n, n_train, replace=False))]
    index.cp.seed = int(seed)
    index.train(train)
    index.add(x)
    npr = int(nprobe) if nprobe is not None else max(8, nl // 16)
    return FaissIndex(index, "ivf", n, d, nlist=nl, nprobe=min(npr, nl))


_CACHE: dict[int, FaissIndex] = {}


def cached_index(refs: NDArray, kind: str = "ivf", seed: int = 0) -> FaissIndex:
    """:func:`build_index` of ``refs``, built once per array object (dropped when the array is freed)."""
    key = id(refs)
    hit = _CACHE.get(key)
    if hit is not None and hit.n == len(refs) and hit.kind == kind:
        return hit
    idx = build_index(refs, kind=kind, seed=seed)
    _CACHE[key] = idx
    weakref.finalize(refs, _CACHE.pop, key, None)
    return idx


def topk_faiss(
    queries: NDArray,
    refs: NDArray,
    k: int,
    ref_mask: NDArray | None = None,
    index: FaissIndex | None = None,
) -> tuple[NDArray, NDArray, NDArray]:
    """Approximate :func:`~siibra_anchor.matching.topk_cosine`: same inputs, same outputs.

    Each of the A views of a query is searched separately and the lists are merged keeping, per
    reference, its best view; with an exact index this equals the exact top-k of the best-view
    similarity (a reference in that top-k is in the top-k of its own best view). ``ref_mask`` is a
    faiss ID selector inside the search.
    """
    q = np.asarray(queries, np.float32)
    q = q[:, None, :] if q.ndim == 2 else q
    n_q, n_a, d = q.shape
    idx_obj = index if index is not None else cached_index(refs)
    k = int(min(k, idx_obj.n))
    s, j = idx_obj.search(q.reshape(-1, d), k, allowed=ref_mask)
    s = np.where(j < 0, -np.inf, s).reshape(n_q, n_a * k)
    j = j.reshape(n_q, n_a * k)
    a = np.broadcast_to(np.repeat(np.arange(n_a), k)[None, :], j.shape)
    sims, idx, ang = _merge_best(s, j, a, k)
    if not np.all(np.isfinite(sims)):  # fewer than k allowed references reached: fill like the exact search
        sims = np.where(np.isfinite(sims), sims, -2.0).astype(np.float32)
        idx = np.where(idx >= 0, idx, 0)
    return sims, idx, ang


def _merge_best(s: NDArray, j: NDArray, a: NDArray, k: int) -> tuple[NDArray, NDArray, NDArray]:
    """Per row: drop repeated references (keep the best view), return the k best (sim, idx, view)."""
    n_q = s.shape[0]
    order = np.argsort(-s, axis=1, kind="stable")
    s, j, a = (np.take_along_axis(v, order, axis=1) for v in (s, j, a))
    sims = np.full((n_q, k), -np.inf, np.float32)
    idx = np.full((n_q, k), -1, np.int64)
    ang = np.zeros((n_q, k), np.int64)
    for r in range(n_q):
        _, first = np.unique(j[r], return_index=True)
        first = np.sort(first)
        first = first[np.isfinite(s[r, first])][:k]
        sims[r, : len(first)] = s[r, first]
        idx[r, : len(first)] = j[r, first]
        ang[r, : len(first)] = a[r, first]
    return sims, idx, ang


def recall_at_k(approx_idx: NDArray, exact_idx: NDArray) -> float:
    """Fraction of the exact top-k neighbours (Q, k) that the approximate search (Q, k') also returned."""
    ex = np.asarray(exact_idx)
    ap = np.asarray(approx_idx)
    if ex.shape[0] != ap.shape[0]:
        raise InvalidParameterError(f"row counts differ: approx {ap.shape}, exact {ex.shape}")
    hits = sum(len(np.intersect1d(ap[i], ex[i])) for i in range(len(ex)))
    return float(hits / ex.size)

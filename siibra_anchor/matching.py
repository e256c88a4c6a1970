"""Cosine-similarity matching of section patch embeddings against reference embeddings.

Embeddings are L2-normalised, so cosine similarity is a dot product. Section patches come at several
in-plane angles (and optionally mirrored): queries are ``(Q, A, D)`` and a match keeps the best angle.
All searches are chunked so memory stays bounded (about ``chunk * A * R * 4`` bytes at a time).
"""

from __future__ import annotations

import itertools
import logging
import weakref
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.spatial import cKDTree

__all__ = ["topk_cosine", "search_topk", "best_in_neighbourhood", "SEARCH_BACKENDS"]

#: Values of ``search`` in :func:`search_topk` (and :class:`~siibra_anchor.anchoring.AnchorParams`).
SEARCH_BACKENDS = ("auto", "exact", "faiss", "faiss-hnsw")


log = logging.getLogger(__name__)


def _as_qad(queries: NDArray) -> NDArray:
    q = np.asarray(queries, np.float32)
    return q[:, None, :] if q.ndim == 2 else q


_ON_DEVICE: dict[tuple[int, str], torch.Tensor] = {}


def _refs_on(refs: NDArray, device: torch.device) -> torch.Tensor:
    """``refs`` as a tensor on ``device``; on an accelerator uploaded once per array object and kept while
    it lives (as :func:`siibra_anchor.ann.cached_index` keeps its index), so that the sections of a batch
    share one upload of the reference."""
    if device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(refs, np.float32))
    key = (id(refs), str(device))
    hit = _ON_DEVICE.get(key)
    if hit is None or hit.shape[0] != len(refs):
        hit = torch.from_numpy(np.ascontiguousarray(refs, np.float32)).to(device)
        _ON_DEVICE[key] = hit
        weakref.finalize(refs, _ON_DEVICE.pop, key, None)
    return hit


def topk_cosine(
    queries: NDArray,
    refs: NDArray,
    k: int,
    chunk: int = 64,
    ref_mask: NDArray | None = None,
    device: str | torch.device | None = None,
) -> tuple[NDArray, NDArray, NDArray]:
    """Top-k reference matches of each query (best over its angles).

    Parameters
    ----------
    queries : (Q, D) or (Q, A, D) float32, L2-normalised.
    refs : (R, D) float32, L2-normalised.
    k : matches per query (clipped to R).
    ref_mask : optional (R,) bool; references outside it are never returned.
    device : torch device of the search (default CPU); on a GPU the chunks are larger and ``refs`` stays
        uploaded between calls.

    Returns
    -------
    sim : (Q, k) float32 cosine similarity, descending; idx : (Q, k) int64 reference index;
    angle : (Q, k) int64 index of the query angle that gave the match.
    """
    q = _as_qad(queries)
    n_q, n_a, _ = q.shape
    dev = torch.device(device or "cpu")
    keep = None if ref_mask is None else np.flatnonzero(np.asarray(ref_mask, bool))
    if dev.type == "cpu" and keep is not None and k <= len(keep) < 0.75 * len(refs):
        # a hint leaves part of the reference: search only that part (the same matches, fewer products)
        s_sub, i_sub, a_sub = topk_cosine(queries, np.asarray(refs)[keep], k, chunk=chunk, device=dev)
        return s_sub, keep[i_sub], a_sub
    r = _refs_on(refs, dev)
    if dev.type != "cpu":
        chunk = max(chunk, 1024)
    k = int(min(k, r.shape[0]))
    bad = None if ref_mask is None else torch.from_numpy(~np.asarray(ref_mask, bool)).to(dev)
    sims = np.empty((n_q, k), np.float32)
    idx = np.empty((n_q, k), np.int64)
    ang = np.empty((n_q, k), np.int64)
    with torch.inference_mode():
        for i in range(0, n_q, chunk):
            qb = torch.from_numpy(np.ascontiguousarray(q[i : i + chunk])).to(dev)
            s = torch.matmul(qb.reshape(-1, qb.shape[-1]), r.T).reshape(qb.shape[0], n_a, -1)
            smax, amax = s.max(dim=1)  # (b, R)
            if bad is not None:
                smax[:, bad] = -2.0
            v, j = torch.topk(smax, k, dim=1)
            sims[i : i + chunk] = v.cpu().numpy()
            idx[i : i + chunk] = j.cpu().numpy()
            ang[i : i + chunk] = torch.gather(amax, 1, j).cpu().numpy()
    return sims, idx, ang


def search_topk(
    queries: NDArray,
    refs: NDArray,
    k: int,
    ref_mask: NDArray | None = None,
    search: str = "auto",
    auto_threshold: int | None = None,
    device: str | None = None,
) -> tuple[NDArray, NDArray, NDArray]:
    """Top-k matches like :func:`topk_cosine`, by the chosen search backend.

    ``search``: "exact" (:func:`topk_cosine`), "faiss" (IVF index, :mod:`siibra_anchor.ann`),
    "faiss-hnsw" (HNSW graph), or "auto": faiss IVF when ``refs`` has at least ``auto_threshold``
    rows (default :data:`siibra_anchor.ann.AUTO_THRESHOLD`, 1e6) and faiss is installed, else exact.
    The faiss index is built on first use and kept while ``refs`` lives. ``device`` runs the exact search
    there (a GPU); "auto" then stays exact, which a GPU does fast at any reference size.
    """
    from .ann import AUTO_THRESHOLD, cached_index, faiss_available, topk_faiss
    from .errors import SearchBackendError

    if search not in SEARCH_BACKENDS:
        raise SearchBackendError(f"search must be one of {SEARCH_BACKENDS}, got {search!r}")
    if search == "auto":
        big = len(refs) >= (AUTO_THRESHOLD if auto_threshold is None else int(auto_threshold))
        if big and not faiss_available():
            log.warning(
                "%d reference patches: exact search; pip install 'siibra-anchor[faiss]' for a faster one", len(refs)
            )
        on_gpu = device is not None and torch.device(device).type != "cpu"
        search = "faiss" if big and faiss_available() and not on_gpu else "exact"
    if search == "exact":
        return topk_cosine(queries, refs, k, ref_mask=ref_mask, device=device)
    index = cached_index(refs, kind="hnsw" if search == "faiss-hnsw" else "ivf")
    return topk_faiss(queries, refs, k, ref_mask=ref_mask, index=index)


def best_in_neighbourhood(
    queries: Any,
    refs: NDArray,
    tree: cKDTree,
    predicted_mm: NDArray,
    radius_mm: float,
    ref_view: NDArray | None = None,
    chunk: int = 256,
    subset: NDArray | None = None,
) -> tuple[NDArray, NDArray, NDArray]:
    """Best reference match of each query among references within ``radius_mm`` of its predicted 3D point.

    Parameters
    ----------
    queries : (Q, V, D) embeddings of each query patch in V views (angles x mirrors), or a
        :class:`~siibra_anchor.views.PatchViews` that computes the views it is asked for.
    refs : (R, D); tree : KD-tree over the (R, 3) reference centres in mm; predicted_mm : (Q, 3).
    ref_view : optional (R,) int, the view of the query to compare with each reference (the in-plane
        angle that the current placement predicts for that reference's section); -1 excludes the
        reference. Without it, the best view is taken.
    subset : optional ascending (T,) indices of the references that ``tree`` holds (tree position ``i``
        is reference ``subset[i]``): a tree over the references that may match at all is cheaper to search.

    Returns
    -------
    sim (Q,), idx (Q,), view (Q,); ``idx == -1`` where no usable reference lies within the radius.
    """
    lazy = hasattr(queries, "all_views")  # a PatchViews: embeddings computed on demand (an array has .take too)
    q: Any = None if lazy else _as_qad(queries)
    n_q = queries.n if lazy else q.shape[0]
    sim = np.full(n_q, -2.0, np.float32)
    idx = np.full(n_q, -1, np.int64)
    view = np.zeros(n_q, np.int64)
    neigh = tree.query_ball_point(np.asarray(predicted_mm, float), r=float(radius_mm))
    for i in range(0, n_q, chunk):
        lists = neigh[i : i + chunk]
        counts = np.fromiter(map(len, lists), np.int64, len(lists))
        total = int(counts.sum())
        if total == 0:
            continue
        rows = np.repeat(np.arange(i, i + len(lists)), counts)  # sorted: each query's candidates together
        cand = np.fromiter(itertools.chain.from_iterable(lists), np.int64, total)
        if subset is not None:
            cand = subset[cand]
        if ref_view is None:
            qa = queries.all_views(rows) if lazy else q[rows]
            s = np.einsum("pad,pd->pa", qa, refs[cand])  # (pairs, V)
            a = s.argmax(axis=1)
            sbest = s[np.arange(len(a)), a]
        else:
            a = ref_view[cand]
            keep = a >= 0
            rows, cand, a = rows[keep], cand[keep], a[keep]
            if len(rows) == 0:
                continue
            sbest = _view_similarities(queries if lazy else q, lazy, refs, rows, cand, a)
        # each query's best pair: the first at its maximum (rows are sorted)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        top = np.repeat(np.maximum.reduceat(sbest, starts), np.diff(np.r_[starts, len(rows)]))
        at_top = np.flatnonzero(sbest == top)
        sel = at_top[np.r_[True, rows[at_top][1:] != rows[at_top][:-1]]]
        sim[rows[sel]] = sbest[sel]
        idx[rows[sel]] = cand[sel]
        view[rows[sel]] = a[sel]
    return sim, idx, view


def _view_similarities(
    queries: Any, lazy: bool, refs: NDArray, rows: NDArray, cand: NDArray, views: NDArray
) -> NDArray:
    """Cosine similarity of each (query ``rows[p]`` in view ``views[p]``, reference ``cand[p]``) pair: per
    view, one product of the distinct queries by the distinct references (a gather of two (pairs, D)
    arrays costs more than the product)."""
    out = np.empty(len(rows), np.float32)
    for v in np.unique(views):
        sel = np.flatnonzero(views == v)
        ur, ir = np.unique(rows[sel], return_inverse=True)
        uc, ic = np.unique(cand[sel], return_inverse=True)
        qv = queries.take(ur, np.full(len(ur), v)) if lazy else queries[ur, v]
        out[sel] = (qv @ refs[uc].T)[ir, ic]
    return out

"""Batched search on IVF-Flat: many queries at once, each inverted list read once per batch.

Exact search needs nothing of ours: faiss scores a batch of 20 or more queries by blocked matrix products (BLAS)
with the top-k kept per block, on all OpenMP threads (`IndexFlat.search`). IVF search in faiss scans query by
query (in parallel over queries), so a list probed by 40 queries is read 40 times. Here the queries are grouped by
probed list and each list is scored against all its queries with one matrix product. The coarse quantizer runs
in faiss's BLAS path; the lists are split between worker threads (one per core) that each run single-threaded
BLAS, so that a thousand small products do not each wait at an OpenMP barrier (on a loaded machine such a
barrier costs a scheduler quantum). Results are those of faiss for the same index and nprobe (tests check it).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

MIN_BATCH = 20  # below this, faiss's own per-query search is as fast (its own BLAS threshold is 20 too)


def flat_storage(index) -> np.ndarray:
    """(n, d) float32 view of an IndexFlat's vectors (no copy)."""
    import faiss

    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


class IVFLists:
    """Views of an IVF-Flat index's inverted lists (vectors and ids), taken once and reused."""

    def __init__(self, ivf) -> None:
        import faiss

        self.nlist, self.d = ivf.nlist, ivf.d
        invlists = ivf.invlists
        self.quantizer = faiss.downcast_index(ivf.quantizer)
        self.vectors, self.ids = [], []
        for lst in range(self.nlist):
            n = invlists.list_size(lst)
            if n == 0:
                self.vectors.append(np.zeros((0, self.d), np.float32))
                self.ids.append(np.zeros(0, np.int64))
                continue
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), n * ivf.code_size)
            self.vectors.append(codes.view(np.float32).reshape(n, self.d))
            self.ids.append(faiss.rev_swig_ptr(invlists.get_ids(lst), n))


def _one_thread_blas():
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return nullcontext()
    return threadpool_limits(1, user_api="blas")


def _workers() -> int:
    import faiss

    return max(1, faiss.omp_get_max_threads())


def ivf_search(lists: IVFLists, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """IVF-Flat search with queries grouped by probed list; the same candidates as faiss with this nprobe."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = len(q)
    nprobe = min(nprobe, lists.nlist)
    _, probes = lists.quantizer.search(q, nprobe)  # (m, nprobe) list ids per query
    flat_lists = probes.ravel()
    flat_queries = np.repeat(np.arange(m), nprobe)
    valid = flat_lists >= 0
    flat_lists, flat_queries = flat_lists[valid], flat_queries[valid]
    order = np.argsort(flat_lists, kind="stable")
    bounds = np.searchsorted(flat_lists[order], np.arange(lists.nlist + 1))
    active = [int(lst) for lst in np.flatnonzero(np.diff(bounds)) if len(lists.vectors[lst])]

    def score(chunk: list[int]):
        out_q, out_s, out_i = [], [], []
        for lst in chunk:
            vecs = lists.vectors[lst]
            members = flat_queries[order[bounds[lst]:bounds[lst + 1]]]
            scores = q[members] @ vecs.T
            kk = min(k, len(vecs))
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < len(vecs) else \
                np.broadcast_to(np.arange(kk), scores.shape)
            out_q.append(np.repeat(members, kk))
            out_s.append(np.take_along_axis(scores, top, 1).ravel())
            out_i.append(lists.ids[lst][top].ravel())
        return out_q, out_s, out_i

    workers = min(_workers(), max(1, len(active)))
    cand_q, cand_s, cand_i = [], [], []
    with _one_thread_blas():
        if workers == 1:
            parts = [score(active)]
        else:
            with ThreadPoolExecutor(workers) as pool:  # BLAS releases the GIL: one list per core at a time
                parts = list(pool.map(score, [active[w::workers] for w in range(workers)]))
    for pq, ps, pi in parts:
        cand_q += pq
        cand_s += ps
        cand_i += pi
    out_s = np.full((m, k), -np.inf, np.float32)
    out_i = np.full((m, k), -1, np.int64)
    if not cand_q:
        return out_s, out_i
    cq, cs, ci = np.concatenate(cand_q), np.concatenate(cand_s), np.concatenate(cand_i)
    order = np.lexsort((-cs, cq))  # by query, then by descending score
    cq, cs, ci = cq[order], cs[order], ci[order]
    starts = np.searchsorted(cq, np.arange(m))
    rank = np.arange(len(cq)) - starts[cq]
    keep = rank < k
    out_s[cq[keep], rank[keep]] = cs[keep]
    out_i[cq[keep], rank[keep]] = ci[keep]
    return out_s, out_i

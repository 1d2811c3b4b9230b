"""Batched search: many queries at once, each stored vector read once per batch.

A single query against a flat or inverted-file index is bound by memory bandwidth (every candidate vector is read
for one dot product each). A batch can share those reads: exact search becomes a blocked matrix product, and IVF
search groups the queries by inverted list so that each probed list is scored against all its queries with one
matrix product. The faiss-cpu wheel scans query by query in both cases (measured in
benchmarks/bench_retrieval.py), so these paths use torch's matrix multiply and top-k on views of faiss's own
storage (no copies). They return what faiss returns for the same index and nprobe (tests check it).
"""

from __future__ import annotations

import numpy as np

MIN_BATCH = 32  # below this, faiss's own per-query search is as fast
BLOCK_FLOATS = 1 << 24  # scores held at once (64 MB)


def _torch():
    import torch

    return torch


def flat_storage(index) -> np.ndarray:
    """(n, d) float32 view of an IndexFlat's vectors."""
    import faiss

    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def flat_search(xb: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k by blocked matrix products."""
    torch = _torch()
    base = torch.from_numpy(xb)
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    m = len(queries)
    block = max(1, BLOCK_FLOATS // max(len(xb), 1))
    out_s = np.empty((m, k), np.float32)
    out_i = np.empty((m, k), np.int64)
    with torch.inference_mode():
        for s in range(0, m, block):
            scores = q_all[s:s + block] @ base.T
            top = torch.topk(scores, k, dim=1)
            out_s[s:s + block], out_i[s:s + block] = top.values.numpy(), top.indices.numpy()
    return out_s, out_i


class IVFLists:
    """Views of an IVF-Flat index's inverted lists (vectors and ids), taken once and reused."""

    def __init__(self, ivf) -> None:
        import faiss

        self.nlist, self.d = ivf.nlist, ivf.d
        invlists = ivf.invlists
        self.centroids = flat_storage(faiss.downcast_index(ivf.quantizer))
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


def ivf_search(lists: IVFLists, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """IVF-Flat search with queries grouped by probed list; the same candidates as faiss with this nprobe."""
    torch = _torch()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = len(q)
    nprobe = min(nprobe, lists.nlist)
    _, probes = flat_search(lists.centroids, q, nprobe)  # (m, nprobe) list ids per query
    flat_lists = probes.ravel()
    flat_queries = np.repeat(np.arange(m), nprobe)
    order = np.argsort(flat_lists, kind="stable")
    bounds = np.searchsorted(flat_lists[order], np.arange(lists.nlist + 1))
    cand_q, cand_s, cand_i = [], [], []
    qt = torch.from_numpy(q)
    with torch.inference_mode():
        for lst in np.flatnonzero(np.diff(bounds)):
            vecs = lists.vectors[lst]
            if len(vecs) == 0:
                continue
            members = flat_queries[order[bounds[lst]:bounds[lst + 1]]]
            scores = qt[members] @ torch.from_numpy(vecs).T
            kk = min(k, len(vecs))
            top = torch.topk(scores, kk, dim=1)
            cand_q.append(np.repeat(members, kk))
            cand_s.append(top.values.numpy().ravel())
            cand_i.append(lists.ids[lst][top.indices.numpy()].ravel())
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

"""CaseIndex: a FAISS index of past cases, with their payloads and a manifest, chosen by corpus size.

- Small corpora get exact search (`IndexFlatIP`); beyond `exact_below` cases an inverted-file index (IVF-Flat,
  about 2·sqrt(n) lists; IVF-PQ with exact re-ranking for very large corpora; HNSW on request) whose search
  parameter (nprobe / efSearch) is calibrated at build time: the smallest value whose recall@k against exact
  search on held-out stored vectors reaches `target_recall`. IVF is the default because case embeddings come in
  tight clusters of near-ties (same outcome, similar pot), where graph search loses recall and a scan of the
  right clusters does not (measured: benchmarks/bench_retrieval.py).
- On disk, a folder: `index.faiss`, `cases.parquet` (ids, texts, guard keys, JSON payloads) and `manifest.json`
  (embedding model and dimension, normalisation, index type and parameters, corpus fingerprint, counts, build time,
  package version, and the SHA-256 of each file and of the ordered case ids). A build writes a temporary folder
  and renames it, so an interrupted build leaves the previous index intact. Loading checks every file against the
  manifest: a part from another build (same size and dimension or not) is refused.
- The leakage guard: a search can exclude cases sharing any key with the query (same item, face, participant,
  episode, fold). Experiments pass the query item's keys, so an item never retrieves itself or its twin.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vlm_salience import __version__
from vlm_salience.atomic import replaced_dir, write_text
from vlm_salience.config import StrictModel
from vlm_salience.errors import DataError
from vlm_salience.retrieval.cases import TEXT_VERSION, Case
from vlm_salience.retrieval.embed import DEFAULT_TEXT_MODEL

FORMAT_VERSION = 2  # 2: the manifest records a digest of every file and of the case ids
FILES = ("index.faiss", "cases.parquet", "manifest.json")
INDEX_FILES = (*FILES, "image_index.faiss")  # every name a saved index folder may hold


def check_index_out(folder: str | Path) -> Path:
    """Refuse to replace a folder that is not an index: saving replaces the folder as a whole, so a folder holding
    anything but index files (notes, a corpus, another run) would be deleted with it.

    Missing, empty, or holding only index file names (a complete or damaged index): fine to replace.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError("is a file, but an index is a folder.", file=folder,
                        fix="pass a folder path for --out, e.g. retrieval_index/<name>.")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in INDEX_FILES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise DataError(f"is a folder that is not an index (it holds {shown}); building an index replaces its "
                            "--out folder as a whole, which would delete them.", file=folder,
                            fix="pass a new or empty folder, or an existing index folder, for --out.")
    return folder


class IndexConfig(StrictModel):
    """How cases are embedded and indexed (configs/retrieval/*.yaml)."""

    text_model: str = DEFAULT_TEXT_MODEL
    batch_size: int = Field(64, ge=1)
    image_model: str | None = None  # a CLIP-style model for face images (optional)
    image_weight: float = Field(0.0, ge=0.0, le=1.0)  # share of the image similarity in the score
    image_mode: Literal["concat", "separate"] = "concat"
    kind: Literal["auto", "flat", "hnsw", "ivf", "ivfpq"] = "auto"
    exact_below: int = Field(50_000, ge=1)  # exact search for corpora smaller than this
    pq_above: int = Field(20_000_000, ge=1)  # compressed IVF-PQ for corpora larger than this (IVF-Flat between)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    target_recall: float = Field(0.95, gt=0.0, le=1.0)
    calibration_queries: int = Field(200, ge=10)
    calibration_k: int = Field(8, ge=1)
    keys: list[str] = Field(default_factory=lambda: ["item", "face", "participant", "episode", "situation"])
    exclude: list[str] = Field(default_factory=lambda: ["item", "face", "participant", "episode"])  # default guard
    expressivity: str | None = "face_peak"  # expressivity estimator for the face description, or null
    seed: int = 0


class Hit:
    """One retrieved case. Text, keys and payload are read from the index's table on access, so that a batch of
    thousands of queries does not pay for fields nobody reads."""

    __slots__ = ("id", "score", "rank", "_columns", "_row")

    def __init__(self, id: str, score: float, rank: int, columns: dict[str, list], row: int) -> None:
        self.id, self.score, self.rank, self._columns, self._row = id, score, rank, columns, row

    @property
    def text(self) -> str:
        return self._columns["text"][self._row]

    @property
    def keys(self) -> dict[str, str]:
        return {c[4:]: v[self._row] for c, v in self._columns.items() if c.startswith("key_")}

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self._columns["payload"][self._row])

    def __repr__(self) -> str:
        return f"Hit(rank={self.rank}, id={self.id!r}, score={self.score:.4f})"


class Results:
    """Hits of a batch of queries: `results[q]` is the list of hits of query q. Built from the score and id arrays
    on access, so answering 10,000 queries does not build 80,000 objects up front."""

    def __init__(self, scores: np.ndarray, ids: np.ndarray, columns: dict[str, list]) -> None:
        self.scores, self.ids, self._columns = scores, ids, columns

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, q: int) -> list[Hit]:
        cols = self._columns
        ident = cols["id"]
        return [Hit(ident[i], s, rank, cols, i)
                for rank, (s, i) in enumerate(zip(self.scores[q].tolist(), self.ids[q].tolist()), 1) if i >= 0]

    def __iter__(self):
        return (self[q] for q in range(len(self)))


# ---------------------------------------------------------------------------------------------------------------
# Index types

def choose_index(n: int, cfg: IndexConfig) -> dict[str, Any]:
    """The index type and its construction parameters for a corpus of n cases."""
    kind = cfg.kind
    if kind == "auto":
        kind = "flat" if n < cfg.exact_below else ("ivfpq" if n > cfg.pq_above else "ivf")
    if kind == "flat":
        return {"type": "flat"}
    if kind == "hnsw":
        return {"type": "hnsw", "M": cfg.hnsw_m, "ef_construction": cfg.hnsw_ef_construction}
    nlist = int(2 ** round(np.log2(max(16.0, 2 * np.sqrt(n)))))
    if kind == "ivf":
        return {"type": "ivf", "nlist": nlist}
    return {"type": "ivfpq", "nlist": nlist, "pq_m": 48, "refine": True}


def _new_index(spec: dict[str, Any], dim: int):
    import faiss

    t = spec["type"]
    if t == "flat":
        return faiss.IndexFlatIP(dim)
    if t == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if t == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, spec["nlist"], faiss.METRIC_INNER_PRODUCT)
    m = spec["pq_m"] if dim % spec["pq_m"] == 0 else next(d for d in (32, 24, 16, 8, 4, 2, 1) if dim % d == 0)
    spec["pq_m"] = m
    ivfpq = faiss.IndexIVFPQ(quantizer, dim, spec["nlist"], m, 8, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexRefineFlat(ivfpq) if spec.get("refine") else ivfpq


def _ivf(index):
    import faiss

    base = index.base_index if isinstance(index, faiss.IndexRefineFlat) else index
    return faiss.extract_index_ivf(base) if "IVF" in type(base).__name__ else None


def _set_search_param(index, spec: dict[str, Any], value: int) -> None:
    if spec["type"] == "hnsw":
        index.hnsw.efSearch = int(value)
    elif spec["type"] in ("ivf", "ivfpq"):
        _ivf(index).nprobe = int(value)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 200_000) -> np.ndarray:
    """Exact top-k inner-product ids by blocked matrix products (the recall reference)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), block):
        s = queries @ vectors[start:start + block].T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k] if s.shape[1] > k else \
            np.tile(np.arange(s.shape[1]), (len(queries), 1))
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def calibrate(index, spec: dict[str, Any], vectors: np.ndarray, cfg: IndexConfig) -> dict[str, Any]:
    """Smallest efSearch / nprobe whose recall@k on held-out stored vectors reaches the target."""
    if spec["type"] == "flat":
        return {"recall": 1.0}
    rng = np.random.default_rng(cfg.seed)
    n = len(vectors)
    q_ids = rng.choice(n, size=min(cfg.calibration_queries, n), replace=False)
    queries = vectors[q_ids]
    k = min(cfg.calibration_k, n - 1)
    truth = exact_neighbours(vectors, queries, k + 1)
    truth = np.array([[t for t in row if t != q][:k] for row, q in zip(truth, q_ids)])
    grid = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512] if spec["type"] == "hnsw" else \
        [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256]
    if spec["type"] != "hnsw":
        grid = [g for g in grid if g <= spec["nlist"]]
    recall, value = 0.0, grid[-1]
    for value in grid:
        _set_search_param(index, spec, value)
        _, found = index.search(queries, k + 1)
        found = np.array([[f for f in row if f != q][:k] for row, q in zip(found, q_ids)])
        recall = recall_at_k(found, truth)
        if recall >= cfg.target_recall:
            break
    name = "ef_search" if spec["type"] == "hnsw" else "nprobe"
    return {name: int(value), "recall": recall, "calibration_queries": len(q_ids), "k": k,
            "target_recall": cfg.target_recall}


# ---------------------------------------------------------------------------------------------------------------

class CaseIndex:
    def __init__(self, index, spec: dict[str, Any], table: pd.DataFrame, manifest: dict[str, Any],
                 cfg: IndexConfig, image_index=None) -> None:
        self.index, self.spec, self.table, self.manifest, self.cfg = index, spec, table, manifest, cfg
        self.image_index = image_index
        self._text_embedder = None
        self._image_embedder = None
        self._guard_maps: dict[str, dict[str, np.ndarray]] = {}
        self._ivf_lists = None  # views of the inverted lists for batched search, taken on first use
        self._columns: dict[str, list] | None = None  # payload columns as lists, for fast hit construction

    # -- embedding --------------------------------------------------------------------------------------------
    @property
    def text_embedder(self):
        if self._text_embedder is None:
            from vlm_salience.retrieval.embed import TextEmbedder

            self._text_embedder = TextEmbedder(self.cfg.text_model, batch_size=self.cfg.batch_size)
        return self._text_embedder

    @property
    def image_embedder(self):
        if self._image_embedder is None and self.cfg.image_model:
            from vlm_salience.retrieval.embed import ImageEmbedder

            self._image_embedder = ImageEmbedder(self.cfg.image_model)
        return self._image_embedder

    @property
    def uses_images(self) -> bool:
        return bool(self.cfg.image_model) and self.cfg.image_weight > 0

    def _embed(self, texts: list[str], images: list[str | None] | None, *, progress: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
        text_v = self.text_embedder.encode(texts, progress=progress)
        if not self.uses_images:
            return text_v, None
        img_v = np.zeros((len(texts), self.image_embedder.dim), np.float32)
        have = [i for i, p in enumerate(images or []) if p]
        if have:
            img_v[have] = self.image_embedder.encode([images[i] for i in have], progress=progress)
        if self.cfg.image_mode == "separate":
            return text_v, img_v
        w = self.cfg.image_weight
        return np.ascontiguousarray(np.hstack([np.sqrt(1 - w) * text_v, np.sqrt(w) * img_v])), None

    # -- building -----------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, cases: list[Case], cfg: IndexConfig, *, corpus: dict[str, Any] | None = None,
              progress: bool = True, text_embedder=None) -> CaseIndex:
        """Embed the cases' texts (and face images, if configured) and index them."""
        if not cases:
            raise DataError("cannot build an index from an empty corpus (no cases).")
        t0 = time.time()
        self = cls(None, {}, _table([], cfg.keys), {}, cfg)
        self._text_embedder = text_embedder
        vectors, img_vectors = self._embed([c.text for c in cases], [c.image for c in cases], progress=progress)
        built = cls.from_vectors(cases, vectors, cfg, corpus=corpus, image_vectors=img_vectors,
                                 text_model_dim=self.text_embedder.dim, progress=progress)
        built._text_embedder, built._image_embedder = self._text_embedder, self._image_embedder
        built.manifest["build_seconds"] = round(time.time() - t0, 3)
        return built

    @classmethod
    def from_vectors(cls, cases: list[Case], vectors: np.ndarray, cfg: IndexConfig, *,
                     corpus: dict[str, Any] | None = None, image_vectors: np.ndarray | None = None,
                     text_model_dim: int | None = None, progress: bool = True) -> CaseIndex:
        """Index precomputed unit vectors (one per case): the index type is chosen by size and calibrated."""
        if not cases:
            raise DataError("cannot build an index from an empty corpus (no cases).")
        if len(cases) != len(vectors):
            raise ValueError(f"{len(cases)} cases but {len(vectors)} vectors")
        t0 = time.time()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        spec = choose_index(len(cases), cfg)
        index = _new_index(spec, vectors.shape[1])
        if not index.is_trained:
            rng = np.random.default_rng(cfg.seed)
            sample = vectors[rng.choice(len(vectors), size=min(len(vectors), spec["nlist"] * 40), replace=False)]
            index.train(sample)
        _add_in_batches(index, vectors, progress)
        spec["search"] = calibrate(index, spec, vectors, cfg)
        image_index = None
        if image_vectors is not None:
            import faiss

            image_index = faiss.IndexFlatIP(image_vectors.shape[1])
            image_index.add(np.ascontiguousarray(image_vectors, dtype=np.float32))
        table = _table(cases, cfg.keys)
        uses_images = bool(cfg.image_model) and cfg.image_weight > 0
        manifest = {
            "format_version": FORMAT_VERSION, "package_version": __version__, "text_version": TEXT_VERSION,
            "embedding": {"text_model": cfg.text_model, "dim": int(vectors.shape[1]),
                          "text_dim": int(text_model_dim or vectors.shape[1]), "normalised": True,
                          "metric": "inner_product",
                          "image_model": cfg.image_model if uses_images else None,
                          "image_weight": cfg.image_weight if uses_images else 0.0,
                          "image_mode": cfg.image_mode if uses_images else None},
            "index": spec, "corpus": corpus or {}, "count": len(cases), "keys": cfg.keys,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(time.time() - t0, 3),
            "config": cfg.model_dump(mode="json"),
        }
        built = cls(index, spec, table, manifest, cfg, image_index)
        built._check_unique()
        return built

    def add(self, cases: list[Case], *, progress: bool = True) -> None:
        """Add cases to a built index (the index type and its calibrated parameters are kept)."""
        if not cases:
            return
        vectors, img_vectors = self._embed([c.text for c in cases], [c.image for c in cases], progress=progress)
        self._check_dim(vectors)
        new = _table(cases, self.cfg.keys)
        clash = sorted(set(new["id"]) & set(self.table["id"]))
        if clash:
            raise DataError(f"case id(s) {clash[:5]} are already in the index.", fix="add new cases only.")
        _add_in_batches(self.index, vectors, progress)
        if img_vectors is not None:
            self.image_index.add(img_vectors)
        self.table = pd.concat([self.table, new], ignore_index=True)
        self._guard_maps.clear()
        self._ivf_lists, self._columns = None, None
        self.manifest["count"] = len(self.table)
        self.manifest.setdefault("added", []).append({"count": len(cases), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def _check_unique(self) -> None:
        dup = self.table["id"][self.table["id"].duplicated()]
        if len(dup):
            raise DataError(f"duplicate case id(s) {dup.tolist()[:5]}.")

    # -- searching ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _check_dim(self, vectors: np.ndarray) -> None:
        want = self.manifest["embedding"]["dim"]
        if vectors.ndim != 2 or vectors.shape[1] != want:
            raise DataError(f"query vectors have dimension {vectors.shape[-1]}, the index was built with {want} "
                            f"({self.manifest['embedding']['text_model']}).",
                            fix="query with the index's embedding model.")

    def _guard_map(self, key: str) -> dict[str, np.ndarray]:
        if key not in self._guard_maps:
            col = f"key_{key}"
            if col not in self.table:
                raise DataError(f"the index has no guard key '{key}' (it has {self.cfg.keys}).",
                                fix=f"rebuild with keys including '{key}', or exclude by another key.")
            groups = pd.Series(np.arange(len(self.table))).groupby(self.table[col].to_numpy())
            self._guard_maps[key] = {str(v): idx.to_numpy() for v, idx in groups}
        return self._guard_maps[key]

    def excluded_rows(self, exclude: dict[str, str | list[str]] | None) -> np.ndarray:
        if not exclude:
            return np.zeros(0, dtype=np.int64)
        parts = []
        for key, values in exclude.items():
            for v in ([values] if isinstance(values, str) else values):
                if str(v) == "":
                    continue  # a case without this key shares it with nobody
                parts.append(self._guard_map(key).get(str(v), np.zeros(0, dtype=np.int64)))
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def search_vectors(self, vectors: np.ndarray, k: int,
                       exclude: list[dict[str, Any] | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, row ids) per query row; rows excluded by the guard never appear; -1 pads short rows."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._check_dim(vectors)
        n = len(self)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if k > n:
            raise ValueError(f"k={k} but the index holds only {n} case(s); ask for at most {n}.")
        m = len(vectors)
        if exclude is None or not any(exclude):
            scores, ids = self._raw_search(vectors, k)
            return scores.astype(np.float32), ids.astype(np.int64)
        if len(exclude) != m:
            raise ValueError(f"{m} queries but {len(exclude)} exclusion sets")
        excl = [self.excluded_rows(e) for e in exclude]
        return guarded_search(self._raw_search, self._search_excluding, vectors, k, excl, n)

    def _raw_search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's own search, except for a batch on IVF-Flat: queries grouped by inverted list (batched.py).

        Exact search needs nothing of ours: from `distance_compute_blas_threshold` (20) queries on, faiss scores a
        batch by blocked matrix products (BLAS) with the top-k kept per block, on all OpenMP threads."""
        from vlm_salience.retrieval import batched

        if len(vectors) >= batched.MIN_BATCH and self.spec.get("type") == "ivf":
            ivf = _ivf(self.index)
            if self._ivf_lists is None:
                self._ivf_lists = batched.IVFLists(ivf)
            return batched.ivf_search(self._ivf_lists, vectors, k, ivf.nprobe)
        return self.index.search(vectors, k)

    def _search_excluding(self, vector: np.ndarray, k: int, excl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(excl.astype(np.int64)))
        t = self.spec.get("type")
        if t == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.index.hnsw.efSearch, 2 * k))
        elif t in ("ivf", "ivfpq") and not isinstance(self.index, faiss.IndexRefineFlat):
            params = faiss.SearchParametersIVF(sel=sel, nprobe=_ivf(self.index).nprobe)
        elif t == "flat":
            params = faiss.SearchParameters(sel=sel)
        else:  # refine indexes take no selector: exact search over the kept rows
            keep = np.setdiff1d(np.arange(len(self)), excl)
            vecs = self.index.reconstruct_batch(keep) if len(keep) else np.zeros((0, vector.shape[0]))
            s = vecs @ vector
            top = np.argsort(-s)[:k]
            return s[top].astype(np.float32), keep[top]
        s, i = self.index.search(vector[None], k, params=params)
        keep = i[0] >= 0
        return s[0][keep], i[0][keep]

    def search(self, queries: str | list[str] | np.ndarray, k: int = 5, *,
               exclude: dict[str, Any] | list[dict[str, Any] | None] | None = None,
               images: list[str | None] | None = None) -> Results:
        """Search by texts (embedded with the index's model) or by vectors; `results[q]` lists query q's hits."""
        single = isinstance(queries, str)
        if single:
            queries = [queries]
            exclude = [exclude] if isinstance(exclude, dict) or exclude is None else exclude
        if isinstance(queries, np.ndarray):
            vectors = queries
        else:
            for q in queries:
                _check_query_text(q)
            vectors, img = self._embed(list(queries), images, progress=False)
            if img is not None:
                vectors = (vectors, img)
        if isinstance(exclude, dict):
            exclude = [exclude] * len(queries)
        if isinstance(vectors, tuple):
            scores, ids = self._search_separate(*vectors, k, exclude)
        else:
            scores, ids = self.search_vectors(vectors, k, exclude)
        return Results(scores, ids, self._table_columns())

    def _search_separate(self, text_v, img_v, k, exclude):
        """Two indexes (text, image): candidates from both, re-scored exactly by the weighted sum."""
        w = self.cfg.image_weight
        n = len(self)
        kf = min(n, 4 * k + 64)
        _, ti = self.index.search(np.ascontiguousarray(text_v), kf)
        _, ii = self.image_index.search(np.ascontiguousarray(img_v), kf)
        out_s = np.full((len(text_v), k), -np.inf, np.float32)
        out_i = np.full((len(text_v), k), -1, np.int64)
        for q in range(len(text_v)):
            cand = np.union1d(ti[q][ti[q] >= 0], ii[q][ii[q] >= 0])
            excl = self.excluded_rows((exclude or [None] * len(text_v))[q])
            cand = np.setdiff1d(cand, excl)
            s = (1 - w) * (self.index.reconstruct_batch(cand) @ text_v[q]) + \
                w * (self.image_index.reconstruct_batch(cand) @ img_v[q])
            top = np.argsort(-s)[:k]
            out_s[q, :len(top)], out_i[q, :len(top)] = s[top], cand[top]
        return out_s, out_i

    def _table_columns(self) -> dict[str, list]:
        if self._columns is None:
            self._columns = {c: self.table[c].tolist() for c in self.table.columns}
        return self._columns

    def guard_for(self, case: Case) -> dict[str, str]:
        """The exclusion a query built from `case` uses by default: the `exclude` keys it has (itself, its face,
        its participant, its episode), so that it never retrieves itself or its twin."""
        return {k: case.keys[k] for k in self.cfg.exclude if case.keys.get(k) and k in self.cfg.keys}

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        import faiss

        folder = check_index_out(folder)
        with replaced_dir(folder) as stage:
            faiss.write_index(self.index, str(stage / "index.faiss"))
            names = ["index.faiss", "cases.parquet"]
            if self.image_index is not None:
                faiss.write_index(self.image_index, str(stage / "image_index.faiss"))
                names.append("image_index.faiss")
            self.table.to_parquet(stage / "cases.parquet", index=False)
            self.manifest["files"] = {name: _file_sha256(stage / name) for name in names}
            self.manifest["ids_sha256"] = _ids_sha256(self.table["id"])
            self.manifest["image_count"] = None if self.image_index is None else int(self.image_index.ntotal)
            write_text(stage / "manifest.json", json.dumps(self.manifest, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, text_model: str | None = None) -> CaseIndex:
        """Load and check an index folder. Passing text_model asserts which embedding model queries will use."""
        import faiss

        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"no index folder at {folder}.", fix="build one with `vlm-salience index build`.")
        for name in FILES:
            if not (folder / name).is_file():
                raise DataError(f"index file {name} is missing.", file=folder / name,
                                fix="rebuild the index with `vlm-salience index build`.")
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"manifest is not valid JSON ({exc}).", file=folder / "manifest.json") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"index format {manifest.get('format_version')} is not {FORMAT_VERSION}.",
                            file=folder / "manifest.json", fix="rebuild the index with this version.")
        if manifest.get("text_version") != TEXT_VERSION:
            raise DataError("the index was built with another version of the case text.",
                            file=folder / "manifest.json", fix="rebuild the index with this version.")
        files = manifest.get("files") or {}
        image_file = (folder / "image_index.faiss").is_file()
        if image_file != ("image_index.faiss" in files):
            raise DataError("image_index.faiss is " + ("there but the manifest names no image index" if image_file
                            else "missing but the manifest names one") + ".", file=folder,
                            fix="rebuild the index with `vlm-salience index build`.")
        for name, digest in files.items():
            if _file_sha256(folder / name) != digest:
                raise DataError(f"{name} does not match the manifest (its SHA-256 differs): the files come from "
                                "different builds, or the file was changed.", file=folder / name,
                                fix="rebuild the index with `vlm-salience index build`.")
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as exc:
            raise DataError(f"index file is truncated or corrupt ({str(exc).splitlines()[0]}).",
                            file=folder / "index.faiss", fix="rebuild the index.") from None
        try:
            table = pd.read_parquet(folder / "cases.parquet")
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(f"case payloads are unreadable ({exc}).", file=folder / "cases.parquet",
                            fix="rebuild the index.") from None
        emb = manifest["embedding"]
        if index.d != emb["dim"]:
            raise DataError(f"manifest says dimension {emb['dim']} but the index file has {index.d}: the files "
                            "come from different builds.", file=folder / "manifest.json", fix="rebuild the index.")
        if not (index.ntotal == manifest["count"] == len(table)):
            raise DataError(f"counts disagree: index {index.ntotal}, manifest {manifest['count']}, payloads "
                            f"{len(table)}.", file=folder, fix="rebuild the index.")
        if _ids_sha256(table["id"]) != manifest.get("ids_sha256"):
            raise DataError("the case ids in cases.parquet are not those the manifest recorded: the payloads come "
                            "from another build, or their order changed.", file=folder / "cases.parquet",
                            fix="rebuild the index.")
        if text_model is not None and text_model != emb["text_model"]:
            raise DataError(f"the index was built with embedding model '{emb['text_model']}', not '{text_model}'.",
                            file=folder / "manifest.json",
                            fix=f"query with '{emb['text_model']}' or rebuild the index with '{text_model}'.")
        cfg = IndexConfig.model_validate(manifest["config"])
        spec = manifest["index"]
        search = spec.get("search", {})
        if "ef_search" in search:
            index.hnsw.efSearch = search["ef_search"]
        if "nprobe" in search:
            _ivf(index).nprobe = search["nprobe"]
        image_index = None
        if image_file:
            image_index = faiss.read_index(str(folder / "image_index.faiss"))
            if image_index.ntotal != manifest.get("image_count") or image_index.ntotal != len(table):
                raise DataError(f"the image index holds {image_index.ntotal} vectors for {len(table)} cases.",
                                file=folder / "image_index.faiss", fix="rebuild the index.")
        return cls(index, spec, table, manifest, cfg, image_index)

    def info(self) -> dict[str, Any]:
        return {**self.manifest, "size_bytes": int(self.index.ntotal) * int(self.index.d) * 4}


OVERFETCH_MAX = 1024  # exclusion sets larger than this are searched with a selector (exact, one query at a time)


def guarded_search(raw_search, search_excluding, vectors: np.ndarray, k: int, excl: list[np.ndarray], n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per query with each query's excluded rows removed, in batches.

    Fast path: queries are grouped by how many rows they exclude (powers of two), each group searched at once for
    k + that many hits, and the excluded rows filtered out of all rows at once. A query left with fewer than
    min(k, n - excluded) hits (its exclusions were not among its nearest, but approximate search returned -1s), or
    whose exclusion set is larger than OVERFETCH_MAX, falls back to a search with an exclusion selector.
    """
    m = len(vectors)
    sizes = np.array([len(e) for e in excl], dtype=np.int64)
    out_s = np.full((m, k), -np.inf, dtype=np.float32)
    out_i = np.full((m, k), -1, dtype=np.int64)
    wanted = np.minimum(k, n - sizes)
    fallback = [q for q in np.flatnonzero(sizes > OVERFETCH_MAX)]
    fast = np.flatnonzero(sizes <= OVERFETCH_MAX)
    bucket = np.ceil(np.log2(sizes[fast] + 1)).astype(np.int64)  # 0, 1, 2, 3-4, 5-8, ...
    for b in np.unique(bucket):
        qs = fast[bucket == b]
        kf = int(min(n, k + (2 ** int(b) if b else 0)))
        scores, ids = raw_search(np.ascontiguousarray(vectors[qs]), kf)
        ids = np.asarray(ids, dtype=np.int64)
        keep = ids >= 0
        ex_sizes = sizes[qs]
        if ex_sizes.any():  # (query, row) pairs as one integer each: one membership test for the whole group
            ex_pairs = np.repeat(np.arange(len(qs), dtype=np.int64), ex_sizes) * n + \
                np.concatenate([excl[q] for q in qs]).astype(np.int64)
            pairs = np.arange(len(qs), dtype=np.int64)[:, None] * n + ids
            keep &= ~np.isin(pairs, ex_pairs)
        rank = np.cumsum(keep, axis=1) - 1
        take = keep & (rank < k)
        rows, cols = np.nonzero(take)
        out_s[qs[rows], rank[rows, cols]] = scores[rows, cols]
        out_i[qs[rows], rank[rows, cols]] = ids[rows, cols]
        got = take.sum(axis=1)
        fallback += [q for q, g in zip(qs, got) if g < wanted[q]]
    for q in fallback:
        got_s, got_i = search_excluding(vectors[q], k, excl[q])
        out_s[q] = -np.inf
        out_i[q] = -1
        out_s[q, :len(got_i)], out_i[q, :len(got_i)] = got_s[:k], got_i[:k]
    return out_s, out_i


def _check_query_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a query must be non-empty text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"query text is not valid UTF-8 ({exc.reason} at position {exc.start}).") from None


def _table(cases: list[Case], guard: list[str]) -> pd.DataFrame:
    data: dict[str, Any] = {
        "id": [c.id for c in cases], "text": [c.text for c in cases],
        "payload": [json.dumps(c.payload, default=_json_default) for c in cases],
        "image": [c.image or "" for c in cases],
    }
    for key in guard:
        data[f"key_{key}"] = [str(c.keys.get(key, "")) for c in cases]
    return pd.DataFrame(data)


def _file_sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _ids_sha256(ids) -> str:
    import hashlib

    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8") + b"\0")
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _add_in_batches(index, vectors: np.ndarray, progress: bool, batch: int = 100_000) -> None:
    for s in tqdm(range(0, len(vectors), batch), desc="indexing", disable=not progress or len(vectors) <= batch,
                  unit="batch"):
        index.add(vectors[s:s + batch])

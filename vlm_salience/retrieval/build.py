"""Build an index of a corpus's cases (what `vlm-salience index build` and experiments call)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlm_salience.data.corpus import Corpus
from vlm_salience.retrieval.cases import cases_from_corpus
from vlm_salience.retrieval.index import CaseIndex, IndexConfig


def corpus_expressivity(corpus: Corpus, estimator: str | None) -> np.ndarray | None:
    """Expressivity for case texts, normalised over the whole corpus (it describes faces; it is not a target)."""
    if not estimator:
        return None
    from vlm_salience.expressivity import Normaliser, raw_scores

    raw = raw_scores(corpus, estimator)
    return Normaliser.fit(raw)(raw)


def build_corpus_index(corpus: Corpus, cfg: IndexConfig, *, data_config: str | Path | None = None,
                       progress: bool = True, text_embedder=None) -> CaseIndex:
    cases = cases_from_corpus(corpus, corpus_expressivity(corpus, cfg.expressivity))
    return CaseIndex.build(
        cases, cfg, progress=progress, text_embedder=text_embedder,
        corpus={"name": corpus.name, "fingerprint": corpus.fingerprint, "items": len(corpus.items),
                "data_config": str(data_config) if data_config else None},
    )

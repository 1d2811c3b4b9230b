"""Retrieval of similar past cases for few-shot prompting: case text, embeddings, a FAISS index, a leakage guard."""

from vlm_salience.retrieval.cases import Case, cases_from_corpus, query_text
from vlm_salience.retrieval.index import CaseIndex, Hit, IndexConfig

__all__ = ["Case", "CaseIndex", "Hit", "IndexConfig", "cases_from_corpus", "query_text"]

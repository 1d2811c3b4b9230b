"""`Predictions`: what every method returns, so one metrics module and one report compare them all.

Per item: a distribution over the emotion labels; expected per-emotion ratings (and their full distributions)
where the corpus has rating scales; valence; and, where a salience law set them, the cue weights. Observed
combined-condition judgements are turned into the same object (`observed`), so metrics compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from vlm_salience.data.corpus import Corpus, Judgements, RatingScale


@dataclass
class Predictions:
    method: str
    item_ids: np.ndarray  # (n,)
    labels: tuple[str, ...]
    emotion_dist: np.ndarray  # (n, K), rows sum to 1
    valence: np.ndarray  # (n,)
    ratings: np.ndarray | None = None  # (n, K) expected ratings (rating corpora)
    rating_dist: np.ndarray | None = None  # (n, K, S)
    valence_dist: np.ndarray | None = None  # (n, V)
    weights: np.ndarray | None = None  # (n, 2): w_face, w_context
    expressivity: np.ndarray | None = None  # (n,)
    error: np.ndarray | None = None  # (n,) per-item failure message, "" where the item is fine
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def profile(self) -> np.ndarray:
        """What per-emotion r and RMSE are computed on: expected ratings, else label probabilities."""
        return self.ratings if self.ratings is not None else self.emotion_dist

    @property
    def ok(self) -> np.ndarray:
        return np.ones(len(self), dtype=bool) if self.error is None else (self.error == "")

    def take(self, idx: np.ndarray) -> Predictions:
        def cut(a):
            return None if a is None else a[idx]
        return replace(self, item_ids=self.item_ids[idx], emotion_dist=self.emotion_dist[idx],
                       valence=self.valence[idx], ratings=cut(self.ratings), rating_dist=cut(self.rating_dist),
                       valence_dist=cut(self.valence_dist), weights=cut(self.weights),
                       expressivity=cut(self.expressivity), error=cut(self.error))

    def align(self, item_ids: np.ndarray) -> Predictions:
        """Reorder (and restrict) to the given item ids."""
        index = {iid: i for i, iid in enumerate(self.item_ids)}
        missing = [i for i in item_ids if i not in index]
        if missing:
            raise KeyError(f"{self.method}: no prediction for item(s) {missing[:5]}")
        return self.take(np.array([index[i] for i in item_ids], dtype=int))

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        first = parts[0]

        def cat(name):
            arrs = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrs) else np.concatenate(arrs)
        return replace(first, item_ids=cat("item_ids"), emotion_dist=cat("emotion_dist"), valence=cat("valence"),
                       ratings=cat("ratings"), rating_dist=cat("rating_dist"), valence_dist=cat("valence_dist"),
                       weights=cat("weights"), expressivity=cat("expressivity"), error=cat("error"))

    def to_frame(self) -> pd.DataFrame:
        data: dict[str, Any] = {"item_id": self.item_ids, "method": self.method}
        if self.expressivity is not None:
            data["expressivity"] = self.expressivity
        if self.weights is not None:
            data["w_face"], data["w_context"] = self.weights[:, 0], self.weights[:, 1]
        data["valence"] = self.valence
        for k, lab in enumerate(self.labels):
            data[f"p_{lab}"] = self.emotion_dist[:, k]
        if self.ratings is not None:
            for k, lab in enumerate(self.labels):
                data[f"rating_{lab}"] = self.ratings[:, k]
        if self.error is not None:
            data["error"] = self.error
        return pd.DataFrame(data)


# ---------------------------------------------------------------------------------------------------------------

def ratings_to_distribution(ratings: np.ndarray, scale: RatingScale) -> np.ndarray:
    """An emotion profile as a distribution over labels: each rating's height above the scale floor, normalised."""
    above = np.clip(np.asarray(ratings, dtype=float) - scale.low, 1e-9, None)
    return above / above.sum(axis=-1, keepdims=True)


def derived_valence(ratings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.asarray(ratings, dtype=float) @ weights


def from_blocks(corpus: Corpus, method: str, item_ids: np.ndarray, blocks: dict[str, np.ndarray],
                weights: np.ndarray | None = None, expressivity: np.ndarray | None = None) -> Predictions:
    """Predictions from combined distributions: blocks['emotions'] (n, D, S) and optional blocks['valence']."""
    emo = blocks["emotions"]
    ratings = rating_dist = None
    if corpus.response == "ratings":
        rating_dist = emo
        ratings = (emo * corpus.scale.points).sum(axis=-1)
        dist = ratings_to_distribution(ratings, corpus.scale)
    else:
        dist = emo[:, 0, :]
    valence_dist = None
    if "valence" in blocks:
        valence_dist = blocks["valence"][:, 0, :]
        valence = valence_dist @ corpus.valence_scale.points
    else:
        valence = _valence_from(corpus, ratings, dist)
    return Predictions(method=method, item_ids=np.asarray(item_ids, dtype=object), labels=corpus.labels,
                       emotion_dist=dist, valence=valence, ratings=ratings, rating_dist=rating_dist,
                       valence_dist=valence_dist, weights=weights, expressivity=expressivity)


def _valence_from(corpus: Corpus, ratings: np.ndarray | None, dist: np.ndarray) -> np.ndarray:
    if corpus.valence_weights is None:
        return np.full(len(dist), np.nan)
    return derived_valence(ratings if ratings is not None else dist, corpus.valence_weights)


def aggregate(corpus: Corpus, j: Judgements, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per key: mean profile (ratings or label frequencies), label distribution and valence of judgements j."""
    index = {k: i for i, k in enumerate(keys)}
    keep = np.array([k in index for k in j.key], dtype=bool)
    rows = np.array([index[k] for k in j.key[keep]], dtype=int)
    n, K = len(keys), len(corpus.labels)
    counts = np.bincount(rows, minlength=n).astype(float)
    em = j.emotions[keep]
    if corpus.response == "choice":
        em = em / em.sum(axis=1, keepdims=True)
    sums = np.zeros((n, K))
    np.add.at(sums, rows, em)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = sums / counts[:, None]
    if corpus.response == "ratings":
        dist = ratings_to_distribution(profile, corpus.scale)
    else:
        dist = profile
    if j.valence is not None and corpus.rated_valence:
        vs = np.bincount(rows, weights=j.valence[keep], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            valence = vs / counts
    else:
        valence = _valence_from(corpus, profile if corpus.response == "ratings" else None, dist)
    profile[counts == 0] = np.nan
    return profile, dist, valence


def observed(corpus: Corpus, target: str = "mean") -> Predictions:
    """The combined-condition judgements as Predictions: cell means ('mean'), or the expected value of a KDE of
    each cell's ratings ('kde', the target of Ong et al. 2015)."""
    if corpus.combined is None:
        raise ValueError(f"corpus '{corpus.name}' has no combined-condition judgements to score against")
    ids = corpus.item_ids
    profile, dist, valence = aggregate(corpus, corpus.combined, ids)
    ratings = profile if corpus.response == "ratings" else None
    rating_dist = None
    if corpus.response == "ratings":  # each cell's distribution of ratings over the scale (for the rating KLD)
        from vlm_salience.cue_models import counts_on_support

        j = corpus.combined
        index = {k: i for i, k in enumerate(ids)}
        keep = np.array([k in index for k in j.key], dtype=bool)
        rows = np.array([index[k] for k in j.key[keep]], dtype=int)
        pts = corpus.scale.points
        counts = np.zeros((len(ids), len(corpus.labels), len(pts)))
        for k in range(len(corpus.labels)):
            np.add.at(counts[:, k, :], rows, counts_on_support(j.emotions[keep][:, k], pts))
        with np.errstate(invalid="ignore", divide="ignore"):
            rating_dist = counts / counts.sum(axis=-1, keepdims=True)
    if target == "kde" and corpus.response == "ratings":
        from vlm_salience.cue_models import grouped_kde

        j = corpus.combined
        index = {k: i for i, k in enumerate(ids)}
        rows = np.array([index[k] for k in j.key], dtype=int)
        kde = grouped_kde(j.emotions, rows, len(ids), corpus.scale.points)
        rating_dist = kde
        ratings = (kde * corpus.scale.points).sum(axis=-1)
        dist = ratings_to_distribution(ratings, corpus.scale)
        if not corpus.rated_valence:
            valence = _valence_from(corpus, ratings, dist)
    elif target not in ("mean", "kde"):
        raise ValueError(f"unknown target '{target}'; expected 'mean' or 'kde'")
    n_judgements = np.bincount([corpus.index_of(k) for k in corpus.combined.key], minlength=len(ids))
    missing = ids[n_judgements == 0]
    if len(missing):
        raise ValueError(f"items without combined judgements: {missing[:5].tolist()}")
    return Predictions(method="observed", item_ids=ids, labels=corpus.labels, emotion_dist=dist, valence=valence,
                       ratings=ratings, rating_dist=rating_dist, meta={"n_judgements": n_judgements})


def condition_profiles(corpus: Corpus, condition: str, by: str = "outcome") -> pd.DataFrame:
    """Mean emotion profile of one condition's judgements per value of a situation feature (e.g. outcome)."""
    j = {"face": corpus.face_only, "context": corpus.context_only, "combined": corpus.combined}[condition]
    if j is None:
        return pd.DataFrame()
    if condition == "face":
        key_to = {it.face.id: it.situation.features.get(by) for it in corpus.items}
    elif condition == "context":
        key_to = {sid: s.features.get(by) for sid, s in corpus.situations.items()}
    else:
        key_to = {it.id: it.situation.features.get(by) for it in corpus.items}
    groups = np.array([key_to.get(k) for k in j.key], dtype=object)
    keep = np.array([g is not None for g in groups])
    em = j.emotions[keep]
    if corpus.response == "choice":
        em = em / em.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(em, columns=list(corpus.labels))
    frame[by] = groups[keep]
    return frame.groupby(by).mean().sort_index()

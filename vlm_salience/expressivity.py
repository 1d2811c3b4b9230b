"""Facial expressivity per item, normalised to [0, 1] on training items only; expressive above 0.5 by default.

Estimators give a raw score per item (higher = more expressive); `Normaliser` maps it to [0, 1] using the training
items alone, so a test fold never shapes its own scale. Other packages register more estimators (e.g. a VLM's
face-only answer) with `register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vlm_salience.data.corpus import Corpus
from vlm_salience.predictions import aggregate

Estimator = Callable[[Corpus], np.ndarray]
ESTIMATORS: dict[str, Estimator] = {}


def register(name: str) -> Callable[[Estimator], Estimator]:
    def wrap(fn: Estimator) -> Estimator:
        ESTIMATORS[name] = fn
        return fn
    return wrap


def _face_profiles(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the mean face-only profile of its face and the corresponding label distribution."""
    faces = np.array([it.face.id for it in corpus.items], dtype=object)
    uniq = np.array(list(dict.fromkeys(faces)), dtype=object)
    profile, dist, _ = aggregate(corpus, corpus.face_only, uniq)
    where = {f: i for i, f in enumerate(uniq)}
    idx = np.array([where[f] for f in faces])
    return profile[idx], dist[idx]


def _non_neutral(corpus: Corpus) -> np.ndarray:
    return np.array([lab != corpus.neutral_label for lab in corpus.labels])


@register("face_peak")
def face_peak(corpus: Corpus) -> np.ndarray:
    """The strongest mean face-only emotion (neutral excluded): a readable face shows one emotion clearly."""
    profile, _ = _face_profiles(corpus)
    return profile[:, _non_neutral(corpus)].max(axis=1)


@register("face_entropy")
def face_entropy(corpus: Corpus) -> np.ndarray:
    """1 - normalised entropy of the face-only emotion distribution: observers agree on an expressive face."""
    _, dist = _face_profiles(corpus)
    p = np.clip(dist, 1e-12, 1.0)
    return 1.0 - (-(p * np.log(p)).sum(axis=1) / np.log(p.shape[1]))


@register("face_neutral")
def face_not_neutral(corpus: Corpus) -> np.ndarray:
    """1 - P(neutral) among face-only choices (choice corpora with a neutral label)."""
    if corpus.neutral_label is None:
        raise ValueError(f"corpus '{corpus.name}' has no neutral label; use face_peak or face_entropy")
    _, dist = _face_profiles(corpus)
    return 1.0 - dist[:, corpus.labels.index(corpus.neutral_label)]


@register("given")
def given(corpus: Corpus) -> np.ndarray:
    """A score the corpus carries (e.g. a manifest column from an action-unit detector)."""
    values = np.array([np.nan if it.expressivity is None else it.expressivity for it in corpus.items])
    if np.isnan(values).any():
        missing = [it.id for it in corpus.items if it.expressivity is None][:5]
        raise ValueError(f"items {missing} have no given expressivity; set the expressivity column in the data "
                         "config or choose another estimator")
    return values


def _from_face_model(method: str) -> Estimator:
    """Expressivity read by a face model (issue 18): 1 - P(neutral) or the divergence from the neutral profile
    (models/faces/model_expressivity.py), carried per item by a machine-cue corpus (vlm_salience/machine_cues.py
    writes `meta["model_expressivity:<method>"]`)."""
    key = f"model_expressivity:{method}"

    def estimator(corpus: Corpus) -> np.ndarray:
        missing = [it.id for it in corpus.items if key not in it.meta]
        if missing:
            raise ValueError(f"items {missing[:5]} carry no expressivity from a face model ('{key}'); build the "
                             "corpus with an image_classifier machine cue (configs/cues/), or choose another "
                             "estimator")
        return np.array([it.meta[key] for it in corpus.items], dtype=float)

    estimator.__doc__ = f"Expressivity from the face model's probabilities ({method}), per item."
    return estimator


for _method in ("not_neutral", "js_from_neutral", "kl_from_neutral"):
    register(f"model_{_method}")(_from_face_model(_method))


def raw_scores(corpus: Corpus, estimator: str) -> np.ndarray:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown expressivity estimator '{estimator}'; known: {sorted(ESTIMATORS)}")
    return np.asarray(ESTIMATORS[estimator](corpus), dtype=float)


@dataclass(frozen=True)
class Normaliser:
    """Maps raw scores to [0, 1] with statistics of training items only."""

    method: Literal["minmax", "rank", "none"]
    reference: np.ndarray

    @classmethod
    def fit(cls, train_scores: np.ndarray, method: Literal["minmax", "rank", "none"] = "minmax") -> Normaliser:
        ref = np.sort(np.asarray(train_scores, dtype=float))
        if len(ref) == 0:
            raise ValueError("cannot normalise expressivity on an empty training set")
        return cls(method, ref)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        if self.method == "none":
            return np.clip(s, 0.0, 1.0)
        if self.method == "rank":
            lo = np.searchsorted(self.reference, s, side="left")
            hi = np.searchsorted(self.reference, s, side="right")
            return (lo + hi) / (2.0 * len(self.reference))
        lo, hi = self.reference[0], self.reference[-1]
        if hi <= lo:
            return np.full_like(s, 0.5)
        return np.clip((s - lo) / (hi - lo), 0.0, 1.0)

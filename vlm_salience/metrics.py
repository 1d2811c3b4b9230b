"""Metrics of this field, with bootstrap intervals and paired bootstrap tests.

- r, RMSE: Pearson correlation and root mean squared error over (item x emotion) cells of the emotion profile
  (expected ratings where the corpus has rating scales, else label probabilities), as in Ong et al. (2015);
  also per emotion;
- KLD: mean over items of KL(observed || predicted) between emotion distributions (label choices; on rating
  corpora the normalised mean-profile heights, the "profile KLD" of Ong et al. 2015);
- rating KLD (rating corpora): mean over items and emotions of KL(observed || predicted) between the distributions
  of ratings over the scale, the quantity the weights are fitted on;
- valence MSE and r;
- UAR / WAR: unweighted (mean per-class recall) and weighted (overall) accuracy, for video emotion classification,
  with per-class recall, confusion matrix, bootstrap intervals over clips or groups, paired tests and fold summaries.
Items a method failed on (`Predictions.error`) are left out of its scores, and the coverage is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_salience.predictions import Predictions
# The plain statistics live in stats.py (numpy only, below every layer); named here too, so that `metrics` stays
# the one place a report or a test reaches for any metric.
from vlm_salience.stats import (CLASSIFICATION_METRICS, KLD_FLOOR, confusion_matrix, fold_summary, kl_per_item,
                                paired_bootstrap_classification, paired_difference, pearson, per_class_recall,
                                resample_weights, resampling_label, rmse, score_classification, uar, value_ci, war)

__all__ = ["CLASSIFICATION_METRICS", "HIGHER_IS_BETTER", "KLD_FLOOR", "METRICS", "confusion_matrix", "fold_summary",
           "kl_per_item", "paired_bootstrap", "paired_bootstrap_classification", "paired_difference", "pearson",
           "per_class_recall", "resample_weights", "resampling_label", "rmse", "score", "score_classification",
           "uar", "value_ci", "war"]

HIGHER_IS_BETTER = {"r": True, "rmse": False, "kld": False, "rating_kld": False, "valence_mse": False,
                    "valence_r": True}
METRICS = tuple(HIGHER_IS_BETTER)


# ---------------------------------------------------------------------------------------------------------------
# Vectorised over bootstrap resamples, written as weights: W[b, i] = how often resample b drew item i.

def _weighted_r(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson r per resample; a, b: (n, K) cells, w: (B, n) item weights (broadcast over K)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    wk = np.repeat(w[:, :, None], a.shape[1], axis=2).reshape(len(w), -1)
    a, b = a.ravel()[None, :], b.ravel()[None, :]
    tot = wk.sum(axis=1, keepdims=True)
    ma, mb = (wk * a).sum(axis=1, keepdims=True) / tot, (wk * b).sum(axis=1, keepdims=True) / tot
    da, db = a - ma, b - mb
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wk * da * db).sum(axis=1) / np.sqrt((wk * da * da).sum(axis=1) * (wk * db * db).sum(axis=1))


def _metric_rows(pred: Predictions, obs: Predictions, w: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric for each resample, given item weights w (B, n)."""
    tot = w.sum(axis=1)
    P, O = pred.profile, obs.profile
    cell_se = ((P - O) ** 2).mean(axis=1)  # mean over emotions, per item
    out = {"r": _weighted_r(P, O, w), "rmse": np.sqrt(w @ cell_se / tot)}
    out["kld"] = w @ kl_per_item(obs.emotion_dist, pred.emotion_dist) / tot
    if pred.rating_dist is not None and obs.rating_dist is not None:
        out["rating_kld"] = w @ kl_per_item(obs.rating_dist, pred.rating_dist).mean(axis=1) / tot
    else:
        out["rating_kld"] = np.full(len(w), np.nan)
    if np.isfinite(pred.valence).all() and np.isfinite(obs.valence).all():
        out["valence_mse"] = w @ (pred.valence - obs.valence) ** 2 / tot
        out["valence_r"] = _weighted_r(pred.valence[:, None], obs.valence[:, None], w)
    else:
        out["valence_mse"] = out["valence_r"] = np.full(len(w), np.nan)
    return out


def _common(pred: Predictions, obs: Predictions, *others: Predictions) -> np.ndarray:
    ok = pred.ok.copy()
    for o in others:
        ok &= o.ok
    return np.flatnonzero(ok)


def score(pred: Predictions, obs: Predictions, *, n_boot: int = 1000, seed: int = 0,
          groups: np.ndarray | None = None, crossed: np.ndarray | None = None) -> dict[str, Any]:
    """Point estimates, 95% bootstrap intervals and per-emotion r/RMSE of pred against obs (aligned by item)."""
    obs = obs.align(pred.item_ids)
    keep = _common(pred, obs)
    if len(keep) == 0:  # nothing answered: no score, and the coverage says so
        nan = {"value": float("nan"), "ci95": [float("nan"), float("nan")]}
        return {**{m: dict(nan) for m in METRICS}, "per_emotion": {}, "n_items": 0, "coverage": 0.0}
    p, o = pred.take(keep), obs.take(keep)
    g = None if groups is None else np.asarray(groups)[keep]
    x = None if crossed is None else np.asarray(crossed)[keep]
    rows = _metric_rows(p, o, resample_weights(len(keep), n_boot, seed, g, x))
    result: dict[str, Any] = {}
    for name in METRICS:
        result[name] = value_ci(rows[name])
    result["per_emotion"] = {
        lab: {"r": pearson(p.profile[:, k], o.profile[:, k]), "rmse": rmse(p.profile[:, k], o.profile[:, k])}
        for k, lab in enumerate(pred.labels)
    }
    result["n_items"] = int(len(keep))
    result["coverage"] = float(len(keep) / max(len(pred), 1))
    return result


def paired_bootstrap(a: Predictions, b: Predictions, obs: Predictions, *, n_boot: int = 1000, seed: int = 0,
                     groups: np.ndarray | None = None, crossed: np.ndarray | None = None) -> dict[str, Any]:
    """Is a better than b? Per metric: the difference a - b, its 95% interval over paired resamples of items,
    a two-sided bootstrap p, and `a_better` (the interval excludes zero in a's favour)."""
    b = b.align(a.item_ids)
    obs = obs.align(a.item_ids)
    keep = _common(a, obs, b)
    if len(keep) == 0:
        return {m: {"diff": float("nan"), "ci95": [float("nan"), float("nan")], "p": float("nan"),
                    "a_better": False} for m in METRICS}
    pa, pb, o = a.take(keep), b.take(keep), obs.take(keep)
    g = None if groups is None else np.asarray(groups)[keep]
    x = None if crossed is None else np.asarray(crossed)[keep]
    w = resample_weights(len(keep), n_boot, seed, g, x)
    ma, mb = _metric_rows(pa, o, w), _metric_rows(pb, o, w)
    return {name: paired_difference(ma[name] - mb[name], higher) for name, higher in HIGHER_IS_BETTER.items()}

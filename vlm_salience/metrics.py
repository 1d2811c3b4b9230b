"""Metrics of this field, with bootstrap intervals and paired bootstrap tests.

- r, RMSE: Pearson correlation and root mean squared error over (item x emotion) cells of the emotion profile
  (expected ratings where the corpus has rating scales, else label probabilities), as in Ong et al. (2015);
  also per emotion;
- KLD: mean over items of KL(observed || predicted) between emotion distributions;
- valence MSE and r;
- UAR / WAR: unweighted (mean per-class recall) and weighted (overall) accuracy, for video emotion classification.
Items a method failed on (`Predictions.error`) are left out of its scores, and the coverage is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_salience.predictions import Predictions

HIGHER_IS_BETTER = {"r": True, "rmse": False, "kld": False, "valence_mse": False, "valence_r": True}
METRICS = tuple(HIGHER_IS_BETTER)
KLD_FLOOR = 1e-6


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def rmse(pred: np.ndarray, obs: np.ndarray) -> float:
    d = np.asarray(pred, float) - np.asarray(obs, float)
    return float(np.sqrt(np.nanmean(d ** 2)))


def kl_per_item(obs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """KL(obs || pred) per row; pred is floored so that a confident miss costs a finite amount."""
    p = np.asarray(obs, float)
    q = np.clip(np.asarray(pred, float), KLD_FLOOR, None)
    q = q / q.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted average recall: the mean of per-class recalls over the classes present in y_true."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.unique(y_true)
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


def war(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Weighted average recall: plain accuracy."""
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean())


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


def resample_weights(n: int, n_boot: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(1 + B, n) item weights: row 0 is the data itself, then B bootstrap resamples. With groups, whole
    groups (a face, a participant) are drawn, so that items sharing a face do not count as independent."""
    rng = np.random.default_rng(seed)
    if groups is None:
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    else:
        uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        g = len(uniq)
        draws = rng.multinomial(g, np.full(g, 1.0 / g), size=n_boot)[:, inv].astype(float)
    return np.vstack([np.ones((1, n)), draws])


def score(pred: Predictions, obs: Predictions, *, n_boot: int = 1000, seed: int = 0,
          groups: np.ndarray | None = None) -> dict[str, Any]:
    """Point estimates, 95% bootstrap intervals and per-emotion r/RMSE of pred against obs (aligned by item)."""
    obs = obs.align(pred.item_ids)
    keep = _common(pred, obs)
    if len(keep) == 0:  # nothing answered: no score, and the coverage says so
        nan = {"value": float("nan"), "ci95": [float("nan"), float("nan")]}
        return {**{m: dict(nan) for m in METRICS}, "per_emotion": {}, "n_items": 0, "coverage": 0.0}
    p, o = pred.take(keep), obs.take(keep)
    g = None if groups is None else np.asarray(groups)[keep]
    rows = _metric_rows(p, o, resample_weights(len(keep), n_boot, seed, g))
    result: dict[str, Any] = {}
    for name in METRICS:
        boot = rows[name][1:]
        boot = boot[np.isfinite(boot)]
        lo, hi = np.percentile(boot, [2.5, 97.5]) if len(boot) else (np.nan, np.nan)
        result[name] = {"value": float(rows[name][0]), "ci95": [float(lo), float(hi)]}
    result["per_emotion"] = {
        lab: {"r": pearson(p.profile[:, k], o.profile[:, k]), "rmse": rmse(p.profile[:, k], o.profile[:, k])}
        for k, lab in enumerate(pred.labels)
    }
    result["n_items"] = int(len(keep))
    result["coverage"] = float(len(keep) / max(len(pred), 1))
    return result


def paired_bootstrap(a: Predictions, b: Predictions, obs: Predictions, *, n_boot: int = 1000, seed: int = 0,
                     groups: np.ndarray | None = None) -> dict[str, Any]:
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
    w = resample_weights(len(keep), n_boot, seed, g)
    ma, mb = _metric_rows(pa, o, w), _metric_rows(pb, o, w)
    out: dict[str, Any] = {}
    for name, higher in HIGHER_IS_BETTER.items():
        d = ma[name] - mb[name]
        point, boot = float(d[0]), d[1:][np.isfinite(d[1:])]
        if not len(boot):
            out[name] = {"diff": point, "ci95": [np.nan, np.nan], "p": np.nan, "a_better": False}
            continue
        lo, hi = np.percentile(boot, [2.5, 97.5])
        p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
        better = bool(lo > 0) if higher else bool(hi < 0)
        out[name] = {"diff": point, "ci95": [float(lo), float(hi)], "p": p, "a_better": better}
    return out

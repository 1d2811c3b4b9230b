"""Plain statistics on numpy arrays, shared by every layer: correlation, error, KL divergence, UAR/WAR, confusion
matrices, bootstrap resampling (by item, by group, two-way crossed), paired bootstrap differences, fold summaries,
and the variance of a distribution over a scale.

Numpy only, and nothing of the package: the data layer, the study, the video models and the reports all use it, so
it must sit below all of them (`tests/test_layers.py` checks that importing it pulls nothing else in). The
corpus-aware scores (over `Predictions`) stay in `metrics.py`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KLD_FLOOR = 1e-6


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Normalised exp along `axis`, shifted by the maximum so that large logits do not overflow."""
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


CONSTANT_RTOL = 1e-12  # spread below this share of the values' magnitude is rounding, not variation


def constant_columns(a: np.ndarray) -> np.ndarray:
    """Per column of a 2-D array (or the one column of a 1-D one): True where every value is the same up to
    rounding. A mean of equal floats is not always exactly that float, so a constant column's SD is ~1e-17, not 0;
    a test `sd == 0` would read rounding as signal (a constant cue getting an r)."""
    a = np.asarray(a, float)
    a2 = a.reshape(len(a), -1)
    if len(a2) == 0:
        return np.ones(a2.shape[1], bool)
    spread = np.ptp(a2, axis=0)
    scale = np.maximum(1.0, np.abs(a2).max(axis=0))
    return spread <= CONSTANT_RTOL * scale


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2 or constant_columns(a)[0] or constant_columns(b)[0]:
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
# Bootstrap resampling, vectorised as weights: W[b, i] = how often resample b drew item i.

def _group_draws(rng: np.random.Generator, groups: np.ndarray, n_boot: int) -> np.ndarray:
    """(B, n) per item: how often its group was drawn when the groups are resampled with replacement."""
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    g = len(uniq)
    return rng.multinomial(g, np.full(g, 1.0 / g), size=n_boot)[:, inv].astype(float)


def resample_weights(n: int, n_boot: int, seed: int, groups: np.ndarray | None = None,
                     crossed: np.ndarray | None = None) -> np.ndarray:
    """(1 + B, n) item weights: row 0 is the data itself, then B bootstrap resamples. With groups, whole
    groups (a face, a participant) are drawn, so that items sharing a face do not count as independent. With a
    crossed factor as well (e.g. utterances x wheels), both factors are drawn independently and an item counts
    (times its row was drawn) x (times its column was drawn): the two-way cluster ("pigeonhole") bootstrap of
    Owen (2007), which keeps the dependence of items sharing either factor."""
    rng = np.random.default_rng(seed)
    if groups is None and crossed is None:
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    elif crossed is None:
        draws = _group_draws(rng, groups, n_boot)
    elif groups is None:
        draws = _group_draws(rng, crossed, n_boot)
    else:
        draws = _group_draws(rng, groups, n_boot) * _group_draws(rng, crossed, n_boot)
    return np.vstack([np.ones((1, n)), draws])


def resampling_label(groups_name: str | None, crossed_name: str | None = None) -> str:
    """How a bootstrap resampled, in words, for reports."""
    if groups_name and crossed_name:
        return f"two-way cluster bootstrap over {groups_name} x {crossed_name}"
    if groups_name or crossed_name:
        return f"cluster bootstrap over {groups_name or crossed_name}"
    return "bootstrap over items"


def value_ci(row: np.ndarray) -> dict[str, Any]:
    """`{"value", "ci95"}` of a metric: row 0 is the point value, the rest are resamples (NaN ones, where
    undefined, left out)."""
    boot = row[1:][np.isfinite(row[1:])]
    lo, hi = np.percentile(boot, [2.5, 97.5]) if len(boot) else (np.nan, np.nan)
    return {"value": float(row[0]), "ci95": [float(lo), float(hi)]}


def paired_difference(d: np.ndarray, higher: bool) -> dict[str, Any]:
    """A paired comparison from d = a - b per resample (row 0 the data): the difference, its 95% interval, a
    two-sided bootstrap p and `a_better` (the interval excludes zero in a's favour; `higher`: larger is better)."""
    point, boot = float(d[0]), d[1:][np.isfinite(d[1:])]
    if not len(boot):
        return {"diff": point, "ci95": [float("nan"), float("nan")], "p": float("nan"), "a_better": False}
    lo, hi = np.percentile(boot, [2.5, 97.5])
    p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
    better = bool(lo > 0) if higher else bool(hi < 0)
    return {"diff": point, "ci95": [float(lo), float(hi)], "p": p, "a_better": better}


# ---------------------------------------------------------------------------------------------------------------
# Classification (video emotion recognition): labels are class indices 0..n_classes-1.
#
# UAR is the mean recall over the classes present in the data scored. A bootstrap resample can miss a rare class
# entirely; its recall is then undefined in that resample, so that resample's UAR averages the classes it holds,
# that class's recall interval uses only the resamples holding it, and the share of resamples that missed a class
# is reported (`resamples_missing_a_class`), so a reader sees when a UAR interval rests on fewer classes.

CLASSIFICATION_METRICS = ("uar", "war")


def _class_labels(y: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one class index per clip (1-D), got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices in [0, {n_classes}), got dtype {a.dtype}: "
                         f"map label names to indices first")
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise ValueError(f"{name} must hold class indices in [0, {n_classes}), got range [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    t = _class_labels(y_true, n_classes, "y_true")
    p = _class_labels(y_pred, n_classes, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} clips but y_pred has {len(p)}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall per class; NaN for a class with no clips in y_true (its recall is undefined, not zero)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def classification_rows(t: np.ndarray, p: np.ndarray, n_classes: int, w: np.ndarray) -> dict[str, np.ndarray]:
    """Per resample (rows of w): weighted class support, hits, per-class recall, UAR and WAR."""
    onehot = np.eye(n_classes)[t]  # (n, C)
    correct = (t == p).astype(float)
    support = w @ onehot  # (B, C)
    hits = w @ (onehot * correct[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.where(support > 0, support, 1.0), np.nan)
    present = support > 0
    n_present = present.sum(axis=1)
    uar_rows = np.where(n_present > 0, np.nansum(np.where(present, recall, 0.0), axis=1)
                        / np.maximum(n_present, 1), np.nan)
    war_rows = (w @ correct) / w.sum(axis=1)
    return {"recall": recall, "support": support, "uar": uar_rows, "war": war_rows}


def score_classification(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int, n_boot: int = 1000,
                         seed: int = 0, groups: np.ndarray | None = None) -> dict[str, Any]:
    """UAR, WAR and per-class recall with 95% bootstrap intervals over clips (or over whole groups, e.g. the
    clips of one subject, where `groups` is given), and the confusion matrix."""
    t = _class_labels(y_true, n_classes, "y_true")
    p = _class_labels(y_pred, n_classes, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} clips but y_pred has {len(p)}")
    if len(t) == 0:
        nan = {"value": float("nan"), "ci95": [float("nan"), float("nan")]}
        return {"uar": dict(nan), "war": dict(nan), "per_class_recall": {}, "confusion": [], "n": 0}
    rows = classification_rows(t, p, n_classes, resample_weights(len(t), n_boot, seed, groups))
    out: dict[str, Any] = {}
    for name in CLASSIFICATION_METRICS:
        out[name] = value_ci(rows[name])
    rec = rows["recall"]
    present0 = rows["support"][0] > 0
    out["per_class_recall"] = {
        "value": [float(v) for v in rec[0]],
        "ci95": [value_ci(rec[:, c])["ci95"] for c in range(n_classes)],
        "support": [int(s) for s in rows["support"][0]],
    }
    boot_present = rows["support"][1:] > 0
    missing = (~boot_present[:, present0]).any(axis=1) if len(boot_present) else np.zeros(0, bool)
    out["resamples_missing_a_class"] = float(missing.mean()) if len(missing) else 0.0
    out["classes_absent"] = [int(c) for c in np.flatnonzero(~present0)]
    out["confusion"] = confusion_matrix(t, p, n_classes).tolist()
    out["n"] = int(len(t))
    out["resampled"] = "groups" if groups is not None else "clips"
    return out


def paired_bootstrap_classification(pred_a: np.ndarray, pred_b: np.ndarray, y_true: np.ndarray, *,
                                    n_classes: int, n_boot: int = 1000, seed: int = 0,
                                    groups: np.ndarray | None = None) -> dict[str, Any]:
    """Is classifier a better than b on the same clips? Per metric (UAR, WAR): a - b, its 95% interval over
    paired resamples, a two-sided bootstrap p, and `a_better` (the interval excludes zero in a's favour)."""
    t = _class_labels(y_true, n_classes, "y_true")
    a = _class_labels(pred_a, n_classes, "pred_a")
    b = _class_labels(pred_b, n_classes, "pred_b")
    if not len(t) == len(a) == len(b):
        raise ValueError(f"y_true, pred_a and pred_b must have one entry per clip, got {len(t)}, {len(a)}, "
                         f"{len(b)}")
    w = resample_weights(len(t), n_boot, seed, groups)
    ra, rb = classification_rows(t, a, n_classes, w), classification_rows(t, b, n_classes, w)
    out: dict[str, Any] = {}
    for name in CLASSIFICATION_METRICS:
        out[name] = paired_difference(ra[name] - rb[name], higher=True)
    return out


def fold_summary(results: list[dict[str, Any]], metrics: tuple[str, ...] = CLASSIFICATION_METRICS
                 ) -> dict[str, dict[str, Any]]:
    """Mean ± sample sd (ddof 1) over folds, per metric, as 5-fold video benchmarks report them. Each fold's
    result is a `score_classification` output or a plain {metric: value} dict."""
    if not results:
        raise ValueError("fold_summary needs at least one fold's result")
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        vals = []
        for k, r in enumerate(results):
            if m not in r:
                raise ValueError(f"fold {k}'s result has no '{m}' (it has {sorted(r)})")
            v = r[m]
            vals.append(float(v["value"] if isinstance(v, dict) else v))
        a = np.asarray(vals)
        sd = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
        out[m] = {"mean": float(a.mean()), "sd": sd, "n_folds": int(len(a)), "per_fold": vals}
    return out


def distribution_variance(dist: np.ndarray, support: np.ndarray, categorical: bool) -> np.ndarray:
    """(n,) variance of each item's distributions (n, D, S), averaged over the D dimensions.

    Rated: sum_s p_s (s - mean)^2. Categorical: sum_k p_k (1 - p_k), the total variance of the one-hot answer."""
    p = np.asarray(dist, dtype=float)
    p = p / p.sum(axis=-1, keepdims=True)
    if categorical:
        var = (p * (1.0 - p)).sum(axis=-1)
    else:
        s = np.asarray(support, dtype=float)
        mean = p @ s
        var = (p * (s[None, None, :] - mean[..., None]) ** 2).sum(axis=-1)
    return var.mean(axis=-1)

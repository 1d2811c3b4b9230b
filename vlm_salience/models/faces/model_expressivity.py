"""Expressivity read from an expression classifier's probabilities: how far a face is from showing nothing.

Plain numpy (no torch), so that the expressivity estimators in `vlm_salience.expressivity` can register them:
- `not_neutral`: 1 − P(neutral), the model's own "is anything shown" probability;
- `js_from_neutral`: Jensen–Shannon divergence from the neutral profile, divided by ln 2 so it lies in [0, 1];
- `kl_from_neutral`: KL(p ‖ neutral profile) in nats (unbounded; grows as mass leaves the neutral profile).

The neutral profile defaults to all mass on the neutral class (smoothed by `eps` so KL stays finite); pass the
model's mean output on known-neutral faces instead where you have them, since a classifier's "neutral" output is
rarely one-hot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METHODS = ("not_neutral", "js_from_neutral", "kl_from_neutral")


def _check(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if p.shape[1] != len(classes):
        raise ValueError(f"probabilities have {p.shape[1]} columns but the model has {len(classes)} classes")
    return p


def neutral_index(classes: Sequence[str], neutral: str = "neutral") -> int:
    if neutral not in classes:
        raise ValueError(f"the model's classes {list(classes)} have no '{neutral}' class; expressivity from the "
                         "model needs one (set `neutral` in the model YAML, or use another estimator)")
    return list(classes).index(neutral)


def neutral_profile(classes: Sequence[str], neutral: str = "neutral", eps: float = 1e-3) -> np.ndarray:
    q = np.full(len(classes), eps / max(len(classes) - 1, 1))
    q[neutral_index(classes, neutral)] = 1.0 - eps
    return q / q.sum()


def not_neutral(probs: np.ndarray, classes: Sequence[str], neutral: str = "neutral") -> np.ndarray:
    p = _check(probs, classes)
    return 1.0 - p[:, neutral_index(classes, neutral)]


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.clip(p, 1e-300, None)) - np.log(q)), 0.0)
    return terms.sum(axis=1)


def kl_from_neutral(probs: np.ndarray, classes: Sequence[str], neutral: str = "neutral",
                    profile: np.ndarray | None = None) -> np.ndarray:
    p = _check(probs, classes)
    q = neutral_profile(classes, neutral) if profile is None else np.asarray(profile, np.float64)
    return _kl(p, np.broadcast_to(q / q.sum(), p.shape))


def js_from_neutral(probs: np.ndarray, classes: Sequence[str], neutral: str = "neutral",
                    profile: np.ndarray | None = None) -> np.ndarray:
    p = _check(probs, classes)
    q = neutral_profile(classes, neutral, eps=0.0) if profile is None else np.asarray(profile, np.float64)
    q = np.broadcast_to(q / q.sum(), p.shape)
    m = 0.5 * (p + q)
    return np.clip(0.5 * (_kl(p, m) + _kl(q, m)) / np.log(2.0), 0.0, 1.0)


def model_expressivity(probs: np.ndarray, classes: Sequence[str], method: str = "not_neutral",
                       neutral: str = "neutral", profile: np.ndarray | None = None) -> np.ndarray:
    """One expressivity score per row of `probs` by `method` (one of METHODS)."""
    if method == "not_neutral":
        return not_neutral(probs, classes, neutral)
    if method == "js_from_neutral":
        return js_from_neutral(probs, classes, neutral, profile)
    if method == "kl_from_neutral":
        return kl_from_neutral(probs, classes, neutral, profile)
    raise ValueError(f"unknown model expressivity method '{method}'; known: {list(METHODS)}")

"""Valence: a rated column on its own scale, or derived from the emotions by signed weights."""

from __future__ import annotations

import numpy as np

from vlm_salience.data.config import ValenceConfig
from vlm_salience.data.tables import TableChecker
from vlm_salience.errors import ConfigError


def valence_weights(cfg: ValenceConfig, emotions: list[str]) -> np.ndarray | None:
    """(K,) weights: positive emotions share +1, negative ones -1, so valence = mean(positive) - mean(negative)."""
    if cfg.from_emotions is None:
        return None
    unknown = sorted(set(cfg.from_emotions) - set(emotions))
    if unknown:
        raise ConfigError(f"valence.from_emotions names unknown emotion(s) {unknown}; the emotions are {emotions}.")
    raw = np.array([float(cfg.from_emotions.get(e, 0.0)) for e in emotions])
    pos, neg = raw.clip(min=0), (-raw).clip(min=0)
    if pos.sum() == 0 or neg.sum() == 0:
        raise ConfigError("valence.from_emotions needs at least one positive and one negative emotion.")
    return pos / pos.sum() - neg / neg.sum()


def rated_valence(checker: TableChecker, cfg: ValenceConfig) -> np.ndarray | None:
    if cfg.column is None:
        return None
    checker.require_columns([cfg.column])
    assert cfg.scale is not None
    return checker.numbers(cfg.column, cfg.scale.build())

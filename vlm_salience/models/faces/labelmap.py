"""Label maps: a model's classes onto a corpus's emotions, as YAML (configs/labelmaps/*.yaml), and valence from them.

Each model class sends its probability to one or more corpus emotions with weights that sum to 1 (a class may split,
e.g. FER's `sad` into the lottery corpus's `sad` and `disapp`), or to `uniform` (spread evenly over all emotions:
a class such as `neutral` that says nothing about which emotion). The mapped distribution is therefore normalised
whenever the model's is. Valence per emotion (signed weights, as the corpus YAMLs give them) turns a distribution
into a valence score, and gives each model class its own valence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from vlm_salience.config import StrictModel, load_config
from vlm_salience.errors import ConfigError


class LabelMapConfig(StrictModel):
    name: str
    model_classes: list[str]  # the classes of the model this map is for, in any order
    emotions: list[str]  # the corpus's emotions, in the corpus's order
    map: dict[str, dict[str, float] | Literal["uniform"]]
    valence: dict[str, float] = {}  # emotion -> signed weight; emotions not listed have valence 0


class LabelMap:
    def __init__(self, cfg: LabelMapConfig, source: str | Path = "<label map>") -> None:
        self.cfg, self.source, self.name = cfg, str(source), cfg.name
        self.classes, self.emotions = list(cfg.model_classes), list(cfg.emotions)
        self._validate()
        K = len(self.emotions)
        self.matrix = np.zeros((len(self.classes), K))
        for i, c in enumerate(self.classes):
            target = cfg.map[c]
            if target == "uniform":
                self.matrix[i] = 1.0 / K
            else:
                for e, w in target.items():
                    self.matrix[i, self.emotions.index(e)] = w
        self.emotion_valence = np.array([cfg.valence.get(e, 0.0) for e in self.emotions])
        self.class_valence = self.matrix @ self.emotion_valence

    def _err(self, field: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.source}: field '{field}': {problem} Fix: {fix}")

    def _validate(self) -> None:
        for field, names in [("model_classes", self.classes), ("emotions", self.emotions)]:
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise self._err(field, f"duplicate names {dup}.", "list each name once.")
        for c, target in self.cfg.map.items():
            if c not in self.classes:
                raise self._err(f"map.{c}", f"unknown model class '{c}' (the model's classes: {self.classes}).",
                                "use the model's own class names (its `.classes`).")
            if target == "uniform":
                continue
            if not target:
                raise self._err(f"map.{c}", "maps to no emotion.", "give emotion: weight pairs, or `uniform`.")
            for e, w in target.items():
                if e not in self.emotions:
                    raise self._err(f"map.{c}.{e}", f"unknown emotion '{e}' (the corpus's emotions: {self.emotions}).",
                                    "use the corpus's emotion names, as in its data YAML.")
                if not w >= 0:
                    raise self._err(f"map.{c}.{e}", f"weight {w} is negative.", "use weights >= 0.")
            total = sum(target.values())
            if abs(total - 1.0) > 1e-6:
                raise self._err(f"map.{c}", f"weights sum to {total:g}, not 1, so probabilities would not stay "
                                "normalised.", "make each class's weights sum to 1.")
        missing = [c for c in self.classes if c not in self.cfg.map]
        if missing:
            raise self._err("map", f"model classes {missing} are not mapped.", "map every class (or to `uniform`).")
        for e in self.cfg.valence:
            if e not in self.emotions:
                raise self._err(f"valence.{e}", f"unknown emotion '{e}' (the corpus's emotions: {self.emotions}).",
                                "use the corpus's emotion names.")

    def check_model(self, classes: Sequence[str], model: str = "the model") -> None:
        """Raise unless this map was written for exactly `classes`."""
        if set(classes) != set(self.classes) or len(classes) != len(self.classes):
            raise self._err("model_classes", f"lists {self.classes}, but {model} has classes {list(classes)}.",
                            "use a label map written for this model.")

    def apply(self, probs: np.ndarray, classes: Sequence[str] | None = None) -> np.ndarray:
        """(N, C) model probabilities (columns in `classes` order, default this map's) -> (N, K) over emotions."""
        p = np.atleast_2d(np.asarray(probs, np.float64))
        m = self.matrix
        if classes is not None:
            self.check_model(classes)
            m = m[[self.classes.index(c) for c in classes]]
        if p.shape[1] != m.shape[0]:
            raise ValueError(f"probabilities have {p.shape[1]} columns; label map {self.name} expects {m.shape[0]}")
        return p @ m

    def valence(self, emotion_probs: np.ndarray) -> np.ndarray:
        """Expected valence of (N, K) emotion distributions."""
        return np.atleast_2d(np.asarray(emotion_probs, np.float64)) @ self.emotion_valence


def load_label_map(path: str | Path, classes: Sequence[str] | None = None) -> LabelMap:
    """A label map from YAML; with `classes` (a model's), it must be written for exactly those classes."""
    lm = LabelMap(load_config(path, LabelMapConfig), source=path)
    if classes is not None:
        lm.check_model(classes)
    return lm

"""A corpus, its held-out splits and its expressivity, prepared once for every workflow that needs them.

Prompting experiments (prompting/experiment.py) and fine-tuning (training/data.py) both hold out whole groups
(participants never straddle train and test), and both normalise expressivity on the training items only. They
call `prepare_corpus_splits`, so the same config gives the same test items and the same expressivity in both.

Split rule: test groups are drawn first (seed), then validation groups from the remaining ones (seed + 1); the
training items are what is left. Expressivity is the study's estimator, normalised on the training items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlm_salience.config import load_config
from vlm_salience.data import load_corpus
from vlm_salience.data.corpus import Corpus
from vlm_salience.errors import ConfigError
from vlm_salience.expressivity import Normaliser, raw_scores
from vlm_salience.salience import SalienceLaw
from vlm_salience.study import StudyConfig


@dataclass
class Splits:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_groups(corpus: Corpus, *, test_fraction: float, group: str = "participant", seed: int = 0,
                 validation_fraction: float = 0.0, max_test_items: int | None = None) -> Splits:
    """Item indices of the train, validation and test splits, whole groups at a time."""
    groups = corpus.groups(group)
    uniq = np.array(sorted(set(groups)), dtype=object)
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_fraction * len(uniq))))
    test_groups = set(uniq[rng.permutation(len(uniq))[:n_test]])
    test = np.array([i for i, g in enumerate(groups) if g in test_groups])
    train = np.setdiff1d(np.arange(len(groups)), test)
    if max_test_items is not None:
        test = test[:max_test_items]
    if not len(train) or not len(test):
        raise ConfigError(f"split over '{group}' leaves an empty train or test set")
    validation = np.zeros(0, dtype=int)
    if validation_fraction > 0:
        rest = np.array(sorted(set(groups[train])), dtype=object)
        rng = np.random.default_rng(seed + 1)
        n_val = max(1, int(round(validation_fraction * len(rest))))
        val_groups = set(rest[rng.permutation(len(rest))[:n_val]])
        validation = np.array([i for i in train if groups[i] in val_groups], dtype=int)
        train = np.setdiff1d(train, validation)
    return Splits(train=train, validation=validation, test=test)


@dataclass
class PreparedCorpus:
    """What every workflow starts from: the corpus, the study config, the splits and the expressivity."""

    corpus: Corpus
    study: StudyConfig
    splits: Splits
    expressivity: np.ndarray | None  # normalised on the training items; None where it cannot be computed
    expressivity_error: str | None  # why not, in that case

    @property
    def threshold(self) -> float:
        return self.study.expressivity.threshold

    @property
    def split_law(self) -> SalienceLaw:
        """Which faces count as expressive is the salience law's question (one concept, one place)."""
        return SalienceLaw.plain(self.threshold)


def prepare_corpus_splits(data: str | Path, study: str | Path, split, *, overrides: Sequence[str] = ()
                          ) -> PreparedCorpus:
    """Load the corpus (`data` YAML, with dotted overrides) and the study config, split it by `split` (any config
    with test_fraction, group and seed; validation_fraction and max_test_items where it has them), and compute
    expressivity normalised on the training items."""
    corpus = load_corpus(data, overrides=list(overrides))
    study_cfg = load_config(study, StudyConfig)
    splits = split_groups(corpus, test_fraction=split.test_fraction, group=split.group, seed=split.seed,
                          validation_fraction=getattr(split, "validation_fraction", 0.0),
                          max_test_items=getattr(split, "max_test_items", None))
    x, err = None, None
    try:
        raw = raw_scores(corpus, study_cfg.expressivity.estimator)
        x = Normaliser.fit(raw[splits.train], study_cfg.expressivity.normalise)(raw)
    except (ValueError, KeyError) as exc:
        err = str(exc)
    return PreparedCorpus(corpus=corpus, study=study_cfg, splits=splits, expressivity=x, expressivity_error=err)

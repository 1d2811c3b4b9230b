"""One preparation of corpus, splits and expressivity: prompting experiments and fine-tuning get the same ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO
from vlm_salience.config import load_config
from vlm_salience.errors import ConfigError
from vlm_salience.expressivity import raw_scores
from vlm_salience.splits import prepare_corpus_splits, split_groups

STUDY = REPO / "configs" / "experiment" / "bci_synthetic.yaml"


def _both(tmp_path: Path, corpus: Path, *, test_fraction: float, seed: int, validation_fraction: float):
    from vlm_salience.prompting.experiment import ExperimentConfig, Runner
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.data import TrainingData

    t = {"name": "t", "model": {"name": "m", "path": str(tmp_path / "no-model")}, "data": {"config": str(corpus)},
         "study": str(STUDY), "adapters": [{"name": "a"}], "out": str(tmp_path / "train"),
         "split": {"test_fraction": test_fraction, "validation_fraction": validation_fraction,
                   "group": "participant", "seed": seed}}
    e = {"name": "e", "data": str(corpus), "study": str(STUDY), "out": str(tmp_path / "prompt"),
         "models": [{"name": "m", "backend": "hf", "path": str(tmp_path / "no-model")}],
         "strategies": [{"name": "s", "template": "combined"}],
         "split": {"test_fraction": test_fraction, "group": "participant", "seed": seed}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(t))
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(e))
    runner = Runner(load_config(tmp_path / "e.yaml", ExperimentConfig), progress=False)
    runner.cache.close()
    return TrainingData(load_config(tmp_path / "t.yaml", TrainConfig)), runner


@pytest.mark.parametrize("seed", [0, 3])
def test_prompting_and_fine_tuning_get_the_same_splits_and_expressivity(tmp_path, small_synth_corpus, seed):
    data, runner = _both(tmp_path, small_synth_corpus, test_fraction=0.25, seed=seed, validation_fraction=0.0)
    assert np.array_equal(data.splits.test, runner.test) and np.array_equal(data.splits.train, runner.train)
    assert len(data.splits.validation) == 0
    assert np.array_equal(data.expressivity, runner.x_judgements)
    assert data.threshold == runner.threshold and data.corpus.fingerprint == runner.corpus.fingerprint
    # with a validation split, fine-tuning carves it out of the same training groups; the test items do not move
    data_v, _ = _both(tmp_path / "v", small_synth_corpus, test_fraction=0.25, seed=seed, validation_fraction=0.3)
    s = data_v.splits
    assert np.array_equal(s.test, runner.test)
    assert np.array_equal(np.sort(np.concatenate([s.train, s.validation])), runner.train)
    groups = data_v.corpus.groups("participant")
    parts = [set(groups[s.train]), set(groups[s.validation]), set(groups[s.test])]
    assert all(parts) and not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


def test_expressivity_is_normalised_on_the_training_items_only(small_synth_corpus):
    from vlm_salience.training.config import SplitConfig

    p = prepare_corpus_splits(small_synth_corpus, STUDY, SplitConfig(test_fraction=0.25, validation_fraction=0.3))
    raw = raw_scores(p.corpus, p.study.expressivity.estimator)
    train = p.splits.train
    # minmax on the training items: they span exactly [0, 1]; a held-out face beyond their range is clipped
    assert p.expressivity[train].min() == 0.0 and p.expressivity[train].max() == 1.0
    lo, hi = raw[train].min(), raw[train].max()
    held = np.setdiff1d(np.arange(len(raw)), train)
    assert np.allclose(p.expressivity[held], np.clip((raw[held] - lo) / (hi - lo), 0, 1))


def test_an_empty_split_is_refused(small_synth_corpus):
    from vlm_salience.data import load_corpus

    corpus = load_corpus(small_synth_corpus)
    with pytest.raises(ConfigError, match="empty train or test"):
        split_groups(corpus, test_fraction=0.99, group="participant")
    s = split_groups(corpus, test_fraction=0.25, group="participant", max_test_items=3)
    assert len(s.test) == 3

"""Acceptance of the cue-integration study on real and synthetic corpora."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO
from vlm_salience.config import load_config
from vlm_salience.data import load_corpus
from vlm_salience.study import StudyConfig, make_folds, run_study

FAST = ["bootstrap.n=400"]


def _study(data, config="bci.yaml", overrides=()):
    cfg = load_config(REPO / "configs" / "experiment" / config, StudyConfig, [*FAST, *overrides])
    return run_study(load_corpus(data), cfg, progress=False)


def test_affcog_plain_bci_reproduces_the_published_fit(affcog_config):
    """Ong et al. (2015): r = 0.819 over cells (0.825 against cell means with a mixed-model context model)."""
    res = _study(affcog_config, overrides=["bootstrap.weights_n=0"])
    r = res.metrics["bci"]["r"]["value"]
    assert 0.80 <= r <= 0.84, r
    # each single cue fits worse than their integration, as the paper reports
    assert res.metrics["face_only"]["r"]["value"] < r and res.metrics["context_only"]["r"]["value"] < r
    # out-of-fold: every item predicted exactly once
    assert len(res.predictions["salience_hard"]) == 99
    assert set(res.comparisons["salience_hard"]) >= {"vs_bci", "vs_control", "verdict"}


def test_planted_salience_law_is_recovered_and_beats_bci_and_control(synth_corpus):
    res = _study(synth_corpus, "bci_synthetic.yaml", ["bootstrap.weights_n=40"])
    for name in ("salience_hard", "salience_logistic"):
        gap = res.weights[name]["face_weight_gap"]
        assert gap["value"] > 0 and gap["ci95"][0] > 0, (name, gap)
        verdict = res.comparisons[name]["verdict"]
        assert verdict["beats_bci"] and verdict["beats_control"], (name, verdict)
    assert res.weights["control"]["face_weight_gap"]["value"] == pytest.approx(0.0, abs=1e-9)


def test_without_the_law_salience_does_not_beat_the_control(synth_corpus_no_law):
    res = _study(synth_corpus_no_law, "bci_synthetic.yaml", ["bootstrap.weights_n=0"])
    for name in ("salience_hard", "salience_logistic"):
        assert not res.comparisons[name]["verdict"]["beats_control"], res.comparisons[name]["vs_control"]


def test_golden_balls_has_no_targets_so_only_unfitted_methods_predict(golden_balls_config):
    res = _study(golden_balls_config)
    assert set(res.predictions) == {"face_only", "context_only", "bci"}
    assert not res.metrics and any("no combined-condition" in n for n in res.notes)
    p = res.predictions["bci"]
    assert p.ratings.shape == (88, 20) and np.isfinite(p.valence).all()


def test_folds_never_split_a_group(small_synth_corpus):
    c = load_corpus(small_synth_corpus)
    cfg = load_config(REPO / "configs" / "experiment" / "bci_synthetic.yaml", StudyConfig)
    folds = make_folds(c, cfg.cv)
    parts = c.groups("participant")
    seen = [set(parts[f]) for f in folds]
    assert sum(len(f) for f in folds) == len(c.items)
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])

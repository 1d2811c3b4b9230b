"""Expressivity estimators and their normalisation on training items only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlm_salience.data import load_corpus
from vlm_salience.expressivity import ESTIMATORS, Normaliser, raw_scores


def test_normaliser_uses_training_statistics_only():
    n = Normaliser.fit(np.array([2.0, 4.0, 6.0]))
    assert n(np.array([2.0, 4.0, 6.0, 10.0, 0.0])).tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]
    r = Normaliser.fit(np.array([1.0, 2.0, 3.0, 4.0]), "rank")
    assert r(np.array([2.5])).tolist() == [0.5]
    assert Normaliser.fit(np.array([3.0, 3.0]))(np.array([3.0])).tolist() == [0.5]
    with pytest.raises(ValueError, match="empty"):
        Normaliser.fit(np.array([]))


def test_estimators_track_the_planted_expressivity(synth_corpus):
    c = load_corpus(synth_corpus)
    truth = pd.read_csv(synth_corpus.parent / "truth.csv").set_index("trial_id").loc[c.item_ids]
    for name in ("face_peak", "face_entropy", "face_neutral"):
        r = np.corrcoef(raw_scores(c, name), truth["expressivity"])[0, 1]
        assert r > 0.5, (name, r)


def test_given_column_and_unknown_estimator(small_synth_corpus):
    c = load_corpus(small_synth_corpus)
    with pytest.raises(ValueError, match="no given expressivity"):
        raw_scores(c, "given")
    with pytest.raises(ValueError, match="unknown expressivity estimator"):
        raw_scores(c, "vibes")
    assert {"face_peak", "face_entropy", "face_neutral", "given"} <= set(ESTIMATORS)


def test_affcog_peak_ranks_yay_above_oh(affcog_config):
    c = load_corpus(affcog_config)
    s = dict(zip([it.face.text for it in c.items], raw_scores(c, "face_peak")))
    assert s["awesome"] > s["oh"] and s["yay"] > s["meh"]

"""The synthetic Split-Steal generator and its face renderer."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import REPO
from vlm_salience.config import load_config
from vlm_salience.data.faces import ACTIONS, FaceStyle, render_face
from vlm_salience.data.synth import SynthConfig, generate, write_corpus


def _cfg(*overrides):
    return load_config(REPO / "configs" / "synth" / "split_steal.yaml", SynthConfig,
                       ["participants=6", "rounds=3", "image_size=48", *overrides])


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_seeded_and_deterministic(tmp_path):
    a = write_corpus(_cfg(), tmp_path / "a", progress=False).parent
    b = write_corpus(_cfg(), tmp_path / "b", progress=False).parent
    c = write_corpus(_cfg("seed=1"), tmp_path / "c", progress=False).parent
    assert _digest(a) == _digest(b) != _digest(c)


def test_appraisal_drives_the_context_and_the_law_the_combined_ratings():
    trials, ratings, truth, _ = generate(load_config(REPO / "configs" / "synth" / "split_steal.yaml", SynthConfig))
    ctx = ratings[ratings.condition == "context"].merge(trials, on="trial_id")
    by_outcome = ctx.groupby("outcome").valence.mean()
    assert by_outcome["CC"] > by_outcome["DD"] and by_outcome["DC"] > by_outcome["CD"]
    assert (ctx[ctx.outcome == "CD"].emotion.isin(["anger", "sadness"])).mean() > 0.5
    # planted law: expressive faces get the larger face weight
    hi, lo = truth.expressivity > 0.5, truth.expressivity <= 0.5
    assert truth.w_face[hi].mean() > 1.0 > truth.w_face[lo].mean()
    # expressive faces are read as their felt emotion by face-only raters, subtle ones mostly as neutral
    face = ratings[ratings.condition == "face"].merge(truth, on="trial_id")
    agree = face.emotion == face.felt_emotion
    assert agree[face.expressivity > 0.7].mean() > 0.6 > agree[face.expressivity < 0.2].mean()


def test_law_off_gives_every_face_the_same_weights():
    cfg = load_config(REPO / "configs" / "synth" / "split_steal_no_law.yaml", SynthConfig, ["participants=5"])
    truth = generate(cfg)[2]
    assert np.allclose(truth.w_face, 1.0) and np.allclose(truth.w_context, 1.0)


def test_faces_show_the_emotion_scaled_by_expressivity():
    style = FaceStyle.sample(np.random.default_rng(0))
    px = {e: np.asarray(render_face(e, 1.0, style, 64), dtype=float) for e in ACTIONS}
    neutral = px["neutral"]
    for e in ACTIONS:
        if e != "neutral":
            assert np.abs(px[e] - neutral).mean() > 0.5, e
    for e in ACTIONS:  # at zero intensity every emotion is the same neutral face
        assert np.array_equal(np.asarray(render_face(e, 0.0, style, 64)), np.asarray(render_face("neutral", 1, style, 64)))
    half = np.abs(np.asarray(render_face("joy", 0.3, style, 64), dtype=float) - neutral).mean()
    assert 0 < half < np.abs(px["joy"] - neutral).mean()
    other = np.asarray(render_face("neutral", 0, FaceStyle.sample(np.random.default_rng(5)), 64), dtype=float)
    assert np.abs(other - neutral).mean() > 1.0  # participants look different
    with pytest.raises(ValueError, match="no facial actions"):
        render_face("awe", 1.0, style)


def test_written_manifest_is_complete(tmp_path):
    data_yaml = write_corpus(_cfg(), tmp_path / "c", progress=False)
    folder = data_yaml.parent
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 18 and trials.trial_id.is_unique
    img = Image.open(folder / trials.face_image[0])
    assert img.size == (48, 48)
    assert {"data.yaml", "synth.yaml", "truth.csv", "ratings.csv"} <= {p.name for p in folder.iterdir()}


def test_the_declared_outcomes_give_cue_models_the_generators_prior(tmp_path, monkeypatch):
    """The generator's prior is the four outcomes, equally weighted, at the trial's own pot; the data config
    declares them, so the prior built from the corpus is that one (not the average over observed situations)."""
    from vlm_salience.cue_models import CueModelConfig, build_cues
    from vlm_salience.data import load_corpus, synth

    cfg = _cfg("participants=20", "rounds=6", "raters.context=30", "image_size=8")
    priors = []
    real = synth._temper
    monkeypatch.setattr(synth, "_temper", lambda pf, pc, p0, wf, wc: priors.append(p0) or real(pf, pc, p0, wf, wc))
    corpus = load_corpus(write_corpus(cfg, tmp_path / "c", progress=False))
    declared = corpus.items[0].situation.outcomes
    assert [f["outcome"] for _, f in declared] == ["CC", "CD", "DC", "DD"]
    assert [p for p, _ in declared] == pytest.approx([0.25] * 4)
    assert {f["log_pot"] for _, f in declared} == {corpus.items[0].situation.features["log_pot"]}
    truth = priors[0]  # (n, K) in trial order, the corpus's order
    got = build_cues(corpus, CueModelConfig(context_model="ols")).block("emotions").prior[:, 0, :]
    err = np.abs(got - truth).mean()
    pooled = np.abs(got.mean(axis=0, keepdims=True) - truth).mean()  # one prior for every trial, as before
    assert err < 0.02 and err < 0.5 * pooled, (err, pooled)


def test_fixed_outcome_levels_are_checked(tmp_path):
    from vlm_salience.data import load_corpus
    from vlm_salience.data.config import CueTablesConfig
    from vlm_salience.errors import DataError

    folder = write_corpus(_cfg(), tmp_path / "c", progress=False).parent
    text = (folder / "data.yaml").read_text().replace("DD: 0.25", "XX: 0.25")
    (folder / "data.yaml").write_text(text)
    with pytest.raises(DataError, match="not one of the declared outcome levels"):
        load_corpus(folder / "data.yaml")
    with pytest.raises(ValueError, match="split_steal format only"):
        CueTablesConfig.model_validate({
            "format": "cue_tables", "name": "x", "root": ".", "files": {"face": "f", "context": "c"}, "rater": "r",
            "emotions": ["a"], "scale": {"low": 1, "high": 9}, "valence": {"from_emotions": {"a": 1}},
            "face": {"id": ["u"]}, "situation": {"features": ["win"], "text": "t",
                                                 "outcomes": {"feature": "win", "levels": {"1": 1.0}}}})

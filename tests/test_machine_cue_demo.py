"""The synthetic rating corpus (data/synth_ratings.py) and the machine-cue demo step (demo/machine_cue.py).

Planted truth: the generator knows each face's true face-only distribution and felt emotion, so the human face-only
ratings can be checked against it, and a machine cue can be checked to follow its *reading* (an oracle reading
agrees, a shuffled one does not), not the human ratings it is calibrated on. The real FER2013 classifier on the
drawn faces is run once, end to end, and only reported on: no machine gain is asserted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vlm_salience.config import load_config
from vlm_salience.data import load_corpus
from vlm_salience.data.synth import _temper, generate_with_distributions
from vlm_salience.data.synth_ratings import RatingSynthConfig, generate_ratings, rating_data_config, write_rating_corpus
from vlm_salience.demo.machine_cue import machine_cue_demo, planted_agreement, summary_lines
from vlm_salience.machine_cues import (MachineCueConfig, Reading, cue_agreement, face_summaries, machine_corpus)

REPO = Path(__file__).resolve().parent.parent
SYNTH = REPO / "configs" / "synth" / "split_steal_ratings.yaml"
SMALL = ["participants=12", "rounds=4", "raters={face: 10, context: 6, combined: 6}"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg = load_config(SYNTH, RatingSynthConfig, SMALL)
    data = write_rating_corpus(cfg, tmp_path_factory.mktemp("ratings") / "corpus", progress=False)
    truth = pd.read_csv(data.parent / "truth.csv")
    return cfg, data, load_corpus(data), truth


def test_rating_corpus_loads_through_the_ordinary_loader(small, monkeypatch):
    cfg, data, corpus, truth = small
    assert corpus.response == "ratings" and (corpus.scale.low, corpus.scale.high) == (1, 9)
    assert list(corpus.labels) == list(cfg.labels)
    n = 12 * 4
    assert len(corpus.items) == n
    assert corpus.face_only.emotions.shape == (n * 10, 8)
    assert corpus.context_only.emotions.shape == corpus.combined.emotions.shape == (n * 6, 8)
    for j in (corpus.face_only, corpus.context_only, corpus.combined):
        e = j.emotions
        assert e.min() >= 1 and e.max() <= 9 and np.all(e == np.round(e))
        assert len(np.unique(e)) >= 7  # the scale is used, not only its floor
    assert all(len(it.face.media) == 1 and it.face.media[0].is_file() for it in corpus.items)
    assert all(it.face.id == it.situation.id for it in corpus.items)  # each face meets its own trial's situation
    assert corpus.items[0].situation.features["outcome"] in ("CC", "CD", "DC", "DD")
    # the shipped data YAML is the written one, rooted where the demo writes the corpus
    shipped = yaml.safe_load((REPO / "configs/data/synthetic_split_steal_ratings.yaml").read_text())
    own = rating_data_config(cfg)
    for d in (shipped, own):
        d.pop("root"), d["face"].pop("image_dir")
    assert shipped == {**own, "name": "synthetic_split_steal_ratings"}
    monkeypatch.setenv("VLM_SALIENCE_SYNTH_RATINGS", str(data.parent))
    again = load_corpus(REPO / "configs/data/synthetic_split_steal_ratings.yaml")
    assert np.array_equal(again.face_only.emotions, corpus.face_only.emotions)


def test_recomputed_distributions_are_the_generators(monkeypatch):
    """generate_with_distributions returns what synth.generate draws its own (choice) raters from: with many raters at
    temperature 1 their choice frequencies differ from it by sampling noise only (the mean absolute deviation of a
    binomial frequency, sqrt(2/pi p(1-p)/R)). Dropping the planted law from them (equal weights) is
    several times further off: the check can see a wrong recomputation."""
    R = 400
    cfg = load_config(SYNTH, RatingSynthConfig, ["participants=6", "rounds=4", "perception.rater_temperature_sd=0",
                                                 f"raters={{face: {R}, context: {R}, combined: {R}}}"])
    trials, choices, truth, _, p = generate_with_distributions(cfg)
    labels = list(cfg.labels)
    errs = {}
    for cond in ("face", "context", "combined"):
        sub = choices[choices.condition == cond]
        freq = pd.crosstab(sub.trial_id, sub.emotion).reindex(index=trials.trial_id, columns=labels, fill_value=0)
        freq = freq.to_numpy(float) / R
        errs[cond] = np.abs(freq - p[cond]).mean()
        noise = np.sqrt(2 / np.pi * p[cond] * (1 - p[cond]) / R).mean()
        assert errs[cond] < 1.25 * noise, (cond, errs[cond], noise)
    no_law = _temper(p["face"], p["context"], p["prior"], np.ones(len(trials)), np.ones(len(trials)))
    sub = choices[choices.condition == "combined"]
    freq = pd.crosstab(sub.trial_id, sub.emotion).reindex(index=trials.trial_id, columns=labels, fill_value=0)
    assert np.abs(freq.to_numpy(float) / R - no_law).mean() > 3 * errs["combined"]


def test_human_face_only_ratings_follow_the_drawn_expression(small):
    cfg, _, corpus, truth = small
    faces = list(truth.trial_id)
    means, _, _ = face_summaries(corpus, faces)
    labels = list(cfg.labels)
    felt = np.array([labels.index(e) for e in truth.felt_emotion])
    x = truth.expressivity.to_numpy()
    expressive = x >= 0.6
    assert expressive.sum() >= 10
    assert np.mean(means.argmax(axis=1)[expressive] == felt[expressive]) >= 0.9
    assert np.mean(means.argmax(axis=1)[x < 0.25] == labels.index("neutral")) >= 0.8  # subtle faces read neutral
    p_face = truth[[f"p_face_{e}" for e in labels]].to_numpy()
    assert np.corrcoef(means.ravel(), p_face.ravel())[0, 1] > 0.9
    # the context-only raters never saw the face: their top emotion matches the felt one far less often
    ctx = np.array([corpus.context_only.emotions[corpus.context_only.key == f].mean(axis=0) for f in faces])
    assert np.mean(ctx.argmax(axis=1)[expressive] == felt[expressive]) < 0.8


def test_planted_agreement_by_hand():
    labels = ["a", "b", "c"]
    truth = pd.DataFrame({"trial_id": ["t1", "t2", "t3", "t4"], "felt_emotion": ["a", "a", "b", "c"],
                          "expressivity": [0.9, 0.2, 0.7, 0.8]})
    out = planted_agreement(labels, np.array([0, 1, 1, 0]), truth, ["t1", "t2", "t3", "t4"])
    assert out["all"] == 0.5 and out["expressive"] == pytest.approx(2 / 3) and out["n_expressive"] == 3
    # marginals: felt (2, 1, 1)/4, predicted (2, 2, 0)/4 -> 0.5*0.5 + 0.25*0.5 + 0
    assert out["chance_all"] == pytest.approx(0.375)


def _cue_cfg(data: Path) -> MachineCueConfig:
    return MachineCueConfig(data=data, model={"kind": "image_classifier", "label_map":
                                              REPO / "configs/labelmaps/fer_to_synthetic.yaml"},
                            calibration={"kind": "isotonic", "k": 5}, pseudo_raters=8)


def test_machine_cue_follows_its_reading_not_the_human_ratings(small):
    """An oracle reading (the true face distributions) agrees with the human face-only means; the same reading
    shuffled across faces does not, although both are calibrated on the same human ratings. A machine cue that
    silently used the human ratings would agree in both cases."""
    cfg, data, corpus, truth = small
    faces = list(dict.fromkeys(it.face.id for it in corpus.items))
    p = truth.set_index("trial_id").loc[faces, [f"p_face_{e}" for e in cfg.labels]].to_numpy()
    oracle = machine_corpus(corpus, _cue_cfg(data), reading=Reading(faces, p))
    shuffled = machine_corpus(corpus, _cue_cfg(data),
                              reading=Reading(faces, p[np.random.default_rng(0).permutation(len(faces))]))
    a_o, a_s = cue_agreement(corpus, oracle), cue_agreement(corpus, shuffled)
    assert a_o["calibrated"]["r_z"] > 0.7
    assert a_s["calibrated"]["r_z"] < 0.3
    assert a_o["calibrated"]["kld"] < a_s["calibrated"]["kld"]
    m = oracle.corpus.face_only
    assert m.source == "machine:image_classifier" and m.emotions.shape == (len(faces) * 8, 8)
    assert not np.isin(m.rater, corpus.face_only.rater).any()
    assert oracle.corpus.context_only is corpus.context_only and oracle.corpus.combined is corpus.combined


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return machine_cue_demo(tmp_path_factory.mktemp("demo") / "machine_cue", quick=True, progress=False)


def test_demo_runs_the_real_classifier_beside_the_human_cue(demo):
    out = Path(demo["out"])
    for f in ("side_by_side.md", "side_by_side.json", "human/report.md", "machine/report.md", "corpus/data.yaml"):
        assert (out / f).is_file(), f
    a = demo["agreement"]
    assert demo["faces"] == 64 and set(a["r_per_emotion"]) == set(demo["emotions"])
    values = [a["r_z"], a["r_raw"], a["kld"], a["rating_kld"], *a["r_per_emotion"].values()]
    assert np.all(np.isfinite(values)) and a["kld"] >= 0
    m = demo["methods"]
    assert {"face_only", "context_only", "bci", "control", "salience_logistic"} <= set(m)
    for row in m.values():
        assert np.isfinite([row["r_human"], row["r_machine"], row["kld_human"], row["kld_machine"]]).all()
    # only the face cue changes: context-only is fitted on the same context raters either way
    assert m["context_only"]["r_human"] == pytest.approx(m["context_only"]["r_machine"])
    # and it does change: the machine's face-only predictions are not the human cue's
    assert abs(m["face_only"]["r_human"] - m["face_only"]["r_machine"]) > 0.05
    # honesty, not a target: the human face-only raters see the planted expression by construction; FER reading
    # cartoons drawn far from its FER2013 photographs is reported beside its chance level, no gain asserted
    f, h = demo["fer_vs_planted"], demo["human_vs_planted"]
    assert 0 <= f["all"] <= 1 and 0 < f["chance_all"] < 1
    assert h["expressive"] > f["expressive"]
    print(f"\nFER top class vs the planted expression: {f['all']:.2f} of {demo['faces']} faces "
          f"(chance {f['chance_all']:.2f}), {f['expressive']:.2f} of {f['n_expressive']} expressive "
          f"(chance {f['chance_expressive']:.2f})")
    lines = summary_lines(demo)
    assert any(f"{m['bci']['r_machine']:.3f}" in line for line in lines)
    assert any(f"{f['all']:.2f}" in line for line in lines)

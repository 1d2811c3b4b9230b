"""Machine cues (issue 18, item 4): the face cue read by a model, calibrated out of fold, in the same shape as the
human face-only judgements; agreement figures against hand-computed values; the real MiniLM on the real corpus."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from tables import write_cue_tables
from tests.conftest import needs_minilm
from vlm_salience.data import Corpus, load_corpus
from vlm_salience.errors import ConfigError, DataError
from vlm_salience.machine_cues import (
    CalibrationConfig, MachineCueConfig, Reading, agreement, calibrate, cross_fit, cue_agreement, face_folds,
    face_summaries, load_machine_cue_config, machine_corpus, read_descriptions, read_faces, read_images,
)

REPO = Path(__file__).resolve().parent.parent


def _cfg(tmp_path: Path, data: Path, **model) -> MachineCueConfig:
    desc = tmp_path / "desc.txt"
    desc.write_text("happy: I feel happy\nsad: I feel sad\n")
    raw = {"data": str(data), "model": {"kind": "text_similarity", "descriptions": str(desc), **model},
           "pseudo_raters": 7}
    path = tmp_path / "cue.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_machine_cue_config(path)


# ---------------------------------------------------------------------------------------------------------------
# Agreement figures, by hand.

def test_agreement_against_hand_computed_values():
    H = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    M = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    a = agreement(H, M, ["happy", "sad"], scale_low=1.0)
    r_sad = 7.0 / math.sqrt(2.0 * 26.0)  # x = 1,2,3; y = 2,4,9: cov 7, sum sq 2 and 26
    assert a["r_per_emotion"]["happy"] == pytest.approx(1.0)
    assert a["r_per_emotion"]["sad"] == pytest.approx(r_sad)
    assert a["r_z"] == pytest.approx((1.0 + r_sad) / 2.0)  # z-scored per emotion: the mean of the r's
    # profiles above the scale floor, normalised: H rows (0,1), (.4,.6), (1/3,2/3); M rows all (.5,.5)
    kl = [math.log(2.0), 0.4 * math.log(0.8) + 0.6 * math.log(1.2),
          (1 / 3) * math.log(2 / 3) + (2 / 3) * math.log(4 / 3)]
    assert a["kld"] == pytest.approx(np.mean(kl), abs=1e-6)
    assert a["faces"] == 3


def test_agreement_skips_faces_without_human_ratings():
    H = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 5.0], [4.0, 4.0]])
    M = np.array([[1.0, 2.0], [9.0, 9.0], [3.0, 5.0], [4.0, 4.0]])
    a = agreement(H, M, ["happy", "sad"])
    assert a["faces"] == 3 and a["r_z"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# Calibration: fitted on other faces only.

def test_cross_fit_fits_each_fold_on_other_faces_only():
    rng = np.random.default_rng(0)
    S, H = rng.random((12, 3)), rng.random((12, 3))
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(x, y, idx):
        seen.append(idx.copy())
        assert np.array_equal(x, S[idx]) and np.array_equal(y, H[idx])
        return lambda s: np.zeros((len(s), 3))

    folds = face_folds(12, 4, seed=1)
    cross_fit(S, H, folds, spy)
    assert len(seen) == 4
    for test, train in zip(folds, seen):
        assert not set(test) & set(train)
        assert set(test) | set(train) == set(range(12))


@pytest.mark.parametrize("kind", ["isotonic", "pooled_isotonic", "linear"])
def test_calibration_on_noise_finds_no_agreement_unless_it_sees_the_test_faces(kind):
    """Scores unrelated to the human means: out of fold the calibrated cue must not agree; the same calibration
    fitted on every face (test faces included) does agree, so this test catches a calibration that leaks."""
    rng = np.random.default_rng(3)
    S = rng.random((40, 4))
    H = 1.0 + 8.0 * rng.random((40, 4))
    cal = CalibrationConfig(kind=kind)
    honest = agreement(H, calibrate(S, H, cal, 1.0, 9.0), ["a", "b", "c", "d"])
    assert honest["r_raw"] < 0.3

    from vlm_salience.machine_cues import MonotoneMap

    leaky = MonotoneMap(kind, 1.0, 9.0).fit(S, H).predict(S)  # a fit that saw the faces it predicts
    if kind != "linear":  # isotonic steps memorise noise; a slope barely does
        assert agreement(H, leaky, ["a", "b", "c", "d"])["r_raw"] > honest["r_raw"] + 0.2


def test_calibration_recovers_a_planted_monotone_relation():
    rng = np.random.default_rng(4)
    S = rng.random((30, 3))
    H = 1.0 + 8.0 * S ** 2 + rng.normal(0, 0.2, S.shape)
    out = calibrate(S, np.clip(H, 1, 9), CalibrationConfig(kind="isotonic"), 1.0, 9.0)
    assert agreement(H, out, ["a", "b", "c"])["r_raw"] > 0.95
    assert np.all((out >= 1) & (out <= 9))


# ---------------------------------------------------------------------------------------------------------------
# The machine-cue corpus: same type and shape as the human one, the study runs on it unchanged.

def _tiny(tmp_path: Path) -> tuple[Corpus, MachineCueConfig]:
    faces = [f"r{i},f{i % 3},{t},{h},{s}" for i, (t, h, s) in enumerate(
        [("yay", 8, 1), ("oh", 3, 6), ("meh", 5, 4), ("yay", 7, 2), ("oh", 2, 7), ("meh", 4, 5)])]
    data = write_cue_tables(tmp_path / "c", face_rows=faces, combined_rows=[
        "r9,f0,s1,10,9,1", "r10,f0,s2,0,5,5", "r11,f1,s1,10,5,4", "r12,f1,s2,0,1,9",
        "r13,f2,s1,10,6,3", "r14,f2,s2,0,3,6"])
    return load_corpus(data), _cfg(tmp_path, data)


def test_machine_corpus_has_the_human_corpus_shape(tmp_path):
    human, cfg = _tiny(tmp_path)
    faces = ["f0", "f1", "f2"]
    reading = Reading(faces, np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]]))
    cue = machine_corpus(human, cfg, reading=reading)
    m = cue.corpus
    assert isinstance(m, Corpus) and m.labels == human.labels and m.scale == human.scale
    assert list(m.item_ids) == list(human.item_ids)
    assert m.context_only is human.context_only and m.combined is human.combined
    assert m.face_only.condition == "face" and m.face_only.emotions.shape == (3 * 7, 2)
    assert sorted(set(m.face_only.key)) == faces and np.all(human.scale.contains(m.face_only.emotions))
    # each face's machine rows centre on its out-of-fold calibrated mean
    for i, f in enumerate(faces):
        assert m.face_only.emotions[m.face_only.key == f].mean(axis=0) == pytest.approx(cue.calibrated[i], abs=0.3)
    from vlm_salience.cue_models import build_cues

    hb, mb = build_cues(human).blocks[0], build_cues(m).blocks[0]
    assert hb.face.shape == mb.face.shape and np.allclose(hb.context, mb.context)
    means, _, n = face_summaries(human, faces)
    assert np.allclose(cue.human_means, means) and list(n) == [2, 2, 2]


def test_the_study_runs_unchanged_on_the_machine_corpus(tmp_path):
    from vlm_salience.study import MethodConfig, StudyConfig, run_study

    human, cfg = _tiny(tmp_path)
    cue = machine_corpus(human, cfg, reading=Reading(["f0", "f1", "f2"], np.array([[0.9, 0.1], [0.2, 0.8],
                                                                                   [0.5, 0.4]])))
    study = StudyConfig(cue_models={"context_model": "ols"}, bootstrap={"n": 20, "weights_n": 0},
                        methods=[MethodConfig(name="bci", rule="product"), MethodConfig(name="face", rule="face")])
    h, m = run_study(human, study, progress=False), run_study(cue.corpus, study, progress=False)
    assert set(h.metrics) == set(m.metrics) == {"bci", "face"}
    assert h.predictions["bci"].ratings.shape == m.predictions["bci"].ratings.shape
    assert not np.allclose(h.predictions["face"].ratings, m.predictions["face"].ratings)
    from vlm_salience.machine_cues import side_by_side, side_by_side_markdown

    both = side_by_side(human, cue, study, progress=False)
    assert both["methods"]["bci"]["r"]["human"] == pytest.approx(h.metrics["bci"]["r"]["value"])
    assert both["methods"]["bci"]["r"]["machine"] == pytest.approx(m.metrics["bci"]["r"]["value"])
    md = side_by_side_markdown(both)
    assert "| bci |" in md and "r_z" in md


def test_descriptions_file_errors_name_the_file_and_line(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("# comment\nhappy: I feel happy\ncontempt: I feel contempt\n")
    with pytest.raises(DataError, match=r"d\.txt.*(row|line) 3.*unknown emotion 'contempt'"):
        read_descriptions(p, ["happy", "sad"])
    p.write_text("happy: I feel happy\n")
    with pytest.raises(DataError, match="no description for emotion.*sad"):
        read_descriptions(p, ["happy", "sad"])
    assert read_descriptions(REPO / "prompts/emotion_descriptions_affcog.txt",
                             ["happy", "sad", "anger", "surprise", "disgust", "fear", "content", "disapp"])


def test_shipped_machine_cue_yamls_load():
    for path in sorted((REPO / "configs" / "cues").glob("*.yaml")):
        cfg = load_machine_cue_config(path)
        assert cfg.data.is_file()
        if cfg.model.kind == "text_similarity":
            assert cfg.model.descriptions.is_file()


# ---------------------------------------------------------------------------------------------------------------
# The image reader: the real FER2013 classifier on the astronaut, label map checks, model expressivity.

def _image_corpus(tmp_path: Path) -> Path:
    skimage = pytest.importorskip("skimage")
    from PIL import Image

    a = skimage.data.astronaut()
    img = tmp_path / "c" / "img"
    img.mkdir(parents=True)
    Image.fromarray(a).save(img / "a.png")
    Image.fromarray(a[::2, ::2]).save(img / "b.png")
    Image.fromarray(np.ascontiguousarray(a[:, ::-1])).save(img / "c.png")
    faces = [f"r{i},f{i % 3},x,{h},{s},{'abc'[i % 3]}.png" for i, (h, s) in enumerate(
        [(8, 1), (7, 2), (6, 3), (9, 1), (8, 2), (7, 1)])]
    data = write_cue_tables(tmp_path / "c", face_rows=faces, extra_config={
        "face": {"id": ["face"], "text": "text", "image": "image", "image_dir": "img"}})
    face_csv = tmp_path / "c" / "face.csv"
    face_csv.write_text(face_csv.read_text().replace("rater,face,text,happy,sad", "rater,face,text,happy,sad,image"))
    comb = tmp_path / "c" / "combined.csv"
    comb.write_text(comb.read_text() + "r13,f0,s1,10,8,1\nr14,f0,s2,0,4,5\n")
    return data


@pytest.fixture(scope="module")
def analyzer():
    from vlm_salience.models.faces.analyzer import FaceAnalyzer

    return FaceAnalyzer.from_configs(REPO / "configs/models/face_haar.yaml", REPO / "configs/models/face_fer_torch.yaml")


def _labelmap(tmp_path: Path, classes: list[str], mapping: dict) -> Path:
    p = tmp_path / "lm.yaml"
    p.write_text(yaml.safe_dump({"name": "tiny", "model_classes": classes, "emotions": ["happy", "sad"],
                                 "map": mapping, "valence": {"happy": 1, "sad": -1}}))
    return p


FER = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER_MAP = {"angry": {"sad": 1.0}, "disgust": {"sad": 1.0}, "fear": {"sad": 1.0}, "happy": {"happy": 1.0},
           "sad": {"sad": 1.0}, "surprise": "uniform", "neutral": "uniform"}


def test_image_reader_reads_the_astronaut_as_happy_and_carries_model_expressivity(tmp_path, analyzer):
    from vlm_salience.expressivity import raw_scores

    data = _image_corpus(tmp_path)
    human = load_corpus(data)
    cfg = MachineCueConfig(data=data, model={"kind": "image_classifier",
                                             "label_map": _labelmap(tmp_path, FER, FER_MAP)}, pseudo_raters=5)
    cue = machine_corpus(human, cfg, analyzer=analyzer)
    r = cue.reading
    assert r.classes == FER and r.probs.shape == (3, 7)
    assert np.all(r.probs.argmax(axis=1) == FER.index("happy"))
    assert np.all(r.scores[:, 0] > r.scores[:, 1])  # happy over sad after the label map
    x = raw_scores(cue.corpus, "model_not_neutral")
    assert x.shape == (len(human.items),)
    expected = 1.0 - r.probs[:, FER.index("neutral")]
    where = {f: i for i, f in enumerate(r.face_ids)}
    assert np.allclose(x, [expected[where[it.face.id]] for it in human.items])
    with pytest.raises(ValueError, match="no expressivity from a face model"):
        raw_scores(human, "model_js_from_neutral")
    # usable by every salience law: the study normalises it on training items like any estimator
    from vlm_salience.study import MethodConfig, StudyConfig, run_study

    study = StudyConfig(cue_models={"context_model": "ols"}, bootstrap={"n": 10, "weights_n": 0},
                        expressivity={"estimator": "model_js_from_neutral"},
                        methods=[MethodConfig(name="bci", rule="product"),
                                 MethodConfig(name="logistic", rule="product", salience="logistic")])
    res = run_study(cue.corpus, study, progress=False)
    js = raw_scores(cue.corpus, "model_js_from_neutral")
    assert np.allclose(res.expressivity, (js - js.min()) / (js.max() - js.min()))
    assert np.isfinite(res.metrics["logistic"]["r"]["value"])


def test_unknown_class_in_a_label_map_is_a_clear_error(tmp_path, analyzer):
    data = _image_corpus(tmp_path)
    human = load_corpus(data)
    bad = _labelmap(tmp_path, [*FER, "contempt"], {**FER_MAP, "contempt": {"sad": 1.0}})
    cfg = MachineCueConfig(data=data, model={"kind": "image_classifier", "label_map": bad})
    with pytest.raises(ConfigError, match=r"lm\.yaml.*'model_classes'.*contempt"):
        read_images(human, ["f0", "f1", "f2"], cfg.model, analyzer)
    p = tmp_path / "lm.yaml"
    p.write_text(p.read_text().replace("contempt:\n    sad: 1.0", "contempt:\n    joy: 1.0"))
    with pytest.raises(ConfigError, match=r"map\.contempt\.joy.*unknown emotion 'joy'"):
        read_images(human, ["f0", "f1", "f2"], cfg.model, analyzer)


# ---------------------------------------------------------------------------------------------------------------
# The real all-MiniLM-L6-v2 on the real lottery utterances.

@needs_minilm
def test_real_minilm_on_the_affcog_utterances(affcog_config):
    cfg = load_machine_cue_config(REPO / "configs/cues/affcog_minilm.yaml")
    naive_cfg = load_machine_cue_config(REPO / "configs/cues/affcog_minilm_naive.yaml")
    human = load_corpus(affcog_config)
    naive = machine_corpus(human, naive_cfg)
    described = machine_corpus(human, cfg)
    assert len(described.reading.face_ids) == 10 and described.reading.scores.shape == (10, 8)
    a_naive, a = cue_agreement(human, naive), cue_agreement(human, described)
    # zero-shot scores, nothing fitted: the descriptions beat "I feel <emotion>" and the bar (0.39)
    assert a["uncalibrated"]["r_z"] > max(0.39, a_naive["uncalibrated"]["r_z"] + 0.15)
    # the out-of-fold calibration puts the cue on the scale: absolute agreement and KLD improve on the raw map
    raw = machine_corpus(human, cfg.model_copy(update={"calibration": CalibrationConfig(kind="none")}),
                         reading=described.reading)
    a_raw = cue_agreement(human, raw)
    assert a["calibrated"]["r_raw"] > a_raw["calibrated"]["r_raw"] + 0.1
    assert a["calibrated"]["kld"] < a_raw["calibrated"]["kld"] and a["rating_kld"] < a_raw["rating_kld"]
    pooled = machine_corpus(human, cfg.model_copy(update={"calibration": CalibrationConfig(kind="pooled_isotonic")}),
                            reading=described.reading)
    assert cue_agreement(human, pooled)["calibrated"]["r_z"] > 0.39
    m = described.corpus
    assert m.face_only.emotions.shape == (10 * cfg.pseudo_raters, 8) and len(m.items) == len(human.items)

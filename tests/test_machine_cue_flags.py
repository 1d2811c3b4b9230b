"""`vlm-salience bci --cue` honours what it is told (issue 29): --data, --data-set and --drop-invalid act on the
corpus as for a plain study (never silently ignored), and a study YAML holding `data:` and `out:` is accepted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tables import write_cue_tables
from vlm_salience.cli import main
from vlm_salience.study import StudyConfig

FACES = [f"r{i},f{i % 3},{t},{h},{s}" for i, (t, h, s) in enumerate(
    [("yay", 8, 1), ("oh", 3, 6), ("meh", 5, 4), ("yay", 7, 2), ("oh", 2, 7), ("meh", 4, 5)])]
COMBINED = ["r9,f0,s1,10,9,1", "r10,f0,s2,0,5,5", "r11,f1,s1,10,5,4", "r12,f1,s2,0,1,9", "r13,f2,s1,10,6,3",
            "r14,f2,s2,0,3,6"]
STUDY = {"cue_models": {"context_model": "ols"}, "bootstrap": {"n": 10, "weights_n": 0},
         "methods": [{"name": "bci", "rule": "product"}, {"name": "face", "rule": "face"}],
         **({"n_jobs": 1} if "n_jobs" in StudyConfig.model_fields else {})}  # serial: no process start-up


class CharEmbedder:
    """Character n-gram vectors (scikit-learn's HashingVectorizer): a real text reader for what these tests are
    about (the flags reach the corpus), without importing sentence-transformers."""

    def encode(self, texts):
        from sklearn.feature_extraction.text import HashingVectorizer

        X = HashingVectorizer(analyzer="char_wb", ngram_range=(1, 3), n_features=256).transform(list(texts))
        return np.asarray(X.todense(), dtype=np.float32)


@pytest.fixture(autouse=True)
def char_embedder(monkeypatch):
    monkeypatch.setattr("vlm_salience.machine_cues._encoder", lambda *a, **k: CharEmbedder())


def _cue(tmp_path: Path) -> tuple[Path, Path]:
    """A cue YAML (a text reader of each face's utterance) on corpus A; returns (cue YAML, its data YAML)."""
    data = write_cue_tables(tmp_path / "a", face_rows=FACES, combined_rows=COMBINED)
    desc = tmp_path / "desc.txt"
    desc.write_text("happy: I feel happy\nsad: I feel sad\n")
    cue = tmp_path / "cue.yaml"
    cue.write_text(yaml.safe_dump({"data": str(data), "pseudo_raters": 5, "calibration": {"kind": "isotonic"},
                                   "model": {"kind": "text_similarity", "descriptions": str(desc)}}))
    return cue, data


def test_data_flags_with_cue_act_on_the_corpus(tmp_path, capsys):
    """Each flag reaches the corpus: a missing --data, or a --data-set root that does not exist, is the error it
    is for a plain study (before, the cue YAML's own corpus ran without a word)."""
    cue, _ = _cue(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    missing = tmp_path / "nonexistent" / "data.yaml"
    assert main(["bci", str(study), "--cue", str(cue), "--data", str(missing), "--out", str(tmp_path / "r1"),
                 "--quiet"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["bci", str(study), "--cue", str(cue), "--data-set", f"root={tmp_path / 'nowhere'}", "--out",
                 str(tmp_path / "r2"), "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_a_study_yaml_with_data_and_out_runs_with_cue_and_drop_invalid(tmp_path, capsys):
    """The study YAML's `data:` (corpus B, one row off the scale) replaces the cue YAML's corpus and its `out:`
    is the output; the bad row stops the run unless --drop-invalid, which skips it and says so in the report."""
    cue, data_a = _cue(tmp_path)
    b = tmp_path / "b"
    shutil.copytree(data_a.parent, b)
    with open(b / "face.csv", "a") as fh:
        fh.write("r99,f0,yay,12,1\n")  # happy 12 on a 1-9 scale
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({**STUDY, "data": "b/data.yaml", "out": "run"}))
    assert main(["bci", str(study), "--cue", str(cue), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(b / "face.csv") in err and "Extra inputs" not in err
    assert main(["bci", str(study), "--cue", str(cue), "--quiet", "--drop-invalid", "--data-set", "name=tiny_b"]) == 0
    md = (tmp_path / "run" / "side_by_side.md").read_text()
    assert "# Human and machine face cue on tiny_b" in md
    assert "--drop-invalid: skipped 1 row(s)" in md and "in place of the cue YAML's" in md
    assert (tmp_path / "run" / "human" / "metrics.json").is_file()


# -- a constant cue carries no information; a calibrated r below the uncalibrated one is explained -----------------


def test_a_constant_cue_gets_no_r_even_when_its_sd_is_rounding():
    from vlm_salience.machine_cues import agreement, zscore_columns

    H = np.array([[5.0, 2.0], [7.0, 3.0], [2.0, 8.0], [4.0, 4.0], [6.0, 1.0], [3.0, 6.0]])
    M = np.column_stack([np.full(6, 0.1), [0.9, 0.8, 0.1, 0.4, 0.7, 0.2]])  # 0.1 x 6: SD 1.4e-17, not 0
    assert M[:, 0].std() > 0 and np.all(zscore_columns(M)[:, 0] == 0)
    a = agreement(H, M, ["happy", "sad"])
    assert np.isnan(a["r_per_emotion"]["happy"]) and np.isfinite(a["r_per_emotion"]["sad"])
    assert np.isnan(agreement(H, np.full((6, 2), 0.1), ["happy", "sad"])["r_z"])


def test_side_by_side_reports_a_constant_cue_and_a_calibration_that_lowers_r(tmp_path):
    from vlm_salience.data import load_corpus
    from vlm_salience.machine_cues import (
        Reading, agreement, agreement_notes, cue_agreement, load_machine_cue_config, machine_corpus,
        side_by_side_markdown,
    )

    cue_yaml, data = _cue(tmp_path)
    human = load_corpus(data)
    const = machine_corpus(human, load_machine_cue_config(cue_yaml),
                           reading=Reading(["f0", "f1", "f2"], np.full((3, 2), 0.1)))
    agree = cue_agreement(human, const)
    # leave one face out on a constant score: each face gets the other faces' mean, r -1 by construction
    assert all(np.isnan(v) for v in agree["calibrated"]["r_per_emotion"].values())
    assert any("constant cue for happy, sad" in n and "no information" in n for n in agree["notes"])
    md = side_by_side_markdown({"corpus": "tiny", "face_cue": const.notes, "agreement": agree, "methods": {}})
    assert "| r, calibrated out of fold | n/a | n/a |" in md and "- constant cue for happy, sad" in md
    # a calibration that lowers r is named, with the reason
    H = np.array([[5.0], [7.0], [2.0], [4.0], [6.0], [3.0]])
    weak = np.array([[0.5], [0.6], [0.4], [0.3], [0.45], [0.5]])
    cal = np.array([[4.0], [3.5], [6.0], [5.0], [4.0], [5.5]])  # what leave-one-out isotonic maps can give
    out = {"uncalibrated": agreement(H, weak, ["disgust"]), "calibrated": agreement(H, cal, ["disgust"])}
    (note,) = agreement_notes(out, [], 6)
    assert "calibrated r below the uncalibrated r for disgust" in note and "other faces only (6 faces" in note

"""Corpus loaders: real corpora load as documented; bad input fails with file, line and column."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tables import write_cue_tables, write_split_steal
from vlm_salience.data import load_corpus
from vlm_salience.errors import ConfigError, DataError


def test_affcog_loads_cells_faces_and_lottery_outcomes(affcog_config):
    c = load_corpus(affcog_config)
    assert c.response == "ratings" and c.labels[0] == "happy" and len(c.labels) == 8
    assert len(c.items) == 99  # 10 utterances x 10 wheels, one cell never shown
    assert len({it.face.id for it in c.items}) == 10
    assert (len(c.face_only), len(c.context_only), len(c.combined)) == (495, 507, 498)
    item = next(it for it in c.items if it.face.text == "yikes" and it.situation.features["win"] == 80)
    probs = [p for p, _ in item.situation.outcomes]
    assert probs == pytest.approx([0.45, 0.29, 0.26])
    # Derived features are recomputed per possible outcome: PE = win - EV.
    assert item.situation.outcomes[0][1]["PE"] == pytest.approx(15 - 47.85)
    assert "won $80" in item.situation.text
    assert c.valence_weights[c.labels.index("happy")] > 0 > c.valence_weights[c.labels.index("sad")]


def test_golden_balls_joins_players_through_the_episode_key(golden_balls_config):
    c = load_corpus(golden_balls_config)
    assert len(c.items) == 88 and c.combined is None and len(c.labels) == 20
    item = next(it for it in c.items if it.id == "257_2")
    assert item.groups["episode"] == "257"
    outcomes = {it.situation.features["outcome"] for it in c.items}
    assert outcomes == {"CC", "CD", "DC", "DD"}
    # The outcome reads the player's own decision first, and the text says it in words.
    for it in c.items[:20]:
        own = it.situation.features["outcome"][0]
        assert ("chose to split and" in it.situation.text) == (own == "C")
    assert c.categorical_features == ("outcome",)


def test_synthetic_manifest_round_trips_through_the_split_steal_loader(small_synth_corpus):
    c = load_corpus(small_synth_corpus)
    assert c.response == "choice" and c.neutral_label == "neutral"
    assert len(c.items) == 32
    assert all(it.face.media_kind == "image" and it.face.media[0].is_file() for it in c.items)
    assert {it.groups["participant"] for it in c.items} == {f"p{i:03d}" for i in range(8)}
    assert c.combined is not None and len(c.combined) == 32 * 4
    assert np.allclose(c.face_only.emotions.sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: each names the file, the line and the column.

def _error(path, **kw) -> DataError:
    with pytest.raises(DataError) as exc:
        load_corpus(path, **kw)
    return exc.value


def test_missing_file_names_it(tmp_path):
    path = write_cue_tables(tmp_path)
    (tmp_path / "context.csv").unlink()
    err = _error(path)
    assert "context.csv" in str(err) and "not found" in str(err)


def test_missing_column_lists_what_the_file_has(tmp_path):
    path = write_cue_tables(tmp_path, extra_config={"emotions": ["happy", "sad", "fear"]})
    err = _error(path)
    assert err.column == "fear" and "face.csv" in str(err) and "happy" in str(err)


def test_rating_outside_the_scale(tmp_path):
    path = write_cue_tables(tmp_path, face_rows=["r1,f1,yay,8,1", "r2,f1,yay,12,2", "r3,f2,oh,2,7"])
    err = _error(path)
    assert (err.row, err.column) == (3, "happy") and "outside the scale 1-9" in str(err)


def test_nan_rating(tmp_path):
    path = write_cue_tables(tmp_path, context_rows=["r5,s1,10,9,1", "r6,s1,10,NA,2", "r7,s2,0,1,8"])
    err = _error(path)
    assert (err.row, err.column) == (3, "happy") and "context.csv" in str(err) and "NaN" in str(err)


def test_non_number_rating(tmp_path):
    path = write_cue_tables(tmp_path, face_rows=["r1,f1,yay,8,1", "r2,f1,yay,8,lots", "r3,f2,oh,2,7"])
    assert "not a number" in str(_error(path))


def test_empty_condition(tmp_path):
    path = write_cue_tables(tmp_path, combined_rows=["r9,f3,s1,10,9,1"])  # f3 has no face-only judgements
    err = _error(path)
    assert "empty condition" in str(err) and "combined.csv" in str(err)


def test_drop_invalid_skips_and_reports(tmp_path):
    path = write_cue_tables(tmp_path, face_rows=["r1,f1,yay,8,1", "r2,f1,yay,12,2", "r3,f2,oh,2,7",
                                                 "r4,f2,oh,NA,6"])
    c = load_corpus(path, drop_invalid=True)
    assert len(c.face_only) == 2
    assert c.dropped.total == 2
    reasons = " ".join(c.dropped.lines())
    assert "outside the scale" in reasons and "NaN" in reasons and "face.csv" in reasons


def test_unknown_valence_emotion_is_a_config_error(tmp_path):
    path = write_cue_tables(tmp_path, extra_config={"valence": {"from_emotions": {"happy": 1, "glee": -1}}})
    with pytest.raises(ConfigError, match="glee"):
        load_corpus(path)


def test_unknown_config_field_is_named(tmp_path):
    path = write_cue_tables(tmp_path, extra_config={"emotion": ["happy"]})
    with pytest.raises(ConfigError, match="emotion"):
        load_corpus(path)


def test_split_steal_unknown_emotion_name(tmp_path):
    path = write_split_steal(tmp_path, ratings=["t1,face,r1,5,joy", "t1,context,r2,5,joy", "t2,face,r3,3,rage",
                                                "t2,context,r4,3,anger"])
    err = _error(path)
    assert (err.column, err.row) == ("emotion", 4) and "unknown emotion name" in str(err)


def test_split_steal_duplicate_trial_id(tmp_path):
    path = write_split_steal(tmp_path, trials=["t1,p1,1,split,split,100,50,a.png", "t1,p2,1,steal,split,200,200,b.png"])
    err = _error(path)
    assert (err.column, err.row) == ("trial_id", 3) and "duplicate" in str(err)


def test_split_steal_missing_image(tmp_path):
    path = write_split_steal(tmp_path, images=("a.png",))
    err = _error(path)
    assert err.column == "face_image" and err.row == 3 and "missing media file" in str(err)


def test_split_steal_rating_outside_valence_scale_and_drop(tmp_path):
    rows = ["t1,face,r1,5,joy", "t1,context,r2,9,joy", "t1,combined,r3,5,joy", "t2,face,r4,3,anger",
            "t2,context,r5,3,anger", "t2,context,r6,2,anger"]
    path = write_split_steal(tmp_path, ratings=rows)
    err = _error(path)
    assert (err.column, err.row) == ("valence", 3)
    c = load_corpus(path, drop_invalid=True)
    assert c.dropped.total == 1 and len(c.context_only) == 2


def test_split_steal_counts_columns_are_accepted(tmp_path):
    path = write_split_steal(tmp_path)
    (tmp_path / "ratings.csv").write_text(
        "trial_id,condition,rater,valence,joy,anger,neutral\n"
        "t1,face,agg,6,3,1,0\nt1,context,agg,6,4,0,0\nt2,face,agg,2,0,2,2\nt2,context,agg,2,0,4,0\n")
    c = load_corpus(path)
    assert c.face_only.emotions.tolist()[0] == [3, 1, 0]
    (tmp_path / "ratings.csv").write_text(
        "trial_id,condition,rater,valence,joy,anger,neutral,glee\nt1,face,agg,6,3,1,0,1\n")
    assert _error(path).column == "glee"


def test_split_steal_outcome_must_agree_with_decisions(tmp_path):
    path = write_split_steal(tmp_path)
    text = (tmp_path / "trials.csv").read_text().replace("face_image\n", "face_image,outcome\n")
    text = text.replace("a.png\n", "a.png,CC\n").replace("b.png\n", "b.png,CC\n")
    (tmp_path / "trials.csv").write_text(text)
    err = _error(path)
    assert err.column == "outcome" and err.row == 3


def test_non_utf8_file(tmp_path):
    path = write_cue_tables(tmp_path)
    (tmp_path / "face.csv").write_bytes("rater,face,text,happy,sad\nr1,f1,\xe9t\xe9,8,1\n".encode("latin-1"))
    assert "UTF-8" in str(_error(path))

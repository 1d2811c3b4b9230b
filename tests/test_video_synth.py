"""Synthetic clips: seeded, both layouts load, the rigid-cognition law is really planted (ambiguous faces are
pixel-identical across a pair while the scene differs), and the law-off corpus has no polarity-label dependence."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlm_salience.config import load_config
from vlm_salience.data.video import POLARITIES, count_frames, load_video_corpus, read_frames
from vlm_salience.data.video import synth as vs
from vlm_salience.data.video.synth import ClipSynthConfig, plan_clips, render_clip, write_clip_corpus
from vlm_salience.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(clips=21, frames=8, size=48)


def shipped(name: str, **over) -> ClipSynthConfig:
    cfg = load_config(REPO / "configs" / "synth" / f"{name}.yaml", ClipSynthConfig)
    return cfg.model_copy(update=over)


@pytest.fixture(scope="module")
def small_corpus(synthetic_clips) -> Path:
    """The session's small corpus (conftest's writer; test_video_fer_pooling reads the same one)."""
    return synthetic_clips(*(f"{k}={v}" for k, v in SMALL.items()))


def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    joint = pd.crosstab(x, y).to_numpy(dtype=float, copy=True)
    joint /= joint.sum()
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())


def test_shipped_configs_validate_and_differ_only_in_the_law():
    on, off = shipped("clips"), shipped("clips_no_law")
    assert on.law.enabled and not off.law.enabled
    assert on.model_dump(exclude={"name", "law"}) == off.model_dump(exclude={"name", "law"})


def test_both_layouts_load_with_the_same_clips_labels_and_folds(small_corpus):
    root = small_corpus.parent.parent
    generic = load_video_corpus(small_corpus)
    dfew = load_video_corpus(root / "dfew" / "data.yaml")
    manifest = pd.read_csv(root / "manifest.csv", dtype={"clip_id": str})
    assert small_corpus == root / "generic" / "data.yaml"
    assert generic.clip_ids == dfew.clip_ids == list(manifest.clip_id)
    assert generic.labels.tolist() == dfew.labels.tolist() == manifest.label_index.tolist()
    assert np.bincount(generic.labels).tolist() == [3] * 7  # balanced
    for f in range(1, 6):
        assert set(generic.folds[f"set_{f}"]["test"]) == set(dfew.folds[f"set_{f}"]["test"]) \
            == set(manifest.clip_id[manifest.fold == f])
    assert generic.polarity_source == "column" and dfew.polarity_source == "mapping"
    assert [POLARITIES[c.polarity] for c in generic.clips] == manifest.polarity.tolist()
    amb = manifest.clip_id[manifest.ambiguous == 1].tolist()
    assert [c.clip_id for c in generic.clips if c.meta["ambiguous"] == "1"] == amb and amb  # scored apart
    clip = generic.clips[0]
    assert clip.text == manifest.text[0] and clip.face_source.name == f"{clip.clip_id}.mp4"
    assert count_frames(clip.source) == 8 and count_frames(dfew.clips[0].source) == 8
    assert count_frames(dfew.clips[0].face_source) == 8
    # the video and the frame folder hold the same picture (up to compression)
    v = read_frames(clip.source, [5]).astype(int)
    j = read_frames(dfew.clip(clip.clip_id).source, [5]).astype(int)
    assert v.shape == j.shape == (1, 48, 48, 3) and np.abs(v - j).mean() < 8


def test_generation_is_deterministic_under_the_seed(small_corpus, tmp_path):
    root = small_corpus.parent.parent
    again = write_clip_corpus(shipped("clips", **SMALL), tmp_path / "again", progress=False).parent.parent
    for name in ("manifest.csv", "boxes.csv", "dfew/EmoLabel_DataSplit/test(single-labeled)/set_2.csv",
                 "dfew/Clip/clip_48x48/00003/00006.jpg", "generic/clips.csv"):
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    other = plan_clips(shipped("clips", **SMALL, seed=1))
    assert [s.label for s in other] != [s.label for s in plan_clips(shipped("clips", **SMALL))]


def test_the_law_is_planted_ambiguous_faces_identical_across_the_pair():
    cfg = shipped("clips", **SMALL)
    specs = plan_clips(shipped("clips", clips=700))
    amb = [s for s in specs if s.ambiguous]
    pair_clips = [s for s in specs if cfg.classes[s.label] in ("happy", "sad", "surprise", "fear")]
    assert 0.4 < len(amb) / len(pair_clips) < 0.6  # ambiguous_share 0.5 of the pairs' clips
    for s in amb:
        cls = cfg.classes[s.label]
        assert s.expression in ("happy|sad", "surprise|fear") and cls in s.expression.split("|")
        assert POLARITIES[s.polarity] == cfg.class_polarity[cls]  # the scene decides, always
    # the same clip drawn with the other label of its pair: identical face pixels, a different scene
    spec = next(s for s in plan_clips(cfg) if s.pair == ("happy", "sad"))
    other = "sad" if cfg.classes[spec.label] == "happy" else "happy"
    twin = dataclasses.replace(spec, label=cfg.classes.index(other),
                               polarity=POLARITIES.index(cfg.class_polarity[other]))
    a, b = render_clip(spec, cfg), render_clip(twin, cfg)
    assert np.array_equal(a.face_alpha, b.face_alpha) and a.face_alpha.any()
    assert np.array_equal(a.frames[a.face_alpha], b.frames[b.face_alpha])
    scene_gap = np.abs(a.frames[~a.face_alpha].astype(int) - b.frames[~b.face_alpha].astype(int)).mean()
    assert scene_gap > 30
    assert np.array_equal(a.faces, b.faces)  # the written face crops too: masked, they show no scene
    as_cropped = cfg.model_copy(update={"face_crop_background": "scene"})
    assert not np.array_equal(render_clip(spec, as_cropped).faces, render_clip(twin, as_cropped).faces)
    # a clear face is not like that: happy and sad faces differ at the apex
    clear = next(s for s in plan_clips(cfg) if not s.ambiguous and cfg.classes[s.label] == "happy")
    sad = dataclasses.replace(clear, label=cfg.classes.index("sad"), expression="sad")
    fa, fb = render_clip(clear, cfg), render_clip(sad, cfg)
    assert not np.array_equal(fa.frames[-1][fa.face_alpha[-1]], fb.frames[-1][fb.face_alpha[-1]])


def test_scene_polarity_follows_the_label_with_the_law_and_not_without():
    on, off = plan_clips(shipped("clips", clips=1400)), plan_clips(shipped("clips_no_law", clips=1400))
    lab_on, pol_on = np.array([s.label for s in on]), np.array([s.polarity for s in on])
    lab_off, pol_off = np.array([s.label for s in off]), np.array([s.polarity for s in off])
    assert _mutual_information(lab_on, pol_on) > 0.3
    assert _mutual_information(lab_off, pol_off) < 0.02
    table = pd.crosstab(lab_off, pol_off, normalize="index").to_numpy()
    assert np.abs(table - 1 / 3).max() < 0.1  # every class sees every polarity about a third of the time
    # the faces are the same draws in both: only the scenes' polarity changed
    assert [(s.label, s.expression, s.style_seed, s.onset) for s in on] == \
           [(s.label, s.expression, s.style_seed, s.onset) for s in off]
    # law on: clear clips' scenes agree with their class at scene_agreement 0.7, ambiguous ones always
    cfg = shipped("clips")
    agree = np.array([POLARITIES[s.polarity] == cfg.class_polarity[cfg.classes[s.label]] for s in on])
    amb = np.array([s.ambiguous for s in on])
    assert agree[amb].all() and 0.63 < agree[~amb].mean() < 0.77


def test_scenes_carry_their_polarity_in_light():
    cfg = shipped("clips", **SMALL)
    specs = plan_clips(cfg)
    light = {p: [] for p in range(3)}
    for s in specs[:14]:
        for p in range(3):
            r = render_clip(dataclasses.replace(s, polarity=p), cfg)
            light[p].append(r.frames[0][~r.face_alpha[0]].mean())
    assert np.mean(light[0]) + 40 < np.mean(light[1]) < np.mean(light[2])
    flat = shipped("clips", **SMALL, scene_strength=0.0)
    r0 = render_clip(dataclasses.replace(specs[0], polarity=0), flat)
    r2 = render_clip(dataclasses.replace(specs[0], polarity=2), flat)
    assert abs(r0.frames[0].mean() - r2.frames[0].mean()) < 25  # no palette or light left, only objects


def test_manifest_boxes_and_texts(small_corpus):
    root = small_corpus.parent.parent
    m = pd.read_csv(root / "manifest.csv", dtype={"clip_id": str})
    boxes = pd.read_csv(root / "boxes.csv", dtype={"clip_id": str})
    assert len(boxes) == 21 * 8 and set(m.columns) >= {"ambiguous", "pair", "polarity", "distractor", "text"}
    assert ((boxes.x1 > boxes.x0) & (boxes.y1 > boxes.y0) & (boxes.x1 <= 48) & (boxes.y1 <= 48)).all()
    cfg = shipped("clips", **SMALL)
    spec = plan_clips(cfg)[0]
    r = render_clip(spec, cfg)
    ys, xs = np.nonzero(r.face_alpha[3])
    assert r.boxes[3].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    names = re.compile(r"\b(" + "|".join(cfg.classes) + r")\b", re.IGNORECASE)
    assert not any(names.search(t) for t in m.text)  # descriptions never say the label
    amb = m[m.ambiguous == 1]
    assert (amb.pair == amb.expression).all() and amb.text.str.contains("unclear mix").all()
    moving = m[m.distractor != "none"]
    assert len(moving) and moving.text.str.contains("head turns|as if talking").all()


def test_distractor_motion_moves_the_face_or_mouth():
    cfg = shipped("clips", **SMALL, distractor_rate=1.0)
    specs = plan_clips(cfg)
    turn = next(s for s in specs if s.distractor == "head_turn")
    talk = next(s for s in specs if s.distractor == "talking")
    yaws = [vs.face_actions(turn, cfg, t)[1] for t in range(cfg.frames)]
    assert max(yaws) - min(yaws) > 0.3
    mouths = [vs.face_actions(talk, cfg, t)[0][4] for t in range(cfg.frames)]
    still = [vs.face_actions(dataclasses.replace(talk, distractor="none"), cfg, t)[0][4] for t in range(cfg.frames)]
    assert np.std(np.array(mouths) - np.array(still)) > 0.05


def test_configs_refuse_pairs_the_scene_cannot_decide(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("law: {pairs: [[sad, fear]]}\n")
    with pytest.raises(ConfigError, match="both are negative"):
        load_config(p, ClipSynthConfig)
    p.write_text("size: 49\n")
    with pytest.raises(ConfigError, match="even"):
        load_config(p, ClipSynthConfig)
    p.write_text("classes: [happy, sad, awe]\n")
    with pytest.raises(ConfigError, match="awe"):
        load_config(p, ClipSynthConfig)


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = vs.render_clip

    def flaky(spec, cfg):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(spec, cfg)

    monkeypatch.setattr(vs, "render_clip", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_clip_corpus(shipped("clips", **SMALL), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())

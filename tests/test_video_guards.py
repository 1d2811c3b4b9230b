"""Guards of the video half against the bugs that would falsify a published UAR/WAR or its interval while every
other test stays green (issue 29; each test here catches a mutant of benchmarks/mutants/video.yaml):
weights chosen on the test clips, a label leaking into GRACE's text, the evaluation protocol changed, a stale
cache, tracking, bootstrap intervals, splits, UAR/WAR swaps, class order, off-by-one segments.

Fast by design: no training, no video decoding beyond a few tiny PNG frames; stub stores and configs.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from vlm_salience.data.video.records import VideoClip, VideoCorpus

CLASSES = ["sad", "angry", "happy"]  # not alphabetical: a sorted class order would show


# -- splits: the validation split is carved from the training fold, never the test fold --------------------------
def _corpus(n_per_class: int = 12) -> VideoCorpus:
    clips = [VideoClip(f"c{c}_{i:02d}", Path(f"/none/c{c}_{i:02d}.mp4"), c) for c in range(3)
             for i in range(n_per_class)]
    ids = [c.clip_id for c in clips]
    test = ids[::4]
    train = [i for i in ids if i not in test]
    return VideoCorpus(name="guard", classes=CLASSES, clips=clips, folds={"1": {"train": train, "test": test}})


def _make_task(corpus: VideoCorpus, seed: int = 0, fraction: float = 0.25):
    from vlm_salience.video.train import make_task

    cfg = SimpleNamespace(data=SimpleNamespace(validation_fraction=fraction, split_seed=seed, cache="cache"))
    store = SimpleNamespace(cache=SimpleNamespace(ids=lambda: [c.clip_id for c in corpus.clips]))
    return make_task(cfg, lambda cfg, **kw: kw, corpus, "1", store)


def test_validation_split_comes_from_the_training_fold_only_and_is_seeded():
    corpus = _corpus()
    fold = corpus.folds["1"]
    kw = _make_task(corpus)
    train, val = kw["train_ids"], kw["val_ids"]
    assert val and not set(val) & set(fold["test"]), "validation clips drawn from the test fold"
    assert not set(train) & set(val), "validation clips left in the training split"
    assert sorted(train + val) == sorted(fold["train"])
    labels = kw["labels"]
    assert {labels[i] for i in val} == {0, 1, 2}  # per class
    again = _make_task(corpus)
    assert (again["train_ids"], again["val_ids"]) == (train, val)  # the same seed carves the same split (a resume finds it again)
    assert _make_task(corpus, seed=1)["val_ids"] != val


# -- GRACE: a clip without text gets the configured prompt, never its class name ----------------------------------
def test_grace_clip_without_text_gets_the_fallback_prompt_not_its_label(monkeypatch):
    from vlm_salience.grace import task as grace_task
    from vlm_salience.grace.text import TextConfig, load_lexicon

    clips = [VideoClip("a", Path("/none/a.mp4"), 0, text="the mouth corners turn down and the brows rise"),
             VideoClip("b", Path("/none/b.mp4"), 1, text=None),
             VideoClip("c", Path("/none/c.mp4"), 2, text="")]
    corpus = VideoCorpus(name="g", classes=CLASSES, clips=clips, folds={"1": {"train": ["a", "b"], "test": ["c"]}})
    monkeypatch.setattr(grace_task, "_corpus", lambda cfg: corpus)
    cfg = SimpleNamespace(model=SimpleNamespace(text=TextConfig(source="reference", profile=False)))
    store = SimpleNamespace(cache=SimpleNamespace(ids=lambda: ["a", "b", "c"]))
    task = grace_task.GraceTask(cfg, fold="1", classes=CLASSES, labels={"a": 0, "b": 1, "c": 2},
                                train_ids=["a", "b"], val_ids=[], store=store)
    monkeypatch.setattr(task, "tokenizer", lambda: SimpleNamespace(window=64, lengths=lambda t: [len(x) for x in t]))
    texts = task.clip_texts()
    fallback = load_lexicon().prompt_fallback
    assert texts["b"] == fallback and texts["c"] == fallback
    for cid, text in texts.items():
        assert not any(name in text.lower() for name in CLASSES), f"clip {cid}'s text names a class: {text!r}"


# -- evaluation protocol: segment middles; training jitter seeded per (seed, epoch, clip) -------------------------
def _store(n_clips: int = 6, n_seg: int = 4, k: int = 3):
    """Cached clips whose frame rows carry their own row number as pixel value."""
    from vlm_salience.video.task import CachedFrames

    clips = {}
    for c in range(n_clips):
        rows = n_seg * k
        face = np.broadcast_to(np.arange(rows, dtype=np.uint8)[:, None, None, None], (rows, 2, 2, 3)).copy()
        slots = np.arange(rows).reshape(n_seg, k)
        clips[f"v{c}"] = CachedFrames(slots=slots, arrays={"face": face})
    return SimpleNamespace(get=clips.__getitem__, streams=("face",), clips=clips)


def _task(store, n_seg: int = 4, **kw):
    from vlm_salience.video.task import VideoClassifierTask

    cfg = SimpleNamespace(data=SimpleNamespace(n_segments=n_seg), seed=0, **kw)
    ids = sorted(store.clips) if hasattr(store, "clips") else []
    return VideoClassifierTask(cfg, fold="1", classes=CLASSES, labels={i: 0 for i in ids}, train_ids=ids,
                               val_ids=[], store=store)


def test_evaluation_batches_read_segment_middles_and_training_jitters_per_epoch():
    store = _store()
    task = _task(store)
    ids = sorted(store.clips)
    evaluated = task.frames(ids, None)["face"][..., 0, 0, 0].numpy()
    assert (evaluated == np.array([0, 3, 6, 9])).all()  # column 0 of the slots: each segment's middle frame
    e0, e0_again, e1 = (task.frames(ids, e)["face"][..., 0, 0, 0].numpy() for e in (0, 0, 1))
    assert (e0 == e0_again).all()  # seeded: a resumed run draws the same frames
    assert ((e0 // 3) == np.arange(4)).all()  # one candidate of each segment
    assert (e0 != e1).any(), "every epoch trains on the same frames"


def test_fewer_segments_read_the_middle_of_their_span():
    from vlm_salience.video.cache import sample
    from vlm_salience.video.task import CachedFrames

    clip = CachedFrames(slots=np.arange(8).reshape(8, 1), arrays={})
    assert sample(clip, 4, train=False).tolist() == [1, 3, 5, 7]  # floor((j + .5) * 8 / 4)
    assert sample(clip, 2, train=False).tolist() == [2, 6]
    assert sample(clip, 16, train=False).tolist() == [j // 2 for j in range(16)]


# -- the cache key: every setting that changes the cached frames changes it ---------------------------------------
def test_every_frame_setting_changes_the_cache_key():
    from vlm_salience.models.faces.detector import HaarDetectorConfig
    from vlm_salience.video import prepare as prep
    from vlm_salience.video.cache import config_hash
    from vlm_salience.video.streams import DetectionConfig, StreamConfig

    base = {"n_segments": 8, "candidates_per_segment": 2}
    changes = {
        "n_segments": 9, "candidates_per_segment": 3, "frame_codec": "jpeg",
        "streams.face_size": 64, "streams.scene_size": 64, "streams.face_pad": 0.4, "streams.mask_fill": "black",
        "streams.mask_pad": 0.3, "streams.smoothing": "ema", "streams.smoothing_window": 7,
        "streams.smoothing_alpha": 0.3, "streams.use_face_source": False,
        "streams.detection.max_side": 320, "streams.detection.scale_factor": 1.2,
        "streams.detection.min_neighbors": 4, "streams.detection.detect_on": "all",
        "streams.detection.min_score_share": 0.2, "streams.detection.target": "largest",
    }
    fields = {*prep.PrepareConfig.model_fields} - {"compress", "streams", "jpeg_quality"}
    fields |= {f"streams.{f}" for f in StreamConfig.model_fields} - {"streams.detection"}
    # max_gap acts only with a target identity: checked below, with one
    fields |= {f"streams.detection.{f}" for f in DetectionConfig.model_fields} - {"streams.detection.detector",
                                                                                 "streams.detection.max_gap"}
    assert fields == set(changes), "a new prepare setting: say here how it changes the cache key"

    def nested(dotted: str, value) -> dict:
        out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
        cur = out
        *head, last = dotted.split(".")
        for part in head:
            cur = cur.setdefault(part, {})
        cur[last] = value
        return out

    ref = config_hash(prep.hashed_settings(prep.PrepareConfig.model_validate(base)))
    for dotted, value in changes.items():
        cfg = prep.PrepareConfig.model_validate(nested(dotted, value))
        assert config_hash(prep.hashed_settings(cfg)) != ref, f"{dotted} is not part of the cache key"

    # the JPEG quality changes the frames of a JPEG cache only (raw frames keep their key)
    def key(**kw) -> str:
        return config_hash(prep.hashed_settings(prep.PrepareConfig.model_validate({**base, **kw})))

    target = {"detection": {"target": "largest"}}
    assert key(streams=target) != key(streams={"detection": {"target": "largest", "max_gap": 3}})
    assert key(frame_codec="jpeg", jpeg_quality=70) != key(frame_codec="jpeg", jpeg_quality=95)
    assert key(frame_codec="raw", jpeg_quality=70) == key(frame_codec="raw", jpeg_quality=95)

    # the detector's own settings (from its YAML) are part of the key too, except its name and file
    det = HaarDetectorConfig()
    cfg = prep.PrepareConfig.model_validate(base)
    ref = config_hash(prep.hashed_settings(cfg, SimpleNamespace(detector_config=det)))
    det_changes = {"scale_factor": 1.3, "min_neighbors": 2, "min_size": 30, "min_face_frac": 0.1,
                   "upscale_below": 100, "max_side": 512}
    assert set(HaarDetectorConfig.model_fields) - {"kind", "name", "cascade"} == set(det_changes)
    for name, value in det_changes.items():
        other = SimpleNamespace(detector_config=det.model_copy(update={name: value}))
        assert config_hash(prep.hashed_settings(cfg, other)) != ref, f"detector {name} is not in the cache key"


# -- tracking: boxes between detections are interpolated in time (frame numbers), not by row ---------------------
def test_boxes_between_detections_follow_frame_time():
    from vlm_salience.video.streams import StreamConfig, find_track

    class Finder:
        def largest(self, frames):
            return [np.array([0, 10, 20, 20], np.float32), np.array([30, 10, 20, 20], np.float32)][:len(frames)]

    frames = np.zeros((4, 80, 80, 3), np.uint8)
    tr = find_track(frames, Finder(), StreamConfig(smoothing="none"), frame_index=np.array([0, 1, 2, 30]),
                    detect_rows=np.array([0, 3]))
    np.testing.assert_allclose(tr.boxes[:, 0], [0, 1, 2, 30], atol=1e-4)
    assert tr.detected.tolist() == [True, False, False, True] and tr.missed == 0


def test_frames_before_the_first_detection_reuse_the_first_box():
    from vlm_salience.video.tracking import fill_gaps

    box = np.array([5, 6, 7, 8], np.float32)
    tr = fill_gaps([None, None, box, None], 100, 200)
    np.testing.assert_array_equal(tr.boxes, np.tile(box, (4, 1)))
    assert tr.missed == 3 and tr.detected.tolist() == [False, False, True, False]


# -- face source frames are matched to the full clip's frames by time --------------------------------------------
def test_face_source_with_fewer_frames_is_matched_by_time(tmp_path):
    from PIL import Image

    from vlm_salience.video.prepare import PrepareConfig, prepare_clip

    def folder(name: str, n: int, offset: int) -> Path:
        d = tmp_path / name
        d.mkdir()
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), offset + 10 * i, np.uint8)).save(d / f"{i:03d}.png")
        return d

    clip = VideoClip("x", folder("full", 20, 0), 0, face_source=folder("face", 10, 5))
    cfg = PrepareConfig.model_validate({"n_segments": 4, "candidates_per_segment": 1,
                                        "streams": {"face_size": 16, "scene_size": 16}})
    finder = SimpleNamespace(largest=lambda frames: [None] * len(frames))
    prepared = prepare_clip(clip, cfg, finder)
    assert prepared.frame_index.tolist() == [2, 7, 12, 17]  # segment middles of 20 frames
    # face frame = round(i * 9 / 19): 1, 3, 6, 8 -> pixel 5 + 10 * that
    assert prepared.face[:, 8, 8, 0].tolist() == [15, 35, 65, 85]


# -- intervals and fold summaries ---------------------------------------------------------------------------------
def test_value_ci_is_the_2_5_and_97_5_percentile():
    from vlm_salience.metrics import value_ci

    row = np.concatenate([[0.5], np.arange(1, 1001, dtype=float)])
    ci = value_ci(row)
    assert ci["value"] == 0.5
    assert ci["ci95"] == pytest.approx([25.975, 975.025])


def test_classification_interval_resamples_whole_groups():
    from vlm_salience.metrics import score_classification

    y = np.zeros(100, int)
    yhat = np.r_[np.zeros(50, int), np.ones(50, int)]  # group A all right, group B all wrong
    groups = np.r_[np.zeros(50, int), np.ones(50, int)]
    by_group = score_classification(y, yhat, n_classes=2, n_boot=400, seed=0, groups=groups)
    by_clip = score_classification(y, yhat, n_classes=2, n_boot=400, seed=0)
    assert by_group["war"]["value"] == by_clip["war"]["value"] == 0.5
    assert by_group["war"]["ci95"] == [0.0, 1.0]  # two groups: each resample holds AA, AB or BB
    lo, hi = by_clip["war"]["ci95"]
    assert 0.35 < lo < 0.5 < hi < 0.65


def test_fold_summary_sd_is_the_sample_sd():
    from vlm_salience.metrics import fold_summary

    s = fold_summary([{"uar": 0.5, "war": 0.6}, {"uar": 0.7, "war": 0.6}, {"uar": 0.6, "war": 0.9}])
    assert s["uar"]["mean"] == pytest.approx(0.6) and s["uar"]["sd"] == pytest.approx(0.1)
    assert s["war"]["sd"] == pytest.approx(np.std([0.6, 0.6, 0.9], ddof=1))


# -- validation choice: on UAR, keeping the best ------------------------------------------------------------------
def test_validation_choice_is_on_uar_and_keeps_the_best():
    import torch

    from vlm_salience.video.task import ClipPredictions

    store = _store(n_clips=0)
    task = _task(store, report=SimpleNamespace(select="best_validation"))
    task.val_ids = [f"v{i}" for i in range(10)]
    labels = np.array([0] * 8 + [1] * 2)
    rounds = [np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]),  # UAR .75, WAR .6
              np.array([0] * 10),  # UAR .5, WAR .8 (the majority class)
              np.array([0] * 7 + [1] * 3)]  # UAR (7/8 + 1) / 2 = .9375, WAR .9
    model = torch.nn.Linear(1, 1)
    got = []
    for k, pred in enumerate(rounds):
        probs = np.eye(2)[pred]
        task.predict = lambda m, ids, p=probs: ClipPredictions(list(ids), labels, p, np.zeros((10, 1)))
        with torch.no_grad():
            model.weight.fill_(float(k))
        got.append(task.evaluate(model))
        if k == 1:
            assert task.best["evaluation"] == 1, "the fold kept a worse evaluation's weights"
    assert [g["eval/uar"] for g in got] == pytest.approx([0.75, 0.5, 0.9375])
    assert [g["eval/war"] for g in got] == pytest.approx([0.6, 0.8, 0.9])
    assert task.best["evaluation"] == 3 and task.best["uar"] == pytest.approx(0.9375)
    state, selection = task.selected_state(model)
    assert float(state["weight"]) == 2.0 and selection["validation_uar"] == pytest.approx(0.9375)


def test_fingerprint_changes_with_segments_and_split():
    class Model:
        def model_dump(self, **kw):
            return {"kind": "stub"}

    def fp(n_seg: int, val: list[str]) -> dict:
        cache = SimpleNamespace(manifest={"config_hash": "h"})
        task = _task(SimpleNamespace(cache=cache, streams=("face",)), n_seg=n_seg, model=Model())
        task.train_ids, task.val_ids = ["a", "b", "c"], val
        return task.fingerprint()

    ref = fp(16, ["d"])
    assert fp(16, ["d"]) == ref
    assert fp(8, ["d"])["data"] != ref["data"], "a resume with another n_segments would be accepted"
    assert fp(16, ["c"])["training split"] != ref["training split"]


# -- report: labels are read in the corpus's class order ----------------------------------------------------------
def test_report_scores_use_the_corpus_class_order():
    from vlm_salience.video.report import scores_from_predictions

    labels = ["sad", "angry", "happy", "happy", "sad", "angry"]
    probs = np.eye(3)[[CLASSES.index(c) for c in labels]]
    df = pd.DataFrame({"fold": "1", "clip_id": [f"c{i}" for i in range(6)], "label": labels,
                       "ambiguous": False, **{f"p_{c}": probs[:, k] for k, c in enumerate(CLASSES)}})
    s = scores_from_predictions(df, CLASSES, n_boot=20, seed=0)
    assert s["pooled"]["uar"]["value"] == 1.0 and s["pooled"]["war"]["value"] == 1.0
    assert s["pooled"]["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]


# -- machine cues: the rater spread a face's pseudo-ratings get comes from the other faces only ------------------
def test_cross_fit_spread_uses_the_other_faces_only():
    from vlm_salience.machine_cues import cross_fit_spread

    sds = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    out = cross_fit_spread(sds, [np.array([0]), np.array([1]), np.array([2])])
    np.testing.assert_allclose(out, [[2.5, 25.0], [2.0, 20.0], [1.5, 15.0]])


# -- the test folds are scored on their test clips; a resume skips only folds trained with this config ------------
def test_evaluation_predicts_each_folds_test_clips(monkeypatch):
    from vlm_salience.video import report as video_report
    from vlm_salience.video.train import evaluate_run

    corpus = _corpus(n_per_class=4)
    seen = {}

    class Task:
        def __init__(self, cfg, **kw):
            pass

        def load_trained(self, device):
            return "model"

        def predict(self, model, ids, device=None):
            return list(ids)

    monkeypatch.setattr(video_report, "write_video_report",
                        lambda cfg, corpus, per_fold, **kw: seen.update(per_fold) or {"ok": True})
    cfg = SimpleNamespace(data=SimpleNamespace(validation_fraction=0.25, split_seed=0, cache="cache"))
    cached = [c.clip_id for c in corpus.clips][1:]  # one test clip missing from the cache
    store = SimpleNamespace(cache=SimpleNamespace(ids=lambda: cached))
    assert evaluate_run(cfg, Task, corpus, ["1"], store, progress=False) == {"ok": True}
    assert seen["1"]["test"] == [i for i in corpus.folds["1"]["test"] if i in cached]
    assert seen["1"]["missing_from_cache"] == 1


def test_resume_skips_a_fold_only_when_trained_with_this_config(tmp_path):
    import json

    from vlm_salience.video.train import _fold_done

    (tmp_path / "task.json").write_text(json.dumps({"fingerprint": {"data": "a", "model config": "m"},
                                                    "optim": {"lr": 0.001}}))

    def task(fp):
        return SimpleNamespace(model_dir=lambda: tmp_path, fingerprint=lambda: fp, fold="1",
                               cfg=SimpleNamespace(optim=SimpleNamespace(model_dump=lambda mode: {"lr": 0.001})))

    assert _fold_done(task({"data": "a", "model config": "m"}))
    assert not _fold_done(task({"data": "b", "model config": "m"}))
    assert not _fold_done(task({"data": "a", "model config": "other"}))

"""Clip frames for prompts read from the `video prepare` frame cache, and the answer-cache key of a clip prompt.
Tiny random models only: the tests check which frames reach a prompt and what keys an answer, never accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec():
    from vlm_salience.data.corpus import RatingScale
    from vlm_salience.prompting.answers import AnswerSpec

    return AnswerSpec("choice", ("joy", "anger"), RatingScale(1, 9), None)


def _item(tmp_path):
    from vlm_salience.data.corpus import Face, Item, Situation

    return Item(id="a", face=Face(id="a", media=(tmp_path / "unused.mp4",), media_kind="video"),
                situation=Situation(id="a", features={}, text=""))


def test_cached_frames_are_the_video_models_rows(prepared_law_clips):
    """Frames read from the cache are the rows the video models' cache sampler picks (`video.cache.sample`):
    segment middles in evaluation, in time order, of the face crops or the masked scene; the seeded training
    draw reads the same rows as `sample` with the same generator; a clip from another source is refused."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.errors import DataError
    from vlm_salience.prompting.clips import CachedFrames, ClipSettings
    from vlm_salience.video.cache import ClipCache, sample

    cache, corpus = ClipCache(prepared_law_clips["cache"]), load_video_corpus(prepared_law_clips["data"])
    reader = CachedFrames(prepared_law_clips["cache"])
    for cid in cache.ids()[:3]:
        full = cache.load(cid)
        for stream in ("face", "scene"):
            got = reader.frames(cid, ClipSettings(frames=4, stream=stream), source=corpus.clip(cid).source)
            rows = sample(full, 4, train=False)
            assert rows.tolist() == full.middle_rows().tolist() and (np.diff(full.frame_index[rows]) > 0).all()
            assert [np.asarray(g).tolist() for g in got] == [getattr(full, stream)[r].tolist() for r in rows]
        got = reader.frames(cid, ClipSettings(frames=4), train=True, rng=np.random.default_rng(5))
        rows = sample(full, 4, train=True, rng=np.random.default_rng(5))
        assert [np.asarray(g).tolist() for g in got] == [full.face[r].tolist() for r in rows]
    other = corpus.clips[1].source
    with pytest.raises(DataError, match="prepared from .* not from this corpus"):
        reader.frames(corpus.clips[0].clip_id, ClipSettings(frames=4), source=other)


def test_video_prompt_run_reads_the_frame_cache(tmp_path, prepared_law_clips, tiny_vlms, monkeypatch):
    """`prompt run` with `frame_cache` decodes no video: every prompt's frames are the cached evaluation rows;
    a clip whose cached file is gone is a per-clip error counted in the notes, and the run goes on."""
    from vlm_salience.data.video import frames as video_frames
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.video_experiment import VideoPromptConfig, run_video_prompting
    from vlm_salience.video.cache import ClipCache, sample

    cache = Path(shutil.copytree(prepared_law_clips["cache"], tmp_path / "cache"))
    corpus = load_video_corpus(prepared_law_clips["data"])
    fold = sorted(corpus.folds)[0]
    test_ids = corpus.folds[fold]["test"][:3]
    gone = ClipCache(cache).entry(test_ids[2])["file"]
    (cache / gone).unlink()

    def no_decoding(*a, **k):
        raise AssertionError("a clip was decoded although the frame cache was given")
    monkeypatch.setattr(video_frames, "read_frames", no_decoding)
    seen = []
    real = HFBackend.score

    def spy(self, prompts, *a, **k):
        seen.extend(prompts)
        return real(self, prompts, *a, **k)
    monkeypatch.setattr(HFBackend, "score", spy)
    cfg = VideoPromptConfig.model_validate({
        "name": "t", "data": str(prepared_law_clips["data"]), "folds": [fold], "max_test_clips": 3,
        "models": [{"backend": "hf", "name": "tiny", "path": str(tiny_vlms["qwen2_vl"]), "batch_size": 4}],
        "clip": {"frames": 4, "mode": "images"}, "frame_cache": str(cache), "out": str(tmp_path / "out"),
        "report": {"n_boot": 20}})
    doc = run_video_prompting(cfg, progress=False)
    run = doc["runs"]["tiny__zero_shot"]
    assert run["n"] == 2 and any("1 clip(s) failed" in n and "no cached frames" in n for n in run["notes"])
    assert any("read from the frame cache" in n for n in run["notes"])
    full = ClipCache(cache).load(test_ids[0])
    want = [full.face[r].tolist() for r in sample(full, 4, train=False)]
    assert [np.asarray(i).tolist() for i in seen[0].images] == want
    metrics = json.loads((tmp_path / "out" / "tiny__zero_shot" / "metrics.json").read_text())
    assert metrics["corpus"]["n_test_clips"] == 2


def test_answer_key_includes_frame_content_and_sampling_settings(tmp_path):
    """The answer-cache key of a clip prompt changes with every frame's content and with every sampling setting,
    even where the frames themselves come out the same (a still clip sampled at 4 or 8 segments, given as the
    same frames): a key that ignored the frame count, the stream or the training seed would serve one setting's
    answers to another. Same frames and settings: the same key."""
    from PIL import Image

    from vlm_salience.prompting.cache import prompt_answer_key
    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template

    tpl, spec, item = load_template("face_only"), _spec(), _item(tmp_path)
    frames = [Image.fromarray(np.full((28, 28, 3), 40 + 10 * i, np.uint8)) for i in range(4)]

    def key(settings, fr=frames, train=False):
        p = build_prompt(tpl, item, spec, clip=settings, clip_mode="video", frames=fr, train=train)
        return prompt_answer_key("model", tpl.digest, p, "score", slots=spec.slots())

    base = key(ClipSettings(frames=4))
    assert key(ClipSettings(frames=4)) == base
    assert key(ClipSettings(frames=8)) != base  # the frame count (same frames given)
    assert key(ClipSettings(frames=4, stream="scene")) != base
    assert key(ClipSettings(frames=4, max_pixels=3136)) != base
    assert key(ClipSettings(frames=4), train=True) != base
    assert key(ClipSettings(frames=4, seed=1), train=True) != key(ClipSettings(frames=4, seed=0), train=True)
    changed = list(frames)
    px = np.asarray(frames[2]).copy()
    px[5, 5, 0] += 1
    changed[2] = Image.fromarray(px)
    assert key(ClipSettings(frames=4), fr=changed) != base  # one pixel of one frame
    assert key(ClipSettings(frames=4), fr=frames[::-1]) != base  # the frame order

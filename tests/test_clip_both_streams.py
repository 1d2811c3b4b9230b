"""`clip.stream: both`: a clip shown to a VLM as its face crops and its masked scene of the same sampled moments,
read from the `video prepare` frame cache (the only place the masked scene exists). Images mode: N face frames,
then N scene frames; native video mode (Qwen2-VL): two video inputs, face clip then scene clip. Tiny random
models only: the tests check which frames reach the model, never accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 4  # frames per stream (the law clips' cache has 4 segments x 2 candidates)


def _rows_of(full, rows, stream):
    return [getattr(full, stream)[r].tolist() for r in rows]


def _pixels(frames):
    return [np.asarray(f).tolist() for f in frames]


def _item(cid, tmp_path):
    from vlm_salience.data.corpus import Face, Item, Situation

    return Item(id=cid, face=Face(id=cid, media=(tmp_path / "unused.mp4",), media_kind="video"),
                situation=Situation(id=cid, features={}, text=""))


def _spec(corpus):
    from vlm_salience.prompting.answers import AnswerSpec

    return AnswerSpec("choice", tuple(corpus.classes), None, None)


def test_both_is_the_face_then_the_scene_of_the_same_cached_rows(prepared_law_clips, tmp_path):
    """The frame cache gives N face rows, then the scene rows of the very same moments (evaluation: segment
    middles; training: one seeded draw for both streams); a prompt in images mode holds those 2N frames, face
    first, pixel for pixel, and in video mode the face clip then the scene clip."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.clips import CachedFrames, ClipSettings
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.video.cache import ClipCache, sample

    cache, corpus = ClipCache(prepared_law_clips["cache"]), load_video_corpus(prepared_law_clips["data"])
    reader = CachedFrames(prepared_law_clips["cache"])
    both = ClipSettings(frames=N, stream="both")
    tpl, spec = load_template("clip_emotion"), _spec(corpus)
    for cid in cache.ids()[:3]:
        full = cache.load(cid)
        assert full.face.tolist() != full.scene.tolist()  # the streams differ: a stream given twice is visible
        source = corpus.clip(cid).source
        rows = sample(full, N, train=False)
        got = reader.frames(cid, both, source=source)
        assert _pixels(got) == _rows_of(full, rows, "face") + _rows_of(full, rows, "scene")
        # training: one draw serves both streams (a second draw for the scene would pick other moments)
        for seed in (5, 6, 7):
            rows_t = sample(full, N, train=True, rng=np.random.default_rng(seed))
            got_t = reader.frames(cid, both, source=source, train=True, rng=np.random.default_rng(seed))
            assert _pixels(got_t) == _rows_of(full, rows_t, "face") + _rows_of(full, rows_t, "scene")

        p = build_prompt(tpl, _item(cid, tmp_path), spec, clip=both, clip_mode="images", frames=got)
        parts = [q["type"] for m in p.messages for q in m["content"]]
        assert parts.count("image") == 2 * N and not p.videos
        assert _pixels(p.images) == _rows_of(full, rows, "face") + _rows_of(full, rows, "scene")
        assert f"{N} frames of the person's face" in p.text and "face masked" in p.text

        v = build_prompt(tpl, _item(cid, tmp_path), spec, clip=both, clip_mode="video", frames=got)
        assert [q["type"] for m in v.messages for q in m["content"]].count("video") == 2 and not v.images
        assert [_pixels(c) for c in v.videos] == [_rows_of(full, rows, "face"), _rows_of(full, rows, "scene")]


def test_both_as_two_native_videos_in_one_prompt(prepared_law_clips, tiny_vlms):
    """Qwen2-VL takes several videos per prompt: a both-stream prompt gives two video inputs (face clip, scene
    clip) whose logits differ from the face-only prompt's, from the face clip given twice in the same prompt (the
    second video is read) and from the streams swapped (their order matters)."""
    import torch

    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.prompting.clips import CachedFrames, ClipSettings, encode_prompts
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template

    q = load_vlm(ModelConfig(name="q", path=str(tiny_vlms["qwen2_vl"])))
    corpus = load_video_corpus(prepared_law_clips["data"])
    cid = corpus.clips[0].clip_id
    reader = CachedFrames(prepared_law_clips["cache"])
    tpl, spec = load_template("clip_emotion"), _spec(corpus)

    def logits(settings, swap=False, twice=False):
        frames = reader.frames(cid, settings, source=corpus.clip(cid).source)
        p = build_prompt(tpl, _item(cid, Path(".")), spec, clip=settings, clip_mode="video", frames=frames)
        videos = p.videos[::-1] if swap else [p.videos[0]] * 2 if twice else p.videos
        text = q.processor.apply_chat_template(p.messages, add_generation_prompt=True)
        enc = encode_prompts(q.processor, "qwen2_vl", [text], [[]], [videos], settings)
        with torch.no_grad():
            return enc, q.model(**enc).logits[0, -1]

    enc, both = logits(ClipSettings(frames=N, stream="both"))
    assert enc["video_grid_thw"].shape[0] == 2  # two video inputs
    _, swapped = logits(ClipSettings(frames=N, stream="both"), swap=True)
    _, face = logits(ClipSettings(frames=N, stream="face"))
    _, face_twice = logits(ClipSettings(frames=N, stream="both"), twice=True)  # same text: the scene clip counts
    assert not torch.allclose(both, face_twice, atol=1e-5)
    assert not torch.allclose(both, swapped, atol=1e-5)
    assert not torch.allclose(both, face, atol=1e-5)


def test_both_has_its_own_answer_cache_key(tmp_path):
    """The clip settings' key (part of every clip prompt's answer key) names the stream: both differs from face
    and scene; so does the answer key of a prompt given the same frames."""
    from PIL import Image

    from vlm_salience.data.corpus import RatingScale
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.cache import prompt_answer_key
    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template

    keys = {s: ClipSettings(frames=N, stream=s).key(train=False) for s in ("face", "scene", "both")}
    assert len(set(keys.values())) == 3
    tpl = load_template("face_only")  # wording that ignores the stream: the key alone must tell them apart
    spec = AnswerSpec("choice", ("joy", "anger"), RatingScale(1, 9), None)
    frames = [Image.fromarray(np.full((28, 28, 3), 40 + 10 * i, np.uint8)) for i in range(2 * N)]
    item = _item("a", tmp_path)
    k = {s: prompt_answer_key("m", tpl.digest, build_prompt(
        tpl, item, spec, clip=ClipSettings(frames=n, stream=s), clip_mode="images", frames=frames), "score",
        slots=spec.slots()) for s, n in (("face", 2 * N), ("both", N))}
    assert k["face"] != k["both"]


def test_both_without_a_frame_cache_is_a_clear_config_error(tmp_path, prepared_law_clips):
    """Only `video prepare` makes the masked scene: `both` without a frame cache is a ConfigError naming
    frame_cache and `video prepare`, at config load (video prompting, clip training, Split-Steal prompting and
    training) and where a clip would be decoded; data export refuses it (no video file holds the masked
    scene). It never falls back to one stream."""
    from vlm_salience.config import load_config
    from vlm_salience.errors import ConfigError
    from vlm_salience.prompting.clips import ClipSettings, sample_frames
    from vlm_salience.prompting.experiment import ExperimentConfig
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.prompting.video_experiment import VideoPromptConfig
    from vlm_salience.training.clip_training import ClipTrainConfig
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.export_data import export_video_corpus

    msg = r"frame_cache.*video prepare"
    shipped = [(REPO / "configs/experiment/prompt_video_synthetic.yaml", VideoPromptConfig, "clip", "frame_cache"),
               (REPO / "configs/train/clips_synthetic.yaml", ClipTrainConfig, "data.clip", "data.frame_cache")]
    for path, model, clip, cache in shipped:
        assert load_config(path, model, [f"{clip}.stream=both", f"{cache}={tmp_path}"]).model_dump()  # accepted
        with pytest.raises(ConfigError, match=msg):
            load_config(path, model, [f"{clip}.stream=both", f"{cache}=null"])
    for path, model, clip in [(REPO / "configs/experiment/prompt_synthetic.yaml", ExperimentConfig, "clip"),
                              (REPO / "configs/train/experts_synthetic.yaml", TrainConfig, "data.clip")]:
        with pytest.raises(ConfigError, match=r"Split-Steal.*" + msg):  # image corpora have no frame cache
            load_config(path, model, [f"{clip}.stream=both"])
    # where a clip would be decoded (no frames given): an error, not the face stream
    from vlm_salience.data.corpus import Face, Item, Situation
    from vlm_salience.data.video import load_video_corpus

    data = prepared_law_clips["data"]
    corpus = load_video_corpus(data)
    clip = Path(corpus.clips[0].source)
    with pytest.raises(ConfigError, match=msg):
        sample_frames(clip, ClipSettings(frames=N, stream="both"))
    item = Item(id="c", face=Face(id="c", media=(clip,), media_kind="video"), situation=Situation(id="c", features={},
                                                                                                  text=""))
    with pytest.raises(ConfigError, match=msg):
        build_prompt(load_template("clip_emotion"), item, _spec(corpus), clip=ClipSettings(frames=N, stream="both"))
    with pytest.raises(ConfigError, match=r"both is not exported.*video prepare"):
        export_video_corpus(data, tmp_path / "export", stream="both")
    assert not (tmp_path / "export").exists()


def test_prompt_run_with_both_streams_reads_both_from_the_cache(scored_prompts, tmp_path, prepared_law_clips, tiny_vlms,
                                                                monkeypatch):
    """`prompt run` on a video data YAML with `clip.stream: both` and a frame cache: each prompt holds 2N images,
    the clip's N face rows then its N scene rows at the segment middles; the report says both streams."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.video_experiment import VideoPromptConfig, run_video_prompting
    from vlm_salience.video.cache import ClipCache, sample

    corpus = load_video_corpus(prepared_law_clips["data"])
    fold = sorted(corpus.folds)[0]
    seen = scored_prompts
    cfg = VideoPromptConfig.model_validate({
        "name": "t", "data": str(prepared_law_clips["data"]), "folds": [fold], "max_test_clips": 2,
        "models": [{"backend": "hf", "name": "tiny", "path": str(tiny_vlms["qwen2_vl"]), "batch_size": 2}],
        "clip": {"frames": N, "mode": "images", "stream": "both"}, "frame_cache": str(prepared_law_clips["cache"]),
        "out": str(tmp_path / "out"), "report": {"n_boot": 10}})
    run = run_video_prompting(cfg, progress=False)["runs"]["tiny__zero_shot"]
    assert run["n"] == 2 and len(seen) == 2
    cache = ClipCache(prepared_law_clips["cache"])
    for p in seen:
        full = cache.load(p.item_id)
        rows = sample(full, N, train=False)
        assert _pixels(p.images) == _rows_of(full, rows, "face") + _rows_of(full, rows, "scene")
    assert any("the face frames, then the scene frames" in n and "face and masked scene" in n for n in run["notes"])


def test_train_on_both_streams_feeds_two_videos_of_the_same_draw(tmp_path, law_clips, tiny_vlms):
    """`train` on clips with `clip.stream: both` (native video): the collator's inputs are two videos, the face
    rows then the scene rows of one training draw for (seed, epoch, clip); the instruction rows place two video
    parts; the command runs through to the test fold's run folder, whose notes say both streams."""
    import torch
    from PIL import Image

    from vlm_salience.config import load_config
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.clips import qwen2_vl_video_inputs, training_rng
    from vlm_salience.training.clip_training import ClipTrainConfig, ClipTrainingData, ClipVLMTask, fold_config
    from vlm_salience.video.cache import ClipCache, sample

    fold = sorted(load_video_corpus(law_clips["data"]).folds)[0]
    raw = {"name": "clip_lora", "model": {"name": "tiny", "path": str(tiny_vlms["qwen2_vl"])},
           "data": {"config": str(law_clips["data"]), "frame_cache": str(law_clips["cache"]), "folds": [fold],
                    "clip": {"frames": N, "mode": "video", "stream": "both"}},
           "adapters": [{"name": "clips"}], "lora": {"r": 4, "alpha": 8},
           "optim": {"lr": 1e-3, "max_steps": 1, "batch_size": 2}, "checkpoint": {"every_steps": None},
           "eval": {"max_items": 2}, "report": {"n_boot": 10},
           "tracker": "none", "out": str(tmp_path / "out")}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path, ClipTrainConfig)
    data = ClipTrainingData(cfg, fold)
    task = ClipVLMTask(fold_config(cfg, fold), cfg.adapters[0], data)

    from conftest import OneProcess

    task.setup(OneProcess())
    ex = task.examples[0]
    assert [p["type"] for m in json.loads(ex["messages"]) for p in m["content"]].count("video") == 2
    cid = ex["item_id"]
    full = ClipCache(law_clips["cache"]).load(cid)
    ip = task.loaded.processor.image_processor
    for epoch in range(2):
        rows = sample(full, N, train=True, rng=training_rng(cfg.data.clip, epoch, cid))
        face = [Image.fromarray(full.face[r]) for r in rows]
        scene = [Image.fromarray(full.scene[r]) for r in rows]
        enc = task.collator.encode(ex, 0, epoch=epoch)
        want = qwen2_vl_video_inputs(ip, [face, scene], cfg.data.clip)
        assert enc["video_grid_thw"].shape[0] == 2
        assert torch.equal(enc["pixel_values_videos"], want["pixel_values_videos"]), f"epoch {epoch}"

    # the whole command: trains, scores the test clips with both streams, and says so in the run's notes
    from vlm_salience.cli import main

    assert main(["train", str(path), "--quiet"]) == 0
    doc = json.loads((Path(cfg.out) / "clips" / "metrics.json").read_text())
    text = json.dumps(doc) + (Path(cfg.out) / "clips" / "report.md").read_text()
    assert "two native video inputs (face clip, then scene clip)" in text
    assert doc["corpus"]["n_test_clips"] == len(data.parts["test"])

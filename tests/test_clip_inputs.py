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


def test_video_prompt_run_reads_the_frame_cache(scored_prompts, tmp_path, prepared_law_clips, tiny_vlms, monkeypatch):
    """`prompt run` with `frame_cache` decodes no video: every prompt's frames are the cached evaluation rows;
    a clip whose cached file is gone is a per-clip error counted in the notes, and the run goes on."""
    from vlm_salience.data.video import frames as video_frames
    from vlm_salience.data.video import load_video_corpus
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
    seen = scored_prompts
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


def _tiny_qwen2_5_vl(tiny_vlms):
    """A tiny random Qwen2.5-VL sharing the tiny Qwen2-VL's tokenizer, image processor and chat template."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.models.processors import Qwen2_5_VLImageOnlyProcessor

    q = load_vlm(ModelConfig(name="q", path=str(tiny_vlms["qwen2_vl"])))
    qc = q.model.config
    text = qc.text_config.to_dict()
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": text["hidden_size"],
              "window_size": 56, "fullatt_block_indexes": [0], "tokens_per_second": 2}
    ids = {k: getattr(qc, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                       "vision_end_token_id")}
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)).eval()
    proc = Qwen2_5_VLImageOnlyProcessor(image_processor=q.processor.image_processor, tokenizer=q.processor.tokenizer,
                                        chat_template=q.processor.chat_template)
    return model, proc, q


def test_qwen2_5_vl_native_video_places_frames_in_time(tiny_vlms):
    """Qwen2.5-VL clips carry second_per_grid_ts (temporal_patch_size / clip.fps, its processor's formula) and the
    model's forward reads it: a one-patch clip of one image gives the image path's logits exactly; 4 frames at
    another fps, or reversed, give other logits; Qwen2-VL prompts carry no such input."""
    import torch
    from PIL import Image

    from vlm_salience.prompting.clips import ClipSettings, encode_prompts

    model, proc, q = _tiny_qwen2_5_vl(tiny_vlms)
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 40, (56, 56, 3))
    frames = [Image.fromarray(np.clip(pattern + 20 + 20 * i, 0, 255).astype(np.uint8)) for i in range(4)]

    def msg(kind):
        return [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": kind},
                                             {"type": "text", "text": "answer"}]}]
    t_img = proc.apply_chat_template(msg("image"), add_generation_prompt=True)
    t_vid = proc.apply_chat_template(msg("video"), add_generation_prompt=True)
    a = encode_prompts(proc, "qwen2_vl", [t_img], [[frames[0]]], [[]])
    b = encode_prompts(proc, "qwen2_vl", [t_vid], [[]], [[[frames[0], frames[0]]]])
    assert b["second_per_grid_ts"].tolist() == [2 / 2.0]
    with torch.no_grad():
        assert torch.allclose(model(**a).logits, model(**b).logits, atol=1e-5)
    slow = encode_prompts(proc, "qwen2_vl", [t_vid], [[]], [[frames]], ClipSettings(fps=0.5))
    fast = encode_prompts(proc, "qwen2_vl", [t_vid], [[]], [[frames]], ClipSettings(fps=2.0))
    rev = encode_prompts(proc, "qwen2_vl", [t_vid], [[]], [[frames[::-1]]], ClipSettings(fps=2.0))
    assert slow["second_per_grid_ts"].tolist() == [4.0] and fast["video_grid_thw"].tolist() == [[2, 4, 4]]
    with torch.no_grad():
        l_slow, l_fast, l_rev = (model(**e).logits[:, -1] for e in (slow, fast, rev))
    assert not torch.allclose(l_slow, l_fast, atol=1e-5) and not torch.allclose(l_fast, l_rev, atol=1e-5)
    t_q = q.processor.apply_chat_template(msg("video"), add_generation_prompt=True)
    assert "second_per_grid_ts" not in encode_prompts(q.processor, "qwen2_vl", [t_q], [[]], [[frames]])


def test_qwen2_5_vl_clip_scoring_uses_the_frame_times(tiny_vlms, tmp_path):
    """The HF backend's label scoring (its own rope positions after a shared prefix) passes second_per_grid_ts:
    the same clip scored at another fps gets other scores, and the answer key differs with fps."""
    from PIL import Image

    from vlm_salience.models.loading import LoadedVLM
    from vlm_salience.prompting.cache import prompt_answer_key
    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template

    model, proc, q = _tiny_qwen2_5_vl(tiny_vlms)
    backend = HFBackend(LoadedVLM(model=model, processor=proc, family="qwen2_vl", config=q.config), batch_size=2)
    frames = [Image.fromarray(np.full((56, 56, 3), 30 + 40 * i, np.uint8)) for i in range(4)]
    tpl, spec, item = load_template("face_only"), _spec(), _item(tmp_path)
    prompts = [build_prompt(tpl, item, spec, clip=ClipSettings(frames=4, fps=fps), clip_mode="video", frames=frames)
               for fps in (2.0, 0.5)]
    a, b = backend.score(prompts, spec.slots())
    assert not np.allclose(a["emotion"], b["emotion"], atol=1e-6)
    keys = {prompt_answer_key("m", tpl.digest, p, "score", slots=spec.slots()) for p in prompts}
    assert len(keys) == 2


def test_data_export_of_a_video_corpus(tmp_path, synthetic_clips):
    """`data export` with a video data YAML: per fold and part, LLaMA-Factory ShareGPT video records (a <video>
    tag, `videos` the face-crop clip, the class name as the answer) and a datasets folder; a test clip is only in
    its fold's test file."""
    from datasets import load_from_disk

    from vlm_salience.cli import main
    from vlm_salience.data.video import load_video_corpus

    data = synthetic_clips("clips=14", "frames=8", "size=64", "folds=2", "layouts=[generic]")
    corpus = load_video_corpus(data)
    assert main(["data", "export", str(data), "--out", str(tmp_path / "x")]) == 0
    info = json.loads((tmp_path / "x" / "sharegpt" / "dataset_info.json").read_text())
    for fold, parts in corpus.folds.items():
        for part, ids in parts.items():
            recs = json.loads((tmp_path / "x" / "sharegpt" / f"{fold}_{part}.json").read_text())
            assert [r["id"] for r in recs] == list(ids)
            for r in recs:
                clip = corpus.clip(r["id"])
                assert sum(m["content"].count("<video>") for m in r["messages"]) == len(r["videos"]) == 1
                assert [m["role"] for m in r["messages"]][-2:] == ["user", "assistant"]
                assert r["videos"] == [str(Path(clip.face_source).resolve())]
                assert r["messages"][-1] == {"role": "assistant", "content": corpus.classes[clip.label]}
            ds = load_from_disk(str(tmp_path / "x" / "hf" / fold / part))
            assert list(ds["clip_id"]) == list(ids)
            assert info[f"{corpus.name}_{fold}_{part}"]["columns"] == {"messages": "messages", "videos": "videos"}
        assert not set(parts["test"]) & set(parts["train"])

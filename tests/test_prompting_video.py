"""The VLM half sees video: clips sampled by the video models' TSN sampler, as native Qwen2-VL video input or as
frames as images, through prompting (Split-Steal face videos and frame folders, video corpora) and fine-tuning.
Tiny random models only: their predictions are noise; the tests check plumbing, never accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frames(n: int, size: int = 56) -> list:
    """n frames, frame i a distinct flat grey level 20 + 20 i plus a fixed pattern (so order is visible)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 40, (size, size, 3))
    return [Image.fromarray(np.clip(pattern + 20 + 20 * i, 0, 255).astype(np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def qwen(tiny_vlms):
    from vlm_salience.models.loading import ModelConfig, load_vlm

    return load_vlm(ModelConfig(name="q", path=str(tiny_vlms["qwen2_vl"])))


def _messages(kind: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": kind},
                                         {"type": "text", "text": "answer"}]}]


def test_native_video_inputs_match_the_model(qwen):
    """pixel_values_videos from the PIL image processor: the video processor's layout, and the model agrees: a
    two-frame clip of one image gives exactly the image path's logits; reversing the frames changes them."""
    import torch

    from vlm_salience.prompting.clips import encode_prompts, qwen2_vl_video_inputs

    proc, model = qwen.processor, qwen.model
    frames = _frames(4)
    t_img = proc.apply_chat_template(_messages("image"), add_generation_prompt=True)
    t_vid = proc.apply_chat_template(_messages("video"), add_generation_prompt=True)
    a = encode_prompts(proc, "qwen2_vl", [t_img], [[frames[0]]], [[]])
    b = encode_prompts(proc, "qwen2_vl", [t_vid], [[]], [[[frames[0], frames[0]]]])
    assert torch.equal(a["image_grid_thw"], b["video_grid_thw"])
    with torch.no_grad():
        la, lb = model(**a).logits, model(**b).logits
    assert torch.allclose(la, lb, atol=1e-5)

    # the layout of transformers' Qwen2VLVideoProcessor.patchify (copied: that module needs torchvision)
    ip = proc.image_processor
    x = torch.tensor(np.stack([np.asarray(f, np.float32) / 255.0 for f in frames])).permute(0, 3, 1, 2)
    mean, std = torch.tensor(ip.image_mean).view(1, 3, 1, 1), torch.tensor(ip.image_std).view(1, 3, 1, 1)
    x = ((x - mean) / std)[None]  # (1, T, C, H, W); 56 px frames are not resized
    B, T, C, H, W = x.shape
    p, m, tps = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    ref = x.view(B, T // tps, tps, C, H // p // m, m, p, W // p // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    ref = ref.reshape(T // tps * (H // p) * (W // p), C * tps * p * p)
    ours = qwen2_vl_video_inputs(ip, [frames])
    assert torch.allclose(ours["pixel_values_videos"], ref, atol=1e-5)
    assert ours["video_grid_thw"].tolist() == [[T // tps, H // p, W // p]]

    fwd = encode_prompts(proc, "qwen2_vl", [t_vid], [[]], [[frames]])
    rev = encode_prompts(proc, "qwen2_vl", [t_vid], [[]], [[frames[::-1]]])
    with torch.no_grad():
        assert not torch.allclose(model(**fwd).logits[:, -1], model(**rev).logits[:, -1], atol=1e-4)


# -- Split-Steal faces as clips -------------------------------------------------------------------------------------

def _clip_corpus(src_data: Path, out: Path, kind: str, n_frames: int = 6) -> Path:
    """A copy of a synthetic Split-Steal corpus whose faces are clips: frame t blends a grey face-less frame into
    the still face (onset -> apex), as face_video (mp4) or face_frames (a folder of PNGs)."""
    import av
    from PIL import Image

    shutil.copytree(src_data.parent, out)
    trials = pd.read_csv(out / "trials.csv")
    paths = []
    for tid, rel in zip(trials.trial_id, trials.face_image):
        face = np.asarray(Image.open(out / rel).convert("RGB"), np.float32)
        frames = [(128 + (face - 128) * t / (n_frames - 1)).astype(np.uint8) for t in range(n_frames)]
        if kind == "face_video":
            path = out / "videos" / f"{tid}.mp4"
            path.parent.mkdir(exist_ok=True)
            with av.open(str(path), "w") as c:
                s = c.add_stream("mpeg4", rate=8)
                s.width, s.height, s.pix_fmt = face.shape[1], face.shape[0], "yuv420p"
                for f in frames:
                    for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)
        else:
            path = out / "frames" / str(tid)
            path.mkdir(parents=True)
            for t, f in enumerate(frames):
                Image.fromarray(f).save(path / f"{t:03d}.png")
        paths.append(str(path.relative_to(out)))
    trials = trials.drop(columns=["face_image"]).assign(**{kind: paths})
    trials.to_csv(out / "trials.csv", index=False)
    return out / "data.yaml"


def _experiment(tmp_path, data, model_dir, clip: dict, strategies=None):
    from vlm_salience.prompting.experiment import ExperimentConfig

    return ExperimentConfig.model_validate({
        "name": "t", "data": str(data), "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
        "split": {"test_fraction": 0.25, "group": "participant", "seed": 0, "max_test_items": 4},
        "models": [{"backend": "hf", "name": "tiny", "path": str(model_dir), "batch_size": 4}],
        "strategies": strategies or [{"name": "face_only", "template": "face_only"}],
        "out": str(tmp_path / "out"), "bootstrap": 0, "chunk": 4, "clip": clip,
    }, context={"base_dir": tmp_path})


@pytest.mark.parametrize("kind,mode", [("face_video", "video"), ("face_frames", "images")])
def test_prompt_run_on_split_steal_clips(scored_prompts, tmp_path, small_synth_corpus, tiny_vlms, monkeypatch, kind, mode):
    """A Split-Steal corpus with face videos / frame folders runs through prompting (no refusal, no middle frame
    only): every test item scored, each prompt carrying all sampled frames; the answer cache is keyed by the
    sampling settings (same settings: no model call; other frame count: asked again)."""
    from vlm_salience.prompting import experiment as ex

    data = _clip_corpus(small_synth_corpus, tmp_path / "corpus", kind)
    seen = scored_prompts
    res = ex.run_experiment(_experiment(tmp_path, data, tiny_vlms["qwen2_vl"], {"frames": 4, "mode": mode}),
                            progress=False)
    pred = res.predictions["tiny/face_only"]
    assert (pred.error == "").all(), pred.error
    assert np.isfinite(pred.emotion_dist).all() and len(pred) == 4
    assert len(seen) == 4
    for p in seen:
        if mode == "video":
            assert len(p.videos) == 1 and len(p.videos[0]) == 4 and not p.images
        else:
            assert len(p.images) == 4 and not p.videos
            assert sum(q["type"] == "image" for m in p.messages for q in m["content"]) == 4
    seen.clear()
    ex.run_experiment(_experiment(tmp_path, data, tiny_vlms["qwen2_vl"], {"frames": 4, "mode": mode}),
                      progress=False)
    assert not seen  # resumed from the cache
    ex.run_experiment(_experiment(tmp_path, data, tiny_vlms["qwen2_vl"], {"frames": 2, "mode": mode}),
                      progress=False)
    assert len(seen) == 4  # other sampling settings: other answers


def test_clip_sampling_is_the_video_models_tsn_sampler(tmp_path):
    """Evaluation takes each segment's middle frame in time order; training a seeded random frame per segment;
    the prompt digest (cache key) changes with the sampling settings."""
    from vlm_salience.data.corpus import Face, Item, RatingScale, Situation
    from vlm_salience.data.video.sampling import segment_indices
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template

    folder = tmp_path / "f"
    folder.mkdir()
    frames = _frames(12, 28)
    files = []
    for t, f in enumerate(frames):
        f.save(folder / f"{t}.png")
        files.append(folder / f"{t}.png")
    item = Item(id="a", face=Face(id="a", media=tuple(files), media_kind="frames"),
                situation=Situation(id="a", features={}, text="A game."))
    spec = AnswerSpec("choice", ("joy", "anger"), RatingScale(1, 9), None)
    tpl = load_template("face_only")
    level = lambda img: int(round((np.asarray(img, float).mean() - np.asarray(frames[0], float).mean()) / 20))
    p = build_prompt(tpl, item, spec, clip=ClipSettings(frames=4), clip_mode="images")
    assert [level(i) for i in p.images] == segment_indices(12, 4, train=False).tolist() == [1, 4, 7, 10]
    rng = np.random.default_rng(3)
    pt = build_prompt(tpl, item, spec, clip=ClipSettings(frames=4), clip_mode="images", train=True, rng=rng)
    got = [level(i) for i in pt.images]
    assert got == segment_indices(12, 4, train=True, rng=np.random.default_rng(3)).tolist()
    assert all(3 * s <= g < 3 * s + 3 for s, g in enumerate(got)) and got != [1, 4, 7, 10]
    digests = {build_prompt(tpl, item, spec, clip=ClipSettings(frames=4, **kw), clip_mode="images").digest
               for kw in ({}, {"max_pixels": 3136}, {"stream": "scene"})}
    assert len(digests | {p.digest}) == 3 and p.digest in digests


# -- video corpora: zero-shot label scoring on the video models' test clips, one comparison table ----------------

CLIPS = ("clips=14", "frames=8", "size=64", "folds=2", "layouts=[generic]")


def test_video_prompt_run_on_fold_test_clips_and_one_comparison_table(tmp_path, synthetic_clips, tiny_vlms,
                                                                      capsys):
    """`prompt run` with a video data YAML (the shipped prompt_video_synthetic.yaml) predicts each fold's test
    clips only, in the video report's layout; `video compare` puts two runs side by side and refuses a run on
    other clips, naming them."""
    from vlm_salience.cli import main
    from vlm_salience.config import load_config
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.video_experiment import VideoPromptConfig, run_video_prompting
    from vlm_salience.video.report import compare_runs

    data = synthetic_clips(*CLIPS)
    corpus = load_video_corpus(data)
    shipped = REPO / "configs" / "experiment" / "prompt_video_synthetic.yaml"
    sets = [f"data={data}", f"models=[{{backend: hf, name: tiny, path: {tiny_vlms['qwen2_vl']}, batch_size: 4}}]",
            "clip.frames=4", "max_test_clips=2", "report.n_boot=50", f"cache={tmp_path / 'cache.sqlite'}"]
    args = [x for s in sets for x in ("--set", s)]
    assert main(["prompt", "run", str(shipped), "--out", str(tmp_path / "video"), "--quiet", *args]) == 0
    run_video = tmp_path / "video" / "tiny__zero_shot"
    df = pd.read_csv(run_video / "predictions.csv", dtype={"fold": str, "clip_id": str})
    expected = [(f, c) for f in corpus.folds for c in corpus.folds[f]["test"][:2]]
    assert list(zip(df.fold, df.clip_id)) == expected  # each fold's test clips, never a training clip
    for f in corpus.folds:
        assert not set(df.clip_id[df.fold == f]) & set(corpus.folds[f]["train"])
    assert json.loads((run_video / "metrics.json").read_text())["corpus"]["n_test_clips"] == 4

    cfg = load_config(shipped, VideoPromptConfig, [*sets, "clip.mode=images", f"out={tmp_path / 'images'}"])
    run_video_prompting(cfg, progress=False)
    run_images = tmp_path / "images" / "tiny__zero_shot"
    capsys.readouterr()
    assert main(["video", "compare", f"video={run_video}", f"images={run_images}", "--n-boot", "50",
                 "--out", str(tmp_path / "cmp"), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| video |" in table and "| images |" in table and "4 test clips" in table
    doc = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert doc["runs"]["images"]["vs_reference"]["uar"]["diff"] == pytest.approx(
        doc["runs"]["images"]["pooled"]["uar"]["value"] - doc["runs"]["video"]["pooled"]["uar"]["value"])

    few = load_config(shipped, VideoPromptConfig, [*sets, "max_test_clips=1", f"out={tmp_path / 'few'}"])
    run_video_prompting(few, progress=False)  # answers come from the cache
    with pytest.raises(ValueError, match="not tested on the clips of 'video'.*only in 'video'"):
        compare_runs({"video": run_video, "few": tmp_path / "few" / "tiny__zero_shot"})


# -- fine-tuning on clips ------------------------------------------------------------------------------------------

def test_train_on_split_steal_face_videos(tmp_path, small_synth_corpus, tiny_vlms):
    """`train` accepts face videos: the instruction data keeps the clip (a LLaMA-Factory-style `videos` column),
    the collator draws the training sampler's frames afresh each epoch (seeded: the same epoch, the same frames)
    as native video input, and a LoRA adapter trains and evaluates on clips."""
    import torch
    import yaml

    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.loop import train_all
    from vlm_salience.training.vlm_task import VLMTask

    data = _clip_corpus(small_synth_corpus, tmp_path / "corpus", "face_video", n_frames=8)
    cfg = {"name": "t", "model": {"name": "tiny", "path": str(tiny_vlms["qwen2_vl"])},
           "data": {"config": str(data), "clip": {"frames": 2, "mode": "video"}},
           "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
           "split": {"test_fraction": 0.25, "validation_fraction": 0.15, "group": "participant"},
           "adapters": [{"name": "face", "template": "face_only"}], "lora": {"r": 4, "alpha": 8},
           "optim": {"lr": 1e-3, "max_steps": 2, "batch_size": 2}, "eval": {"max_items": 2},
           "checkpoint": {"every_steps": 2, "keep": 1}, "tensorboard": False, "out": str(tmp_path / "out")}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    tc = load_config(tmp_path / "train.yaml", TrainConfig)
    task = VLMTask(tc, tc.adapters[0])

    from conftest import OneProcess

    task.setup(OneProcess())
    ex = task.examples[0]
    assert ex["videos"] and ex["clip_mode"] == "video" and not ex["image"]
    enc = {e: task.collator.encode(ex, 0, epoch=e) for e in range(4)}
    assert enc[0]["video_grid_thw"].tolist() == [[1, 4, 4]]  # 2 frames -> one temporal patch
    again = task.collator.encode(ex, 0, epoch=1)
    assert torch.equal(again["pixel_values_videos"], enc[1]["pixel_values_videos"])  # seeded by the epoch
    assert len({enc[e]["pixel_values_videos"].sum().item() for e in range(4)}) > 1  # fresh frames per epoch
    results = train_all(tc, progress=False)
    assert results["face"]["steps"] == 2 and np.isfinite(results["face"]["final_eval"]["eval/kld"])
    assert (tmp_path / "out" / "adapters" / "face" / "adapter_model.safetensors").is_file()


def test_bad_clips_and_families_without_video_fail_clearly(tmp_path):
    """An undecodable clip is a per-item error naming the file (the run records it and goes on); a family with
    no native video path asked for video names the family and the setting that works."""
    from vlm_salience.data.corpus import Face, Item, RatingScale, Situation
    from vlm_salience.errors import ConfigError
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.inputs import ItemError, build_prompt
    from vlm_salience.prompting.templates import load_template

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    item = Item(id="x", face=Face(id="x", media=(bad,), media_kind="video"),
                situation=Situation(id="x", features={}, text="A game."))
    spec = AnswerSpec("choice", ("joy", "anger"), RatingScale(1, 9), None)
    with pytest.raises(ItemError, match="item x: cannot read the face clip.*broken.mp4"):
        build_prompt(load_template("face_only"), item, spec, clip=ClipSettings(frames=2), clip_mode="video")
    with pytest.raises(ConfigError, match="family 'llava'.*clip.mode: images"):
        ClipSettings(mode="video").resolved_mode("llava")
    assert ClipSettings().resolved_mode("llava") == "images" and ClipSettings().resolved_mode("qwen2_vl") == "video"


def test_export_split_steal_face_videos_as_sharegpt_video(tmp_path, small_synth_corpus):
    """`data export` of a training config whose faces are videos: each record's clip slot is a <video> tag and the
    clip is under `videos` (LLaMA-Factory's video columns), never `images`."""
    import yaml

    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.export_data import export_instruction_data

    data = _clip_corpus(small_synth_corpus, tmp_path / "corpus", "face_video", n_frames=4)
    cfg = {"name": "t", "model": {"name": "tiny", "path": str(tmp_path / "unused")},
           "data": {"config": str(data), "clip": {"frames": 2}},
           "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
           "split": {"test_fraction": 0.25, "validation_fraction": 0.15, "group": "participant"},
           "adapters": [{"name": "face", "template": "face_only"}], "out": str(tmp_path / "out")}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    summary = export_instruction_data(load_config(tmp_path / "train.yaml", TrainConfig), tmp_path / "x",
                                      fmt="sharegpt", parts=("train",))
    recs = json.loads((tmp_path / "x" / "sharegpt" / "face_train.json").read_text())
    assert recs and summary["files"]["sharegpt/face_train.json"] == len(recs)
    for r in recs:
        text = "".join(m["content"] for m in r["messages"])
        assert "images" not in r and "<image>" not in text
        assert text.count("<video>") == len(r["videos"]) >= 1  # one entry per placed clip slot
        assert len(set(r["videos"])) == 1 and r["videos"][0].endswith(f"{r['id']}.mp4")
    info = json.loads((tmp_path / "x" / "sharegpt" / "dataset_info.json").read_text())
    assert info["vlm_salience_face_train"]["columns"] == {"messages": "messages", "videos": "videos"}

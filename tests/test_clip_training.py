"""`train` with a video data YAML: LoRA on clips per fold (training/clip_training.py). What reaches the model: the
fold's training clips only (validation carved from them, the test fold only predicted), training frames drawn by
the video models' cache sampler in time order, evaluation frames the segment middles. Tiny random models only: the
tests check plumbing, never accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tmp_path, clips, model, **extra) -> Path:
    from vlm_salience.data.video import load_video_corpus

    fold = sorted(load_video_corpus(clips["data"]).folds)[0]
    cfg = {"name": "clip_lora", "model": {"name": "tiny", "path": str(model)},
           "data": {"config": str(clips["data"]), "frame_cache": str(clips["cache"]), "folds": [fold],
                    "validation_fraction": 0.2, "clip": {"frames": 4, "mode": "video"}},
           "adapters": [{"name": "clips"}], "lora": {"r": 4, "alpha": 8},
           "optim": {"lr": 1e-3, "max_steps": 2, "batch_size": 4}, "eval": {"max_items": 6},
           "checkpoint": {"every_steps": None}, "tracker": "none", "report": {"n_boot": 20},
           "out": str(tmp_path / "out"), **extra}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_clip_training_data_never_holds_a_test_clip(tmp_path, law_clips, tiny_vlms):
    """Per fold: validation is carved from the training fold (every class in it), the instruction rows are the
    remaining training clips with their class as the answer, and the test fold is never a row."""
    from vlm_salience.config import load_config
    from vlm_salience.errors import ConfigError
    from vlm_salience.training.clip_training import ClipTrainConfig, ClipTrainingData, is_clip_training

    path = _config(tmp_path, law_clips, tiny_vlms["qwen2_vl"])
    assert is_clip_training(path) and not is_clip_training(REPO / "configs" / "train" / "experts_synthetic.yaml")
    cfg = load_config(path, ClipTrainConfig)
    assert cfg.adapters[0].template == "clip_emotion"  # the clip template by default
    data = ClipTrainingData(cfg, cfg.data.folds[0])
    folds = data.corpus.folds[cfg.data.folds[0]]
    fit, val, test = (set(data.parts[p]) for p in ("train", "validation", "test"))
    assert fit | val == set(folds["train"]) and not (fit | val) & set(folds["test"]) and test == set(folds["test"])
    assert not fit & val and {data.corpus.clip(c).label for c in val} == set(range(len(data.corpus.classes)))
    rows = data.dataset(cfg.adapters[0], "train", clip_mode="video")
    assert set(rows["item_id"]) == fit
    for r in rows.select(range(3)):
        label = data.corpus.classes[data.corpus.clip(r["item_id"]).label]
        assert json.loads(r["answer_fields"]) == {"emotion": label} and r["videos"]
    with pytest.raises(ConfigError, match="test clips are only predicted"):
        data.dataset(cfg.adapters[0], "test", clip_mode="video")
    bad = yaml.safe_load(path.read_text())
    bad["adapters"] = [{"name": "face", "subset": "expressive"}]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="subset 'expressive'.*Split-Steal item corpora"):
        load_config(path, ClipTrainConfig)


def test_train_on_clips_reads_training_rows_in_training_and_middles_elsewhere(tmp_path, law_clips, tiny_vlms,
                                                                             monkeypatch, capsys):
    """`vlm-salience train` with a video data YAML: the collator's frames are the cache sampler's training rows for
    (seed, epoch, clip), in time order (the native video input built from them, not from reversed frames); only
    fit clips are ever read with the training sampler; validation and test clips are read at their segment middles
    only; the run folder predicts exactly the fold's test clips, in the video report's layout."""
    import torch

    from vlm_salience.cli import main
    from vlm_salience.config import load_config
    from vlm_salience.prompting.clips import CachedFrames, ClipSettings, qwen2_vl_video_inputs, training_rng
    from vlm_salience.training.clip_training import ClipTrainConfig, ClipTrainingData, ClipVLMTask, fold_config
    from vlm_salience.video.cache import ClipCache, sample

    path = _config(tmp_path, law_clips, tiny_vlms["qwen2_vl"])
    cfg = load_config(path, ClipTrainConfig)
    fold = cfg.data.folds[0]
    data = ClipTrainingData(cfg, fold)
    cache = ClipCache(law_clips["cache"])
    settings = cfg.data.clip

    # the collator: training rows of the cache sampler, seeded by (seed, epoch, clip), in time order
    task = ClipVLMTask(fold_config(cfg, fold), cfg.adapters[0], data)

    from conftest import OneProcess

    task.setup(OneProcess())
    ex = task.examples[0]
    cid = ex["item_id"]
    full = cache.load(cid)
    ip = task.loaded.processor.image_processor
    middles = [full.face[r] for r in sample(full, 4, train=False)]
    differs = False
    for epoch in range(3):
        rows = sample(full, 4, train=True, rng=training_rng(settings, epoch, cid))
        assert (np.diff(full.frame_index[rows]) > 0).all()
        from PIL import Image

        frames = [Image.fromarray(full.face[r]) for r in rows]
        got = task.collator.encode(ex, 0, epoch=epoch)["pixel_values_videos"]
        want = qwen2_vl_video_inputs(ip, [frames], settings)["pixel_values_videos"]
        assert torch.equal(got, want), f"epoch {epoch}: not the training rows in time order"
        assert not torch.equal(got, qwen2_vl_video_inputs(ip, [frames[::-1]], settings)["pixel_values_videos"])
        differs |= [f.tolist() for f in (full.face[r] for r in rows)] != [m.tolist() for m in middles]
    assert differs  # the training sampler, not the evaluation middles

    # the whole command: which clips are read with which sampler
    calls: list[tuple[str, bool, list]] = []
    real = CachedFrames.frames

    def spy(self, clip_id, s, *, source=None, train=False, rng=None):
        out = real(self, clip_id, s, source=source, train=train, rng=rng)
        calls.append((clip_id, train, out))
        return out
    monkeypatch.setattr(CachedFrames, "frames", spy)
    capsys.readouterr()
    assert main(["train", str(path), "--quiet"]) == 0
    assert "test UAR" in capsys.readouterr().out
    fit, val, test = (set(data.parts[p]) for p in ("train", "validation", "test"))
    trained = {c for c, t, _ in calls if t}
    evaluated = {c for c, t, _ in calls if not t}
    assert trained and trained <= fit  # never a validation or test clip in training
    assert test <= evaluated and evaluated <= val | test  # evaluation reads only held-out clips ...
    for c, t, frames in calls:
        if not t:  # ... at their segment middles, in time order
            clip = cache.load(c)
            assert [np.asarray(f).tolist() for f in frames] == [clip.face[r].tolist() for r in
                                                                sample(clip, 4, train=False)]
    run = Path(cfg.out) / "clips"
    df = pd.read_csv(run / "predictions.csv", dtype={"fold": str, "clip_id": str})
    assert sorted(df.clip_id) == sorted(test) and set(df.fold) == {fold}
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["corpus"]["n_test_clips"] == len(test) and "tiny/lora:clips" in doc["methods"]
    assert (Path(cfg.out) / "folds" / fold / "adapters" / "clips" / "adapter_model.safetensors").is_file()
    summary = json.loads((Path(cfg.out) / "clip_training.json").read_text())
    assert 0 <= summary["adapters"]["clips"]["training"][fold]["final_eval"]["eval/uar"] <= 1

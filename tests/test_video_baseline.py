"""The face-only video baseline (DFER-CLIP recipe) as a task for the engine, its workflow and report.

A planted corpus: frame-folder clips in the generic CSV layout whose class is a colour pattern (with noise), so a
model that learns anything real separates them, and one with shuffled labels cannot. The workflow runs end to end:
data YAML -> prepare (frame cache) -> engine per fold -> report; tests assert the learned UAR, chance under
shuffled labels, exact resume, and that metrics.json is recomputable from predictions.csv.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["happy", "sad", "angry"]
COLOURS = np.array([[220, 190, 40], [40, 80, 200], [200, 40, 40]], dtype=float)


def write_planted_corpus(root: Path, *, per_class: int = 12, frames: int = 6, size: int = 32, seed: int = 0,
                         shuffle_labels: bool = False, folds: int = 2, ambiguous_every: int = 0) -> Path:
    """Clips as frame folders: class k's frames are tinted with colour k (plus per-pixel noise and a random
    brightness drift over time). Written as clips.csv (clip,label,fold) and a data YAML; returns the YAML."""
    rng = np.random.default_rng(seed)
    rows = []
    n = 0
    for k, cls in enumerate(CLASSES):
        for i in range(per_class):
            cid = f"c{n:03d}"
            folder = root / "clips" / cid
            folder.mkdir(parents=True, exist_ok=True)
            drift = rng.uniform(0.7, 1.1)
            for t in range(frames):
                img = COLOURS[k] * (drift + 0.05 * t) + rng.normal(0, 35, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{t:03d}.png")
            rows.append({"clip": f"clips/{cid}", "label": cls, "fold": str(1 + (i % folds))})
            n += 1
    df = pd.DataFrame(rows)
    if shuffle_labels:
        df["label"] = rng.permutation(df["label"].to_numpy())
    df.to_csv(root / "clips.csv", index=False)
    data = {"format": "video_csv", "name": "planted", "root": str(root), "file": "clips.csv", "classes": CLASSES}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_prepare_config(folder: Path, size: int = 32) -> Path:
    """Small cached frames (the tiny encoder reads 32 px) and a detector that does not upscale tiny frames."""
    det = folder / "haar.yaml"
    det.write_text(yaml.safe_dump({"kind": "haar", "name": "haar", "upscale_below": size, "min_size": 16}))
    path = folder / "prepare.yaml"
    path.write_text(yaml.safe_dump({"n_segments": 4, "candidates_per_segment": 2,
                                    "streams": {"face_size": size, "scene_size": size,
                                                "detection": {"detector": str(det), "max_side": None}}}))
    return path


def write_video_config(folder: Path, data_yaml: Path, *, steps: int = 40, extra: dict | None = None) -> Path:
    cfg = {
        "name": "planted_baseline",
        "data": {"config": str(data_yaml), "cache": str(folder / "cache"), "n_segments": 4,
                 "prepare": str(write_prepare_config(folder)),
                 "validation_fraction": 0.2, "memory_cache_mb": 64},
        "model": {"kind": "baseline",
                  "encoder": {"path": str(folder.parent / "tiny_clip_enc"),
                              "build": str(ROOT / "configs/models/tiny_clip.yaml")},
                  "context_tokens": 2, "temporal": {"layers": 1, "heads": 4, "mlp_dim": 64},
                  "temperature": 0.05, "lr": {"temporal": 3e-3, "vision": 3e-3, "prompt": 3e-3}},
        "optim": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 6, "max_steps": steps, "schedule": "constant",
                  "warmup_ratio": 0.0, "weight_decay": 0.0},
        "eval": {"every_steps": 10},
        "checkpoint": {"every_steps": 10, "keep": 5},
        "tracker": "none",
        "report": {"n_boot": 200, "tsne_max_clips": 200},
        "seed": 0,
        "out": str(folder / "run"),
    }
    for k, v in (extra or {}).items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = folder / "video.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return write_planted_corpus(root / "corpus")


# ---------------------------------------------------------------------------------------------------------------
# The model


@pytest.fixture(scope="module")
def encoder_dir(tiny_encoder):
    return tiny_encoder("configs/models/tiny_clip.yaml")


def _model(encoder_dir, **kw):
    from vlm_salience.models.encoders import EncoderConfig, load_encoder
    from vlm_salience.video.baseline import BaselineModel, BaselineModelConfig

    cfg = BaselineModelConfig(encoder=EncoderConfig(path=str(encoder_dir)), temporal={"heads": 4, "mlp_dim": 64},
                              **kw)
    return BaselineModel(load_encoder(cfg.encoder), cfg, CLASSES)


def test_prompts_without_context_are_the_plain_text_embeddings(encoder_dir):
    """With zero context tokens the prompt path is exactly the encoder's text features of the class texts."""
    m = _model(encoder_dir, context_tokens=0, class_text={"sad": "tears and a downward turned mouth"})
    with torch.no_grad():
        ref = m.encoder.encode_text(["happy", "tears and a downward turned mouth", "angry"])
        assert torch.allclose(m.prompts(m.encoder), ref, atol=1e-6)
    m8 = _model(encoder_dir, context_tokens=8)
    with torch.no_grad():
        assert not torch.allclose(m8.prompts(m8.encoder), ref, atol=1e-3)  # context tokens change the prompt


def test_frozen_parts_and_param_groups(encoder_dir):
    m = _model(encoder_dir, vision="frozen", text="frozen")
    names = {g["name"] for g in m.param_groups()}
    assert names == {"temporal", "prompt"}
    assert not any(p.requires_grad for p in m.encoder.parameters())
    m2 = _model(encoder_dir, vision="train", learn_temperature=True)
    groups = {g["name"]: g for g in m2.param_groups()}
    assert {"temporal", "prompt", "vision", "temperature"} == set(groups)
    assert groups["vision"]["lr"] == 1e-5 and groups["temporal"]["lr"] == 1e-2  # DFER-CLIP's rates by default
    assert not any(p.requires_grad for p in m2.encoder.text_parameters())
    x = torch.randint(0, 256, (2, 4, 40, 40, 3), dtype=torch.uint8)
    out = m2(face=x)
    assert out["logits"].shape == (2, 3) and torch.allclose(out["features"].norm(dim=-1), torch.ones(2), atol=1e-5)
    out["logits"].sum().backward()
    assert m2.prompts.ctx.grad is not None and m2.log_scale.grad is not None
    assert all(p.grad is None for p in m2.encoder.text_parameters())


def test_unknown_class_text_is_an_error(encoder_dir):
    from vlm_salience.errors import ConfigError

    with pytest.raises(ConfigError, match="does not have"):
        _model(encoder_dir, class_text={"joy": "a smile"})


# ---------------------------------------------------------------------------------------------------------------
# The workflow


def _uar(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["methods"]["baseline"]


def test_baseline_learns_planted_classes_and_report_is_recomputable(planted, tmp_path):
    from vlm_salience.video.report import scores_from_predictions
    from vlm_salience.video.train import eval_video, train_video

    cfg = write_video_config(tmp_path, planted, steps=40)
    out = train_video(cfg, progress=False)
    run = tmp_path / "run"
    assert set(out["folds"]) == {"set_1", "set_2"}
    for f in ("metrics.json", "predictions.csv", "report.md", "confusion.png", "tsne.png"):
        assert (run / f).is_file(), f
    m = _uar(run)
    assert m["summary"]["uar"]["mean"] >= 0.8, m["summary"]  # chance is 1/3
    lo, hi = m["pooled"]["uar"]["ci95"]
    assert lo <= m["pooled"]["uar"]["value"] <= hi
    for fold in ("set_1", "set_2"):
        sel = m["selection"][fold]
        assert sel["selected"] == "best_validation" and sel["validation_clips"] >= 3
    # metrics.json equals values recomputed from the saved predictions
    df = pd.read_csv(run / "predictions.csv")
    assert len(df) == 36 and set(df["fold"]) == {"set_1", "set_2"}
    re = scores_from_predictions(df, CLASSES, n_boot=200, seed=0)
    for fold in ("set_1", "set_2"):
        for k in ("uar", "war"):
            assert re["folds"][fold][k]["value"] == pytest.approx(m["folds"][fold][k]["value"])
            assert re["folds"][fold][k]["ci95"] == pytest.approx(m["folds"][fold][k]["ci95"])
    y = df["label"].map({c: k for k, c in enumerate(CLASSES)}).to_numpy()
    yhat = df[[f"p_{c}" for c in CLASSES]].to_numpy().argmax(1)
    recall = [(yhat[y == k] == k).mean() for k in range(3)]
    assert m["pooled"]["uar"]["value"] == pytest.approx(np.mean(recall))
    assert m["pooled"]["war"]["value"] == pytest.approx((y == yhat).mean())
    # eval re-predicts with the saved weights: the same numbers
    before = (run / "predictions.csv").read_text()
    eval_video(cfg, progress=False)
    assert (run / "predictions.csv").read_text() == before
    assert "UAR" in (run / "report.md").read_text()


@pytest.mark.slow
def test_shuffled_labels_stay_at_chance(tmp_path):
    from vlm_salience.video.train import train_video

    data = write_planted_corpus(tmp_path / "corpus", shuffle_labels=True, seed=1)
    train_video(write_video_config(tmp_path, data, steps=40), progress=False)
    m = _uar(tmp_path / "run")
    assert m["pooled"]["uar"]["value"] < 0.6, m["pooled"]["uar"]  # chance 1/3; planted corpus reaches >= 0.8
    assert m["pooled"]["uar"]["ci95"][0] < 1 / 3 + 0.05


def _fold_weights(run: Path, fold: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"fold-{fold}" / "step-20" / "model" / "model.safetensors"))


@pytest.mark.slow
def test_engine_resume_is_exact(planted, tmp_path, monkeypatch):
    """Straight 20 steps vs SIGTERM during step 10 (the engine finishes the step, checkpoints, stops), then
    --resume to 20: identical weights, the same chosen weights and identical test predictions."""
    import os
    import signal

    from vlm_salience.video.task import BaselineTask
    from vlm_salience.video.train import train_video

    extra = {"data": {"folds": ["set_1"]}, "report": {"tsne": False, "n_boot": 10}}
    straight = tmp_path / "straight"
    straight.mkdir()
    train_video(write_video_config(straight, planted, steps=20, extra=extra), progress=False)
    split = tmp_path / "split"
    split.mkdir()
    cfg = write_video_config(split, planted, steps=20, extra=extra)
    calls = {"n": 0}
    original = BaselineTask.collate

    def collate(self, indices, epoch):
        calls["n"] += 1
        if calls["n"] == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, indices, epoch)

    monkeypatch.setattr(BaselineTask, "collate", collate)
    stopped = train_video(cfg, progress=False)
    assert stopped.get("stopped") and stopped["folds"]["set_1"]["stopped_at"] == 10
    assert not (split / "run" / "metrics.json").exists()
    monkeypatch.setattr(BaselineTask, "collate", original)
    train_video(cfg, resume=True, progress=False)
    a, b = _fold_weights(straight / "run", "set_1"), _fold_weights(split / "run", "set_1")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    pa = pd.read_csv(straight / "run" / "predictions.csv")
    pb = pd.read_csv(split / "run" / "predictions.csv")
    pd.testing.assert_frame_equal(pa, pb)
    sa = json.loads((straight / "run" / "models" / "set_1" / "task.json").read_text())["selection"]
    sb = json.loads((split / "run" / "models" / "set_1" / "task.json").read_text())["selection"]
    assert sa == sb


def test_shipped_video_configs_validate_and_name_their_corpus_classes():
    """Every configs/video/baseline_*.yaml loads against its schema; its class texts name classes of its
    data YAML (a typo would only surface when the model is built)."""
    from vlm_salience.data.video.config import load_video_data_config
    from vlm_salience.video.config import load_video_config

    found = 0
    for path in sorted((ROOT / "configs/video").glob("baseline_*.yaml")):
        cfg, task_cls = load_video_config(path)
        assert task_cls.__name__ == "BaselineTask"
        found += 1
        data = Path(cfg.data.config)
        if data.is_file():
            classes = load_video_data_config(data).classes
            assert set(cfg.model.class_text) <= set(classes), path
        assert cfg.data.n_segments <= cfg.model.temporal.max_frames
    assert found >= 4


def test_ambiguous_clips_scored_apart_with_hand_computed_values():
    """Two of six clips are ambiguous between happy and sad: their WAR, the pair's chance, the share predicted
    within the pair, and the other clips' scores, against values worked out by hand."""
    from vlm_salience.video.report import scores_from_predictions

    rows = [  # fold, clip, label, predicted, ambiguous
        ("1", "a", "happy", "happy", True), ("1", "b", "sad", "happy", True),
        ("1", "c", "angry", "angry", False), ("2", "d", "happy", "happy", False),
        ("2", "e", "sad", "angry", False), ("2", "f", "angry", "angry", False)]
    df = pd.DataFrame([{"fold": f, "clip_id": c, "label": y, "predicted": p, "ambiguous": a,
                        **{f"p_{k}": float(k == p) for k in CLASSES}} for f, c, y, p, a in rows])
    s = scores_from_predictions(df, CLASSES, n_boot=50, seed=0,
                                ambiguous={"a": ["happy", "sad"], "b": ["happy", "sad"]})
    amb = s["ambiguous"]
    assert amb["n"] == 2 and amb["war"]["value"] == pytest.approx(0.5) and amb["pair_chance"] == 0.5
    assert amb["uar"]["value"] == pytest.approx(0.5)  # happy recall 1, sad recall 0
    assert amb["predicted_within_pair"] == pytest.approx(1.0)
    assert s["unambiguous"]["war"]["value"] == pytest.approx(3 / 4)
    assert s["folds"]["1"]["war"]["value"] == pytest.approx(2 / 3)
    assert s["folds"]["2"]["uar"]["value"] == pytest.approx((1 + 0 + 1) / 3)
    assert s["summary"]["war"]["mean"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert s["pooled"]["uar"]["value"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)

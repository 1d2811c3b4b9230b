"""The zero-training video baseline (issue 18, item 6): the FER2013 classifier per cached face frame, pooled over
time (mean, expressivity-weighted), mapped to the corpus's classes, through the same `video train` workflow and
report as the trained models: on a short clip of skimage's astronaut (happy) and on the synthetic clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from vlm_salience.errors import ConfigError
from vlm_salience.video.classifier_baseline import label_matrix, pool

ROOT = Path(__file__).resolve().parents[1]
DFEW = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
FER = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SMALL_CLIPS = ("clips=21", "frames=8", "size=48")  # = test_video_synth's SMALL: every clip a test clip once


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pooling_against_hand_computed_values():
    p = torch.tensor([[[0.8, 0.2], [0.2, 0.8], [0.5, 0.5]]])  # one clip, 3 frames, 2 classes
    assert torch.allclose(pool(p, None), torch.tensor([[0.5, 0.5]]))
    w = torch.tensor([[3.0, 1.0, 0.0]])  # weights 3/4, 1/4, 0
    assert torch.allclose(pool(p, w), torch.tensor([[0.65, 0.35]]))
    assert torch.allclose(pool(p, torch.zeros(1, 3)), pool(p, None))  # all-neutral clip: the plain mean


def test_label_matrix_follows_the_corpus_order_and_refuses_another_corpus(tmp_path):
    m = label_matrix(ROOT / "configs/labelmaps/fer_to_dfew.yaml", FER, DFEW)
    assert m.shape == (7, 7) and np.allclose(m.sum(axis=1), 1.0)
    for i, c in enumerate(FER):
        assert DFEW[m[i].argmax()] == c  # identity-like: each FER class to its DFEW namesake
    mafw = label_matrix(ROOT / "configs/labelmaps/fer_to_mafw.yaml", FER,
                        ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt",
                         "anxiety", "helplessness", "disappointment"])
    assert mafw.shape == (7, 11) and np.allclose(mafw[:, 7:], 0.0)
    with pytest.raises(ConfigError, match="field 'emotions'"):
        label_matrix(ROOT / "configs/labelmaps/fer_to_dfew.yaml", FER, ["happy", "sad"])


def test_shipped_fer_pooling_configs_validate():
    from vlm_salience.video.config import load_video_config

    found = 0
    for path in sorted((ROOT / "configs/video").glob("fer_pooling*.yaml")):
        cfg, task_cls = load_video_config(path)
        assert task_cls.__name__ == "FerPoolingTask" and cfg.model.kind == "fer_pooling"
        assert Path(cfg.model.label_map).is_file()
        found += 1
    assert found >= 4


def _config(folder: Path, data_yaml: Path, pooling: str = "mean", face_size: int = 64) -> Path:
    det = folder / "haar.yaml"
    det.write_text(yaml.safe_dump({"kind": "haar", "name": "haar", "min_size": 16}))
    cfg = {"name": f"fer_{pooling}",
           "data": {"config": str(data_yaml), "cache": str(folder / "cache"), "n_segments": 4,
                    "prepare": {"n_segments": 4, "candidates_per_segment": 1,
                                "streams": {"face_size": face_size, "scene_size": 32,
                                            "detection": {"detector": str(det)}}},
                    "validation_fraction": 0.2, "memory_cache_mb": 64},
           "model": {"kind": "fer_pooling", "classifier": str(ROOT / "configs/models/face_fer_torch.yaml"),
                     "label_map": str(ROOT / "configs/labelmaps/fer_to_dfew.yaml"), "pooling": pooling},
           "tracker": "none", "report": {"n_boot": 50, "tsne": False}, "seed": 0, "out": str(folder / "run")}
    path = folder / f"fer_{pooling}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _astronaut_corpus(root: Path) -> Path:
    """Four short clips of skimage's astronaut (a smiling face), a few pixels of camera shake per frame."""
    skimage = pytest.importorskip("skimage")
    a = skimage.data.astronaut()[:300, 80:380]  # the head and shoulders
    rows = []
    for c in range(4):
        folder = root / "clips" / f"a{c}"
        folder.mkdir(parents=True)
        for t in range(6):
            dx, dy = 4 * ((t + c) % 3), 3 * ((t * 2 + c) % 3)
            Image.fromarray(np.ascontiguousarray(a[dy:dy + 280, dx:dx + 280])).save(folder / f"{t:03d}.png")
        rows.append({"clip": f"clips/a{c}", "label": "happy", "fold": str(1 + c % 2)})
    pd.DataFrame(rows).to_csv(root / "clips.csv", index=False)
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump({"format": "video_csv", "name": "astronaut", "root": str(root),
                                    "file": "clips.csv", "classes": DFEW}))
    return path


@pytest.mark.parametrize("pooling", ["mean", "expressivity"])
def test_astronaut_clips_are_read_as_happy_through_the_video_workflow(tmp_path, pooling):
    from vlm_salience.video.train import eval_video, train_video

    data = _astronaut_corpus(tmp_path / "corpus")
    cfg = _config(tmp_path, data, pooling)
    res = train_video(cfg, progress=False)
    assert all(r["steps"] == 0 and "zero-training" in r["skipped"] for r in res["folds"].values())
    m = res["report"]["methods"]["fer_pooling"]
    assert m["pooled"]["war"]["value"] == 1.0  # every astronaut clip predicted happy
    run = tmp_path / "run"
    pred = pd.read_csv(run / "predictions.csv")
    assert (pred["predicted"] == "happy").all() and (pred["p_happy"] > 0.5).all()
    for fold in res["folds"]:
        meta = json.loads((run / "models" / fold / "task.json").read_text())
        assert meta["selection"]["selected"].startswith("none") and meta["kind"] == "fer_pooling"
    again = eval_video(cfg, progress=False)  # eval reuses the same path, with nothing to load
    assert again["methods"]["fer_pooling"]["pooled"]["war"]["value"] == 1.0


def test_synthetic_clips_run_and_score_like_the_trained_models(tmp_path, synthetic_clips):
    """The drawn faces are cartoons, far from FER2013's photographs: the figure says little about the model
    (near chance is expected), but the report must be complete and recomputable from predictions.csv."""
    from vlm_salience.video.report import scores_from_predictions
    from vlm_salience.video.train import train_video

    data = synthetic_clips(*SMALL_CLIPS)  # the small corpus test_video_synth checks (written once per session)
    res = train_video(_config(tmp_path, data, "expressivity"), progress=False)
    doc = res["report"]
    m = doc["methods"]["fer_pooling"]
    assert doc["corpus"]["n_test_clips"] == 21 and 0.0 <= m["pooled"]["uar"]["value"] <= 1.0
    df = pd.read_csv(tmp_path / "run" / "predictions.csv")
    probs = df[[f"p_{c}" for c in DFEW]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    again = scores_from_predictions(df, DFEW, n_boot=50, seed=0)
    assert again["pooled"]["uar"]["value"] == pytest.approx(m["pooled"]["uar"]["value"])

"""The frozen-encoder feature cache (video/feature_cache.py) on the synthetic law clips and tiny encoders.

- predictions with and without the cache are equal (fp tolerance) for the baseline and OUS, and a short training
  run gives the same test predictions either way (the batches draw the same rows);
- what is cached is reused by another task (fold, variant) of the same encoder, and never by another encoder (two
  tiny encoders whose config and file sizes agree: only their weights differ) or by a frame cache prepared with
  other settings, even when they share one feature folder; a file with another key is recomputed;
- a run whose image tower trains, whose task augments frames, or with `data.feature_cache: off` encodes frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUS = ROOT / "configs/video/ous_synthetic.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoders(tiny_encoder, tmp_path_factory) -> dict[str, Path]:
    """The session's tiny CLIP, and one built from the same YAML with another seed (same config.json and file
    sizes, so the same checkpoint fingerprint: only the weights tell them apart)."""
    from vlm_salience.config import load_config
    from vlm_salience.models.encoders import TinyEncoderConfig, build_tiny_encoder

    a = tiny_encoder("configs/models/tiny_clip.yaml")
    cfg = load_config(ROOT / "configs/models/tiny_clip.yaml", TinyEncoderConfig).model_copy(update={"seed": 1})
    b = build_tiny_encoder(cfg, tmp_path_factory.mktemp("tiny_seed1") / "clip")
    return {"a": a, "b": b}


def make_task(clips: dict, encoder: Path, tmp: Path, *sets: str, kind: str = "ous", fold: str = "set_1"):
    """A task of the OUS synthetic config (or its baseline variant) on the law clips, set up (model built)."""
    from vlm_salience.video.train import _setup, make_task as make_fold_task

    ov = [f"data.config={clips['data']}", f"data.cache={clips['cache']}", f"data.prepare={clips['prepare']}",
          f"model.encoder.path={encoder}", f"out={tmp / 'run'}", "variants=[]", *sets]
    cfg, task_cls, corpus, _, store_factory = _setup(OUS if kind == "ous" else _baseline_yaml(tmp), ov, False)
    task = make_fold_task(cfg, task_cls, corpus, fold, store_factory())
    torch.manual_seed(0)
    task.setup()
    return task


def _baseline_yaml(tmp: Path) -> Path:
    """The OUS synthetic config's baseline variant as a YAML of its own (the shared fields kept)."""
    raw = yaml.safe_load(OUS.read_text())
    keep = {"kind", "encoder", "context_tokens", "temporal", "temperature", "vision", "lr"}
    raw["model"] = {k: v for k, v in raw["model"].items() if k in keep}
    raw["model"]["kind"] = "baseline"
    raw["model"]["lr"] = {k: v for k, v in raw["model"]["lr"].items() if k in ("temporal", "vision", "prompt")}
    for key in ("config", "cache", "prepare"):
        raw["data"][key] = str((OUS.parent / raw["data"][key]).resolve())
    raw["model"]["encoder"] = {"path": "unset"}
    raw.pop("variants", None)
    raw.pop("compare_to", None)
    path = tmp / "baseline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def some_ids(task, n: int = 8) -> list[str]:
    """n training clips and n clips of neither training nor validation (test clips, not encoded in setup)."""
    seen = set(task.train_ids + task.val_ids)
    return task.train_ids[:n] + [c for c in task.store.cache.ids() if c not in seen][:n]


def _same(p, q, tol: float = 1e-5) -> None:
    assert p.clip_ids == q.clip_ids
    np.testing.assert_allclose(p.probs, q.probs, atol=tol, rtol=0)
    np.testing.assert_allclose(p.features, q.features, atol=tol, rtol=0)


@pytest.mark.parametrize("kind", ["ous", "baseline"])
def test_predictions_equal_with_and_without_the_cache(kind, law_clips, encoders, tmp_path):
    from vlm_salience.video.feature_cache import EncodedFrames

    task = make_task(law_clips, encoders["a"], tmp_path, kind=kind)
    fc = task.feature_cache(task.model)
    assert fc is not None, task.feature_cache_reason
    assert fc.computed == len(set(task.train_ids + task.val_ids)) * len(task.streams)  # filled in setup
    batch = task.collate([0, 1, 2], epoch=3)
    assert all(isinstance(batch[s], EncodedFrames) for s in task.streams)
    off = make_task(law_clips, encoders["a"], tmp_path, "data.feature_cache=off", kind=kind)
    assert off.feature_cache(task.model) is None
    frames = off.collate([0, 1, 2], epoch=3)
    assert frames["face"].dtype == torch.uint8
    ids = some_ids(task)  # test clips too: encoded when first predicted
    _same(task.predict(task.model, ids), off.predict(task.model, ids))
    # training batches read the same rows: the model's loss on a cached batch is the live one's
    task.model.train()
    with torch.no_grad():
        live, cached = float(off.loss(task.model, frames)), float(task.loss(task.model, batch))
    assert abs(live - cached) < 1e-5


def test_short_training_gives_the_same_predictions(law_clips, encoders, tmp_path):
    from vlm_salience.video.train import train_video

    common = [f"data.config={law_clips['data']}", f"data.cache={law_clips['cache']}",
              f"data.prepare={law_clips['prepare']}", "data.folds=[set_1]", f"model.encoder.path={encoders['a']}",
              "variants=[]", "optim.max_steps=12", "eval.every_steps=6", "report.n_boot=0", "report.tsne=false"]
    for setting in ("auto", "off"):
        train_video(OUS, [*common, f"out={tmp_path / setting}", f"data.feature_cache={setting}"], progress=False)
    import pandas as pd

    a, b = (pd.read_csv(tmp_path / s / "predictions.csv") for s in ("auto", "off"))
    assert len(a) > 0 and (a["clip_id"] == b["clip_id"]).all()
    prob_cols = [c for c in a.columns if c.startswith("p_")]
    assert prob_cols
    np.testing.assert_allclose(a[prob_cols].to_numpy(), b[prob_cols].to_numpy(), atol=1e-4)
    assert any((law_clips["cache"] / "features").rglob("*.safetensors"))  # the default folder: <cache>/features


def test_reused_by_the_same_encoder_never_by_another_or_other_prepare_settings(law_clips, encoders, tmp_path,
                                                                               synthetic_clips):
    shared = f"data.feature_dir={tmp_path / 'features'}"
    first = make_task(law_clips, encoders["a"], tmp_path, shared)
    n = first.feature_cache(first.model).computed
    assert n > 0
    # another fold's task (and so another variant's) of the same encoder reads what the first wrote
    again = make_task(law_clips, encoders["a"], tmp_path, shared)
    assert again.feature_cache(again.model).computed == 0
    ids = some_ids(first)
    _same(again.predict(again.model, ids), make_task(law_clips, encoders["a"], tmp_path, "data.feature_cache=off")
          .predict(again.model, ids))

    # another encoder with the same checkpoint fingerprint (config, file sizes): recomputed, its own outputs
    other = make_task(law_clips, encoders["b"], tmp_path, shared)
    fo = other.feature_cache(other.model)
    assert fo.folder != first.feature_cache(first.model).folder and fo.computed == n
    live = make_task(law_clips, encoders["b"], tmp_path, "data.feature_cache=off")
    _same(other.predict(other.model, ids), live.predict(other.model, ids))

    # the same clips prepared with other settings (face mask filled black) into another frame cache, one feature
    # folder: their features are computed from their own frames
    from vlm_salience.video.prepare import load_prepare_config, prepare_corpus

    prep = yaml.safe_load(Path(law_clips["prepare"]).read_text())
    prep["streams"]["mask_fill"] = "black"
    prep_path = tmp_path / "prepare_black.yaml"
    prep_path.write_text(yaml.safe_dump(prep))
    black = {**law_clips, "prepare": prep_path, "cache": tmp_path / "cache_black"}
    prepare_corpus(law_clips["data"], load_prepare_config(prep_path), black["cache"], progress=False)
    re_prep = make_task(black, encoders["a"], tmp_path, shared)
    assert re_prep.feature_cache(re_prep.model).computed > 0
    live = make_task(black, encoders["a"], tmp_path, "data.feature_cache=off")
    _same(re_prep.predict(re_prep.model, ids), live.predict(re_prep.model, ids))


def test_a_file_with_another_key_is_recomputed(law_clips, encoders, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save

    task = make_task(law_clips, encoders["a"], tmp_path)
    fc = task.feature_cache(task.model)
    cid = task.train_ids[0]
    path = fc.path(cid, "scene")
    with safe_open(str(path), framework="np") as f:
        meta, arrays = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    good = arrays["embeds"].copy()
    arrays["embeds"] = arrays["embeds"] + 1.0  # planted wrong values under another key
    path.write_bytes(save(arrays, metadata={**meta, "key": "0" * 64}))
    fresh = make_task(law_clips, encoders["a"], tmp_path)  # its setup finds the file stale and rewrites it
    assert fresh.feature_cache(fresh.model).computed == 1
    np.testing.assert_allclose(fresh.feature_cache(fresh.model).get(cid).arrays["scene/embeds"], good, atol=1e-6)


def test_training_tower_augmentation_or_off_encode_frames(law_clips, encoders, tmp_path):
    from vlm_salience.ous.task import OusTask

    unfrozen = make_task(law_clips, encoders["a"], tmp_path, "model.vision=train")
    assert unfrozen.feature_cache(unfrozen.model) is None and "trains" in unfrozen.feature_cache_reason
    assert unfrozen.collate([0], epoch=0)["face"].dtype == torch.uint8

    class Augmenting(OusTask):
        augments_frames = True

    task = make_task(law_clips, encoders["a"], tmp_path)
    aug = Augmenting(task.cfg, fold=task.fold, classes=task.classes, labels=task.labels, train_ids=task.train_ids,
                     val_ids=task.val_ids, store=task.store, polarity=task.polarity)
    aug.setup()
    assert aug.feature_cache(aug.model) is None and "augments" in aug.feature_cache_reason
    assert aug.collate([0], epoch=0)["face"].dtype == torch.uint8
    off = make_task(law_clips, encoders["a"], tmp_path, "data.feature_cache=off")
    assert off.feature_cache(off.model) is None and off.collate([0], epoch=0)["scene"].dtype == torch.uint8


def test_a_clip_without_frames_of_a_stream_is_named(encoders, tmp_path):
    from types import SimpleNamespace

    from vlm_salience.errors import DataError
    from vlm_salience.models.encoders import EncoderConfig, load_encoder
    from vlm_salience.video.feature_cache import FeatureCache, FeatureRequest

    clip = SimpleNamespace(slots=np.zeros((4, 1), np.int32), arrays={"face": np.zeros((4, 32, 32, 3), np.uint8),
                                                                     "scene": np.zeros((0, 32, 32, 3), np.uint8)})
    cache = SimpleNamespace(root=tmp_path, manifest={"config_hash": "h"}, entry=lambda cid: {"file": "clips/ab/k.npz"})
    store = SimpleNamespace(cache=cache, streams=("face", "scene"), get=lambda cid: clip)
    fc = FeatureCache(tmp_path / "features", load_encoder(EncoderConfig(path=str(encoders["a"]))), None,
                      {"face": FeatureRequest(), "scene": FeatureRequest(blocks=(1,))}, store)
    with pytest.raises(DataError, match="clip 'x' has no scene frames"):
        fc.ensure(["x"])

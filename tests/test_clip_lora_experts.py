"""LoRA experts in salience routing on clips (`kind: lora`, training/clip_lora_experts.py): per fold and expert, an
adapter trained on that fold's fit clips of the expert's stream only, then label-scoring the fold's validation and
test clips. What must hold: no adapter sees a validation or test clip of its fold (checked on the rows the training
actually read), each fold has its own adapter, each expert scores with the adapter of its own stream (checked by
re-scoring with the adapter files through the clip training's own scorer), and a rerun reuses finished adapters.

Tiny budgets: a 24-clip salience-law corpus (2 folds, 3 classes), the tiny random Qwen2-VL, 3 training steps per
adapter. A random tiny VLM learns nothing worth reporting: these tests check plumbing, never accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLIPS = ("clips=24", "frames=8", "size=48", "folds=2", "layouts=[generic]", "classes=[happy,neutral,sad]",
         "law.kind=salience", "law.pairs=[]", "distractor_rate=0", "law.scene_agreement=0.34")
TRAIN = {"lora": {"r": 4, "alpha": 8}, "optim": {"lr": 1e-2, "max_steps": 3, "batch_size": 4},
         "eval": {"max_items": 3}, "checkpoint": {"every_steps": None}}
ROLES = {"face": "face", "context": "scene"}


def _routing(w: Path, data: Path, model: Path, **extra):
    from vlm_salience.training.clip_routing import ClipRoutingConfig

    base = {"name": "tiny", "path": str(model)}
    return ClipRoutingConfig.model_validate({
        "name": "lora_route", "data": str(data), "frame_cache": str(w / "cache"), "frames": 2,
        "face": {"name": "face", "stream": "face", "kind": "lora", "model": base, "train": TRAIN, "mode": "images"},
        "context": {"name": "context", "stream": "scene", "kind": "lora", "model": base, "train": TRAIN,
                    "mode": "images"},
        "expressivity": {"source": "column"}, "out": str(w / "out"), "report": {"n_boot": 50, "figures": False},
        **extra})


@pytest.fixture(scope="module")
def routed(tmp_path_factory, tiny_vlms) -> dict:
    """The corpus written and prepared, routed once with two LoRA experts; every clip the training read (the
    collator's frames: ClipTrainingData.clip_reader) recorded as (fold, stream, clip)."""
    import torch

    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.training.clip_routing import route_clips
    from vlm_salience.training.clip_training import ClipTrainingData
    from vlm_salience.video.prepare import load_prepare_config, prepare_corpus

    w = tmp_path_factory.mktemp("lora_route")
    data = write_clip_corpus(load_config(REPO / "configs" / "synth" / "clips.yaml", ClipSynthConfig, list(CLIPS)),
                             w / "clips", progress=False)
    (w / "haar.yaml").write_text(yaml.safe_dump({"kind": "haar", "name": "haar", "upscale_below": 32,
                                                  "min_size": 16}))
    (w / "prepare.yaml").write_text(yaml.safe_dump({
        "n_segments": 4, "candidates_per_segment": 2,
        "streams": {"face_size": 32, "scene_size": 32, "mask_fill": "black", "mask_pad": 0.3,
                    "detection": {"detector": str(w / "haar.yaml"), "max_side": None}}}))
    prepare_corpus(data, load_prepare_config(w / "prepare.yaml"), w / "cache", progress=False)
    cfg = _routing(w, data, tiny_vlms["qwen2_vl"])
    read: list[tuple[str, str, str]] = []
    real = ClipTrainingData.clip_reader

    def spy(self, example, rng):
        read.append((str(self.fold), self.cfg.data.clip.stream, str(example["item_id"])))
        return real(self, example, rng)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ClipTrainingData, "clip_reader", spy)
            summary = route_clips(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"summary": summary, "cfg": cfg, "data": data, "out": w / "out", "read": read, "w": w,
            "model": tiny_vlms["qwen2_vl"]}


def _parts(r) -> dict[str, dict[str, list[str]]]:
    """Each fold's fit / validation / test clips, carved here as the routing must carve them."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.data.video.records import carve_validation

    corpus = load_video_corpus(r["data"])
    out = {}
    for fold, p in corpus.folds.items():
        fit, val = carve_validation(corpus, list(p["train"]), r["cfg"].validation_fraction, r["cfg"].seed)
        out[fold] = {"fit": fit, "validation": val, "test": list(p["test"])}
    return out


def _adapter(r, fold: str, expert: str) -> Path:
    return r["out"] / "lora" / "folds" / fold / "adapters" / expert


def test_routing_with_lora_experts_writes_the_usual_files(routed):
    """The run finishes and writes routing.json, report.md and one video run folder per method, each predicting
    exactly every fold's test clips; the report names the adapter each expert scored with."""
    parts = _parts(routed)
    expected = sorted((f, c) for f, p in parts.items() for c in p["test"])
    for name in ("expert__face", "expert__context", "routed__hard", "routed__soft", "routed__learned",
                 "control__shuffled"):
        df = pd.read_csv(routed["out"] / name / "predictions.csv", dtype={"fold": str, "clip_id": str})
        assert sorted(zip(df.fold, df.clip_id)) == expected, name
        assert (routed["out"] / name / "metrics.json").is_file()
    doc = json.loads((routed["out"] / "routing.json").read_text())
    assert set(doc["calibration"]) == set(parts) and doc["best_single"] in ("expert/face", "expert/context")
    for fold, c in doc["calibration"].items():
        assert set(c["adapters"]) == {"face", "context"} and c["fit_clips"] == len(parts[fold]["fit"])
    report = (routed["out"] / "report.md").read_text()
    assert "context LoRA adapter" in report and "scene stream" in report


def test_each_adapter_is_trained_on_its_folds_fit_clips_only(routed):
    """Planted bug caught: an adapter trained on its fold's validation or test clips. Both what the adapter records
    (the ids of its training rows) and what the collator read during training are the fold's fit clips, never a
    validation or a test clip."""
    parts = _parts(routed)
    for fold, p in parts.items():
        for expert, stream in ROLES.items():
            rec = json.loads((_adapter(routed, fold, expert) / "expert.json").read_text())
            assert rec["trained_on"] == sorted(p["fit"]), (fold, expert)
            assert rec["validation"] == p["validation"]
            seen = {c for f, s, c in routed["read"] if f == fold and s == stream}
            assert seen and seen <= set(p["fit"]), (fold, expert, sorted(seen - set(p["fit"])))
            assert not seen & (set(p["validation"]) | set(p["test"]))


def test_each_fold_has_its_own_adapter(routed):
    """Planted bug caught: one adapter reused across folds. Each (fold, expert) has its own adapter folder, recorded
    as that fold's, with weights unlike every other's, and routing.json names it as the one that scored that fold."""
    from vlm_salience.training.routing import adapter_fingerprint

    doc = json.loads((routed["out"] / "routing.json").read_text())
    fps = {}
    for fold in _parts(routed):
        for expert in ROLES:
            folder = _adapter(routed, fold, expert)
            rec = json.loads((folder / "expert.json").read_text())
            assert rec["fold"] == fold and rec["expert"] == expert
            fps[fold, expert] = adapter_fingerprint(folder)
            used = doc["calibration"][fold]["adapters"][expert]
            assert Path(used["adapter"]) == folder and used["adapter_fingerprint"] == fps[fold, expert]
            assert not used["reused"] and used["steps"] == TRAIN["optim"]["max_steps"]
    assert len(set(fps.values())) == len(fps) == 4


def _rescore(r, fold: str, adapter: Path, stream: str, ids: list[str]) -> np.ndarray:
    """Class distributions of clips on one stream scored with an adapter loaded from its folder, through the clip
    training's scorer (clip_training.score_clips), not the routing's."""
    from peft import PeftModel

    from vlm_salience.models.loading import LoadedVLM, ModelConfig, load_vlm
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.training.clip_training import ClipTrainConfig, ClipTrainingData, score_clips

    tcfg = ClipTrainConfig.model_validate({
        "name": "rescore", "model": {"name": "tiny", "path": str(r["model"])}, "adapters": [{"name": "x"}],
        "data": {"config": str(r["data"]), "frame_cache": str(r["w"] / "cache"), "validation_fraction": 0.25,
                 "clip": {"frames": 2, "stream": stream, "mode": "images"}}, "out": str(r["w"] / "rescore")})
    base = load_vlm(ModelConfig(name="tiny", path=str(r["model"])))
    model = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    backend = HFBackend(LoadedVLM(model=model, processor=base.processor, family=base.family, config=base.config),
                        batch_size=4)
    probs, failed = score_clips(backend, ClipTrainingData(tcfg, fold), load_template("clip_emotion"), ids, "images")
    assert not failed
    return np.stack([probs[c] for c in ids])


def test_each_expert_scores_with_its_own_streams_adapter(routed):
    """Planted bug caught: the adapter trained on the face stream used for the scene (context) expert. Each
    adapter records and read its expert's stream; in every fold the context expert's test predictions are what that
    fold's scene adapter gives the scene frames, not what the face adapter or another fold's scene adapter gives them
    (so this also catches one fold's adapter scoring another fold)."""
    parts = _parts(routed)
    for fold in parts:
        for expert, stream in ROLES.items():
            assert json.loads((_adapter(routed, fold, expert) / "expert.json").read_text())["stream"] == stream
            assert {s for f, s, _ in routed["read"] if f == fold} == set(ROLES.values())
    df = pd.read_csv(routed["out"] / "expert__context" / "predictions.csv", dtype={"fold": str, "clip_id": str})
    for fold, other in (sorted(parts), sorted(parts)[::-1]):  # every fold: a reused adapter shows in a later one
        ids = parts[fold]["test"][:2]
        got = df.set_index("clip_id").loc[ids, ["p_happy", "p_neutral", "p_sad"]].to_numpy()
        own = _rescore(routed, fold, _adapter(routed, fold, "context"), "scene", ids)
        assert np.abs(got - own).max() < 1e-5, fold
        for wrong in (_adapter(routed, fold, "face"), _adapter(routed, other, "context")):
            # 3-step adapters stay near the base, so another adapter's answers differ by ~1e-3 (8.8e-4 seen): far
            # above the 1e-5 to which the own adapter's re-scoring agrees
            assert np.abs(got - _rescore(routed, fold, wrong, "scene", ids)).max() > 1e-4, (fold, wrong)


def test_rerun_reuses_finished_adapters_and_retrains_changed_ones(routed, tmp_path, monkeypatch):
    """A rerun trains nothing and predicts the same; a changed training setting retrains that expert only (its
    identity changes, so its answers are asked afresh under the new adapter's fingerprint)."""
    from vlm_salience.engine.engine import Engine
    from vlm_salience.training.clip_routing import route_clips

    out = Path(shutil.copytree(routed["out"], tmp_path / "out"))
    cfg = routed["cfg"].model_copy(update={"out": out})
    monkeypatch.setattr(Engine, "run", lambda self: (_ for _ in ()).throw(AssertionError("trained again")))
    again = route_clips(cfg, progress=False)
    for fold, c in again["calibration"].items():
        assert all(a["reused"] for a in c["adapters"].values())
    for name in ("expert__face", "expert__context", "routed__soft"):
        a, b = (pd.read_csv(o / name / "predictions.csv") for o in (routed["out"], out))
        assert np.allclose(a.filter(like="p_"), b.filter(like="p_"), atol=1e-6)
    monkeypatch.undo()
    trained = []
    real = Engine.run

    def count(self):
        trained.append(self.task.name)
        return real(self)
    monkeypatch.setattr(Engine, "run", count)
    fold = sorted(routed["summary"]["calibration"])[0]
    face = cfg.face.model_copy(update={"train": {**TRAIN, "optim": {**TRAIN["optim"], "lr": 2e-2}}})
    changed = route_clips(cfg.model_copy(update={"face": face, "folds": [fold]}), progress=False)
    assert trained == ["face"]
    a = changed["calibration"][fold]["adapters"]
    assert not a["face"]["reused"] and a["context"]["reused"]
    before = routed["summary"]["calibration"][fold]["adapters"]["face"]["adapter_fingerprint"]
    assert a["face"]["adapter_fingerprint"] != before


def test_lora_expert_config_errors(routed, tmp_path):
    """A LoRA expert without a base model, a `train` key the routing decides, two experts of one name, and an
    unknown training key are refused up front, naming the field."""
    from vlm_salience.errors import ConfigError
    from vlm_salience.training.clip_lora_experts import expert_training_config
    from vlm_salience.training.clip_routing import ClipRoutingConfig, ExpertSpec

    with pytest.raises(ValueError, match="kind lora needs `model`"):
        ExpertSpec(name="f", stream="face", kind="lora")
    for train, key in (({"seed": 1}, "train.seed"), ({"data": {"clip": {"stream": "face"}}}, "train.data.clip.stream"),
                       ({"data": {"folds": ["1"]}}, "train.data.folds")):
        with pytest.raises(ValueError, match=f"{key} is set by the routing"):
            ExpertSpec(name="c", stream="scene", kind="lora", model={"name": "t", "path": "x"}, train=train)
    with pytest.raises(ValueError, match="`train` is for kind lora"):
        ExpertSpec(name="c", stream="scene", kind="pixels", train={"optim": {"lr": 1}})
    raw = routed["cfg"].model_dump(mode="json")
    with pytest.raises(ValueError, match="share the name 'face'"):
        ClipRoutingConfig.model_validate({**raw, "context": {**raw["context"], "name": "face"}})
    spec = routed["cfg"].face.model_copy(update={"train": {"optim": {"lrr": 1}}})
    with pytest.raises(ConfigError, match=r"expert 'face'.*optim\.lrr"):
        expert_training_config(routed["cfg"], spec)


def test_shipped_lora_routing_config_validates():
    """configs/experiment/route_clips_lora_synthetic.yaml: both experts are LoRA experts whose training configs
    build (the base model's `build` YAML resolved against the config's folder)."""
    from vlm_salience.config import load_config
    from vlm_salience.training.clip_lora_experts import expert_training_config
    from vlm_salience.training.clip_routing import ClipRoutingConfig

    path = REPO / "configs" / "experiment" / "route_clips_lora_synthetic.yaml"
    cfg = load_config(path, ClipRoutingConfig)
    for spec, stream in ((cfg.face, "face"), (cfg.context, "scene")):
        assert spec.kind == "lora" and spec.stream == stream
        t = expert_training_config(cfg, spec)
        assert t.model.build.is_file() and t.data.clip.stream == stream and t.adapters[0].name == spec.name
        assert t.seed == cfg.seed and t.data.validation_fraction == cfg.validation_fraction
    for other in sorted((REPO / "configs" / "experiment").glob("route_clips*.yaml")):
        load_config(other, ClipRoutingConfig)


def test_a_lora_expert_is_scored_in_the_input_form_it_was_trained_on(routed, monkeypatch):
    """Review finding, fixed: a family whose clips train as frames as images (LLaVA-OneVision under `auto`) must be
    scored as images too, never as the native video its prompting path would pick."""
    from types import SimpleNamespace

    import vlm_salience.prompting.hf_backend as hb
    import vlm_salience.training.clip_lora_experts as le
    import vlm_salience.training.clip_scoring as cs
    import vlm_salience.training.routing as rt
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.training.clip_training import fold_config

    cfg = routed["cfg"].model_copy(deep=True)
    spec = cfg.face.model_copy(update={"mode": "auto"})
    seen = {}
    monkeypatch.setattr(le, "train_expert", lambda cfg_, spec_, corpus, fold, fit, **k: (
        fold_config(le.expert_training_config(cfg_, spec_), fold),
        {"stream": "face", "fold": fold, "trained_on": fit}, True))
    monkeypatch.setattr(rt, "load_with_adapters", lambda *a, **k: SimpleNamespace(family="llava_onevision"))
    monkeypatch.setattr(rt, "adapter_fingerprint", lambda folder: "fp")
    monkeypatch.setattr(hb, "HFBackend", lambda loaded, **k: SimpleNamespace(fingerprint=lambda: "base"))
    monkeypatch.setattr(cs, "score_stream", lambda *a, mode=None, **k: seen.setdefault("mode", mode) and {})
    corpus = load_video_corpus(routed["data"])
    fold = sorted(corpus.folds)[0]
    le.lora_expert_probs(cfg, spec, corpus, SimpleNamespace(with_frames=lambda n: None), fold, ["a"], ["b"],
                         ranks=SimpleNamespace(is_main=True, barrier=lambda: None))
    assert seen["mode"] == "images"  # prompting alone would resolve auto to "video" for this family


def test_an_adapter_identity_changes_when_the_frame_cache_is_prepared_again(routed, tmp_path):
    """Review finding, fixed: the cache folder keeps its path when it is prepared again (another detector), so the
    adapter identity reads the cache's settings hash and the clips' keys, not the path."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.training.clip_lora_experts import expert_training_config, training_identity
    from vlm_salience.training.clip_training import ClipTrainingData, fold_config

    cfg = routed["cfg"]
    corpus = load_video_corpus(routed["data"])
    fold = sorted(corpus.folds)[0]
    cache = tmp_path / "cache"
    shutil.copytree(routed["w"] / "cache", cache)
    tcfg = fold_config(expert_training_config(cfg.model_copy(update={"frame_cache": cache}), cfg.face), fold)
    parts = ClipTrainingData(tcfg, fold, corpus).parts
    before = training_identity(tcfg, fold, parts)
    manifest = json.loads((cache / "manifest.json").read_text())
    first = parts["train"][0]
    manifest["clips"][first]["key"] = "0" * 32  # the same clip prepared from other settings
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert training_identity(tcfg, fold, parts) != before

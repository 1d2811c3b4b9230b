"""Fine-tuning: data and masking, LoRA targets, the loop (resume, kill, two processes), routing, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, needs_minilm
from vlm_salience.config import load_config
from vlm_salience.errors import ConfigError
from vlm_salience.training.config import TrainConfig

VENV_BIN = Path(sys.executable).parent


def _config(tmp_path: Path, corpus: Path, model: Path, **over) -> Path:
    cfg = {
        "name": "t", "model": {"name": "tiny", "path": str(model)}, "data": {"config": str(corpus)},
        "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
        "split": {"test_fraction": 0.25, "validation_fraction": 0.15, "group": "participant"},
        "adapters": [{"name": "combined", "template": "combined"}],
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "optim": {"lr": 1e-3, "max_steps": 8, "batch_size": 2},
        "checkpoint": {"every_steps": 2, "keep": 2}, "tensorboard": False, "out": str(tmp_path / "out"),
    }
    for key, value in over.items():
        node = cfg
        *head, last = key.split("__")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(out: Path, adapter: str = "combined") -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapters" / adapter / "adapter_model.safetensors"))


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "vlm-salience"), *args], capture_output=True, text=True, env=env,
                          timeout=600)


# ---------------------------------------------------------------------------------------------------------------

def test_instruction_data_masks_everything_but_the_answer(tmp_path, small_synth_corpus, tiny_vlms):
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.training.collator import IGNORE, VLMCollator
    from vlm_salience.training.data import TrainingData

    for family in ("qwen2_vl", "llava", "idefics3"):
        cfg = load_config(_config(tmp_path, small_synth_corpus, tiny_vlms[family]), TrainConfig)
        data = TrainingData(cfg)
        ds = data.dataset(cfg.adapters[0])
        assert set(ds.column_names) >= {"item_id", "messages", "image", "answer_fields"}
        v = load_vlm(ModelConfig(name=family, path=str(tiny_vlms[family])))
        tok = v.tokenizer
        col = VLMCollator(v.processor, v.family, max_length=1024, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, seed=0)
        ex = [dict(ds[i]) for i in range(3)]
        batch = col([col.encode(e, i, epoch=0) for i, e in enumerate(ex)])
        for b, e in enumerate(ex):
            labelled = batch["labels"][b][batch["labels"][b] != IGNORE]
            text = tok.decode(labelled[:-1])
            assert json.loads(text) == json.loads(e["answer_fields"])  # the answer, and only the answer
            assert labelled[-1] == tok.eos_token_id
            # no image or padding token is ever a target
            image_id = getattr(v.model.config, "image_token_id", None) or v.model.config.image_token_index
            assert not (batch["labels"][b] == image_id).any()
            assert (batch["labels"][b][batch["attention_mask"][b] == 0] == IGNORE).all()
        assert "pixel_values" in batch
        # key order changes with the epoch, deterministically
        orders = {col.answer_text(ex[0], 0, epoch) for epoch in range(8)}
        assert len(orders) > 1 and col.answer_text(ex[0], 0, 3) == col.answer_text(ex[0], 0, 3)


@needs_minilm
def test_retrieved_examples_come_from_training_items_of_other_participants(tmp_path, small_synth_corpus,
                                                                           tiny_vlms):
    """`examples: retrieved`: the SFT prompts carry similar past cases, drawn from training items only (never a
    validation or test item: their labels would leak into training) and never the item's own participant."""
    from vlm_salience.training.data import TrainingData
    from vlm_salience.training.loop import Trainer
    from vlm_salience.training.vlm_task import retrieved_examples

    path = _config(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"], optim__max_steps=2,
                   checkpoint__every_steps=None, adapters=[{"name": "fewshot", "examples": "retrieved", "k": 2}])
    cfg = load_config(path, TrainConfig)
    data = TrainingData(cfg)
    ids = data.corpus.item_ids
    train_ids = set(ids[data.splits.train])
    held_out = set(ids[data.splits.test]) | set(ids[data.splits.validation])
    participant = dict(zip(ids, data.corpus.groups("participant")))
    examples = retrieved_examples(data, cfg.adapters[0])
    for i in data.splits.train:
        got = examples(int(i), 2)
        assert len(got) == 2
        for ex in got:
            assert ex["item_id"] in train_ids and ex["item_id"] not in held_out
            assert ex["item_id"] != ids[i] and participant[ex["item_id"]] != participant[ids[i]]
            assert ex["answer"]  # the observers' judgement, as the prompt shows it
    ds = data.dataset(cfg.adapters[0], "train", examples)
    first = json.loads(ds[0]["messages"])
    text = json.dumps(first)
    assert "Past cases" in text
    shown = examples(int(data.items_for(cfg.adapters[0])[0]), 2)
    assert all(json.dumps(ex["situation"])[1:-1] in text for ex in shown)
    # and it trains end to end, recording where its examples came from
    result = Trainer(cfg, cfg.adapters[0], data=data, progress=False).train()
    assert result["steps"] == 2
    meta = json.loads((Path(cfg.out) / "adapters" / "fewshot" / "training.json").read_text())
    assert meta["examples"] == "retrieved"


def test_lora_targets_the_language_model_unless_told_otherwise(tiny_vlms):
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.training.config import LoraConfig
    from vlm_salience.training.lora import target_modules

    model = load_vlm(ModelConfig(name="q", path=str(tiny_vlms["qwen2_vl"]))).model
    lang = target_modules(model, LoraConfig())
    assert lang and not any("visual" in n for n in lang) and not any(n.endswith("lm_head") for n in lang)
    with_proj = target_modules(model, LoraConfig(target="language+projector"))
    assert any("merger" in n for n in with_proj) and not any("blocks" in n for n in with_proj if "visual" in n)
    everything = target_modules(model, LoraConfig(target="all"))
    assert any("visual.blocks" in n for n in everything)
    with pytest.raises(ConfigError, match="matches no linear layer"):
        target_modules(model, LoraConfig(target_modules=["not_a_layer"]))


def test_bad_configs_fail_before_training(tmp_path, small_synth_corpus, tiny_vlms, monkeypatch):
    from vlm_salience.training.loop import Trainer

    path = _config(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"], optim__learning_rate=1.0)
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(path, TrainConfig)
    path = _config(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"], lora__r="eight")
    with pytest.raises(ConfigError, match="lora.r"):
        load_config(path, TrainConfig)
    cfg = load_config(_config(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"],
                              lora__target_modules=["q_projection"]), TrainConfig)
    with pytest.raises(ConfigError, match="matches no linear layer"):
        Trainer(cfg, cfg.adapters[0], progress=False).train()
    from vlm_salience.training import collator

    cfg = load_config(_config(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"]), TrainConfig)
    monkeypatch.setattr(collator.VLMCollator, "answer_text", lambda self, ex, i, epoch: "")
    with pytest.raises(ConfigError, match="no trainable tokens"):
        Trainer(cfg, cfg.adapters[0], progress=False).train()


def test_training_learns_saves_safetensors_and_resumes_exactly_after_sigkill(tmp_path, small_synth_corpus,
                                                                             tiny_vlms):
    model = tiny_vlms["qwen2_vl"]
    # deterministic kernels: bit-identical on CUDA too (on a CPU it is without them)
    ref = _config(tmp_path / "ref", small_synth_corpus, model, deterministic=True)
    r = _cli("train", str(ref), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    out_ref = tmp_path / "ref" / "out"
    files = {p.name for p in (out_ref / "adapters" / "combined").iterdir()}
    assert "adapter_model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    ckpt = sorted((out_ref / "checkpoints" / "combined").glob("step-*"))
    assert [c.name for c in ckpt] == ["step-6", "step-8"]  # keep: 2
    torch.load(ckpt[-1] / "optimizer.pt", weights_only=True)  # state loads without unpickling code
    base = load_file(str(ckpt[0] / "model" / "adapter_model.safetensors"))
    assert any(not torch.equal(base[k], v) for k, v in _weights(out_ref).items())  # it trained

    # the same run, killed (SIGKILL) after its step-4 checkpoint, then resumed
    run = _config(tmp_path / "run", small_synth_corpus, model, deterministic=True)
    out = tmp_path / "run" / "out"
    proc = subprocess.Popen([str(VENV_BIN / "vlm-salience"), "train", str(run), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "combined" / "step-4" / "trainer_state.json").exists():
        assert time.time() < deadline and proc.poll() is None, "the run ended before its step-4 checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "adapters" / "combined").exists()
    r = _cli("train", str(run), "--resume", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(out_ref), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _logged_steps(out: Path, adapter: str = "combined") -> list[int]:
    """Steps the engine has logged so far (complete lines of its metrics.jsonl)."""
    path = out / "logs" / adapter / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the last piece may be a line being written
    return [json.loads(line)["step"] for line in lines if line.strip()]


def test_sigterm_checkpoints_and_stops(tmp_path, small_synth_corpus, tiny_vlms):
    run = _config(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"], optim__max_steps=400,
                  checkpoint__every_steps=1000, log_every=1)
    out = tmp_path / "out"
    proc = subprocess.Popen([str(VENV_BIN / "vlm-salience"), "train", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # the condition: a first optimizer step logged (never a time or a progress-bar frame, which tqdm may skip)
    while not _logged_steps(out):
        assert proc.poll() is None, "the run ended before its first logged step"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, text[-2000:]
    assert "stopped at step" in text
    step = int(text.split("stopped at step ")[1].split()[0])
    assert 1 <= step < 400 and max(_logged_steps(out)) == step  # it finished the step it was in, and no other
    assert (out / "checkpoints" / "combined" / f"step-{step}" / "trainer_state.json").is_file()
    assert not (out / "adapters" / "combined").exists()  # a stopped run exports nothing


def test_a_checkpoint_from_another_base_is_refused(tmp_path, small_synth_corpus, tiny_vlms):
    run = _config(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"], optim__max_steps=2)
    assert _cli("train", str(run), "--quiet").returncode == 0
    other = _config(tmp_path, small_synth_corpus, tiny_vlms["llava"], optim__max_steps=4)
    r = _cli("train", str(other), "--resume", "--quiet")
    assert r.returncode == 2 and "trained on another base model" in r.stderr


def test_two_process_training_keeps_replicas_identical(tmp_path, small_synth_corpus, tiny_vlms):
    run = _config(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"], optim__max_steps=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(VENV_BIN / "accelerate"), "launch", "--config_file",
                        str(REPO / "configs" / "accelerate" / "cpu_ddp.yaml"), "--main_process_port", "29533",
                        "-m", "vlm_salience.cli", "train", str(run), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    digests = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "rank_digests").glob("*.json"))]
    assert len(digests) == 2 and digests[0]["sha256"] == digests[1]["sha256"]
    state = json.loads(next((tmp_path / "out" / "checkpoints" / "combined").glob("step-4")).joinpath(
        "trainer_state.json").read_text())
    assert state["world_size"] == 2


def test_qlora_bf16_and_gradient_checkpointing_run(tmp_path, small_synth_corpus, tiny_vlms):
    from vlm_salience.training.loop import Trainer

    for over in ({"lora__quantization": "4bit"}, {"precision": "bf16", "gradient_checkpointing": True}):
        cfg = load_config(_config(tmp_path / str(len(over)), small_synth_corpus, tiny_vlms["qwen2_vl"],
                                  optim__max_steps=2, checkpoint__every_steps=None, **over), TrainConfig)
        result = Trainer(cfg, cfg.adapters[0], progress=False).train()
        assert result["steps"] == 2 and np.isfinite(result["final_eval"]["eval/kld"])


def test_experts_route_in_one_pass_and_export(tmp_path, synth_corpus, tiny_vlms):
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.training.loop import train_all
    from vlm_salience.training.routing import export_merged, load_with_adapters, route

    path = _config(tmp_path, synth_corpus, tiny_vlms["qwen2_vl"], optim__max_steps=4,
                   checkpoint__every_steps=None, lora__dropout=0.0,
                   adapters=[{"name": "combined"}, {"name": "face", "subset": "expressive"},
                             {"name": "context", "subset": "subtle"}],
                   routing={"face": "face", "context": "context", "single": ["combined"], "gate_features": ["outcome"]})
    cfg = load_config(path, TrainConfig)
    train_all(cfg, progress=False)
    res = route(cfg, progress=False)
    for name in ("zero-shot/combined", "adapter/combined", "adapter/face", "adapter/context", "routed/hard",
                 "routed/soft", "routed/learned", "bci/salience_logistic"):
        assert res.metrics[name]["n_items"] == len(res.test_ids), name
    # hard routing in one mixed pass gives what each expert gives on its own items
    hard, face, ctx = (res.predictions[k] for k in ("routed/hard", "adapter/face", "adapter/context"))
    to_face = hard.weights[:, 0] == 1
    assert 0 < to_face.sum() < len(to_face)
    from vlm_salience.training.data import TrainingData

    thr = TrainingData(cfg).threshold  # the direction: expressive faces (above the threshold) go to the face expert
    assert np.array_equal(to_face, hard.expressivity > thr)
    assert np.allclose(hard.emotion_dist[to_face], face.emotion_dist[to_face], atol=1e-5)
    assert np.allclose(hard.emotion_dist[~to_face], ctx.emotion_dist[~to_face], atol=1e-5)
    assert res.extra["gate"]["features"][:2] == ["bias", "expressivity"]
    assert res.extra["routing_vs_best_single"]["best_single"] in ("adapter/face", "adapter/context")
    assert set(res.extra["routing_vs_other_adapters"]) == {"adapter/combined"}
    # calibrated routing beside the uncalibrated one, each expert fitted on the validation items only
    data = TrainingData(cfg)
    for name in ("adapter/face+calibrated", "adapter/context+calibrated", "routed/hard+calibrated",
                 "routed/soft+calibrated", "routed/learned+calibrated"):
        assert res.metrics[name]["n_items"] == len(res.test_ids), name
    cal = res.extra["calibration"]
    for role in ("face", "context"):
        assert cal["experts"][role]["fit_item_ids"] == [str(i) for i in data.corpus.item_ids[data.splits.validation]]
        assert cal["experts"][role]["temperature"] > 0 and cal["experts"][role]["isotonic_knots"] >= 1
    assert set(cal["calibrated_vs_uncalibrated"]) >= {"routed/hard+calibrated", "routed/soft+calibrated"}
    hc, fc, cc = (res.predictions[k] for k in ("routed/hard+calibrated", "adapter/face+calibrated",
                                               "adapter/context+calibrated"))
    assert np.allclose(hc.valence[to_face], fc.valence[to_face], atol=1e-4)
    assert np.allclose(hc.emotion_dist[~to_face], cc.emotion_dist[~to_face], atol=1e-4)
    # export: the merged checkpoint answers as the base with the adapter does
    merged = export_merged(Path(cfg.out) / "adapters" / "face", tmp_path / "merged", base=str(tiny_vlms["qwen2_vl"]))
    assert (merged / "model.safetensors").is_file()
    from vlm_salience.training.data import TrainingData

    data = TrainingData(cfg)
    prompts = [build_prompt(load_template("combined"), data.corpus.items[i], data.spec) for i in data.splits.test[:3]]
    with_adapter = load_with_adapters(cfg, ["face"])
    a = HFBackend(with_adapter).score(prompts, data.spec.slots())
    b = HFBackend(load_vlm(ModelConfig(name="m", path=str(merged)))).score(prompts, data.spec.slots())
    for x, y in zip(a, b):
        assert np.allclose(x["emotion"], y["emotion"], atol=1e-3)


def test_expert_subsets_split_at_the_threshold_in_the_right_direction(tmp_path, synth_corpus, tiny_vlms):
    """The face expert learns from the expressive faces, the context expert from the subtle ones; the rationale
    names the cue the salience law weights."""
    from vlm_salience.training.data import TrainingData

    path = _config(tmp_path, synth_corpus, tiny_vlms["qwen2_vl"],
                   adapters=[{"name": "face", "subset": "expressive"}, {"name": "context", "subset": "subtle"}])
    cfg = load_config(path, TrainConfig)
    data = TrainingData(cfg)
    face, ctx = (data.items_for(a) for a in cfg.adapters)
    x, thr = data.expressivity, data.threshold
    assert len(face) and len(ctx) and (x[face] > thr).all() and (x[ctx] <= thr).all()
    assert sorted([*face, *ctx]) == sorted(data.splits.train)
    assert "observers weighted the face" in data.rationale(face[0])
    assert "observers weighted the situation" in data.rationale(ctx[0])

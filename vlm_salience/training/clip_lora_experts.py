"""LoRA experts for salience routing on clips (`kind: lora` in a clip-routing YAML, training/clip_routing.py).

Why per fold: a `kind: vlm` expert scores every fold with one checkpoint, so an adapter trained on all clips would
have seen each fold's test clips. A LoRA expert instead trains one adapter per fold and expert, on that fold's *fit*
clips only (the training fold less the validation clips `carve_validation` takes for calibrating the gates), on the
expert's own stream (face crops or the masked scene), and scores that fold's validation and test clips with it.

Training is the project's one clip-training path (training/clip_training.py: `ClipTrainingData`, `ClipVLMTask`, run
by the engine); its config is built from the expert's `model` and `train` keys, with everything that decides which
clips it sees (corpus, frame cache, fold, validation share, seed, stream, frames, mode) taken from the routing.
Scoring is the `vlm` expert's (clip_scoring.score_stream: label scoring, the answer cache), its key naming the
adapter by its weights' content (routing.adapter_fingerprint), so a retrained adapter never reads stale answers.

Adapters are written under <routing out>/lora/folds/<fold>/adapters/<expert>/ with `expert.json` beside the
weights: the fold, the stream, the clip ids the adapter was trained on (read from the training rows themselves) and
the identity of its training (settings, base model, clips). A rerun reuses an adapter whose identity matches, trains
afresh where it does not, and resumes an interrupted training from its engine checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vlm_salience.errors import ConfigError

RECORD = "expert.json"
PENDING = "pending"  # the identity of a training under way (its checkpoints resume only under it)

# Keys of a clip training YAML that the routing decides for a LoRA expert: which clips it trains on and how they
# are read must match the routing's fold, validation carving and scoring. Why each, for the error message.
ROUTING_OWNS = {
    "name": "named <routing name>-<expert name>",
    "model": "the expert's `model`",
    "study": "a clip corpus has no BCI study",
    "out": "adapters are written under the routing's `out`/lora",
    "adapters": "one adapter per expert, named after it, with the expert's `template`",
    "seed": "the routing's `seed` (it also carves the validation clips the gates are calibrated on)",
    "report": "the routing writes the report",
    "data.config": "the routing's `data`",
    "data.data_overrides": "the routing's `data_overrides`",
    "data.frame_cache": "the routing's `frame_cache`",
    "data.folds": "the routing trains one adapter per fold it routes (`folds`)",
    "data.validation_fraction": "the routing's `validation_fraction`",
    "data.clip.stream": "the expert's `stream`",
    "data.clip.frames": "the expert's `frames` (default: the routing's `frames`)",
    "data.clip.mode": "the expert's `mode`",
}


def check_train_keys(expert: str, train: dict[str, Any]) -> None:
    """Refuse a `train` key the routing owns, naming it, why, and where to set it instead."""
    for key, why in ROUTING_OWNS.items():
        node: Any = train
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        else:
            raise ValueError(f"expert '{expert}': train.{key} is set by the routing: {why}. Fix: remove it from "
                             "the expert's `train`")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def expert_training_config(cfg, spec):
    """The clip training config of a LoRA expert (before `fold_config` picks a fold): the expert's base model and
    `train` keys, and the routing's corpus, frame cache, validation share, seed, stream, frames and mode."""
    from vlm_salience.config import validate
    from vlm_salience.training.clip_training import ClipTrainConfig

    owned = {"name": f"{cfg.name}-{spec.name}", "model": dict(spec.model or {}),
             "adapters": [{"name": spec.name, "template": spec.template}], "seed": cfg.seed,
             "out": str(Path(cfg.out) / "lora"),
             "data": {"config": str(cfg.data), "data_overrides": list(cfg.data_overrides),
                      "frame_cache": str(cfg.frame_cache), "folds": None,
                      "validation_fraction": cfg.validation_fraction,
                      "clip": {"stream": spec.stream, "frames": spec.frames or cfg.frames, "mode": spec.mode}}}
    raw = _merge(_merge({"tracker": "none"}, spec.train), owned)
    return validate(raw, ClipTrainConfig, source=f"{cfg.name}: expert '{spec.name}' (kind lora), its `train`",
                    base_dir=None)


def _ensure_base(tcfg, ranks) -> None:
    """Build the tiny base model at `model.path` where `model.build` names one and it is missing (once, rank 0)."""
    m = tcfg.model
    if m.build is not None and not Path(m.path).exists():
        if ranks.is_main:
            from vlm_salience.config import load_config
            from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm

            build_tiny_vlm(load_config(m.build, TinyVLMConfig), m.path)
        ranks.barrier()


def frames_identity(tcfg, ids: list[str]) -> dict[str, Any]:
    """What the frame cache holds for these clips: its settings' hash and each clip's key (source, detector and
    stream settings), so an adapter trained on one preparation of the frames is never reused on another (a cache
    folder prepared again with another detector keeps its path)."""
    from vlm_salience.video.cache import ClipCache

    cache = ClipCache(tcfg.data.frame_cache)
    return {"config_hash": cache.manifest.get("config_hash"),
            "clips": hashlib.sha256(json.dumps([cache.entry(i).get("key") for i in ids]).encode()).hexdigest()}


def training_identity(tcfg, fold: str, parts: dict[str, list[str]]) -> str:
    """What a finished adapter depends on: its training settings (not where it is written, its checkpoint cadence or
    tracker), the base model's fingerprint, the fold, the clips it fits and is validated on, and what the frame
    cache holds for them."""
    from vlm_salience.training.vlm_task import base_fingerprint

    doc = {"config": tcfg.model_dump(mode="json", exclude={"out", "checkpoint", "tracker", "name"}),
           "base": base_fingerprint(tcfg.model.path), "fold": str(fold),
           "fit": list(parts["train"]), "validation": list(parts["validation"]),
           "frames": frames_identity(tcfg, list(parts["train"]) + list(parts["validation"]))}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(folder: Path, identity: str) -> dict[str, Any] | None:
    rec = folder / RECORD
    if not ((folder / "adapter_model.safetensors").is_file() and rec.is_file()):
        return None
    doc = json.loads(rec.read_text())
    return doc if doc.get("identity") == identity else None


def train_expert(cfg, spec, corpus, fold: str, fit_ids: list[str], *, ranks, progress: bool = False
                 ) -> tuple[Any, dict[str, Any], bool]:
    """This fold's adapter of a LoRA expert, trained on `fit_ids` (or reused where a finished one has the same
    identity). Returns (the fold's training config, the adapter's record, reused)."""
    from vlm_salience.atomic import write_text
    from vlm_salience.engine.engine import Engine
    from vlm_salience.training.clip_training import ClipTrainingData, ClipVLMTask, fold_config
    from vlm_salience.training.vlm_task import adapter_path

    tcfg = fold_config(expert_training_config(cfg, spec), fold)
    _ensure_base(tcfg, ranks)
    data = ClipTrainingData(tcfg, fold, corpus)
    if data.parts["train"] != list(fit_ids):  # the same carving by construction; a guard against drifting apart
        raise ConfigError(f"expert '{spec.name}', fold {fold}: the clip training data's fit clips differ from the "
                          "routing's (validation carving out of step); this is a bug, please report it")
    adapter = tcfg.adapters[0]
    folder = adapter_path(tcfg, adapter.name)
    identity = training_identity(tcfg, fold, data.parts)
    record = _finished(folder, identity)
    if record is not None:
        return tcfg, record, True
    # A training of this identity that was interrupted resumes from its checkpoints (PENDING names the identity
    # they belong to); anything else there (a finished adapter or checkpoints of other settings or clips) is stale
    # and removed first, its record and weights included, so an old record can never vouch for new weights.
    pending = Path(tcfg.out) / "checkpoints" / f"{adapter.name}.{PENDING}"  # beside the checkpoints, not in the
    # adapter folder, which the final save replaces whole
    resume = pending.is_file() and pending.read_text().strip() == identity
    if not resume:
        if ranks.is_main:
            shutil.rmtree(Path(tcfg.out) / "checkpoints" / adapter.name, ignore_errors=True)
            for stale in (folder / RECORD, folder / "adapter_model.safetensors"):
                stale.unlink(missing_ok=True)
            write_text(pending, identity + "\n")
        ranks.barrier()
    task = ClipVLMTask(tcfg, adapter, data)
    result = Engine(tcfg, task, resume=resume, progress=progress).run()
    if "stopped_at" in result:
        raise ConfigError(f"expert '{spec.name}', fold {fold}: training stopped at step {result['stopped_at']} "
                          f"(SIGTERM), checkpointed at {result['checkpoint']}; run the same route command again to "
                          "resume it")
    if ranks.is_main:
        record = {"expert": spec.name, "fold": str(fold), "stream": tcfg.data.clip.stream,
                  "frames": tcfg.data.clip.frames, "identity": identity,
                  # the training rows themselves, not the ids asked for: what the adapter actually learned from
                  "trained_on": sorted({str(ex["item_id"]) for ex in task.examples}),
                  "validation": list(data.parts["validation"]), "steps": result.get("steps"),
                  "final_eval": result.get("final_eval"), "seconds": result.get("seconds")}
        write_text(folder / RECORD, json.dumps(record, indent=2, default=float))
        pending.unlink(missing_ok=True)
    ranks.barrier()
    return tcfg, json.loads((folder / RECORD).read_text()), False


def lora_expert_probs(cfg, spec, corpus, frames, fold: str, fit_ids: list[str], predict_ids: list[str], *,
                      ranks, progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train (or reuse) this fold's adapter on the fit clips, then label-score `predict_ids` (the validation and
    test clips) with it. Returns the class distributions and what was trained and loaded (for routing.json)."""
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.training.clip_scoring import score_stream
    from vlm_salience.training.routing import adapter_fingerprint, load_with_adapters
    from vlm_salience.training.vlm_task import adapter_path

    leak = set(fit_ids) & set(predict_ids)
    if leak:
        raise ConfigError(f"expert '{spec.name}', fold {fold}: clips {sorted(leak)[:5]} would be both trained on "
                          "and predicted")
    tcfg, record, reused = train_expert(cfg, spec, corpus, fold, fit_ids, ranks=ranks, progress=progress)
    name = tcfg.adapters[0].name
    folder = adapter_path(tcfg, name)
    loaded = load_with_adapters(tcfg, [name], ranks=ranks)
    backend = HFBackend(loaded, batch_size=tcfg.optim.batch_size)
    fp = adapter_fingerprint(folder)
    mode = tcfg.data.clip.resolved_mode(loaded.family, training=True)  # the input form the adapter was trained on
    try:
        probs = score_stream(spec, frames.with_frames(tcfg.data.clip.frames), corpus, list(predict_ids),
                             Path(cfg.out) / "answers.sqlite", ranks, backend=backend,
                             model_key=f"{backend.fingerprint()}|adapter {name}:{fp}", settings=tcfg.data.clip,
                             chunk=4 * tcfg.optim.batch_size, mode=mode)
    finally:
        del backend, loaded
    info = {"adapter": str(folder), "adapter_fingerprint": fp, "stream": record["stream"], "fold": record["fold"],
            "trained_on": len(record["trained_on"]), "steps": record.get("steps"), "reused": reused,
            "validation_uar": (record.get("final_eval") or {}).get("eval/uar")}
    return probs, info

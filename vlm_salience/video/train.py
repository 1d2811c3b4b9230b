"""`vlm-salience video train CONFIG.yaml` and `video eval CONFIG.yaml`: per fold, train on the training fold (a
validation split carved from it chooses the weights), predict the test fold, report UAR/WAR.

Steps of `train_video`:
1. load the config and the corpus; fill the frame cache where clips are missing (`video/prepare.py`; cached
   clips are skipped, so this is cheap after the first run), build a tiny encoder where the config asks for one;
2. per fold: a task (`video/task.py`) on the engine (`engine/engine.py`): exact resume, checkpoints, SIGTERM,
   precision from the config or `accelerate launch`; the fold's chosen weights land in OUT/models/<fold>/;
3. on the main process, `eval_video`'s step: predict each test fold with its chosen weights and write
   metrics.json, predictions.csv, report.md and the plots (`video/report.py`).

Under `accelerate launch` every process runs this; only the main one prepares, builds and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm_salience.errors import ConfigError


def _state():
    """This process's place under `accelerate launch`. Without an accelerator device the processes must be told
    they run on the CPU, or they do not join (gloo), as the engine does."""
    import torch
    from accelerate import PartialState

    on_cpu = not (torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available())
    return PartialState(cpu=on_cpu)


def load_corpus(cfg):
    from vlm_salience.data.video import load_video_corpus

    return load_video_corpus(cfg.data.config, drop_invalid=cfg.data.drop_invalid, overrides=cfg.data.overrides)


def folds_of(cfg, corpus) -> list[str]:
    folds = corpus.chosen_folds(cfg.data.folds, "data.folds")
    for f in folds:
        if not corpus.folds[f].get("train"):
            raise ConfigError(f"fold '{f}' of corpus '{corpus.name}' has no training clips")
    return folds


def ensure_cache(cfg, corpus, folds: list[str], *, progress: bool) -> dict[str, Any]:
    """Prepare the clips of the chosen folds that the cache lacks (resumable; cached clips are skipped)."""
    from vlm_salience.video.prepare import prepare_corpus

    ids = sorted({i for f in folds for part in corpus.folds[f].values() for i in part})
    sub = corpus.subset(ids) if len(ids) < len(corpus) else corpus
    return prepare_corpus(sub, cfg.data.prepare, cfg.data.cache, drop_invalid=cfg.data.drop_invalid,
                          progress=progress, workers=cfg.data.prepare_workers)


def ensure_encoder(cfg) -> None:
    """Build the tiny encoder a config asks for where it is missing (models without `model.encoder`: nothing)."""
    enc = getattr(cfg.model, "encoder", None)
    if enc is not None and enc.build is not None and not Path(enc.path).exists():
        from vlm_salience.config import load_config
        from vlm_salience.models.encoders import TinyEncoderConfig, build_tiny_encoder

        build_tiny_encoder(load_config(enc.build, TinyEncoderConfig), enc.path)


def make_task(cfg, task_cls, corpus, fold: str, store):
    """The task of one fold: its training clips less a validation split (the corpus's own "val" list where it
    has one), clips missing from the cache (dropped as invalid by prepare) left out and counted."""
    from vlm_salience.video.task import split_validation

    cached = set(store.cache.ids())
    labels = {c.clip_id: c.label for c in corpus.clips}
    polarity = {c.clip_id: c.polarity for c in corpus.clips if c.polarity is not None}
    parts = corpus.folds[fold]
    train = [i for i in parts["train"] if i in cached]
    if parts.get("val"):
        val = [i for i in parts["val"] if i in cached]
    else:
        train, val = split_validation(train, labels, cfg.data.validation_fraction, cfg.data.split_seed)
    if not train:
        raise ConfigError(f"fold '{fold}': none of its training clips is in the cache {cfg.data.cache}; run "
                          "`vlm-salience video prepare` for this data YAML")
    return task_cls(cfg, fold=fold, classes=list(corpus.classes), labels=labels, train_ids=train, val_ids=val,
                    store=store, polarity=polarity, data_fingerprint=corpus.fingerprint)


def _fold_done(task) -> bool:
    import json

    meta = task.model_dir() / "task.json"
    if not meta.is_file():
        return False
    done = json.loads(meta.read_text())
    if done.get("fingerprint") != task.fingerprint():
        return False
    was, now = done.get("optim"), task.cfg.optim.model_dump(mode="json")
    changed = {k: (was.get(k), v) for k, v in now.items() if was is not None and was.get(k) != v}
    if changed:  # skipping it would report the new settings beside weights trained with the old ones
        said = ", ".join(f"optim.{k} {a} -> {b}" for k, (a, b) in changed.items())
        raise ConfigError(f"{meta}: fold {task.fold} was trained with other optimiser settings ({said}); resume "
                          "with the settings it was trained with, or start a fresh run in another out folder")
    return True


def _setup(config_path, overrides, progress: bool):
    from vlm_salience.video.cache import ClipCache
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.task import FrameStore

    cfg, task_cls = load_video_config(config_path, overrides)
    corpus = load_corpus(cfg)
    folds = folds_of(cfg, corpus)
    return cfg, task_cls, corpus, folds, lambda: FrameStore(ClipCache(cfg.data.cache), cfg.data.memory_cache_mb,
                                                        streams=task_cls.streams)


def train_video(config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, resume: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Train every fold of a video config and write its report; returns {"folds": {...}, "report": ...}."""
    from vlm_salience.engine.engine import Engine

    cfg, task_cls, corpus, folds, store_factory = _setup(config_path, overrides, progress)
    state = _state()
    prepared = None
    if state.is_main_process:
        prepared = ensure_cache(cfg, corpus, folds, progress=progress)
        ensure_encoder(cfg)
    state.wait_for_everyone()
    store = store_factory()
    results: dict[str, Any] = {}
    for fold in folds:
        task = make_task(cfg, task_cls, corpus, fold, store)
        if not getattr(task_cls, "trains", True):  # a zero-training model (fer_pooling): no engine run
            results[fold] = task.skip_training()
            continue
        if resume and _fold_done(task):
            results[fold] = {"skipped": "already trained with this config (resume)"}
            continue
        results[fold] = Engine(cfg, task, resume=resume, progress=progress).run()
        if "stopped_at" in results[fold]:  # SIGTERM: checkpointed; `--resume` continues
            return {"folds": results, "stopped": True}
    report = None
    if state.is_main_process:
        report = evaluate_run(cfg, task_cls, corpus, folds, store, prepared=prepared, training=results,
                              progress=progress)
    state.wait_for_everyone()
    return {"folds": results, "report": report}


def eval_video(config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
               progress: bool = True) -> dict[str, Any]:
    """Predict every fold's test clips with the weights `train_video` chose and rewrite the report."""
    cfg, task_cls, corpus, folds, store_factory = _setup(config_path, overrides, progress)
    return evaluate_run(cfg, task_cls, corpus, folds, store_factory(), progress=progress)


def evaluate_run(cfg, task_cls, corpus, folds, store, *, prepared: dict | None = None,
                 training: dict | None = None, progress: bool = True) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from vlm_salience.video.report import write_video_report

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cached = set(store.cache.ids())
    per_fold = {}
    for fold in tqdm(folds, desc="predict test folds", disable=not progress):
        task = make_task(cfg, task_cls, corpus, fold, store)
        model = task.load_trained(device)
        test = [i for i in corpus.folds[fold].get("test", []) if i in cached]
        if not test:
            raise ConfigError(f"fold '{fold}' has no test clips in the cache")
        per_fold[fold] = {"test": task.predict(model, test, device=device),
                          "missing_from_cache": len(corpus.folds[fold].get("test", [])) - len(test)}
        del model
    return write_video_report(cfg, corpus, per_fold, prepared=prepared, training=training)

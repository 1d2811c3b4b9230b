"""Video training configs (configs/video/*.yaml): data and cache, the model, the engine's settings, the report.

One YAML per run: `data:` names the corpus's data YAML, the prepared frame cache and the folds; `model:` the
model (chosen by `kind`; the face-only baseline here, OUS and GRACE add theirs to `VIDEO_MODELS`); the engine's
fields (optim, precision, checkpoint, eval cadence, tracker, seed, out) come from `EngineConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from vlm_salience.config import RelPath, StrictModel, apply_overrides, read_yaml, validate
from vlm_salience.errors import ConfigError
from vlm_salience.training.engine_config import EngineConfig
from vlm_salience.video.baseline import BaselineModelConfig
from vlm_salience.video.prepare import PrepareConfig


class VideoDataSection(StrictModel):
    """Which corpus, which cache, which folds, and how clips become batches."""

    config: RelPath  # the corpus's data YAML (configs/data/*.yaml)
    overrides: list[str] = Field(default_factory=list)  # dotted overrides of the data YAML, e.g. root=/data/DFEW
    cache: RelPath  # the prepared frame cache (`vlm-salience video prepare`); filled first where clips are missing
    prepare: RelPath | PrepareConfig | None = None  # a prepare YAML, or its settings inline (None: defaults)
    prepare_workers: int = Field(1, ge=1)
    drop_invalid: bool = False  # skip (and report) clips that cannot be decoded, instead of stopping
    folds: list[str] | None = None  # folds to run (None: every fold of the corpus)
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)  # of each training fold, per class: checkpoint choice
    split_seed: int = 0
    n_segments: int = Field(16, ge=1)  # frames per clip (one per segment)
    memory_cache_mb: int = Field(1024, ge=0)  # cached clips kept in RAM between batches


class ReportSection(StrictModel):
    n_boot: int = Field(1000, ge=0)
    seed: int = 0
    batch_size: int = Field(32, ge=1)  # clips per prediction batch
    tsne: bool = True
    tsne_max_clips: int = Field(1500, ge=10)
    select: Literal["best_validation", "last"] = "best_validation"  # which weights a fold keeps


class VideoTrainConfig(EngineConfig):
    data: VideoDataSection
    model: BaselineModelConfig
    report: ReportSection = Field(default_factory=ReportSection)


# kind -> "module:TaskClass"; a task class names its config class (`config_class`). Imported only when used.
VIDEO_MODELS: dict[str, str] = {"baseline": "vlm_salience.video.task:BaselineTask",
                                "ous": "vlm_salience.ous.task:OusTask",
                                "grace": "vlm_salience.grace.task:GraceTask",
                                "fer_pooling": "vlm_salience.video.classifier_baseline:FerPoolingTask"}


def task_class(kind: str):
    import importlib

    if kind not in VIDEO_MODELS:
        raise ConfigError(f"model.kind '{kind}' is not a video model; known: {sorted(VIDEO_MODELS)}")
    module, name = VIDEO_MODELS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_video_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Any, type]:
    """(config, task class) of a video YAML; the model's `kind` (default baseline) picks both."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), list(overrides))
    kind = (raw.get("model") or {}).get("kind", "baseline") if isinstance(raw.get("model"), dict) else "baseline"
    cls = task_class(kind)
    return validate(raw, cls.config_class, source=path, base_dir=path.resolve().parent), cls

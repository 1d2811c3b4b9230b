"""Video training configs (configs/video/*.yaml): data and cache, the model, the engine's settings, the report, and
the variants a run trains side by side.

One YAML per run: `data:` names the corpus's data YAML, the prepared frame cache and the folds; `model:` the model,
chosen by its `kind` among the registered video models (`video/registry.py`: each model's task class brings its
config class, a `VideoTrainConfig[ItsModelConfig]`); the engine's fields (optim, precision, checkpoint, eval
cadence, tracker, seed, out) come from `EngineConfig`; `variants:` (optional) lists models trained and compared
side by side by `video/variants.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from vlm_salience.config import RelPath, StrictModel, apply_overrides, read_yaml, validate
from vlm_salience.errors import ConfigError
from vlm_salience.engine.config import EngineConfig
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
    # a frozen encoder's outputs of every cached frame, computed once per clip (video/feature_cache.py): auto = on
    # where the model declares its outputs, the image tower is frozen and frames are not augmented; off = encode
    feature_cache: Literal["auto", "off"] = "auto"
    feature_dir: RelPath | None = None  # where those outputs live (None: <cache>/features)

    @field_validator("feature_cache", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        """YAML reads a bare `off` as false: that is 'off'."""
        return "off" if v is False else v


class ReportSection(StrictModel):
    n_boot: int = Field(1000, ge=0)
    seed: int = 0
    batch_size: int = Field(32, ge=1)  # clips per prediction batch
    tsne: bool = True
    tsne_max_clips: int = Field(1500, ge=10)
    select: Literal["best_validation", "last"] = "best_validation"  # which weights a fold keeps


class VariantConfig(StrictModel):
    """One model a run trains beside the others: a registered `kind` (None: the YAML's own model) with dotted
    overrides of `model:`, e.g. {name: no_text, set: {text.source: none}} or {name: baseline, kind: baseline}.
    A variant of another kind keeps the `model:` settings that kind shares (`video/variants.py`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)


ModelT = TypeVar("ModelT", bound=StrictModel)


class VideoTrainConfig(EngineConfig, Generic[ModelT]):
    """A video run; `VideoTrainConfig[ItsModelConfig]` is a model's config class (its `model:` section typed)."""

    data: VideoDataSection
    model: ModelT
    report: ReportSection = Field(default_factory=ReportSection)
    variants: list[VariantConfig] = Field(default_factory=list)  # empty: just this model
    compare_to: str | None = None  # the variant every other is compared with (None: the first)

    @model_validator(mode="after")
    def _check_variants(self) -> VideoTrainConfig:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variants: duplicate name(s) {dup}; give each variant its own name")
        if self.variants and self.compare_to is not None and self.compare_to not in names:
            raise ValueError(f"compare_to '{self.compare_to}' is not one of the variants {names}")
        return self

    @property
    def reference(self) -> str | None:
        """The variant the others are compared with."""
        return self.compare_to or (self.variants[0].name if self.variants else None)


DEFAULT_KIND = "baseline"  # a `model:` without `kind` (older YAMLs)


def model_kind(raw: dict[str, Any]) -> str:
    """The `model.kind` a raw video YAML names (DEFAULT_KIND where it names none)."""
    model = raw.get("model")
    return model.get("kind", DEFAULT_KIND) if isinstance(model, dict) else DEFAULT_KIND


def load_video_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Any, type]:
    """(config, task class) of a video YAML; the model's `kind` picks both from the registry."""
    from vlm_salience.video.registry import video_model

    path = Path(path)
    raw = apply_overrides(read_yaml(path), list(overrides))
    try:
        cls = video_model(model_kind(raw))
    except ConfigError as exc:
        raise ConfigError(f"{path}: field 'model.kind': {exc}") from None
    return validate(raw, cls.config_class, source=path, base_dir=path.resolve().parent), cls

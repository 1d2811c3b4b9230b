"""The VLM LoRA task's config (configs/train/*.yaml), beside the task (training/vlm_task.py). It embeds the
engine's config (`EngineConfig`: optim, precision, eval, checkpoint, tracker, seed, out) by subclassing it, so its
YAML keeps those keys at the top level."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vlm_salience.config import RelPath, StrictModel
from vlm_salience.models.loading import ModelConfig
from vlm_salience.prompting.clips import ClipSettings
from vlm_salience.engine.config import EngineConfig


class TrainModelConfig(ModelConfig):
    build: RelPath | None = None  # a tiny-model YAML: build the base at `path` first if it is missing


class SplitConfig(StrictModel):
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    validation_fraction: float = Field(0.15, ge=0.0, lt=1.0)  # of the training groups: eval and the learned gate
    group: str = "participant"
    seed: int = 0


class AdapterSpec(StrictModel):
    """One LoRA adapter and the instruction data it learns from."""

    name: str
    template: str = "combined"
    subset: Literal["all", "expressive", "subtle"] = "all"  # items by the expressivity threshold
    examples: Literal["none", "retrieved"] = "none"
    k: int = 3


class DataConfig(StrictModel):
    config: RelPath  # the corpus's data config
    rationale: bool = False  # a short chain of thought, written from the item's fields, before the JSON answer
    max_length: int = Field(1024, ge=16)  # longer examples are an error, never silently truncated
    key_order: Literal["shuffled", "fixed"] = "shuffled"  # answer JSON key order: shuffled teaches every slot
    answer: Literal["compact", "full"] = "compact"  # compact: valence and the modal emotion (label scoring reads
    # full distributions either way); full: also the observed distribution over labels
    clip: ClipSettings = Field(default_factory=ClipSettings)  # faces that are clips: frames per clip, video/images

    @model_validator(mode="after")
    def _both_needs_frame_cache(self) -> DataConfig:
        """clip.stream both reads the masked scene, which only a frame cache has: a video corpus's
        `data.frame_cache` (ClipDataConfig); an image corpus (Split-Steal face videos) has none."""
        if self.clip.stream == "both" and getattr(self, "frame_cache", None) is None:
            from vlm_salience.prompting.clips import BOTH_NEEDS_CACHE

            raise ValueError("clip.stream both without data.frame_cache (Split-Steal / image corpora have no frame "
                             "cache; a video data YAML's training config takes one): " + BOTH_NEEDS_CACHE)
        return self


class LoraConfig(StrictModel):
    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target: Literal["language", "language+projector", "all"] = "language"  # "all" adds the vision tower
    target_modules: list[str] | str | None = None  # explicit names or a regex, overriding `target`
    quantization: Literal["none", "8bit", "4bit"] = "none"  # QLoRA: the frozen base in 8-bit or 4-bit nf4
    modules_to_save: list[str] = Field(default_factory=list)  # trained in full beside LoRA (e.g. lm_head)


class CalibrationConfig(StrictModel):
    """Each expert's answers calibrated on the validation split before routing (vlm_salience/calibration.py);
    routing is reported with and without it (`routed/hard` beside `routed/hard+calibrated`)."""

    valence: Literal["none", "linear", "isotonic"] = "isotonic"  # a monotone (or linear) map onto observed valence
    labels: Literal["none", "temperature"] = "temperature"  # one temperature per expert, fitted by KLD
    fit_on: Literal["all", "routed"] = "all"  # all validation items, or those hard routing sends to the expert

    @property
    def enabled(self) -> bool:
        return self.valence != "none" or self.labels != "none"


class RoutingConfig(StrictModel):
    face: str = "face"  # adapter names of the two experts
    context: str = "context"
    single: list[str] = Field(default_factory=lambda: ["combined"])  # single adapters to compare against
    template: str = "combined"  # the prompt every routed and single adapter answers
    zero_shot: bool = True
    gate_features: list[str] = Field(default_factory=list)  # context features beside expressivity for the gate
    salience: Literal["plain", "control", "hard", "logistic"] = "logistic"  # soft routing's law (fitted by BCI)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)  # `calibration: none` turns it off

    @field_validator("calibration", mode="before")
    @classmethod
    def _calibration_off(cls, v):
        return {"valence": "none", "labels": "none"} if v == "none" else v


class TrainConfig(EngineConfig):
    """LoRA SFT of a VLM on a corpus: one adapter per `adapters` entry, each a fresh LoRA on the same base."""

    model: TrainModelConfig
    data: DataConfig
    study: RelPath  # BCI study config: expressivity estimator and threshold, salience laws for soft routing
    split: SplitConfig = Field(default_factory=SplitConfig)
    adapters: list[AdapterSpec]
    lora: LoraConfig = Field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    # the frozen vision tower's features computed once per image and reused across epochs (training/vision_cache.py;
    # never for clips or a trained tower); off by default: see docs/fine-tuning.md for what it measured
    vision_cache: bool = False
    # torch.compile of the language model (dynamic shapes: batches differ in length); off by default: the first
    # steps pay its compile time, measured in docs/fine-tuning.md
    compile: bool = False
    routing: RoutingConfig = Field(default_factory=RoutingConfig)

    @model_validator(mode="after")
    def _names(self) -> TrainConfig:
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique: {names}")
        return self

"""GRACE's config: `model:` of configs/video/grace_*.yaml (kind: grace), beside the shared video training config.

Ablations are config switches: `model.text.use: coarse` (no refinement), `model.motion.mode: off` (no motion
weighting), `model.ot.enabled: false` (mean-pooled tokens instead of the transport plan), `model.text.source:
none` (no text at all: the visual path and the class prompts only).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlm_salience.config import StrictModel
from vlm_salience.grace.motion import MotionConfig
from vlm_salience.grace.text import TextConfig
from vlm_salience.models.encoders import EncoderConfig
from vlm_salience.video.baseline import LearningRates, TemporalConfig
from vlm_salience.video.config import VideoTrainConfig


class OTConfig(StrictModel):
    enabled: bool = True  # false: each text token meets the motion-weighted mean of the visual tokens
    eps: float = Field(0.05, gt=0)  # entropic regularisation (costs are 1 - cos, in [0, 2])
    iters: int = Field(50, ge=1)
    weight: float = Field(0.1, ge=0)  # the transport cost's weight in the loss


class GraceLearningRates(LearningRates):
    fusion: float = Field(1e-3, gt=0)  # token adapters and the fusion MLP


class GraceModelConfig(StrictModel):
    """`model:` of a GRACE video config."""

    kind: Literal["grace"] = "grace"
    encoder: EncoderConfig
    class_text: dict[str, str] = Field(default_factory=dict)
    context_tokens: int = Field(8, ge=0)
    class_specific_contexts: bool = True
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    temperature: float = Field(0.01, gt=0)
    learn_temperature: bool = False
    vision: Literal["train", "frozen"] = "train"
    text_tower: Literal["train", "frozen"] = "frozen"
    text: TextConfig = Field(default_factory=TextConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    ot: OTConfig = Field(default_factory=OTConfig)
    contrastive_weight: float = Field(0.1, ge=0)  # CLIP-style clip-video <-> clip-text InfoNCE
    contrastive_temperature: float = Field(0.07, gt=0)
    lr: GraceLearningRates = Field(default_factory=GraceLearningRates)
    keep_plans: int = Field(16, ge=0)  # test clips whose transport plans the report keeps (plans.npz, plot)


class GraceTrainConfig(VideoTrainConfig[GraceModelConfig]):
    """A video config whose model is GRACE (`kind: grace`)."""

"""The engine's config: what every task config embeds (by subclassing `EngineConfig`), whatever the model.

Optimisation, precision, checkpoints, evaluation cadence, tracker, seed and output folder. A task's own settings
(model, data, adapters) live in the task's config beside the task, e.g. `training/config.py:TrainConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlm_salience.config import RelPath, StrictModel


class PlateauConfig(StrictModel):
    """`schedule: plateau`: torch's ReduceLROnPlateau on a validation metric the task's evaluate() returns,
    stepped after every evaluation (not every optimizer step): every rate times `factor` once the metric has not
    improved by `threshold` (relative) for `patience` evaluations. Torch's defaults; OUS's authors: 0.3, 2, 1e-3
    on the validation loss once an epoch (eval.every_epochs: 1)."""

    metric: str = "eval/loss"
    mode: Literal["min", "max"] = "min"
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    threshold: float = Field(1e-4, ge=0)


class OptimConfig(StrictModel):
    """`lr` is the rate of every parameter group that sets none. A task's groups may set their own rates
    (e.g. `model.lr` of the video models); an `lr` written in the config that no group uses is refused when the
    run starts (the engine's setup), so a configured rate is never silently overridden."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"  # adam: L2 decay in the gradient (torch.optim.Adam)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # sgd only
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; overrides epochs
    batch_size: int = Field(8, ge=1)  # per process and micro-step
    grad_accum: int = Field(1, ge=1)  # micro-steps per optimizer step: effective batch = batch_size x world x this
    schedule: Literal["cosine", "linear", "constant", "plateau", "multistep"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    max_grad_norm: float | None = 1.0
    plateau: PlateauConfig = Field(default_factory=PlateauConfig)  # schedule: plateau only
    milestones: list[int] = Field(default_factory=list)  # schedule: multistep: rates x gamma from these epochs on
    gamma: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _check_schedule(self) -> OptimConfig:
        if self.schedule in ("plateau", "multistep") and self.warmup_ratio:
            raise ValueError(f"schedule: {self.schedule} has no warm-up; set optim.warmup_ratio: 0")
        if self.schedule == "multistep" and (not self.milestones or any(m < 1 for m in self.milestones)):
            raise ValueError("schedule: multistep needs optim.milestones, the epochs (from 1) after which every "
                             "rate is multiplied by optim.gamma, e.g. [30, 40]")
        return self


class EvalConfig(StrictModel):
    every_steps: int | None = Field(None, ge=1)  # None: at the end only (unless every_epochs)
    every_epochs: int | None = Field(None, ge=1)  # also after every N epochs' last step
    max_items: int = Field(64, ge=1)  # tasks that evaluate on a sample read this


class LoaderConfig(StrictModel):
    """How micro-batches are collated (engine/loader.py): in the loop (workers 0), or ahead of it by DataLoader
    worker processes; pinned memory where batches go to a GPU (None: on CUDA only)."""

    workers: int = Field(0, ge=0)
    pin_memory: bool | None = None
    prefetch: int = Field(2, ge=1)  # batches each worker collates ahead


class BatchingConfig(StrictModel):
    """How examples are grouped into micro-batches (engine/engine.py: token_budget_plan).

    `max_tokens`: each micro-batch holds as many examples as fit this many tokens (padded: the longest example x
    their number; `packed`: the sum of their lengths), by the task's lengths(), instead of `optim.batch_size`
    examples. Batches are cut from the examples sorted by length (ties in an order drawn per epoch), so every epoch
    has the same number of steps (exact resume), and their order is drawn per epoch. None: fixed batch_size.
    `packed`: the task trains each micro-batch as one padding-free row of concatenated examples (position ids
    restart per example; attention stays within each), where the task supports it (the VLM task does)."""

    max_tokens: int | None = Field(None, ge=1)
    packed: bool = False


class CheckpointConfig(StrictModel):
    every_steps: int | None = Field(50, ge=1)  # None: no periodic checkpoints (SIGTERM still writes one)
    keep: int = Field(2, ge=1)


# None: take it from `accelerate launch` (its --mixed_precision flag or config file, i.e. the environment variable
# ACCELERATE_MIXED_PRECISION; "no" without either). "auto": bf16 where the hardware multiplies it natively.
Precision = Literal["no", "bf16", "fp16", "auto"] | None


class EngineConfig(StrictModel):
    name: str
    optim: OptimConfig = Field(default_factory=OptimConfig)
    precision: Precision = None
    group_by_length: bool = True  # batches of similar length (from the task's lengths()): less padding
    eval: EvalConfig = Field(default_factory=EvalConfig)
    loader: LoaderConfig = Field(default_factory=LoaderConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)  # token budget / packed: off by default
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracker: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    log_every: int = Field(10, ge=1)
    seed: int = 0
    # deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG, cuDNN): a resumed run is
    # bit-identical on CUDA too (a CPU run already is); slower on GPUs, and an op without one raises
    deterministic: bool = False
    out: RelPath

    @model_validator(mode="after")
    def _plateau_needs_evaluations(self) -> EngineConfig:
        if self.optim.schedule == "plateau" and not (self.eval.every_steps or self.eval.every_epochs):
            raise ValueError("optim.schedule: plateau steps on the validation metric, but nothing evaluates before "
                             "the end: set eval.every_epochs (e.g. 1) or eval.every_steps")
        return self

    @model_validator(mode="before")
    @classmethod
    def _legacy_tensorboard(cls, data):
        """`tensorboard: true|false` (older YAMLs) is `tracker: tensorboard|none`."""
        if isinstance(data, dict) and "tensorboard" in data:
            data = dict(data)
            flag = data.pop("tensorboard")
            if "tracker" not in data:
                data["tracker"] = "tensorboard" if flag else "none"
        return data

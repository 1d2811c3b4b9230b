"""`vlm-salience train`: every adapter of a training config, each the VLM LoRA task run by the engine.

The loop itself is the engine (`engine/engine.py`, generic); the VLM specifics are `training/vlm_task.py`. The names
below are kept for callers of the earlier single-module trainer.
"""

from __future__ import annotations

from typing import Any

from vlm_salience.training.config import AdapterSpec, TrainConfig
from vlm_salience.training.data import TrainingData
from vlm_salience.engine.engine import Engine
from vlm_salience.training.vlm_task import (  # noqa: F401  (re-exported)
    VLMTask, adapter_path, base_fingerprint, save_adapter)


class Trainer:
    """One adapter: `Trainer(cfg, adapter).train()` is the engine running a `VLMTask`."""

    def __init__(self, cfg: TrainConfig, adapter: AdapterSpec, *, data: TrainingData | None = None,
                 resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.adapter = cfg, adapter
        self.task = VLMTask(cfg, adapter, data)
        self.engine = Engine(cfg, self.task, resume=resume, progress=progress)

    def train(self) -> dict[str, Any]:
        result = self.engine.run()
        if "stopped_at" not in result:
            result = {"adapter": self.adapter.name, **result}
        return result

    def _unwrapped(self):
        return self.engine.unwrapped()


def train_all(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
              only: list[str] | None = None) -> dict[str, Any]:
    """Train every adapter of the config (or those named) in turn, each a fresh LoRA on the same base."""
    data = TrainingData(cfg)
    results = {}
    for spec in cfg.adapters:
        if only and spec.name not in only:
            continue
        results[spec.name] = Trainer(cfg, spec, data=data, resume=resume, progress=progress).train()
    return results

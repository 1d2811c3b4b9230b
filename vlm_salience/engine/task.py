"""The contract between the training engine and a model: a `Task`.

The engine (`engine/engine.py`) owns everything that is the same for every model: the batch plan, gradient
accumulation, mixed precision, clipping, the schedule, checkpoints, exact resume, SIGTERM, trackers, progress and
when to evaluate. It never looks inside a batch. A task owns everything else: it builds the model, turns example
indices into a batch, computes the loss, evaluates, and saves/loads its trainable weights.

A new model is a subclass of `Task` that implements the five abstract methods below (and overrides the optional
ones where it has something to say), plus its config, a subclass of `EngineConfig`, beside it. The engine calls,
in this order, on every process:

1. `setup(accelerator)` once -> `(model, params)`. Build (or load) the model on the CPU in fp32; the engine moves
   it to the device and wraps it (`accelerator.prepare`); do not call `prepare` yourself. `params` is what the
   optimizer trains: an iterable of parameters or of torch param-group dicts (a group may set its own "lr" or
   "weight_decay"; the config's values are the defaults). Build data here too: `num_examples()` and `lengths()`
   are read right after. Seeds are already set (`EngineConfig.seed`).
2. `fingerprint()` -> `{what: digest}`: the identity of everything a checkpoint depends on (base weights, task
   config, data). A resume whose fingerprint differs is refused, naming `what` ("checkpoint ... was trained on
   another base model"). Leave out paths of outputs and settings that may change on resume.
3. Per micro-step: `collate(indices, epoch)` -> a batch (tensors, or dicts/lists/tuples of tensors, on the CPU;
   the engine moves them to the device). `indices` index `0 .. num_examples()-1`; the same (indices, epoch) must
   give the same batch (exact resume); randomness beyond that (augmentation, dropout) comes from the torch/numpy/
   python RNGs, whose states the engine checkpoints. Then `loss(model, batch)` -> a scalar tensor, the MEAN over
   the micro-batch (the engine divides by the number of micro-steps; do not). Call `model(...)`, the wrapped
   model, for the forward pass, or multi-process gradients are not synchronised. It runs under autocast when a
   precision is on. `tokens(batch)` -> int is the throughput unit (default None: the number of examples).
4. `evaluate(model)` -> `{"eval/<metric>": float}`, on the main process only, every `eval.every_steps` and at the
   end, with the unwrapped model in eval mode under `torch.no_grad()`; the engine logs what it returns.
5. `save(model, folder)` writes the trainable weights (safetensors) into an existing folder, main process only;
   `load(model, folder)` restores them, on every process. `model` is unwrapped. Optimizer, scheduler, RNG and data
   position are the engine's.
6. `finish(model, result)` at the end of a completed run (not after SIGTERM), main process only: write the task's
   artefacts (e.g. the adapter and a training.json) atomically. `result` is what the engine returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class Task(ABC):
    """One model trained by the engine. See the module docstring for the contract."""

    name: str  # the run's sub-folder under out/checkpoints, and the progress bar's label
    # whether the task trains `batching.packed` micro-batches (padding-free rows); the engine refuses it otherwise
    supports_packing: bool = False

    @abstractmethod
    def setup(self, accelerator) -> tuple[Any, Any]:
        """Build the model and data; return (model, trainable params or param groups)."""

    @abstractmethod
    def num_examples(self) -> int:
        """How many training examples the batch plan draws from."""

    @abstractmethod
    def collate(self, indices: list[int], epoch: int) -> Any:
        """The micro-batch of these examples (CPU tensors), deterministic in (indices, epoch)."""

    @abstractmethod
    def loss(self, model, batch) -> Any:
        """The scalar loss of one micro-batch: the mean over its examples (or tokens)."""

    @abstractmethod
    def save(self, model, folder: Path) -> None:
        """Write the trainable weights into `folder` (it exists)."""

    @abstractmethod
    def load(self, model, folder: Path) -> None:
        """Restore what `save` wrote."""

    def lengths(self) -> np.ndarray | None:
        """Per-example cost (e.g. tokens) for batches of similar length; None: no length grouping."""
        return None

    def tokens(self, batch) -> int | None:
        """Throughput unit of a batch (e.g. attended tokens); None: the engine counts examples."""
        return None

    def fingerprint(self) -> dict[str, str]:
        """{what: digest} of everything a checkpoint depends on; a resume with any other value is refused."""
        return {}

    def evaluate(self, model) -> dict[str, float]:
        """Validation metrics, logged as given; {} if the task has none."""
        return {}

    def finish(self, model, result: dict[str, Any]) -> None:
        """Write the task's artefacts after a completed run."""

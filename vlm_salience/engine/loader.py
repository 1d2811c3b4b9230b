"""The engine's micro-batches, collated in the loop (default) or ahead of it by DataLoader workers.

`workers: 0` calls `task.collate` right before each micro-step, as the engine always did. `workers: N` hands the
same index lists, in the same order, to a `torch.utils.data.DataLoader` whose N worker processes collate ahead of
the training step (and, on CUDA, `pin_memory` puts batches in page-locked memory for faster copies to the GPU).
The batches are the same either way, so results and exact resume do not change, provided the task's collate is
deterministic in (indices, epoch) as the Task contract asks (workers hold copies of the task; randomness drawn from
the global RNGs inside collate would come from the workers' RNGs instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vlm_salience.engine.task import Task


class _Shards:
    """Index lists of one epoch's remaining micro-steps, as a map-style dataset (one item per micro-batch)."""

    def __init__(self, task: Task, shards: list[list[int]], epoch: int) -> None:
        self.task, self.shards, self.epoch = task, shards, epoch

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, k: int) -> Any:
        return self.task.collate(self.shards[k], self.epoch)


def micro_batches(task: Task, shards: list[list[int]], epoch: int, *, workers: int = 0,
                  pin_memory: bool = False, prefetch: int = 2) -> Iterator[Any]:
    """The collated micro-batches of `shards` (this rank's index list per micro-step), in order; lazily."""
    if workers == 0:
        return (task.collate(s, epoch) for s in shards)
    import torch
    from torch.utils.data import DataLoader

    # its own generator: a DataLoader with workers otherwise draws their base seed from the global RNG, which
    # would shift every later dropout mask (and break equality with in-loop collation and exact resume)
    return iter(DataLoader(_Shards(task, shards, epoch), batch_size=None, shuffle=False, num_workers=workers,
                           pin_memory=pin_memory, prefetch_factor=prefetch, persistent_workers=False,
                           generator=torch.Generator().manual_seed(epoch)))


def resolve_pin_memory(requested: bool | None, on_cuda: bool) -> bool:
    """None (auto): pinned memory where batches go to a CUDA device, never on the CPU (nothing to copy)."""
    return on_cuda if requested is None else bool(requested and on_cuda)

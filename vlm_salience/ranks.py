"""Inference split by rank under `accelerate launch`: each process answers its contiguous share of the items and
every rank gets every answer back in item order, so what comes after (fits, fusion, scores, the report) sees exactly
what one process sees. `prompt run` and `route` use it (items, clips and experts alike).

    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m vlm_salience.cli prompt run CONFIG

Launched plainly (no WORLD_SIZE > 1 in the environment) `current()` is rank 0 of 1 and nothing here touches
torch.distributed. Under a launch, accelerate's `PartialState` joins the processes (NCCL with a GPU each, gloo on
the CPU where GPUs are missing or fewer than the processes, as the training engine decides: engine/devices.py),
`split_between_processes` gives each rank its share, and `gather_object` brings the shares back in rank order.
Imports nothing of the package at module level (a leaf: tests/test_layers.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


def world_size(env: dict | None = None) -> int:
    """Processes in this launch (1 when not launched by accelerate/torchrun)."""
    env = os.environ if env is None else env
    try:
        return max(1, int(env.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process(env: dict | None = None) -> bool:
    """Rank 0 (or no launch): the process that writes reports. Read from the environment, so it costs nothing."""
    env = os.environ if env is None else env
    return world_size(env) == 1 or env.get("RANK", "0") in ("", "0")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the launch; `Ranks()` is the single process."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # the accelerator this rank owns (cuda:<local rank>), or cpu
    state: Any = field(default=None, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous share of range(n), by accelerate's `split_between_processes` (the first
        n % world ranks take one item more; a rank past n gets none)."""
        if self.world == 1:
            return range(n)
        with self.state.split_between_processes(list(range(n))) as mine:
            return range(mine[0], mine[-1] + 1) if len(mine) else range(0)

    def gather(self, mine: list) -> list:
        """Every rank's list concatenated in rank order, on every rank: answers of contiguous shares come back in
        item order."""
        if self.world == 1:
            return list(mine)
        from accelerate.utils import gather_object

        return list(gather_object(list(mine)))

    def gather_each(self, value: Any) -> list:
        """One value per rank, in rank order, on every rank (counts, timings, notes)."""
        return self.gather([value])

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def device_map(self, requested: str | dict | None) -> str | dict | None:
        """Where this rank loads a model: under a launch with a GPU per process, its own GPU (for an unset or
        `auto` device_map, which would otherwise stay on the CPU or spread every rank over every GPU); anything
        else as configured."""
        if self.world > 1 and self.device != "cpu" and requested in (None, "auto"):
            return self.device
        return requested


_CURRENT: Ranks | None = None


def current() -> Ranks:
    """This process's `Ranks` (the process group is set up once, on the first call under a launch)."""
    global _CURRENT
    if world_size() == 1:
        return Ranks()
    if _CURRENT is None:
        from accelerate import PartialState

        from vlm_salience.engine.devices import placement_from_environment

        placement = placement_from_environment()
        if placement.reason and is_main_process():
            print(f"note: {placement.reason}", flush=True)
        state = PartialState(cpu=placement.cpu)
        _CURRENT = Ranks(state.process_index, state.num_processes, "cpu" if placement.cpu else str(state.device),
                         state)
    return _CURRENT

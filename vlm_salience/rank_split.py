"""Commands that split their inputs across the processes of an `accelerate launch` by rank: where this process
stands (rank, world, device) and nothing else, so any layer can use it (`face score`, `face video`, `video prepare`).

Launched plainly (no WORLD_SIZE > 1 in the environment), `world_size()` is 1 and the callers never ask for the state.
Under a launch, accelerate's `PartialState` sets up the process group (gloo on the CPU) and its
`split_between_processes` gives each rank a contiguous share of the inputs.
"""

from __future__ import annotations

from typing import Any

from vlm_salience.ranks import current, world_size  # noqa: F401  (world_size: for the callers)


def rank_state() -> Any:
    """accelerate's PartialState for this process, set up once by `ranks.current()`: gloo on the CPU where GPUs are
    missing or fewer than the processes, as training and `prompt run` decide (engine/devices.py). Only under a
    launch (world_size() > 1)."""
    return current().state


def rank_device(configured: str, state: Any) -> str:
    """The device a model configured for `configured` runs on in this rank: a CUDA device becomes this rank's own
    GPU (cuda:LOCAL_RANK, as the launch assigned it), so N processes use N GPUs rather than all sharing the first;
    anything else (cpu) stays as configured."""
    dev = getattr(state, "device", None)
    if str(configured).startswith("cuda") and dev is not None and getattr(dev, "type", "") == "cuda":
        return str(dev)
    return str(configured)

"""Where a run's processes train, and deterministic kernels on request: two decisions the engine takes at setup.

- `choose_backend`: NCCL cannot give two ranks one GPU ("Duplicate GPU detected"), so a launch with more processes
  per machine than visible GPUs either falls back to gloo on the CPU (the default, with a printed reason) or, where
  the user asked for NCCL, stops with a message naming the fix. A pure function of (processes, GPUs, request), so
  it is tested without a GPU.
- `apply_determinism`: exact resume on CUDA needs deterministic kernels (cuBLAS workspace, cuDNN, atomics in some
  backward passes); on a CPU training is already bit-identical. `EngineConfig.deterministic` turns it on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from vlm_salience.errors import ConfigError

Backend = Literal["auto", "nccl", "gloo"]
BACKEND_ENV = "VLM_SALIENCE_BACKEND"  # auto | nccl | gloo: what a multi-process run may use
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace setting (CUDA docs, "Results reproducibility")


@dataclass(frozen=True)
class Placement:
    cpu: bool  # train on the CPU (gloo between processes) instead of the accelerator (NCCL)
    reason: str  # printed when it is not the obvious choice; "" otherwise


def choose_backend(local_processes: int, devices: int, requested: Backend = "auto") -> Placement:
    """Where `local_processes` processes on one machine train, given `devices` visible GPUs.

    gloo: the CPU. auto: the GPUs where each process gets its own, else the CPU over gloo (a reason says so).
    nccl: the GPUs, and an error where there are fewer of them than processes (NCCL refuses a shared GPU)."""
    if requested not in ("auto", "nccl", "gloo"):
        raise ConfigError(f"{BACKEND_ENV}={requested!r}: use auto, nccl or gloo")
    if requested == "gloo":
        return Placement(True, "" if devices == 0 else "gloo requested: training on the CPU")
    if devices == 0:
        if requested == "nccl":
            raise ConfigError(f"{BACKEND_ENV}=nccl but no GPU is visible; unset it to train on the CPU over gloo")
        return Placement(True, "")
    if local_processes <= devices:
        return Placement(False, "")
    if requested == "nccl":
        raise ConfigError(f"{local_processes} processes on this machine but {devices} visible GPU(s): NCCL cannot put "
                          f"two processes on one GPU (\"Duplicate GPU detected\"); launch with --num_processes "
                          f"{devices}, or unset {BACKEND_ENV} to fall back to gloo on the CPU")
    return Placement(True, f"{local_processes} processes on this machine but {devices} visible GPU(s): NCCL cannot put "
                           f"two processes on one GPU, so they train over gloo on the CPU (launch with "
                           f"--num_processes {devices} to use the GPUs, or set {BACKEND_ENV}=nccl to make this an "
                           "error)")


def placement_from_environment(env: dict | None = None, devices: int | None = None) -> Placement:
    """`choose_backend` for this process: processes per machine from torchrun/accelerate's variables, the request
    from `accelerate launch --cpu` (ACCELERATE_USE_CPU) or VLM_SALIENCE_BACKEND."""
    env = os.environ if env is None else env
    if devices is None:
        import torch

        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if devices == 0 and hasattr(torch, "accelerator") and torch.accelerator.is_available():
            devices = torch.accelerator.device_count()
    local = int(env.get("LOCAL_WORLD_SIZE") or env.get("WORLD_SIZE") or 1)
    use_cpu = str(env.get("ACCELERATE_USE_CPU", "")).lower() in ("1", "true", "yes")
    requested = "gloo" if use_cpu else env.get(BACKEND_ENV, "auto").lower()
    return choose_backend(local, devices, requested)  # type: ignore[arg-type]


def apply_determinism(on: bool) -> dict[str, object]:
    """Deterministic kernels (on) or torch's defaults (off); returns what is now in force.

    On: torch.use_deterministic_algorithms (an op without a deterministic kernel raises, naming itself, rather than
    silently breaking an exact resume), CUBLAS_WORKSPACE_CONFIG (set before the first cuBLAS call; an existing
    value is kept), cuDNN deterministic and without autotuning (its benchmark picks kernels by timing)."""
    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    if on:
        torch.backends.cudnn.benchmark = False
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}

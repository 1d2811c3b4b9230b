"""What the hardware multiplies natively, so that `auto` precisions never pick a slow emulated format.

bf16 is fast only where the matrix units take it: CUDA GPUs with bf16 support (Ampere and later), and CPUs with
AMX-BF16 or AVX512-BF16. Elsewhere (e.g. an AMD EPYC with AVX2 only) PyTorch converts bf16 to fp32 around every
multiply, and label scoring ran at 0.20x fp32 (benchmarks/bench_prompting.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            flags.update(line.split(":", 1)[1].split())
    return flags


def cuda_bf16(device) -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))


def native_bf16(device="cpu") -> bool:
    """Whether `device` multiplies bf16 natively (so bf16 is faster than fp32 there, not slower)."""
    kind = str(getattr(device, "type", device) or "cpu").split(":")[0]
    if kind == "cuda":
        return cuda_bf16(device)
    if kind == "cpu":
        return bool(set(CPU_BF16_FLAGS) & cpu_flags())
    return False  # mps, xpu, ...: not measured here, so fp32


def auto_dtype(device="cpu") -> str:
    """The dtype name `auto` stands for on `device`: bfloat16 where native, float32 elsewhere; logged."""
    pick = "bfloat16" if native_bf16(device) else "float32"
    why = "native bf16" if pick == "bfloat16" else "no native bf16"
    log.info("dtype auto: %s on %s (%s)", pick, device, why)
    return pick

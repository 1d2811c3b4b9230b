"""What every benchmark script shares: measurements in child processes (so that each peak memory is its own),
repeated in alternating order (ABBA...), and the CPU time the hypervisor stole while each ran.

This machine is a shared virtual one: other guests take CPU time from it ("steal"), and throughput of one run can
halve from one minute to the next. A ratio of two single runs taken minutes apart is then mostly noise. Running the
compared measurements back to back, in alternating order, several times, and reporting the median with the spread
of the paired ratios makes the ratio say something about the code.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def cpu_ticks() -> dict[str, int]:
    """Cumulative CPU ticks of this machine (/proc/stat): busy, idle and stolen; {} where unavailable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return {}
    v = [int(x) for x in fields] + [0] * 8
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal}


def steal_fraction(before: dict[str, int], after: dict[str, int]) -> float | None:
    """Share of CPU time taken by other guests between two readings (None where /proc/stat is missing)."""
    if not before or not after:
        return None
    d = {k: after[k] - before[k] for k in before}
    total = sum(d.values())
    return d["steal"] / total if total else 0.0


def run_child(script: Path, args: list[str]) -> dict:
    """Run `script --child ...` in a fresh process; its last stdout line is a JSON result, to which the wall time
    and the stolen CPU share of the run are added."""
    before, t0 = cpu_ticks(), time.perf_counter()
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{res.stderr[-4000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["child_wall_s"] = time.perf_counter() - t0
    out["steal"] = steal_fraction(before, cpu_ticks())
    return out


def alternating(names: list[str], repeats: int, run: Callable[[str], dict]) -> dict[str, list[dict]]:
    """Run every measurement `repeats` times, the order reversed on every other round (ABC CBA ABC ...), so that
    slow drift of the machine affects all of them alike."""
    out: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            out[n].append(run(n))
    return out


def paired_ratio(a: list[dict], b: list[dict], key: str) -> dict:
    """Ratio of medians of `key` (a over b), with the range of the per-round ratios and the steal seen."""
    va, vb = [x[key] for x in a], [x[key] for x in b]
    per_round = [x / y for x, y in zip(va, vb)]
    steals = [x["steal"] for x in (*a, *b) if x.get("steal") is not None]
    return {"ratio": statistics.median(va) / statistics.median(vb), "per_round": per_round,
            "a_median": statistics.median(va), "b_median": statistics.median(vb),
            "steal_max": max(steals) if steals else None}


def median_run(runs: list[dict], key: str) -> dict:
    """The run whose `key` is the median one (for its other fields: memory, lengths)."""
    ordered = sorted(runs, key=lambda x: x[key])
    return ordered[(len(ordered) - 1) // 2]


def describe(p: dict) -> str:
    rounds = ", ".join(f"{x:.2f}" for x in p["per_round"])
    steal = "" if p["steal_max"] is None else f"; CPU stolen by other guests up to {p['steal_max']:.0%}"
    return f"{p['ratio']:.2f}x (median of {len(p['per_round'])} rounds; per round {rounds}{steal})"

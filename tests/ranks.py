"""Two processes joined over gloo on the CPU, as `accelerate launch --config_file configs/accelerate/cpu_ddp.yaml`
starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment), each running one `vlm-salience` command, with
every prompt the model is asked recorded per rank (and, on request, a rank killed by SIGKILL mid-run)."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_calls(log: Path, rank: int, kill_at: int | None = None) -> None:
    """Wrap the HF backend: every prompt it scores or generates for appends {"template", "item", "adapter"} to
    `log/calls.rank<rank>.jsonl`; the backend call number `kill_at` (1-based) of this rank SIGKILLs the process
    before it answers (the chunks before it are committed to the rank's shard)."""
    from vlm_salience.prompting.hf_backend import HFBackend

    seen = {"calls": 0}
    path = Path(log) / f"calls.rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def wrap(fn):
        def spy(self, prompts, *a, **k):
            seen["calls"] += 1
            if kill_at is not None and seen["calls"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            adapters = k.get("adapters") or [None] * len(prompts)
            with path.open("a") as fh:
                for p, ad in zip(prompts, adapters):
                    fh.write(json.dumps({"template": p.template, "item": str(p.item_id), "adapter": ad}) + "\n")
            return fn(self, prompts, *a, **k)
        return spy

    HFBackend.score = wrap(HFBackend.score)
    HFBackend.generate = wrap(HFBackend.generate)


def no_plots(monkeypatch) -> None:
    """The experiment report without its per-method plots (matplotlib takes seconds per plot on a loaded machine;
    these tests compare predictions and metrics, not pictures)."""
    from vlm_salience.prompting import report

    monkeypatch.setattr(report, "plot_strategy", lambda *a, **k: False)
    monkeypatch.setattr(report, "plot_expressivity_agreement", lambda *a, **k: False)


def calls(log: Path) -> dict[int, list[dict]]:
    """rank -> the prompts it asked, in order (one process: rank 0)."""
    out = {}
    for f in sorted(Path(log).glob("calls.rank*.jsonl")):
        out[int(f.stem.split("rank")[1])] = [json.loads(line) for line in f.read_text().splitlines()]
    return out


def rank_main(rank: int, world: int, port: int, commands: list[list[str]], log: str, kill: dict | None) -> None:
    """One process of the launch: the environment accelerate's launcher gives it, then `vlm-salience *argv` for
    each argv of `commands` in turn (one launch, several runs: the processes start once)."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"})
    import torch

    torch.set_num_threads(1)
    import pytest

    no_plots(pytest.MonkeyPatch())
    record_calls(Path(log), rank, (kill or {}).get(str(rank)))
    from vlm_salience.cli import main

    for argv in commands:
        code = main([*argv, "--quiet"])
        if code:
            raise SystemExit(code)


def launch(*commands: list, log: Path, world: int = 2, kill: dict[int, int] | None = None) -> None:
    """Run `vlm-salience *argv` for each argv of `commands`, in turn, on `world` processes (raises where one of
    them fails or is killed); `kill`: rank -> the backend call at which that rank is SIGKILLed."""
    import torch.multiprocessing as mp

    mp.start_processes(rank_main, args=(world, free_port(), [[str(a) for a in argv] for argv in commands], str(log),
                                        {str(k): v for k, v in (kill or {}).items()}),
                       nprocs=world, join=True, start_method="spawn")

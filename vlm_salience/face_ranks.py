"""`face score` and `face video` under `accelerate launch`: the inputs are split across processes by rank.
`face score`: each rank scores its share into its own part CSV (resumable like any `face score` CSV: a killed
rank's rerun keeps what it wrote), and rank 0 merges the parts into the one CSV a single process writes (rows in the
same order), atomically. `face video`: each rank writes its videos' tables (each resumable on its own) and rank 0
writes the one summary.

    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m vlm_salience.cli face score photos/ --out runs/faces.csv

Launched plainly (no WORLD_SIZE > 1 in the environment), nothing here is used. accelerate's `PartialState` sets up
the process group (gloo on CPU) and `split_between_processes` gives each rank a contiguous share.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from vlm_salience.atomic import write_text
from vlm_salience.rank_split import rank_state, world_size

__all__ = ["merge_parts", "part_path", "score_split", "split_results", "world_size"]


def part_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.stem}.rank{rank}-of-{world}{out.suffix}")


def merge_parts(parts: Sequence[Path], out: Path) -> None:
    """The parts' rows under one header, in rank order, written atomically to `out`."""
    header, body = None, []
    for p in parts:
        lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            continue
        if header is None:
            header = lines[0]
        elif lines[0] != header:
            raise ValueError(f"{p}: its columns differ from {parts[0]}'s (another model?); score again with --fresh")
        body += lines[1:]
    write_text(out, (header or "") + "".join(body))


def split_results(items: list, out_dir: Path, run_mine: Callable[[list, int], list[dict]]) -> list[dict] | None:
    """`face video` under accelerate launch: each rank runs `run_mine(its share, rank)` (one table per video, so
    nothing to merge but the results), writes them to `out_dir/.face_video.rank<r>.json`; rank 0 returns every
    rank's results in input order, the others None."""
    state = rank_state()
    rank, world = state.process_index, state.num_processes
    with state.split_between_processes(items) as mine:
        results = run_mine(list(mine), rank)
    write_text(out_dir / f".face_video.rank{rank}.json", json.dumps(results) + "\n")
    state.wait_for_everyone()
    merged = None
    if state.is_main_process:
        merged = []
        for r in range(world):
            f = out_dir / f".face_video.rank{r}.json"
            merged += json.loads(f.read_text(encoding="utf-8"))
            f.unlink()
    state.wait_for_everyone()
    return merged


def score_split(images: list[Path], out: Path, score_part: Callable[[list[Path], Path], dict],
                summarise: Callable[[Path], dict]) -> dict:
    """Run `score_part(my_images, my_part_csv)` on every rank, then on rank 0 merge the parts into `out` and return
    the summary of the whole; other ranks return their part's summary."""
    state = rank_state()
    rank, world = state.process_index, state.num_processes
    with state.split_between_processes(images) as mine:
        part_summary = score_part(list(mine), part_path(out, rank, world))
    state.wait_for_everyone()
    summary = part_summary
    if state.is_main_process:
        parts = [part_path(out, r, world) for r in range(world)]
        merge_parts(parts, out)
        summary = summarise(out)
        summary.update({"out": str(out), "processes": world,
                        "parts": [p.name for p in parts]})
        write_text(out.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
        for p in parts:
            p.unlink(missing_ok=True)
            p.with_suffix(".summary.json").unlink(missing_ok=True)
    state.wait_for_everyone()
    return summary

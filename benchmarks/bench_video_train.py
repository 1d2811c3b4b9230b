"""Video baseline targets (issue 11), measured in one run on this CPU:

1. With the frame cache, data loading takes <= 10% of a baseline training step. Both are timed in one process,
   in alternating rounds (load, step, step, load, ...): loading = `task.collate` of one batch straight from the
   cache files (the in-memory clip cache off, so every clip is read from disk), step = forward, backward and
   optimizer step of the baseline on an already collated batch. Printed: the ratio of medians and per round.
2. The baseline's UAR on the synthetic corpus (law on), with its bootstrap interval, per fold mean ± sd, and on
   the ambiguous clips (face alone ambiguous between two classes) against the pair's chance level.

    .venv/bin/python benchmarks/bench_video_train.py [--corpus runs/clips] [--folds set_1 set_2] [--skip-train]

The corpus is written (configs/synth/clips.yaml) where --corpus does not hold one yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import cpu_ticks, steal_fraction  # noqa: E402

CONFIG = ROOT / "configs/video/baseline_synthetic.yaml"


def ensure_corpus(folder: Path) -> Path:
    data = folder / "generic" / "data.yaml"
    if not data.is_file():
        from vlm_salience.config import load_config
        from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus

        write_clip_corpus(load_config(ROOT / "configs/synth/clips.yaml", ClipSynthConfig), folder, progress=True)
    return data


def overrides(args) -> list[str]:
    work = Path(args.work)
    return [f"data.config={ensure_corpus(Path(args.corpus))}", f"data.cache={work / 'cache'}",
            f"model.encoder.path={work / 'tiny_clip'}", f"out={work / 'run'}"]


def loading_vs_step(args, ov: list[str]) -> dict:
    import numpy as np
    import torch

    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.train import ensure_cache, ensure_encoder, folds_of, load_corpus, make_task
    from vlm_salience.video.cache import ClipCache
    from vlm_salience.video.task import FrameStore

    cfg, task_cls = load_video_config(CONFIG, ov)
    corpus = load_corpus(cfg)
    folds = folds_of(cfg, corpus)
    ensure_cache(cfg, corpus, folds, progress=True)
    ensure_encoder(cfg)
    store = FrameStore(ClipCache(cfg.data.cache), budget_mb=0, streams=task_cls.streams)  # every read from disk
    task = make_task(cfg, task_cls, corpus, folds[0], store)
    mem_store = FrameStore(ClipCache(cfg.data.cache), budget_mb=4096, streams=task_cls.streams)
    mem_task = make_task(cfg, task_cls, corpus, folds[0], mem_store)
    mem_task.collate(list(range(mem_task.num_examples())), epoch=0)  # epochs after the first: clips in memory
    model, groups = task.setup(None)
    model.train()
    opt = torch.optim.AdamW(groups, lr=1e-3)
    bs = cfg.optim.batch_size
    rng = np.random.default_rng(0)
    batches = [rng.choice(task.num_examples(), size=bs, replace=False).tolist() for _ in range(args.rounds * 2 + 2)]

    def load(k: int) -> float:
        t0 = time.perf_counter()
        task.collate(batches[k], epoch=k)
        return time.perf_counter() - t0

    def load_mem(k: int) -> float:
        t0 = time.perf_counter()
        mem_task.collate(batches[k], epoch=k)
        return time.perf_counter() - t0

    def step(k: int) -> float:
        batch = task.collate(batches[k], epoch=k)
        t0 = time.perf_counter()
        loss = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(0), load(1)  # warm-up (kernels, file cache of the first clips)
    loads, mems, steps = [], [], []
    before = cpu_ticks()
    for r in range(args.rounds):
        k = 2 + 2 * r
        if r % 2 == 0:
            loads.append(load(k)), mems.append(load_mem(k)), steps.append(step(k + 1))
        else:
            steps.append(step(k)), mems.append(load_mem(k + 1)), loads.append(load(k + 1))
    steal = steal_fraction(before, cpu_ticks())
    per_round = [a / b for a, b in zip(loads, steps)]
    return {"load_s_median": statistics.median(loads), "step_s_median": statistics.median(steps),
            "ratio": statistics.median(loads) / statistics.median(steps), "per_round": per_round,
            "memory_load_s_median": statistics.median(mems),
            "memory_ratio": statistics.median(mems) / statistics.median(steps),
            "batch_clips": bs, "frames_per_clip": cfg.data.n_segments, "steal": steal,
            "torch_threads": torch.get_num_threads()}


def baseline_uar(args, ov: list[str]) -> dict:
    from vlm_salience.video.train import train_video

    extra = [f"data.folds={json.dumps(args.folds)}"] if args.folds else []
    t0 = time.perf_counter()
    res = train_video(CONFIG, ov + extra, progress=True)
    m = res["report"]["methods"]["baseline"]
    return {"seconds": time.perf_counter() - t0, "pooled": m["pooled"]["uar"], "war": m["pooled"]["war"],
            "summary": m["summary"], "ambiguous": m.get("ambiguous"), "unambiguous": m.get("unambiguous")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(ROOT / "runs/clips"))
    ap.add_argument("--work", default=str(ROOT / "runs/bench_video_train"))
    ap.add_argument("--folds", nargs="*", default=None, help="folds to train (default: all five)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-train", action="store_true", help="only the loading/step ratio")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    ov = overrides(args)
    r = loading_vs_step(args, ov)
    rounds = ", ".join(f"{x:.3f}" for x in r["per_round"])
    steal = "" if r["steal"] is None else f"; CPU stolen by other guests {r['steal']:.0%}"
    print(f"\n[1] data loading / training step (batch {r['batch_clips']} clips x {r['frames_per_clip']} frames, "
          f"cache read from disk, {r['torch_threads']} torch thread(s)): load {r['load_s_median'] * 1e3:.1f} ms, "
          f"step {r['step_s_median'] * 1e3:.1f} ms -> {r['ratio']:.1%} (target <= 10%; per round {rounds}{steal})")
    print(f"    from the in-memory clip cache (epochs after the first, data.memory_cache_mb): load "
          f"{r['memory_load_s_median'] * 1e3:.1f} ms -> {r['memory_ratio']:.1%} of a step")
    out = {"loading": r}
    if not args.skip_train:
        b = baseline_uar(args, ov)
        p, s = b["pooled"], b["summary"]["uar"]
        sd = f"{s['sd']:.3f}" if s["sd"] is not None else "n/a"
        print(f"[2] baseline on the synthetic clips (law on): UAR {p['value']:.3f} [{p['ci95'][0]:.3f}, "
              f"{p['ci95'][1]:.3f}] pooled over {s['n_folds']} fold(s); per fold mean {s['mean']:.3f} ± {sd}; "
              f"WAR {b['war']['value']:.3f} ({b['seconds']:.0f} s)")
        a = b["ambiguous"]
        if a:
            w = a["war"]
            print(f"    ambiguous clips ({a['n']}): WAR {w['value']:.3f} [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}] "
                  f"against the pair's chance {a['pair_chance']:.2f}; predicted one of the pair "
                  f"{a['predicted_within_pair'] if a['predicted_within_pair'] is None else round(a['predicted_within_pair'], 2)}; "
                  f"other clips UAR {b['unambiguous']['uar']['value']:.3f}")
        out["baseline"] = b
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()

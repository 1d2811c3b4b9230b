"""Frozen-encoder feature cache (video/feature_cache.py): epoch time with and without it, and the same predictions.

Per model (OUS of configs/video/ous_synthetic.yaml and the face-only baseline of baseline_synthetic.yaml, both
with the image tower frozen, on the tiny CLIP), in one process, in alternating rounds (cached, live, live,
cached, ...): from the same initial weights, one training epoch over the training fold (collate, forward,
backward and an AdamW step per batch, as the engine runs them) and the validation pass that follows it. Printed:
the median epoch time of each, the ratio with its per-round values, the one-off cost of filling the cache (and of
finding it filled, as the next fold or variant does), and after the last round the largest difference between the
two runs' class probabilities on the test clips and how many predicted classes agree.

    .venv/bin/python benchmarks/bench_feature_cache.py [--work runs/bench_feature_cache] [--rounds 4]
        [--models ous baseline] [--image-size 32]

`--image-size` builds the tiny encoder at another input size (frames are resized to it, as a 224-px ViT reads
112-px crops): the encoder's share of a step, and so the cache's gain, grows with it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import cpu_ticks, steal_fraction  # noqa: E402

CLIPS = ("clips=140", "frames=16", "size=64", "folds=2", "layouts=[generic]")
CONFIGS = {"ous": ROOT / "configs/video/ous_synthetic.yaml",
           "baseline": ROOT / "configs/video/baseline_synthetic.yaml"}


def corpus(work: Path) -> Path:
    data = work / "clips" / "generic" / "data.yaml"
    if not data.is_file():
        from vlm_salience.config import load_config
        from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus

        cfg = load_config(ROOT / "configs/synth/clips.yaml", ClipSynthConfig, list(CLIPS))
        write_clip_corpus(cfg, work / "clips", progress=True)
    return data


def encoder(work: Path, image_size: int) -> Path:
    from vlm_salience.config import load_config
    from vlm_salience.models.encoders import TinyEncoderConfig, build_tiny_encoder

    path = work / f"tiny_clip_{image_size}"
    if not path.is_dir():
        cfg = load_config(ROOT / "configs/models/tiny_clip.yaml", TinyEncoderConfig)
        build_tiny_encoder(cfg.model_copy(update={"image_size": image_size}), path)
    return path


def make_task(kind: str, work: Path, enc: Path, setting: str):
    from vlm_salience.video.train import _setup, ensure_cache, make_task as fold_task

    ov = [f"data.config={corpus(work)}", f"data.cache={work / 'cache'}",
          f"data.prepare={ROOT / 'configs/video/ous_prepare_synthetic.yaml'}", "data.folds=[set_1]",
          f"model.encoder.path={enc}", "model.vision=frozen", f"out={work / 'run'}", "variants=[]",
          f"data.feature_cache={setting}", f"data.feature_dir={work / 'features' / kind}"]
    cfg, task_cls, corp, folds, store_factory = _setup(CONFIGS[kind], ov, False)
    ensure_cache(cfg, corp, folds, progress=False)
    return fold_task(cfg, task_cls, corp, "set_1", store_factory())


def epoch(task, model, seed: int) -> dict:
    """One training epoch and the validation pass, timed; the model is trained in place."""
    import numpy as np
    import torch

    opt = torch.optim.AdamW(model.param_groups(), lr=task.cfg.optim.lr, weight_decay=0.0)
    order = np.random.default_rng(seed).permutation(task.num_examples())
    bs = task.cfg.optim.batch_size
    model.train()
    t0 = time.perf_counter()
    for s in range(0, len(order), bs):
        batch = task.collate([int(i) for i in order[s:s + bs]], epoch=seed)
        loss = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t1 = time.perf_counter()
    task.evaluate(model)
    t2 = time.perf_counter()
    return {"train_s": t1 - t0, "eval_s": t2 - t1, "epoch_s": t2 - t0}


def bench(kind: str, work: Path, enc: Path, rounds: int) -> dict:
    import numpy as np
    import torch

    tasks = {"live": make_task(kind, work, enc, "off")}  # first: writes the corpus and the frame cache if missing
    tasks["live"].setup()  # and loads transformers (tens of seconds on a loaded machine), outside the timings
    torch.manual_seed(0)
    t = time.perf_counter()
    tasks["cached"] = make_task(kind, work, enc, "auto")
    tasks["cached"].setup()
    fill_s = time.perf_counter() - t
    fc = tasks["cached"].feature_cache(tasks["cached"].model)
    if fc is None:
        raise SystemExit(f"{kind}: the feature cache is not used ({tasks['cached'].feature_cache_reason})")
    ensure_s, encoded = fc.seconds, fc.computed  # the training and validation clips, in setup
    t = time.perf_counter()
    again = make_task(kind, work, enc, "auto")
    again.setup()
    reuse_s = time.perf_counter() - t
    init = copy.deepcopy(tasks["cached"].model.state_dict())
    times: dict[str, list[dict]] = {"cached": [], "live": []}
    models = {}
    steal = []
    for r in range(rounds):
        for name in (("cached", "live") if r % 2 == 0 else ("live", "cached")):
            model = tasks["cached"].model if name == "cached" else tasks["live"].model
            model.load_state_dict(init)
            before = cpu_ticks()
            times[name].append(epoch(tasks[name], model, seed=r))
            steal.append(steal_fraction(before, cpu_ticks()))
            models[name] = copy.deepcopy(model.state_dict())
    # the last round's trained weights, in one model, predicted both ways
    model = tasks["cached"].model
    seen = set(tasks["cached"].train_ids + tasks["cached"].val_ids)
    test = [c for c in tasks["cached"].store.cache.ids() if c not in seen]
    preds = {}
    for name in ("cached", "live"):
        model.load_state_dict(models[name])
        preds[name] = {how: tasks[how].predict(model, test) for how in ("cached", "live")}
    med = {n: statistics.median(x["epoch_s"] for x in v) for n, v in times.items()}
    per_round = [b["epoch_s"] / a["epoch_s"] for a, b in zip(times["cached"], times["live"])]
    pc, pl = preds["cached"]["cached"], preds["live"]["live"]
    return {"kind": kind, "train_clips": tasks["cached"].num_examples(), "val_clips": len(tasks["cached"].val_ids),
            "test_clips": len(test), "fill_s": fill_s, "reuse_setup_s": reuse_s,
            "encoded_clip_streams": encoded, "ensure_s": ensure_s, "median_epoch_s": med,
            "ratio": med["live"] / med["cached"],
            "per_round": per_round,
            "median_train_s": {n: statistics.median(x["train_s"] for x in v) for n, v in times.items()},
            "median_eval_s": {n: statistics.median(x["eval_s"] for x in v) for n, v in times.items()},
            "max_prob_diff_same_weights": max(
                float(np.abs(preds[n]["cached"].probs - preds[n]["live"].probs).max()) for n in preds),
            "max_prob_diff_trained_apart": float(np.abs(pc.probs - pl.probs).max()),
            "same_class_trained_apart": f"{int((pc.predicted == pl.predicted).sum())}/{len(test)}",
            "steal_max": max((s for s in steal if s is not None), default=None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_feature_cache"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--models", nargs="+", default=["ous", "baseline"], choices=sorted(CONFIGS))
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import os

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    enc = encoder(work, args.image_size)
    print(f"load average {os.getloadavg()[0]:.2f} at start; torch threads {args.threads}; tiny CLIP at "
          f"{args.image_size} px; frames cached at 32 px")
    for kind in args.models:
        r = bench(kind, work, enc, args.rounds)
        m, tr, ev = r["median_epoch_s"], r["median_train_s"], r["median_eval_s"]
        rounds = ", ".join(f"{x:.2f}" for x in r["per_round"])
        steal = "" if r["steal_max"] is None else f"; CPU stolen up to {r['steal_max']:.0%}"
        print(f"\n{kind}: {r['train_clips']} training, {r['val_clips']} validation, {r['test_clips']} test clips")
        print(f"  epoch (train + validation), median of {len(r['per_round'])}: live {m['live']:.2f} s "
              f"({tr['live']:.2f} + {ev['live']:.2f}), cached {m['cached']:.2f} s ({tr['cached']:.2f} + "
              f"{ev['cached']:.2f})")
        print(f"  speed-up {r['ratio']:.2f}x (per round {rounds}{steal})")
        print(f"  filling the cache once: {r['ensure_s']:.2f} s to encode and write {r['encoded_clip_streams']} "
              f"clip streams ({r['fill_s']:.2f} s with the task's setup); a later task (fold, variant) finding it "
              f"filled: {r['reuse_setup_s']:.2f} s setup")
        print(f"  same weights, cached vs live inputs: max |dp| {r['max_prob_diff_same_weights']:.2e}")
        print(f"  trained one epoch each way: max |dp| {r['max_prob_diff_trained_apart']:.2e}, same predicted "
              f"class on {r['same_class_trained_apart']} test clips")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()

"""8 frames against the middle frame alone (issue 28): a LoRA VLM trained on 8-frame clips against the same VLM
trained on the middle frame alone, on synthetic clips whose apex comes late (configs/synth/clips_late_apex.yaml:
the face is neutral until ~60% of the clip, so the middle frame shows no expression whatever the class).

Both arms are `vlm-salience train` with a video data YAML (training/clip_training.py) on the same corpus, frame
cache (8 segments), base model, LoRA, steps and seed; the only difference is `data.clip.frames`: 8 (every cached
segment; training draws a random cached frame per segment each epoch, test reads the middles) or 1 (the middle
segment alone: its middle frame at test, a cached frame of that segment in training). Out of fold: every fold's
adapter predicts only its own test fold, validation is carved from its training fold. The margin is the paired
difference of pooled UAR (8 frames - middle frame) with a paired bootstrap 95% interval over clips
(video/report.py's paired_comparison), printed with chance (1 / classes) and the load average.

    python benchmarks/bench_clip_frames.py [--clips 96] [--folds 4] [--steps 150] [--lora-target language]
                                           [--model configs/models/tiny_qwen2_vl.yaml] [--json out.json]

Its default run (the tiny random Qwen2-VL, 96 clips, 4 folds, 150 steps per fold and arm) takes a few minutes on
a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup(work: Path, clips: int, folds: int) -> tuple[Path, Path]:
    """The late-apex clips (generic layout) and their frame cache: 8 segments x 2 candidates, 32-px face crops."""
    import yaml

    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.video.prepare import load_prepare_config, prepare_corpus

    data = work / "clips" / "generic" / "data.yaml"
    if not data.exists():
        cfg = load_config(REPO / "configs" / "synth" / "clips_late_apex.yaml", ClipSynthConfig,
                          [f"clips={clips}", f"folds={folds}"])
        write_clip_corpus(cfg, work / "clips", progress=False)
    cache = work / "cache"
    if not (cache / "manifest.json").exists():
        det = work / "haar.yaml"
        det.write_text(yaml.safe_dump({"kind": "haar", "name": "haar", "upscale_below": 32, "min_size": 16}))
        prep = work / "prepare.yaml"
        prep.write_text(yaml.safe_dump({"n_segments": 8, "candidates_per_segment": 2, "streams": {
            "face_size": 32, "scene_size": 32, "detection": {"detector": str(det), "max_side": None}}}))
        prepare_corpus(data, load_prepare_config(prep), cache, progress=False)
    return data, cache


def train_arm(work: Path, data: Path, cache: Path, frames: int, args: argparse.Namespace) -> dict:
    """One arm: `train` with the clip YAML, clip.frames = `frames`; returns its run folder, UAR/WAR and seconds."""
    from vlm_salience.config import load_config
    from vlm_salience.training.clip_training import ClipTrainConfig, train_clips

    out = work / f"frames_{frames}"
    cfg = load_config(REPO / "configs" / "train" / "clips_synthetic.yaml", ClipTrainConfig, [
        f"data.config={data}", f"data.frame_cache={cache}", f"data.clip.frames={frames}",
        f"model.path={work / 'model'}", f"model.build={Path(args.model).resolve()}",
        f"optim.max_steps={args.steps}", f"optim.lr={args.lr}", f"lora.target={args.lora_target}",
        "checkpoint.every_steps=null", f"report.n_boot={args.n_boot}", f"out={out}"])
    t0 = time.perf_counter()
    summary = train_clips(cfg, progress=False)
    seconds = time.perf_counter() - t0
    run = summary["adapters"]["clips"]
    val = {f: t.get("final_eval", {}).get("eval/uar") for f, t in run["training"].items()}
    return {"frames": frames, "out": run["out"], "uar": run["uar"], "war": run["war"], "n": run["n"],
            "validation_uar": val, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=150, help="LoRA steps per fold and arm")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-target", default="language", choices=["language", "language+projector", "all"])
    ap.add_argument("--model", default=str(REPO / "configs" / "models" / "tiny_qwen2_vl.yaml"),
                    help="a tiny-model YAML (configs/models/*.yaml) built once into the work folder")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--work", help="keep the corpus, cache, model and runs here (default: a temporary folder)")
    ap.add_argument("--json")
    args = ap.parse_args()

    from vlm_salience.video.report import compare_runs, comparison_markdown, paired_comparison

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        data, cache = setup(work, args.clips, args.folds)
        setup_s = time.perf_counter() - t0
        arms = {f: train_arm(work, data, cache, f, args) for f in (8, 1)}
        paired = paired_comparison(arms[8]["out"], arms[1]["out"], n_boot=args.n_boot)
        table = compare_runs({"8_frames": arms[8]["out"], "middle_frame": arms[1]["out"]}, reference="middle_frame",
                             n_boot=args.n_boot)
        classes = table["classes"]
        load = os.getloadavg()
        u = paired["uar"]
        doc = {"margin_uar": u, "margin_war": paired["war"], "n_clips": paired["n"], "chance_uar": 1 / len(classes),
               "arms": {str(k): {kk: v[kk] for kk in ("uar", "war", "validation_uar", "seconds")}
                        for k, v in arms.items()},
               "settings": {"clips": args.clips, "folds": args.folds, "steps": args.steps, "lr": args.lr,
                            "lora_target": args.lora_target, "model": args.model},
               "setup_seconds": setup_s, "loadavg": load}
        print(comparison_markdown(table))
        print(f"8 frames - middle frame, pooled UAR over {paired['n']} out-of-fold clips: {u['diff']:+.3f} "
              f"[{u['ci95'][0]:+.3f}, {u['ci95'][1]:+.3f}] (paired bootstrap 95%); WAR {paired['war']['diff']:+.3f} "
              f"[{paired['war']['ci95'][0]:+.3f}, {paired['war']['ci95'][1]:+.3f}]; chance UAR {1 / len(classes):.3f}")
        verdict = ("8 frames beat the middle frame: the interval excludes zero" if u["ci95"][0] > 0 else
                   "no margin shown: the interval includes zero" if u["ci95"][0] <= 0 <= u["ci95"][1] else
                   "the middle frame did better")
        print(f"{verdict}. Seconds: setup {setup_s:.0f}, 8 frames {arms[8]['seconds']:.0f}, middle frame "
              f"{arms[1]['seconds']:.0f}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2, default=float))


if __name__ == "__main__":
    main()

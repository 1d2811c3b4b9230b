"""Label scoring over clips against generate-and-parse (issue 28), on the random Qwen2-VL of
configs/models/bench_qwen2_vl.yaml, 8-frame clips of the synthetic clip corpus as one native video input each, the
clip_emotion template. Target: label scoring (every class scored in one tree-shaped continuation, batched) >= 8x
the clips/s of per-clip greedy generation of a 16-token answer parsed into a class (the JSON answer
`{"emotion": "surprise"}` is about that long). Both read the same prompts, built before the timing.

The rounds alternate (score, generate, generate, score, ...), ratios are those of the medians (_harness.py).

    python benchmarks/bench_clip_scoring.py [--clips 16] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _harness import alternating, describe, paired_ratio


def setup(work: Path, clips: int) -> tuple[Path, Path]:
    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm
    from vlm_salience.resources import shipped

    model = work / "bench-qwen2-vl"
    if not model.exists():
        build_tiny_vlm(load_config(shipped("configs/models/bench_qwen2_vl.yaml"), TinyVLMConfig), model)
    data = work / "clips" / "generic" / "data.yaml"
    if not data.exists():
        cfg = load_config(shipped("configs/synth/clips.yaml"), ClipSynthConfig,
                          [f"clips={clips}", "frames=16", "size=64", "layouts=[generic]"])
        write_clip_corpus(cfg, work / "clips", progress=False)
    return model, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16, help="generated answer length (greedy, fixed)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", help="keep the model and clips here (default: a temporary folder)")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.prompting.answers import AnswerError, AnswerSpec, parse_answer
    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.prompting.video_experiment import clip_items

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, data = setup(Path(args.work or tmp), args.clips)
        corpus = load_video_corpus(data)
        backend = HFBackend(load_vlm(ModelConfig(name="bench", path=str(model))), batch_size=args.batch)
        spec = AnswerSpec("choice", tuple(corpus.classes), None, None)
        tpl = load_template("clip_emotion")
        settings = ClipSettings(frames=args.frames, min_pixels=3136, max_pixels=3136)
        ids = [c.clip_id for c in corpus.clips]
        prompts = [build_prompt(tpl, it, spec, clip=settings, clip_mode="video")
                   for it in clip_items(corpus, ids, "face")]
        slots = spec.slots()
        backend.score(prompts[:2], slots)
        backend.generate_per_item(prompts[0], args.tokens, min_new_tokens=args.tokens)

        def run(name: str) -> dict:
            t0 = time.perf_counter()
            unparseable = 0
            if name == "score":
                backend.score(prompts, slots)
            else:
                for p in prompts:
                    try:
                        parse_answer(backend.generate_per_item(p, args.tokens, min_new_tokens=args.tokens), spec)
                    except AnswerError:
                        unparseable += 1
            s = time.perf_counter() - t0
            return {"seconds": s, "clips_per_s": len(prompts) / s, "unparseable": unparseable}

        runs = alternating(["score", "generate"], args.repeats, run)
        ratio = paired_ratio(runs["generate"], runs["score"], "seconds")
        load = os.getloadavg()[0]
        params = sum(p.numel() for p in backend.model.parameters()) / 1e6
        print(f"{len(prompts)} synthetic clips, {args.frames} frames each as one native video input, a random "
              f"Qwen2-VL of {params:.1f}M parameters, {len(corpus.classes)} classes:")
        for n in runs:
            cps = sorted(r["clips_per_s"] for r in runs[n])[len(runs[n]) // 2]
            print(f"  {n}: {cps:.2f} clips/s (median)" + (f"; unparseable answers {runs[n][0]['unparseable']}/"
                                                          f"{len(prompts)} (a random model)" if n != "score" else ""))
        print(f"  label scoring against generate-and-parse ({args.tokens} tokens): {describe(ratio)} (target >= 8x); "
              f"load average {load:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": runs, "speedup": ratio, "loadavg": load}, indent=2))


if __name__ == "__main__":
    main()

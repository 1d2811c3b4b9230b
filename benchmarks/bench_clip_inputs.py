"""Clip inputs for a prompt (issue 28): 8 frames read from the `video prepare` frame cache against the same 8 TSN
frames decoded from each clip's video, on the synthetic clips (configs/synth/clips.yaml: 32 frames of 112 px,
mpeg4). Target: >= 10x faster input preparation from the cache.

Both sides build the whole prompt the way `prompt run` does (`build_prompt` of the clip_emotion template: sampling,
reading, the digest that keys the answer cache), for the face stream (the cache's face crops against the corpus's
face-crop videos). The rounds alternate (cache, decode, decode, cache, ...) and the ratio is that of the medians
(benchmarks/_harness.py says why); the load average is printed with it.

    python benchmarks/bench_clip_inputs.py [--clips 40] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _harness import alternating, describe, paired_ratio


def setup(work: Path, clips: int) -> tuple[Path, Path]:
    """The synthetic clips (generic layout: mp4 videos) and their frame cache (16 segments x 3 candidates)."""
    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.resources import shipped
    from vlm_salience.video.prepare import load_prepare_config, prepare_corpus

    data = work / "clips" / "generic" / "data.yaml"
    if not data.exists():
        cfg = load_config(shipped("configs/synth/clips.yaml"), ClipSynthConfig,
                          [f"clips={clips}", "layouts=[generic]"])
        write_clip_corpus(cfg, work / "clips", progress=False)
    cache = work / "cache"
    if not (cache / "manifest.json").exists():
        prepare_corpus(data, load_prepare_config(None), cache, progress=False)
    return data, cache


def build_all(data: Path, cache: Path | None, frames: int) -> dict:
    """Seconds to get every clip's 8 frames (sampling + reading into PIL images: the input preparation) and to
    build its whole prompt (the frames, the rendered template, the digest of the answer-cache key), from the cache
    or by decoding. One-time costs (opening the cache's manifest, compiling the template) are outside the timing."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.clips import CachedFrames, ClipSettings, sample_frames
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.prompting.video_experiment import cached_clip_frames, clip_items

    corpus = load_video_corpus(data)
    ids = [c.clip_id for c in corpus.clips]
    spec = AnswerSpec("choice", tuple(corpus.classes), None, None)
    tpl = load_template("clip_emotion")
    settings = ClipSettings(frames=frames, stream="face")
    source = CachedFrames(cache) if cache is not None else None
    items = clip_items(corpus, ids, "face", cached=source is not None)
    build_prompt(tpl, items[0], spec, clip=settings, clip_mode="images",
                 frames=cached_clip_frames(source, corpus, ids[0], settings))
    t0 = time.perf_counter()
    for item in items:
        got = (cached_clip_frames(source, corpus, item.id, settings) if source is not None else
               sample_frames(item.face.media, settings))
        assert len(got) == frames
    t1 = time.perf_counter()
    for item in items:
        p = build_prompt(tpl, item, spec, clip=settings, clip_mode="images",
                         frames=cached_clip_frames(source, corpus, item.id, settings))
        assert len(p.images) == frames
    return {"seconds": t1 - t0, "prompt_seconds": time.perf_counter() - t1, "clips": len(ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", help="keep the corpus and cache here (default: a temporary folder)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data, cache = setup(work, args.clips)
        build_all(data, cache, args.frames)  # warm imports and the page cache for both sides
        build_all(data, None, args.frames)
        runs = alternating(["cache", "decode"], args.repeats,
                           lambda n: build_all(data, cache if n == "cache" else None, args.frames))
        ratio = paired_ratio(runs["decode"], runs["cache"], "seconds")
        whole = paired_ratio(runs["decode"], runs["cache"], "prompt_seconds")
        load = os.getloadavg()
        per = {n: statistics.median(r["seconds"] for r in runs[n]) / runs[n][0]["clips"] * 1e3 for n in runs}
        per_prompt = {n: statistics.median(r["prompt_seconds"] for r in runs[n]) / runs[n][0]["clips"] * 1e3
                      for n in runs}
        print(f"{args.frames} frames per prompt, {runs['cache'][0]['clips']} synthetic clips (32 frames, 112 px):")
        print(f"  frames: from the frame cache {per['cache']:.2f} ms per clip, decoding the video "
              f"{per['decode']:.2f} ms")
        print(f"  input preparation speed-up: {describe(ratio)} (target >= 10x)")
        print(f"  whole prompt (frames, template, cache-key digest): {per_prompt['cache']:.2f} against "
              f"{per_prompt['decode']:.2f} ms, {describe(whole)}")
        print(f"  load average {load[0]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"ms_per_clip": per, "ms_per_prompt": per_prompt,
                                                   "speedup": ratio, "prompt_speedup": whole,
                                                   "loadavg": load[0]}, indent=2))


if __name__ == "__main__":
    main()

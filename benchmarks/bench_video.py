"""`video prepare` throughput: decode only the sampled frames, detect on downscaled frames, track — against decoding
and detecting every frame at full size.

Target (issue 11): prepare >= 5x the clips/s of the naive path, in the same run. Both paths write the same cache
(same candidate frames, same streams, same files); they differ only in what is decoded and where the detector
runs. The naive path decodes every frame of the clip to RGB, runs the detector on every frame at full size, tracks
over all frames and then cuts the streams of the cached candidates. Clips are generated: the astronaut photograph
(scikit-image) pasted into a generated scene and moving, and scenes without a face, written as MPEG-4 with PyAV.
The script also reports how closely the two paths' boxes agree (IoU on the segment middles) and the cache's read
rate (clip loaded + one TSN sample), which is what a training epoch pays instead of decoding.

Each measurement runs in a child process, repeated in alternating order; ratios are those of medians (see
benchmarks/_harness.py for why a shared virtual machine needs that).

    python benchmarks/bench_video.py [--clips 8] [--frames 64] [--size 320x240] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from _harness import alternating, describe, median_run, paired_ratio, run_child  # noqa: E402


def make_clips(root: Path, n: int, frames: int, w: int, h: int, seed: int = 0) -> Path:
    """n clips (3 in 4 with a moving astronaut face, the rest without a face); returns the data YAML."""
    import av
    import cv2
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    astro = skdata.astronaut()
    rows = ["clip,label"]
    truth: dict[str, list] = {}
    hand = np.array([182, 76, 90, 108], dtype=float)  # the astronaut's face (x, y, w, h) at 512 px, read by eye
    for i in range(n):
        yy = np.linspace(0, 1, h)[:, None, None]
        top, bottom = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
        bg = ((top * (1 - yy) + bottom * yy) * np.ones((1, w, 1))).astype(np.uint8)
        side = int(h * 0.9)
        face = cv2.resize(astro, (side, side), interpolation=cv2.INTER_AREA)
        path = root / f"clip{i:03d}.mp4"
        with av.open(str(path), "w") as out:
            st = out.add_stream("mpeg4", rate=25)
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            st.options = {"qscale": "3"}
            for t in range(frames):
                img = bg.copy()
                if i % 4 != 3:
                    x = int(w * 0.05 + (w - side - w * 0.1) * t / max(1, frames - 1))
                    img[h - side:, x:x + side] = face
                    k = side / 512
                    truth.setdefault(path.name, []).append([hand[0] * k + x, hand[1] * k + h - side,
                                                            hand[2] * k, hand[3] * k])
                for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
            for p in st.encode():
                out.mux(p)
        rows.append(f"{path.name},{['happy', 'sad', 'neutral'][i % 3]}")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    (root / "truth.json").write_text(json.dumps(truth))
    yaml = root / "data.yaml"
    yaml.write_text(f"format: video_csv\nname: bench\nroot: {root}\nfile: clips.csv\n"
                    "classes: [happy, sad, neutral]\n")
    return yaml


def naive_prepare_clip(clip, cfg, finder):
    """Every frame decoded to RGB and searched at full size; the same cache entry at the end."""
    from vlm_salience.data.video import count_frames, read_frames
    from vlm_salience.video.cache import PreparedClip
    from vlm_salience.video.prepare import candidate_frames
    from vlm_salience.video.streams import cut_streams, find_track
    from vlm_salience.video.tracking import Track

    n = count_frames(clip.source)
    every = read_frames(clip.source, np.arange(n))
    slots, frame_index = candidate_frames(n, cfg.n_segments, cfg.candidates_per_segment)
    full = find_track(every, finder, cfg.streams)
    tr = Track(full.boxes[frame_index], full.detected[frame_index], int((~full.detected).sum()))
    st = cut_streams(every[frame_index], tr, cfg.streams)
    return PreparedClip(clip_id=clip.clip_id, face=st.face, scene=st.scene, slots=slots, frame_index=frame_index,
                        boxes=st.boxes, detected=st.detected, missed=st.missed, detect_frames=n,
                        n_source_frames=n)


def child(kind: str, data: Path, work: Path) -> dict:
    import cv2

    from vlm_salience.video import prepare as prep
    from vlm_salience.video.cache import ClipCache, sample

    import vlm_salience.data.video.loaders  # noqa: F401  (imports are not what is measured)

    cv2.setNumThreads(1)
    cfg = prep.PrepareConfig()
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    if kind == "naive":
        prep.prepare_clip = naive_prepare_clip
        cfg = cfg.model_copy(deep=True)
        cfg.streams.detection.max_side = None
    t0 = time.perf_counter()
    summary = prep.prepare_corpus(data, cfg, out, progress=False)
    dt = time.perf_counter() - t0
    cache = ClipCache(out)
    res = {"kind": kind, "clips": summary["clips"], "seconds": dt, "clips_per_s": summary["clips"] / dt,
           "missed_detection_frames": summary["missed_detection_frames"],
           "detection_frames": summary["detection_frames"], "out": str(out)}
    if kind == "prepare":  # read rate of the cache: one clip loaded and one TSN training sample drawn
        rng = np.random.default_rng(0)
        ids = cache.ids()
        t0 = time.perf_counter()
        reads = 0
        while time.perf_counter() - t0 < 1.0:
            for cid in ids:
                c = cache.load(cid)
                rows = sample(c, train=True, rng=rng)
                _ = c.face[rows].sum() + c.scene[rows].sum()
                reads += 1
        res["cache_reads_per_s"] = reads / (time.perf_counter() - t0)
    return res


def box_agreement(a_dir: str, b_dir: str, truth: dict) -> dict:
    """IoU of each path's boxes with the planted face (hand box of the photograph, moved as pasted) on the segment
    middles of the clips with a face, and between the two paths."""
    from vlm_salience.video.cache import ClipCache
    from vlm_salience.video.tracking import iou

    a, b = ClipCache(a_dir), ClipCache(b_dir)
    between, ta, tb = [], [], []
    for cid in truth:
        ca, cb = a.load(cid), b.load(cid)
        mid = ca.middle_rows()
        between.extend(iou(x, y) for x, y in zip(ca.boxes[mid], cb.boxes[mid]))
        true = [truth[cid][int(f)] for f in ca.frame_index[mid]]
        ta.extend(iou(x, t) for x, t in zip(ca.boxes[mid], true))
        tb.extend(iou(x, t) for x, t in zip(cb.boxes[mid], true))
    return {"iou_between_paths": float(np.mean(between)), "prepare_iou_truth": float(np.mean(ta)),
            "naive_iou_truth": float(np.mean(tb)), "prepare_share_iou_truth_ge_0.5": float(np.mean(np.array(ta) >= .5)),
            "naive_share_iou_truth_ge_0.5": float(np.mean(np.array(tb) >= .5))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--size", default="320x240", help="WxH of the generated clips")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of each measurement, in alternating order")
    ap.add_argument("--work", type=Path, help="folder for clips and caches (default: a temporary one)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.work)))
        return

    w, h = (int(v) for v in args.size.lower().split("x"))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_video-"))
    try:
        data = make_clips(work / "clips", args.clips, args.frames, w, h)
        runs = alternating(["prepare", "naive"], args.repeats,
                           lambda k: run_child(HERE, ["--child", k, "--data", str(data), "--work", str(work)]))
        ratio = paired_ratio(runs["prepare"], runs["naive"], "clips_per_s")
        fast, slow = median_run(runs["prepare"], "clips_per_s"), median_run(runs["naive"], "clips_per_s")
        agree = box_agreement(fast["out"], slow["out"], json.loads((data.parent / "truth.json").read_text()))
        result = {"clips": args.clips, "frames": args.frames, "size": args.size, "repeats": args.repeats,
                  "prepare_clips_per_s": ratio["a_median"], "naive_clips_per_s": ratio["b_median"],
                  "ratio": ratio["ratio"], "per_round": ratio["per_round"], "steal_max": ratio["steal_max"],
                  "target_ratio": 5.0, "prepare_detection_frames": fast["detection_frames"],
                  "prepare_missed": fast["missed_detection_frames"], "naive_detection_frames":
                  slow["detection_frames"], "naive_missed": slow["missed_detection_frames"],
                  "cache_reads_per_s": fast["cache_reads_per_s"], **agree}
        print(f"{args.clips} clips of {args.frames} frames at {args.size} (mpeg4), default prepare config "
              f"(16 segments x 3 candidates, detection on segment middles at max_side 256; the naive path: the "
              f"same detector settings at full size on every frame)")
        print(f"prepare: {ratio['a_median']:.2f} clips/s; naive (every frame decoded, detected at full size): "
              f"{ratio['b_median']:.2f} clips/s")
        print(f"ratio: {describe(ratio)} (target >= 5x)")
        print(f"boxes on the segment middles of the face clips, IoU with the planted face: prepare "
              f"{agree['prepare_iou_truth']:.2f} ({agree['prepare_share_iou_truth_ge_0.5']:.0%} >= 0.5), naive "
              f"{agree['naive_iou_truth']:.2f} ({agree['naive_share_iou_truth_ge_0.5']:.0%} >= 0.5); between the "
              f"paths {agree['iou_between_paths']:.2f}")
        print(f"missed (incl. the face-less clips, every 4th): prepare {fast['missed_detection_frames']}/"
              f"{fast['detection_frames']} detection frames, naive {slow['missed_detection_frames']}/"
              f"{slow['detection_frames']}")
        print(f"cache read (load + one TSN sample): {fast['cache_reads_per_s']:.0f} clips/s")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""DFEW at full size, as a skeleton: 11,697 clips (the 5-fold protocol) with DFEW's frame counts, tiny frames.

Frame counts are drawn from the distribution of DFER-CLIP's DFEW lists (annotation/DFEW_set_1_{train,test}.txt:
11,697 clips, quantiles below) and classes in their proportions; every frame is a hard link to an 8 x 8 JPEG, so the
skeleton costs inodes, not bytes. Both list formats are written (EmoLabel_DataSplit CSVs and DFER-CLIP lists).

Prints, with `uptime`'s load (this machine is shared):
  * `data check` on the skeleton, official CSVs and DFER-CLIP lists (goal: under 10 s);
  * prepare's bookkeeping at FERV39k's size (38,935 clips): the clip keys (fingerprints of the frame folders) and
    the manifest (journal: one appended line per clip) per clip, beside the old full rewrite every 25 clips;
  * prepare on a few realistic clips (224 px JPEG frames, DFEW's median frame count; 16 segments x 2 candidates x
    224 px, as configs/video/baseline_dfew.yaml): seconds and cache bytes per clip beside the source bytes per
    clip, and the bookkeeping's share of prepare's time (goal: under 5%).

    python benchmarks/bench_dfer_skeleton.py --out /tmp/dfew_skeleton [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# DFER-CLIP's DFEW lists (fold 1 train + test = the 11,697 clips): frame-count quantiles and class counts.
DFEW_QUANTILES = ([0, 1, 5, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.9, 100],
                  [11, 24, 33, 42, 48, 70, 95, 124, 155, 191, 239, 287, 476, 847])  # mean 77.1, 901,703 frames
DFEW_CLASS_COUNTS = [2445, 1894, 2669, 2173, 1469, 145, 902]  # happy .. fear (DFEW labels 1..7)
DFEW_CLIPS, FERV39K_CLIPS = 11_697, 38_935


def load() -> str:
    return os.getloadavg().__repr__() if hasattr(os, "getloadavg") else "n/a"


def frame_counts(n: int, rng: np.random.Generator) -> np.ndarray:
    q, v = DFEW_QUANTILES
    return np.round(np.interp(rng.uniform(0, 100, n), q, v)).astype(int)


def skeleton(root: Path, n: int, seed: int = 0) -> dict:
    """The DFEW layout with n clips (ids 1..n), 5 folds; reused when already there."""
    stamp = root / "skeleton.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("quantiles") == [n, DFEW_QUANTILES[1]]:
        return json.loads(stamp.read_text())
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    counts = frame_counts(n, rng)
    p = np.array(DFEW_CLASS_COUNTS, float)
    labels = rng.choice(7, size=n, p=p / p.sum()) + 1
    folds = rng.permutation(np.arange(n) % 5) + 1
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    clips = root / "Clip" / "clip_224x224"
    links = 60_000  # a file takes at most 65,000 links (ext4): a new source file before that
    for k in range(n):
        if links + counts[k] > 60_000:
            one, links = root / f"frame_{k}.jpg", 0
            Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(one)
        d = clips / f"{k + 1:05d}"
        d.mkdir(parents=True)
        for i in range(counts[k]):
            os.link(one, d / f"{i + 1}.jpg")
        links += counts[k]
    for f in range(1, 6):
        for part, sel in (("train", folds != f), ("test", folds == f)):
            ids = np.flatnonzero(sel)
            d = root / "EmoLabel_DataSplit" / f"{part}(single-labeled)"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"set_{f}.csv").write_text("video_name,label\n" + "".join(f"{k + 1},{labels[k]}\n" for k in ids))
            a = root / "annotation"
            a.mkdir(exist_ok=True)
            (a / f"DFEW_set_{f}_{part}.txt").write_text("".join(
                f"/data/DFEW/DFEW_Frame_Face/{k + 1:05d} {counts[k]} {labels[k] - 1}\n" for k in ids))
    info = {"clips": n, "frames": int(counts.sum()), "write_s": time.perf_counter() - t0,
            "quantiles": [n, DFEW_QUANTILES[1]]}
    stamp.write_text(json.dumps(info))
    return info


def timed(fn, *a, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t0, out


def bench_check(root: Path) -> dict:
    from vlm_salience.data.video.check import check_video_data

    y = REPO / "configs" / "data" / "dfew.yaml"
    t_off, off = timed(check_video_data, y, overrides=[f"root={root}"], progress=False)
    t_dfer, dfer = timed(check_video_data, y, overrides=[f"root={root}", "list_format=dfer_clip"], progress=False)
    assert off["per_class"] == dfer["per_class"] and off["folds"] == dfer["folds"], "the two formats disagree"
    return {"clips": off["clips"], "official_s": t_off, "dfer_clip_s": t_dfer, "per_class": off["per_class"]}


def bench_bookkeeping(root: Path, n: int, old_max: int, key_sample: int) -> dict:
    """The manifest for n clips (journal), the old full rewrite every 25 clips for min(n, old_max) clips, and the
    clip keys of `key_sample` skeleton folders (a key is the same work per clip at any corpus size)."""
    from vlm_salience.video.cache import ClipCache, clip_key

    folders = sorted((root / "Clip" / "clip_224x224").iterdir())
    entry = {"key": "0" * 32, "file": "clips/00/" + "0" * 32 + ".npz", "label": 3, "polarity": 0,
             "source": str(folders[0]), "frames": 32, "n_source_frames": 77, "detect_frames": 16, "missed": 0}
    step = max(1, len(folders) // key_sample)
    sample = folders[::step][:key_sample]
    t0 = time.perf_counter()
    for f in sample:
        clip_key(f, None, "h" * 64)
    keys_s = (time.perf_counter() - t0) / len(sample) * n  # per clip, times n
    with tempfile.TemporaryDirectory() as tmp:
        cache = ClipCache(Path(tmp) / "journal")
        cache.root.mkdir()
        t0 = time.perf_counter()
        entries: dict = {}
        cache.begin({}, "h", entries)
        for i in range(n):
            entries[f"{i:06d}"] = entry
            cache.append(f"{i:06d}", entry)
        cache.write_manifest({}, "h", entries)
        journal_s = time.perf_counter() - t0
        old = ClipCache(Path(tmp) / "old")
        old.root.mkdir()
        m = min(n, old_max)
        t0 = time.perf_counter()
        entries = {}
        for i in range(m):
            entries[f"{i:06d}"] = entry
            if (i + 1) % 25 == 0:
                old.write_manifest({}, "h", entries)
        old.write_manifest({}, "h", entries)
        old_s = time.perf_counter() - t0
    return {"clips": n, "keys_s": keys_s, "key_sample": len(sample), "journal_s": journal_s, "old_rewrite_clips": m, "old_rewrite_s": old_s}


def bench_prepare(tmp: Path, n_clips: int, frames: int, workers: int) -> dict:
    """Prepare n realistic clips (224 px JPEG frames of a face moving over a scene) with the DFEW baseline's
    settings; seconds and bytes per clip, source bytes per clip."""
    import cv2
    from skimage import data as skdata

    from vlm_salience.video.prepare import PrepareConfig, prepare_corpus

    face = cv2.resize(skdata.astronaut(), (120, 120), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    rows = ["clip,label"]
    for c in range(n_clips):
        d = tmp / "src" / f"c{c}"
        d.mkdir(parents=True)
        bg = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        bg = cv2.GaussianBlur(bg, (0, 0), 6)
        for i in range(frames):
            img = bg.copy()
            x = 20 + (i * 60) // frames
            img[50:170, x:x + 120] = face
            Image.fromarray(img).save(d / f"{i + 1}.jpg", quality=90)
        rows.append(f"src/c{c},happy")
    (tmp / "clips.csv").write_text("\n".join(rows) + "\n")
    y = tmp / "data.yaml"
    y.write_text(f"format: video_csv\nname: real\nroot: {tmp}\nfile: clips.csv\nclasses: [happy]\n")
    cfg = PrepareConfig.model_validate({"n_segments": 16, "candidates_per_segment": 2,
                                        "streams": {"face_size": 224, "scene_size": 224}})
    from vlm_salience.video.cache import ClipCache

    out = {"clips": n_clips, "frames_per_clip": frames, "workers": workers,
           "source_bytes_per_clip": sum(p.stat().st_size for p in (tmp / "src").rglob("*.jpg")) / n_clips}
    for codec in ("raw", "jpeg"):
        c = cfg.model_copy(update={"frame_codec": codec})
        t, summary = timed(prepare_corpus, y, c, tmp / codec, progress=False, workers=workers)
        out[codec] = {"seconds": t, "s_per_clip": t / n_clips, "prepared": summary["prepared"],
                      "cache_bytes_per_clip": sum(p.stat().st_size for p in (tmp / codec).rglob("*.npz")) / n_clips}
    caches = {codec: ClipCache(tmp / codec) for codec in ("raw", "jpeg")}
    loads: dict[str, list[float]] = {"raw": [], "jpeg": []}
    for r in range(6):  # reading a clip back (what training does per clip it has not kept in memory), ABBA
        for codec in (("raw", "jpeg") if r % 2 == 0 else ("jpeg", "raw")):
            t0 = time.perf_counter()
            for cid in caches[codec].ids():
                caches[codec].load(cid)
            loads[codec].append((time.perf_counter() - t0) / n_clips)
    for codec in loads:
        out[codec]["load_s_per_clip"] = float(np.median(loads[codec]))
    a, b = caches["raw"].load("src/c0"), caches["jpeg"].load("src/c0")
    out["jpeg"]["mean_abs_diff"] = float(np.abs(a.face.astype(int) - b.face.astype(int)).mean())
    out["s_per_clip"] = out["raw"]["s_per_clip"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dfew_skeleton")
    ap.add_argument("--clips", type=int, default=DFEW_CLIPS)
    ap.add_argument("--keys", type=int, default=FERV39K_CLIPS, help="clips for the bookkeeping (FERV39k's size)")
    ap.add_argument("--key-sample", type=int, default=2000, help="skeleton folders whose keys are timed")
    ap.add_argument("--old-max", type=int, default=5000, help="clips for the old rewrite-every-25 manifest")
    ap.add_argument("--prepare-clips", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    print(f"uptime load {load()}; nproc {os.cpu_count()}")
    info = skeleton(args.out, args.clips)
    print(f"skeleton: {info['clips']} clips, {info['frames']} frame links under {args.out} "
          f"(written in {info['write_s']:.0f} s, or reused)")
    check = bench_check(args.out)
    print(f"data check: {check['clips']} clips; official CSVs {check['official_s']:.2f} s, DFER-CLIP lists "
          f"{check['dfer_clip_s']:.2f} s (goal < 10 s); load {load()}")
    book = bench_bookkeeping(args.out, args.keys, args.old_max, args.key_sample)
    n = book["clips"]
    print(f"bookkeeping for {n} clips: keys {book['keys_s']:.1f} s ({1e3 * book['keys_s'] / n:.2f} ms/clip, timed "
          f"on {book['key_sample']} folders of DFEW's frame counts), "
          f"journalled manifest {book['journal_s']:.2f} s ({1e3 * book['journal_s'] / n:.3f} ms/clip); old full "
          f"rewrite every 25 clips: {book['old_rewrite_s']:.1f} s for the first {book['old_rewrite_clips']} clips "
          f"({1e3 * book['old_rewrite_s'] / book['old_rewrite_clips']:.2f} ms/clip, growing with the corpus); "
          f"load {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        prep = bench_prepare(Path(tmp), args.prepare_clips, int(np.median(frame_counts(10_001,
                                                                                       np.random.default_rng(1)))),
                             args.workers)
    share = (book["keys_s"] + book["journal_s"]) / n / prep["s_per_clip"]
    src = prep["source_bytes_per_clip"]
    for codec in ("raw", "jpeg"):
        r = prep[codec]
        print(f"prepare, frame_codec {codec} ({prep['clips']} clips of {prep['frames_per_clip']} 224-px JPEG frames, "
              f"16 x 2 candidates, 224 px, {prep['workers']} worker): {r['s_per_clip']:.2f} s/clip; cache "
              f"{r['cache_bytes_per_clip'] / 1e6:.2f} MB/clip vs source {src / 1e6:.2f} MB/clip "
              f"(x{r['cache_bytes_per_clip'] / src:.2f}); DFEW's 11,697 clips: "
              f"{r['cache_bytes_per_clip'] * DFEW_CLIPS / 1e9:.0f} GB; reading a clip back "
              f"{1e3 * r['load_s_per_clip']:.1f} ms (median of 6, alternating)")
    print(f"jpeg vs raw: size x{prep['jpeg']['cache_bytes_per_clip'] / prep['raw']['cache_bytes_per_clip']:.3f}, "
          f"read time x{prep['jpeg']['load_s_per_clip'] / prep['raw']['load_s_per_clip']:.2f}, face frames differ by "
          f"{prep['jpeg']['mean_abs_diff']:.2f} of 255 on average; load {load()}")
    print(f"bookkeeping share of prepare's time per clip: {100 * share:.2f}% (goal < 5%)")
    doc = {"load_end": load(), "skeleton": info, "check": check, "bookkeeping": book, "prepare": prep,
           "bookkeeping_share": share}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()

"""Face pipeline throughput (issue 18): detect + classify, batched against one image at a time, and the two runtimes
of the FER2013 mini-Xception (torch port of the .hdf5, LiteRT running the shipped quantised .tflite) side by side.

Workload: --images portraits of 128×128 px cut from scikit-image's astronaut photograph (random crops around the
face, mirrored every other one, brightness jittered), so every image has one real face.

Measurements, each in a fresh child process (benchmarks/_harness.py), in alternating order over --repeats rounds:
- e2e_batched_<rt>: FaceAnalyzer.analyze over all images: the Haar cascade per image, then all face crops in one
  classifier.predict (batched by the YAML's batch_size: 16 torch, 8 LiteRT, the fastest on this CPU);
- e2e_single_<rt>:  the same, one image at a time (one detector call and one classifier call per image);
- classify_batched_<rt> / classify_single_<rt>: the classifier alone on the same crops, one call vs one per face.
Both runtimes use one thread (`--threads`), so neither wins by taking more of a shared CPU.
Target: e2e batched >= 5x one image at a time (faces/s). Also printed: torch/LiteRT throughput and their top-class
agreement and largest probability difference on the crops.

    python benchmarks/bench_face.py [--images 48] [--repeats 3] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _harness import alternating, describe, median_run, paired_ratio, run_child

HERE = Path(__file__).resolve()
CONFIGS = HERE.parent.parent / "configs" / "models"
RUNTIMES = {"torch": "face_fer_torch.yaml", "litert": "face_fer_litert.yaml"}


def portraits(n: int, seed: int = 0) -> list[np.ndarray]:
    import cv2
    from skimage import data

    a = data.astronaut()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = int(rng.integers(110, 200))
        x0, y0 = int(rng.integers(130, 170)), int(rng.integers(20, 50))
        c = a[y0:y0 + s, x0:x0 + s]
        c = c[:, ::-1] if i % 2 else c
        c = np.clip(c.astype(np.float32) * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
        out.append(cv2.resize(np.ascontiguousarray(c), (128, 128), interpolation=cv2.INTER_AREA))
    return out


def measure(name: str, images: int, threads: int) -> dict:
    from vlm_salience.models.faces.analyzer import FaceAnalyzer
    from vlm_salience.models.faces.detectors import load_detector
    from vlm_salience.models.faces.expression import load_classifier

    kind, mode, rt = name.split("_")
    clf = load_classifier(CONFIGS / RUNTIMES[rt], [f"threads={threads}"])
    fa = FaceAnalyzer(load_detector(CONFIGS / "face_haar.yaml"), clf)
    imgs = portraits(images)
    fa.analyze(imgs[:2])  # warm-up: first calls allocate, and runtimes build kernels per batch shape
    clf.predict([imgs[0]] * len(imgs))
    clf.predict([imgs[0]])
    out: dict = {"name": name, "images": len(imgs), "threads": threads}
    if kind == "e2e":
        t0 = time.perf_counter()
        if mode == "batched":
            table = fa.analyze(imgs)
        else:
            import pandas as pd

            table = pd.concat([fa.analyze([im]) for im in imgs], ignore_index=True)
        out["seconds"] = time.perf_counter() - t0
        out["faces"] = int((table["face"] >= 0).sum())
    else:
        boxes = fa.faces(imgs)
        crops = [b.crop(im, clf.crop_margin) for im, bs in zip(imgs, boxes) for b in bs]
        t0 = time.perf_counter()
        probs = clf.predict(crops) if mode == "batched" else np.concatenate([clf.predict([c]) for c in crops])
        out["seconds"] = time.perf_counter() - t0
        out["faces"] = len(crops)
        out["probs"] = probs.tolist()
        t1 = time.perf_counter()
        fa.faces(imgs)
        out["detect_seconds"] = time.perf_counter() - t1
    out["faces_per_s"] = out["faces"] / out["seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every measurement, in alternating order")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.images, args.threads)))
        return
    names = [f"{k}_{m}_{rt}" for rt in RUNTIMES for k in ("e2e", "classify") for m in ("batched", "single")]
    runs = alternating(names, args.repeats, lambda n: run_child(
        HERE, ["--child", n, "--images", str(args.images), "--threads", str(args.threads)]))
    r = {k: median_run(v, "faces_per_s") for k, v in runs.items()}
    pairs = {}
    for rt in RUNTIMES:
        pairs[f"e2e_batched_vs_single_{rt}"] = paired_ratio(runs[f"e2e_batched_{rt}"], runs[f"e2e_single_{rt}"],
                                                            "faces_per_s")
        pairs[f"classify_batched_vs_single_{rt}"] = paired_ratio(runs[f"classify_batched_{rt}"],
                                                                 runs[f"classify_single_{rt}"], "faces_per_s")
    pairs["litert_vs_torch_e2e_batched"] = paired_ratio(runs["e2e_batched_litert"], runs["e2e_batched_torch"],
                                                        "faces_per_s")
    pairs["litert_vs_torch_classify_batched"] = paired_ratio(runs["classify_batched_litert"],
                                                             runs["classify_batched_torch"], "faces_per_s")
    pt, pl = np.array(r["classify_batched_torch"]["probs"]), np.array(r["classify_batched_litert"]["probs"])
    agreement = float((pt.argmax(1) == pl.argmax(1)).mean())
    diff = float(np.abs(pt - pl).max())
    det = r["classify_batched_torch"]["detect_seconds"] / r["classify_batched_torch"]["faces"]
    print(f"{args.images} portraits 128x128 (astronaut crops), {r['e2e_batched_torch']['faces']} faces found; "
          f"{args.threads} thread(s); Haar detection alone {1000 * det:.1f} ms/image")
    for k, v in r.items():
        print(f"  {k:24s} {v['faces_per_s']:8.1f} faces/s")
    for rt in RUNTIMES:
        print(f"[1] {rt}: detect + classify, batched / one image at a time: "
              f"{describe(pairs[f'e2e_batched_vs_single_{rt}'])} (target >= 5x); classifier alone: "
              f"{describe(pairs[f'classify_batched_vs_single_{rt}'])}")
    print(f"[2] LiteRT / torch, detect + classify batched: {describe(pairs['litert_vs_torch_e2e_batched'])}; "
          f"classifier alone: {describe(pairs['litert_vs_torch_classify_batched'])}; top class agrees on "
          f"{agreement:.1%} of {len(pt)} faces, largest probability difference {diff:.3f}")
    if args.json:
        for v in (x for rs in runs.values() for x in rs):
            v.pop("probs", None)
        Path(args.json).write_text(json.dumps({"runs": runs, "pairs": pairs, "agreement": agreement,
                                               "max_prob_diff": diff}, indent=2))


if __name__ == "__main__":
    main()

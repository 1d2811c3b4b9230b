"""Face pipeline throughput (issues 18 and 26): detect (+ align) + classify, batched against one image at a time, and
the two runtimes of the FER2013 mini-Xception (torch port of the .hdf5, LiteRT running the shipped quantised .tflite)
side by side.

Workload: --images portraits of 128×128 px cut from scikit-image's astronaut photograph (random crops around the
face, mirrored every other one, brightness jittered), so every image has one real face.

Measurements, each in a fresh child process (benchmarks/_harness.py), in alternating order over --repeats rounds:
- e2e_batched_mtcnn: FaceAnalyzer.analyze over all images with MTCNN: P-Net over the same-size images together per
  pyramid level, R-/O-Net over every candidate of the batch at once, each face aligned on its five landmarks, then
  every aligned crop through the torch classifier (16 a call);
- e2e_single_mtcnn: the same, one image at a time (every net and the classifier called per image);
- e2e_batched_<rt> / e2e_single_<rt> (rt torch, litert): the same with the Haar cascade (per image either way) and no
  alignment;
- classify_batched_<rt> / classify_single_<rt>: the classifier alone on the same crops, one call vs one per face.
Every model uses the same --threads (torch's and LiteRT's), batched or not, so neither wins by taking more of a
shared CPU. Target (issue 26): MTCNN detect + align + classify batched >= 5x one image at a time (faces/s), the same
results (printed: boxes, landmarks, top class and probabilities of the two, compared). Also printed: torch/LiteRT
throughput and their top-class agreement and largest probability difference on the crops; `--stages` prints where
the time goes per stage (P-, R-, O-Net, crops, NMS, alignment, classifier), batched and one at a time, in one process.

    python benchmarks/bench_face.py [--images 48] [--repeats 3] [--threads 1] [--only mtcnn] [--json out.json]
    python benchmarks/bench_face.py --stages [--images 48] [--threads 1]
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
RUNTIMES = {"torch": "face_fer_torch.yaml", "litert": "face_fer_litert.yaml", "mtcnn": "face_fer_torch.yaml"}


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


def analyzer(rt: str, threads: int):
    """The FaceAnalyzer of one runtime: MTCNN (aligned crops) + torch for "mtcnn", Haar + that classifier else."""
    from vlm_salience.models.faces.analyzer import FaceAnalyzer
    from vlm_salience.models.faces.detector import MtcnnDetectorConfig
    from vlm_salience.models.faces.detectors import load_detector
    from vlm_salience.models.faces.expression import load_classifier

    clf = load_classifier(CONFIGS / RUNTIMES[rt], [f"threads={threads}"])
    det = (load_detector(MtcnnDetectorConfig(threads=threads)) if rt == "mtcnn"
           else load_detector(CONFIGS / "face_haar.yaml"))
    return FaceAnalyzer(det, clf)


def measure(name: str, images: int, threads: int) -> dict:
    kind, mode, rt = name.split("_")
    fa = analyzer(rt, threads)
    clf = fa.classifier
    imgs = portraits(images)
    fa.analyze(imgs[:2])  # warm-up: first calls allocate, and runtimes build kernels per batch shape
    fa.analyze(imgs[:1])
    clf.predict([imgs[0]] * len(imgs))
    clf.predict([imgs[0]])
    out: dict = {"name": name, "images": len(imgs), "threads": threads}
    if kind == "e2e":
        t0 = time.perf_counter()
        if mode == "batched":
            table = fa.analyze(imgs, landmarks=True)
        else:
            import pandas as pd

            table = pd.concat([fa.analyze([im], landmarks=True) for im in imgs], ignore_index=True)
        out["seconds"] = time.perf_counter() - t0
        out["faces"] = int((table["face"] >= 0).sum())
        probs = table[[c for c in table.columns if c.startswith("p_")]].to_numpy()
        out["result"] = {"boxes": table[["x", "y", "w", "h"]].to_numpy().tolist(),
                         "points": table[[c for c in table.columns if c[-2:] in ("_x", "_y")]].to_numpy().tolist(),
                         "probs": probs.tolist()}
    else:
        boxes = fa.faces(imgs)
        crops = [fa.crop(im, b) for im, bs in zip(imgs, boxes) for b in bs]
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


def same_results(a: dict, b: dict) -> dict:
    """How far two e2e runs' tables are apart: box pixels, landmark pixels, top class, probabilities."""
    ba, bb = np.array(a["boxes"], float), np.array(b["boxes"], float)
    pa, pb = np.array(a["points"], float), np.array(b["points"], float)
    qa, qb = np.array(a["probs"], float), np.array(b["probs"], float)
    both = ~np.isnan(qa).any(1) & ~np.isnan(qb).any(1)
    return {"rows": [len(ba), len(bb)], "max_box_px": float(np.nanmax(np.abs(ba - bb))) if len(ba) == len(bb) else None,
            "max_landmark_px": float(np.nanmax(np.abs(pa - pb), initial=0.0)) if len(pa) == len(pb) else None,
            "top_class_agree": float((qa[both].argmax(1) == qb[both].argmax(1)).mean()) if len(qa) == len(qb) else None,
            "max_prob_diff": float(np.abs(qa[both] - qb[both]).max()) if len(qa) == len(qb) else None}


def stages(images: int, threads: int) -> None:
    """Where the time goes, per stage and image, batched and one image at a time (one process, 2 rounds each)."""
    import collections

    import pandas as pd

    from vlm_salience.models.faces import mtcnn

    fa = analyzer("mtcnn", threads)
    det, clf = fa.detector, fa.classifier
    spent: dict = collections.defaultdict(float)

    def timed(key, f):
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return g

    for name in ("nms", "_crops"):
        setattr(mtcnn, name, timed(name.strip("_"), getattr(mtcnn, name)))
    for net in ("pnet", "rnet", "onet"):
        m = getattr(det, net)
        m.forward = timed(net, m.forward)
    clf._predict_batch = timed("classifier", clf._predict_batch)
    fa.crop = timed("align", fa.crop)
    det.detect_batch = timed("detect (all of it)", det.detect_batch)
    imgs = portraits(images)
    fa.analyze(imgs[:2])
    fa.analyze(imgs[:1])
    for mode in ("batched", "single") * 2:
        spent.clear()
        t0 = time.perf_counter()
        if mode == "batched":
            fa.analyze(imgs)
        else:
            pd.concat([fa.analyze([im]) for im in imgs])
        total = time.perf_counter() - t0
        print(f"{mode:8s} {1000 * total / len(imgs):6.2f} ms/image: " +
              ", ".join(f"{k} {1000 * v / len(imgs):.2f}" for k, v in sorted(spent.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every measurement, in alternating order")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=",".join(RUNTIMES), help="runtimes to measure, comma-separated: "
                    f"{', '.join(RUNTIMES)} (default all)")
    ap.add_argument("--kinds", default="e2e,classify", help="e2e, classify or both (default)")
    ap.add_argument("--stages", action="store_true", help="per-stage times of MTCNN + align + classify instead")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.images, args.threads)))
        return
    if args.stages:
        stages(args.images, args.threads)
        return
    rts = [rt for rt in args.only.split(",") if rt]
    kinds = [k for k in args.kinds.split(",") if k]
    names = [f"{k}_{m}_{rt}" for rt in rts for k in kinds for m in ("batched", "single")]
    runs = alternating(names, args.repeats, lambda n: run_child(
        HERE, ["--child", n, "--images", str(args.images), "--threads", str(args.threads)]))
    r = {k: median_run(v, "faces_per_s") for k, v in runs.items()}
    pairs, report = {}, {}
    for rt in rts:
        for k in kinds:
            pairs[f"{k}_batched_vs_single_{rt}"] = paired_ratio(runs[f"{k}_batched_{rt}"], runs[f"{k}_single_{rt}"],
                                                                "faces_per_s")
    print(f"{args.images} portraits 128x128 (astronaut crops); {args.threads} thread(s) for every model")
    for k, v in r.items():
        print(f"  {k:24s} {v['faces_per_s']:8.1f} faces/s ({v['faces']} faces)")
    for rt in rts:
        what = "detect + align + classify (MTCNN)" if rt == "mtcnn" else "detect + classify (Haar)"
        if "e2e" in kinds:
            report[f"same_results_{rt}"] = same_results(r[f"e2e_batched_{rt}"]["result"],
                                                        r[f"e2e_single_{rt}"]["result"])
            print(f"[1] {rt}: {what}, batched / one image at a time: "
                  f"{describe(pairs[f'e2e_batched_vs_single_{rt}'])} (target >= 5x); batched vs one at a time: "
                  f"{report[f'same_results_{rt}']}")
        if "classify" in kinds:
            print(f"    {rt}: classifier alone, batched / one face at a time: "
                  f"{describe(pairs[f'classify_batched_vs_single_{rt}'])}")
    if {"torch", "litert"} <= set(rts) and "e2e" in kinds and "classify" in kinds:
        pairs["litert_vs_torch_e2e_batched"] = paired_ratio(runs["e2e_batched_litert"], runs["e2e_batched_torch"],
                                                            "faces_per_s")
        pairs["litert_vs_torch_classify_batched"] = paired_ratio(runs["classify_batched_litert"],
                                                                 runs["classify_batched_torch"], "faces_per_s")
        pt, pl = np.array(r["classify_batched_torch"]["probs"]), np.array(r["classify_batched_litert"]["probs"])
        report["agreement"] = float((pt.argmax(1) == pl.argmax(1)).mean())
        report["max_prob_diff"] = float(np.abs(pt - pl).max())
        print(f"[2] LiteRT / torch, detect + classify batched: {describe(pairs['litert_vs_torch_e2e_batched'])}; "
              f"classifier alone: {describe(pairs['litert_vs_torch_classify_batched'])}; top class agrees on "
              f"{report['agreement']:.1%} of {len(pt)} faces, largest probability difference "
              f"{report['max_prob_diff']:.3f}")
    if args.json:
        for v in (x for rs in runs.values() for x in rs):
            v.pop("probs", None)
            v.pop("result", None)
        Path(args.json).write_text(json.dumps({"runs": runs, "pairs": pairs, **report}, indent=2))


if __name__ == "__main__":
    main()

"""Face detectors side by side (issue 26): OpenCV's Haar cascade, the cascade with the same pad-and-retry as MTCNN,
and MTCNN, on the checks a researcher with face crops and film frames cares about. Per set: images, faces found
(at least one box), found with IoU >= .5 against the known face box, false detections on face-free images, and
seconds per image (one torch/OpenCV thread each, so neither wins by taking more of a shared CPU).

Sets (all generated here, nothing downloaded):
- drawn: the schematic faces of data/faces.py (7 emotions x 3 styles) at 64, 96, 160 and 320 px; each image is a
  face crop (the face fills ~70-95% of it); the known box is not defined, so only "found" is counted.
- astronaut_tight: scikit-image's astronaut cut to its face box (hand-read), and 5, 10, 15 px inside it, at x1, x2,
  x4 (70-430 px): forehead-to-chin crops such as emotion corpora ship (the known box clipped to the crop).
- astronaut_padded: the face box with 10-60 px of the photograph around it.
- pasted: the astronaut's head (face box + 40%) resized to 40-200 px, turned by -15..15 degrees and pasted at a random
  place into a 640x480 cluttered scene (random rectangles, ellipses, lines and noise); 24 scenes.
- face_free: 24 cluttered scenes without a face, and four face-free crops of the photograph (false detections).
- crossing: clips of two people walking past each other (faces overlapping while they pass): drawn faces of
  vlm_salience/face_synth.py (sizes 64/96 and 80/80 px, 40 frames each) and two astronaut heads (one mirrored and
  tinted, 40 frames). Per clip the detector's faces are linked by the identity tracker (identities.py); the row
  counts frames with a face found, person-frames with a box at IoU >= .5 (of 2 per frame), and identity switches:
  for each person, how often the identity of its matched box (IoU >= .3) changes from one matched frame to the next.

    python benchmarks/face_detectors.py [--pasted 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

HAND_BOX = (182, 76, 90, 108)  # x, y, w, h of the astronaut's face in the 512x512 photograph (tests/test_mtcnn.py)


def clutter(rng: np.random.Generator, h: int = 480, w: int = 640) -> np.ndarray:
    import cv2

    img = np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    for _ in range(40):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 150)), y + int(rng.integers(10, 150))), c, -1)
        elif kind == 1:
            cv2.ellipse(img, (x, y), (int(rng.integers(5, 80)), int(rng.integers(5, 80))), float(rng.uniform(0, 180)),
                        0, 360, c, -1)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), c, int(rng.integers(1, 6)))
    return cv2.GaussianBlur(img, (3, 3), 0)


def build_sets(n_pasted: int, seed: int = 0) -> dict[str, list[tuple[np.ndarray, list | None]]]:
    """name -> [(image, known face box or None)]."""
    import cv2
    from skimage import data

    from vlm_salience.data.faces import ACTIONS, FaceStyle, render_face

    rng = np.random.default_rng(seed)
    a = data.astronaut()
    x, y, w, h = HAND_BOX
    sets: dict[str, list] = {"drawn": [], "astronaut_tight": [], "astronaut_padded": [], "pasted": [],
                             "face_free": []}
    styles = [FaceStyle.sample(rng) for _ in range(3)]
    for size in (64, 96, 160, 320):
        for st in styles:
            for e in list(ACTIONS)[:7]:
                sets["drawn"].append((np.asarray(render_face(e, 1.0, st, size=size).convert("RGB")), None))
    for inset in (0, 5, 10, 15):
        c = a[y + inset:y + h - inset, x + inset:x + w - inset]
        for s in (1, 2, 4):
            img = cv2.resize(c, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC) if s > 1 else c.copy()
            sets["astronaut_tight"].append((img, [-inset * s, -inset * s, w * s, h * s]))
    for pad in (10, 20, 40, 60):
        sets["astronaut_padded"].append((a[y - pad:y + h + pad, x - pad:x + w + pad].copy(), [pad, pad, w, h]))
    head_pad = 0.4
    hx0, hy0 = int(x - head_pad * w), int(y - head_pad * h)
    head = a[hy0:int(y + h + head_pad * h), hx0:int(x + w + head_pad * w)]
    for _ in range(n_pasted):
        scene = clutter(rng)
        side = float(rng.uniform(40, 200))  # face width in the scene
        f = side / w
        angle = float(rng.uniform(-15, 15))
        hh, hw = head.shape[:2]
        M = cv2.getRotationMatrix2D((hw / 2, hh / 2), angle, f)
        M[:, 2] += [hw * f / 2 - hw / 2, hh * f / 2 - hh / 2]
        out_w, out_h = int(round(hw * f)), int(round(hh * f))
        warped = cv2.warpAffine(head, M, (out_w, out_h), borderMode=cv2.BORDER_CONSTANT)
        mask = cv2.warpAffine(np.full(head.shape[:2], 255, np.uint8), M, (out_w, out_h)) > 0
        px, py = int(rng.integers(0, 640 - out_w)), int(rng.integers(0, 480 - out_h))
        region = scene[py:py + out_h, px:px + out_w]
        region[mask] = warped[mask]
        cx, cy = M @ np.array([x + w / 2 - hx0, y + h / 2 - hy0, 1.0])  # the face's centre after the warp
        sets["pasted"].append((scene, [px + cx - w * f / 2, py + cy - h * f / 2, w * f, h * f]))
    for _ in range(n_pasted):
        sets["face_free"].append((clutter(rng), None))
    for crop in (a[300:, 300:], a[:70, :], a[350:, :200], a[200:400, 0:150]):
        sets["face_free"].append((np.ascontiguousarray(crop), None))
    return sets


def crossing_clips(n: int = 40) -> list[tuple[list[np.ndarray], list[list]]]:
    """[(frames, per frame the two people's face boxes)] for the crossing set."""
    import cv2
    from skimage import data

    from vlm_salience.face_synth import drawn_frames

    clips = []
    for sides, seed in (((64, 96), 1), ((80, 80), 2)):
        items = list(drawn_frames(n, faces=2, face_px=sides, fps=5.0, period_s=2 * n / 5.0, seed=seed))
        clips.append(([f for f, _ in items], [list(map(list, b)) for _, b in items]))
    a = data.astronaut()
    x, y, w, h = HAND_BOX
    head = cv2.resize(a[30:230, 130:330], (120, 120), interpolation=cv2.INTER_AREA)  # face box scaled by 0.6
    other = (head[:, ::-1] * [0.8, 0.9, 1.1]).clip(0, 255).astype(np.uint8)
    fx, fy, fw, fh = (x - 130) * 0.6, (y - 30) * 0.6, w * 0.6, h * 0.6
    frames, truth = [], []
    for t in range(n):
        f = np.full((240, 360, 3), 60, np.uint8)
        xa, xb = int(5 * t), int(235 - 5 * t)
        f[10:130, xb:xb + 120] = other
        f[100:220, xa:xa + 120] = head
        frames.append(f)
        truth.append([[xa + fx, 100 + fy, fw, fh], [xb + 120 - fx - fw, 10 + fy, fw, fh]])
    clips.append((frames, truth))
    return clips


def crossing_row(detect_batch, clips) -> dict:
    """found / IoU >= .5 / identity switches over the crossing clips for one detector."""
    from vlm_salience.models.faces.identities import track_faces

    frames_n = found = hits = switches = 0
    t0 = time.perf_counter()
    for frames, truth in clips:
        tracked, _ = track_faces(detect_batch(frames))
        last: dict[int, int] = {}
        for faces, people in zip(tracked, truth):
            frames_n += 1
            found += bool(faces)
            for p, box in enumerate(people):
                best = max(((f.iou(box), tid) for tid, f in faces), default=(0.0, -1))
                hits += best[0] >= 0.5
                if best[0] >= 0.3:
                    switches += p in last and last[p] != best[1]
                    last[p] = best[1]
    return {"images": frames_n, "found": found, "iou50": hits, "switches": switches,
            "s_per_image": round((time.perf_counter() - t0) / frames_n, 4)}


def clipped(box: list, image: np.ndarray) -> list:
    H, W = image.shape[:2]
    x0, y0 = max(0.0, box[0]), max(0.0, box[1])
    return [x0, y0, min(W, box[0] + box[2]) - x0, min(H, box[1] + box[3]) - y0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pasted", type=int, default=24)
    ap.add_argument("--json", help="write the table here too")
    args = ap.parse_args()

    import cv2
    import torch

    from vlm_salience.models.faces.detector import pad_and_detect
    from vlm_salience.models.faces.detectors import load_detector

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    haar = load_detector("haar")
    mtcnn = load_detector("mtcnn")
    detectors = {
        "haar": haar.detect_batch,
        "haar+pad": lambda ims: pad_and_detect(haar.detect_batch, ims, mtcnn.cfg.pad_on_miss),
        "mtcnn": mtcnn.detect_batch,
    }
    sets = build_sets(args.pasted)
    rows = []
    for set_name, items in sets.items():
        images = [im for im, _ in items]
        for det_name, fn in detectors.items():
            t0 = time.perf_counter()
            found = fn(images)
            dt = (time.perf_counter() - t0) / len(images)
            n_found = sum(bool(f) for f in found)
            hits = None
            if items[0][1] is not None:  # the known box clipped to the image, as the detectors' boxes are
                hits = sum(any(b.iou(clipped(box, im)) >= 0.5 for b in f) for f, (im, box) in zip(found, items))
            rows.append({"set": set_name, "detector": det_name, "images": len(images), "found": n_found,
                         "iou50": hits, "boxes": sum(len(f) for f in found), "switches": None,
                         "s_per_image": round(dt, 4)})
    clips = crossing_clips()
    for det_name in ("haar", "mtcnn"):
        rows.append({"set": "crossing", "detector": det_name, "boxes": None,
                     **crossing_row(detectors[det_name], clips)})
    print(f"{'set':18s} {'detector':9s} {'images':>6s} {'found':>6s} {'IoU>=.5':>8s} {'boxes':>6s} {'id sw':>6s} "
          f"{'s/img':>7s}")
    for r in rows:
        print(f"{r['set']:18s} {r['detector']:9s} {r['images']:6d} {r['found']:6d} "
              f"{'-' if r['iou50'] is None else r['iou50']:>8} {'-' if r['boxes'] is None else r['boxes']:>6} "
              f"{'-' if r['switches'] is None else r['switches']:>6} {r['s_per_image']:7.3f}")
    if args.json:
        from vlm_salience.atomic import write_text

        write_text(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The two streams OUS and the face-only baseline read: a face stream and a scene stream with the face masked.

Per sampled frame: the largest face is found on a downscaled copy of the frame (a face in a video frame is large;
the detector's cost grows with the pixels it scans), the boxes of the clip are gap-filled and smoothed
(`tracking.py`), a padded square around the box is cut and resized to `face_size` (the face stream), and the whole
frame, resized to `scene_size`, has the face region filled (mean colour, blur or black) so that the scene stream
carries the context and not the face again (the scene stream of OUS, `papers/ous_scene_guided_dfer.txt`).
Where a corpus ships pre-cropped face clips (DFEW, FERV39k), the face stream can be those frames instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np
from pydantic import Field

from vlm_salience.config import RelPath, StrictModel
from vlm_salience.video.tracking import Smoothing, Track, track


class DetectionConfig(StrictModel):
    """How faces are found: the packaged detector (models/faces), run on a copy of the frame whose longer side is
    at most `max_side`, on the middle frame of each segment only (`detect_on: segment_middles`; the boxes of the other
    cached candidates are interpolated in time) or on every cached frame (`detect_on: all`).

    On a downscaled frame a face spans few pixels, and the cascade's default pyramid (step 1.1, 5 neighbours)
    then misses most of them (measured: 2-4 of 16 frames of a moving astronaut at 640x360 -> 256/320 px); a finer
    step and 3 neighbours find all 16 at a third of the full-size cost: those are used when no `detector` YAML is
    given (VIDEO_PYRAMID). A detector YAML's own values hold unless scale_factor/min_neighbors are set here."""

    # haar | mtcnn | auto (by name), or a face-detector YAML (configs/models/face_mtcnn.yaml); None or auto: MTCNN
    # where its weights are installed, else the Haar cascade (models/faces/detector.auto_detector_config)
    detector: Literal["auto", "haar", "mtcnn"] | RelPath | None = None
    max_side: int | None = Field(256, ge=32)  # None: full size. Faces under ~24 px at this scale are missed
    scale_factor: float | None = Field(None, gt=1.0)  # None: the detector YAML's (VIDEO_PYRAMID without one)
    min_neighbors: int | None = Field(None, ge=0)  # None: the detector YAML's (VIDEO_PYRAMID without one)
    detect_on: Literal["segment_middles", "all"] = "segment_middles"
    # the largest face among detections scoring at least this share of the frame's best score: the cascade's
    # false positives (a patch, a helmet) are often larger than the face but score far lower
    min_score_share: float = Field(0.5, ge=0.0, le=1.0)
    # None: the largest face of each frame (faces are not linked). Set: every face of the clip is followed by one
    # identity (models/faces/identities.py) and the stream follows one of them, the `largest` (mean box area), the
    # `most_central` or the `longest`-lived; the summary counts identity switches and the target's gaps
    target: Literal["largest", "most_central", "longest"] | None = None
    max_gap: int = Field(10, ge=0)  # detection frames an identity survives without its face (target set only)


VIDEO_PYRAMID = {"scale_factor": 1.05, "min_neighbors": 3}  # for faces of 25-50 px on downscaled frames


class StreamConfig(StrictModel):
    """Face crop, scene mask and box smoothing."""

    face_size: int = Field(112, ge=16)
    scene_size: int = Field(112, ge=16)
    face_pad: float = Field(0.25, ge=0.0)  # added on each side, as a share of the box side
    mask_fill: Literal["mean", "blur", "black"] = "mean"
    mask_pad: float = Field(0.15, ge=0.0)  # the masked region extends the box by this share on each side
    smoothing: Smoothing = "median"
    smoothing_window: int = Field(5, ge=1)
    smoothing_alpha: float = Field(0.5, gt=0.0, le=1.0)
    use_face_source: bool = True  # use a corpus's pre-cropped face clips for the face stream where it has them
    detection: DetectionConfig = DetectionConfig()


class FaceFinder(Protocol):
    """Anything that gives the largest face box (x, y, w, h, in pixels of the given frame) per frame, or None."""

    def largest(self, frames: np.ndarray) -> list[np.ndarray | None]: ...


class PackagedFinder:
    """The packaged detectors of models/faces (Haar or MTCNN) as a FaceFinder, downscaling to max_side; with a
    `target` rule, faces are linked into identities and the target identity's box is given per frame."""

    def __init__(self, cfg: DetectionConfig) -> None:
        from vlm_salience.models.faces.detector import HaarDetectorConfig, auto_detector_config
        from vlm_salience.models.faces.detectors import load_detector

        if cfg.detector in (None, "auto"):
            base = auto_detector_config()
            if base.kind == "haar":
                base = HaarDetectorConfig(**VIDEO_PYRAMID)
        elif cfg.detector == "haar":
            base = HaarDetectorConfig(**VIDEO_PYRAMID)
        else:
            base = load_detector(cfg.detector).cfg
        update = {"max_side": cfg.max_side}
        if base.kind == "haar":
            update.update(scale_factor=cfg.scale_factor, min_neighbors=cfg.min_neighbors)
        self.detector_config = base.model_copy(update={k: v for k, v in update.items()
                                                       if v is not None or k == "max_side"})
        self._detector = load_detector(self.detector_config)
        self.min_score_share = cfg.min_score_share
        self.target, self.max_gap = cfg.target, cfg.max_gap
        self.last_identity: dict[str, int] | None = None  # the last clip's identity counts (target set only)

    def to(self, device: str) -> PackagedFinder:
        """Run the detector on `device` (MTCNN; the Haar cascade runs on the CPU only and stays there). The cache
        keys keep hashing `detector_config`, the configured device, so every rank of a launch writes the same keys."""
        if hasattr(self._detector, "to"):
            self._detector.to(device)
        return self

    def largest(self, frames: np.ndarray) -> list[np.ndarray | None]:
        found = self._detector.detect_batch(list(frames))
        if self.target is not None:
            return self._target_boxes(found, frames.shape[1:3])
        out: list[np.ndarray | None] = []
        for faces in found:
            best = pick_face([(np.array([b.x, b.y, b.w, b.h], dtype=np.float32), b.score) for b in faces],
                             self.min_score_share)
            out.append(best)
        return out

    def _target_boxes(self, found: list, frame_size: tuple[int, int]) -> list[np.ndarray | None]:
        """The target identity's box per frame (None where it is not seen), and the clip's counts in
        `last_identity`: identities, identity switches (frames where the largest face belongs to another identity
        than on the frame before: how often a largest-face stream would jump between people) and the target's
        bridged gaps."""
        from vlm_salience.models.faces.identities import pick_target, track_faces

        tracked, summary = track_faces(found, max_gap=self.max_gap)
        rule = "central" if self.target == "most_central" else self.target
        tid = pick_target(summary, tracked, rule, frame_size=tuple(frame_size))
        switches, prev = 0, None
        for faces in tracked:
            if faces:
                big = max(faces, key=lambda p: (p[1].area, p[1].score))[0]
                switches += prev is not None and big != prev
                prev = big
        self.last_identity = {"identities": summary["tracks"], "identity_switches": int(switches),
                              "target_gaps": summary["per_track"][tid]["gaps"] if tid is not None else 0}
        return [next((np.array([f.x, f.y, f.w, f.h], dtype=np.float32) for t, f in faces if t == tid), None)
                for faces in tracked]


def pick_face(faces: list[tuple[np.ndarray, float]], min_score_share: float) -> np.ndarray | None:
    """The largest box among those scoring >= min_score_share x the best score (scores may be negative: the
    threshold is taken on the scores shifted so that the lowest is 0)."""
    if not faces:
        return None
    scores = np.array([s for _, s in faces], dtype=np.float64)
    shifted = scores - min(0.0, scores.min())
    keep = [f for f, s in zip(faces, shifted) if s >= min_score_share * shifted.max()]
    return max(keep, key=lambda f: (float(f[0][2] * f[0][3]), f[1]))[0]


def face_finder(cfg: DetectionConfig) -> PackagedFinder:
    """The default detector for the face stream."""
    return PackagedFinder(cfg)


@dataclass(frozen=True)
class Streams:
    """Both streams of the sampled frames of one clip, and the boxes they were cut with."""

    face: np.ndarray  # (T, face_size, face_size, 3) uint8
    scene: np.ndarray  # (T, scene_size, scene_size, 3) uint8
    boxes: np.ndarray  # (T, 4) float32, smoothed square boxes in pixels of the source frame
    detected: np.ndarray  # (T,) bool
    missed: int  # frames without a detection (their box was reused)


def _expand(box: np.ndarray, pad: float) -> tuple[int, int, int, int]:
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1 + 2 * pad)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    return x0, y0, x0 + s, y0 + s


def face_crop(frame: np.ndarray, box: np.ndarray, pad: float, size: int) -> np.ndarray:
    """A padded square around `box`, resized to size x size; parts outside the frame repeat its edge."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = _expand(box, pad)
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 <= cx0 or cy1 <= cy0:  # box entirely off the frame: fall back to the whole frame
        crop = frame
    else:
        crop = frame[cy0:cy1, cx0:cx1]
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            crop = cv2.copyMakeBorder(crop, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)


def _fill(img: np.ndarray, rect: tuple[int, int, int, int], fill: str) -> np.ndarray:
    """Fill rect (x0, y0, x1, y1, clipped to the image) of `img` in place: mean colour of the whole image, a blur
    as wide as half the region (no facial features survive it), or black."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, rect[0]), max(0, rect[1]), min(w, rect[2]), min(h, rect[3])
    if x1 <= x0 or y1 <= y0:
        return img
    if fill == "mean":
        img[y0:y1, x0:x1] = img.reshape(-1, img.shape[-1]).mean(axis=0).round().astype(img.dtype)
    elif fill == "black":
        img[y0:y1, x0:x1] = 0
    elif fill == "blur":
        k = max(3, (max(x1 - x0, y1 - y0) // 2) | 1)
        img[y0:y1, x0:x1] = cv2.GaussianBlur(np.ascontiguousarray(img[y0:y1, x0:x1]), (k, k), 0)
    else:
        raise ValueError(f"unknown mask fill '{fill}' (expected mean, blur or black)")
    return img


def mask_rect(box: np.ndarray, pad: float, sx: float = 1.0, sy: float = 1.0) -> tuple[int, int, int, int]:
    """The masked region (x0, y0, x1, y1) of a box padded by `pad` on each side, scaled by (sx, sy)."""
    x, y, bw, bh = (float(v) for v in box)
    px, py = bw * pad, bh * pad
    return (int(np.floor((x - px) * sx)), int(np.floor((y - py) * sy)),
            int(np.ceil((x + bw + px) * sx)), int(np.ceil((y + bh + py) * sy)))


def mask_region(frame: np.ndarray, box: np.ndarray, pad: float, fill: str) -> np.ndarray:
    """A copy of `frame` with the padded box filled."""
    return _fill(frame.copy(), mask_rect(box, pad), fill)


def scene_frame(frame: np.ndarray, box: np.ndarray, cfg: StreamConfig) -> np.ndarray:
    """The frame resized to scene_size x scene_size with the face masked. Masking after resizing is cheaper and,
    for a filled region, the same picture (the region is scaled with the frame)."""
    h, w = frame.shape[:2]
    s = cfg.scene_size
    small = cv2.resize(frame, (s, s), interpolation=cv2.INTER_AREA if max(h, w) > s else cv2.INTER_LINEAR)
    return _fill(small, mask_rect(box, cfg.mask_pad, s / w, s / h), cfg.mask_fill)


def find_track(frames: np.ndarray, finder: FaceFinder, cfg: StreamConfig, *,
               frame_index: np.ndarray | None = None, detect_rows: np.ndarray | None = None) -> Track:
    """One smoothed box per row of `frames` (T, H, W, 3), in time order.

    With `detect_rows`, the detector runs on those rows only; their boxes are gap-filled and smoothed, and every
    other row's box is interpolated in time (by `frame_index`) between them. `missed` counts detection rows
    without a face; `detected` is True only where the detector ran and found one.
    """
    t = len(frames)
    h, w = frames.shape[1:3]
    rows = np.arange(t) if detect_rows is None else np.unique(np.asarray(detect_rows, dtype=np.int64))
    found = finder.largest(frames[rows])
    tr = track(found, h, w, method=cfg.smoothing, window=cfg.smoothing_window, alpha=cfg.smoothing_alpha)
    if len(rows) == t:
        return tr
    times = np.arange(t, dtype=np.float64) if frame_index is None else np.asarray(frame_index, dtype=np.float64)
    boxes = np.stack([np.interp(times, times[rows], tr.boxes[:, j]) for j in range(4)], axis=1)
    detected = np.zeros(t, dtype=bool)
    detected[rows] = tr.detected
    return Track(boxes.astype(np.float32), detected, tr.missed)


def cut_streams(frames: np.ndarray, tr: Track, cfg: StreamConfig,
                face_frames: np.ndarray | None = None) -> Streams:
    """Face and scene streams of `frames` with the boxes of `tr`. `face_frames`: the same frames from a corpus's
    pre-cropped face clip; when given (and `cfg.use_face_source`), the face stream is those frames resized."""
    s = cfg.face_size
    if face_frames is not None and cfg.use_face_source:
        face = np.stack([cv2.resize(np.ascontiguousarray(f), (s, s), interpolation=cv2.INTER_AREA
                                    if f.shape[0] > s else cv2.INTER_LINEAR) for f in face_frames])
    else:
        face = np.stack([face_crop(f, b, cfg.face_pad, s) for f, b in zip(frames, tr.boxes)])
    scene = np.stack([scene_frame(f, b, cfg) for f, b in zip(frames, tr.boxes)])
    return Streams(face.astype(np.uint8), scene.astype(np.uint8), tr.boxes, tr.detected, tr.missed)


def make_streams(frames: np.ndarray, finder: FaceFinder, cfg: StreamConfig, face_frames: np.ndarray | None = None,
                 *, frame_index: np.ndarray | None = None, detect_rows: np.ndarray | None = None) -> Streams:
    """Face and scene streams of the sampled frames (T, H, W, 3) uint8 of one clip, in time order."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected frames of shape (T, H, W, 3) with T >= 1, got {frames.shape}")
    tr = find_track(frames, finder, cfg, frame_index=frame_index, detect_rows=detect_rows)
    return cut_streams(frames, tr, cfg, face_frames)

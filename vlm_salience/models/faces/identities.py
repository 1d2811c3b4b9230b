"""Identities across a clip: the faces of every frame linked into tracks, one id per person, so that a clip with two
people gives two face streams instead of one stream that jumps between them.

Each frame's faces are matched to the live tracks by one optimal assignment (Hungarian, scipy) on a cost that adds
the box overlap (1 - IoU with the track's predicted box: its last box moved by its last velocity) and, where both
have landmarks, the distance between the five points over the face's size. A pair is matched only if its IoU with
the prediction is at least `min_iou` or its landmarks lie within `max_landmark_dist` face sizes; otherwise the face
starts a new track. A track that finds no face keeps its id for `max_gap` frames (the detector's misses, a brief
occlusion: the gap is bridged), then ends. Counted per clip: tracks, bridged gaps and frames missed.

This is py-feat's and OpenFace's most asked-for video feature (one identity per face across a video); it links
detections, it does not recognise faces: a person who leaves for longer than `max_gap` frames returns with a new id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vlm_salience.models.faces.detector import FaceBox


@dataclass
class _Track:
    id: int
    box: np.ndarray  # x, y, w, h of the last match
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    points: np.ndarray | None = None
    last_frame: int = 0
    first_frame: int = 0
    frames: int = 1
    gaps: int = 0

    def predicted(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.last_frame)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


class FaceTracker:
    """Feed frames in order with `update(faces)`; each call returns (track id, face) for that frame's faces."""

    def __init__(self, min_iou: float = 0.3, max_landmark_dist: float = 0.5, max_gap: int = 10,
                 landmark_weight: float = 1.0, keep_ended: bool = True) -> None:
        self.min_iou, self.max_landmark_dist = min_iou, max_landmark_dist
        self.max_gap, self.landmark_weight = max_gap, landmark_weight
        # keep_ended=False: ended tracks are dropped, not kept for `summary` (an hour-long stream must not grow)
        self.keep_ended = keep_ended
        self.frame = -1
        self.live: list[_Track] = []
        self.ended: list[_Track] = []
        self._next = 0

    def _cost(self, t: _Track, f: FaceBox) -> float:
        box = np.array([f.x, f.y, f.w, f.h], dtype=np.float64)
        pred = t.predicted(self.frame)
        iou = _iou(pred, box)
        lm = np.inf
        if t.points is not None and f.landmarks is not None:
            shift = (pred[:2] + pred[2:] / 2) - (t.box[:2] + t.box[2:] / 2)  # the points moved with the box
            lm = float(np.linalg.norm(f.points - (t.points + shift), axis=1).mean() / max(1.0, np.sqrt(f.w * f.h)))
        if iou < self.min_iou and not lm <= self.max_landmark_dist:
            return np.inf
        return (1.0 - iou) + (self.landmark_weight * lm if np.isfinite(lm) else 0.0)

    def update(self, faces: Sequence[FaceBox]) -> list[tuple[int, FaceBox]]:
        from scipy.optimize import linear_sum_assignment

        self.frame += 1
        out: list[tuple[int, FaceBox] | None] = [None] * len(faces)
        if self.live and faces:
            cost = np.array([[self._cost(t, f) for f in faces] for t in self.live])
            big = 1e6
            rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, big))
            for r, c in zip(rows, cols):
                if cost[r, c] < big:
                    self._match(self.live[r], faces[c])
                    out[c] = (self.live[r].id, faces[c])
        for j, f in enumerate(faces):
            if out[j] is None:
                t = _Track(self._next, np.array([f.x, f.y, f.w, f.h], dtype=np.float64), points=f.points,
                           last_frame=self.frame, first_frame=self.frame)
                self._next += 1
                self.live.append(t)
                out[j] = (t.id, f)
        still = []
        for t in self.live:
            if self.frame - t.last_frame <= self.max_gap:
                still.append(t)
            elif self.keep_ended:
                self.ended.append(t)
        self.live = still
        return [o for o in out if o is not None]

    def state(self) -> dict:
        """The live tracks, the frame count and the next id as plain JSON data: a resumed stream restores them
        (`from_state`) and gives the same ids as one that never stopped."""
        def arr(a: np.ndarray | None) -> list | None:
            return None if a is None else np.asarray(a, dtype=np.float64).tolist()

        return {"frame": self.frame, "next": self._next,
                "live": [{"id": t.id, "box": arr(t.box), "velocity": arr(t.velocity), "points": arr(t.points),
                          "last_frame": t.last_frame, "first_frame": t.first_frame, "frames": t.frames,
                          "gaps": t.gaps} for t in self.live]}

    def restore(self, state: dict) -> FaceTracker:
        """Continue from `state()` (this tracker's settings kept)."""
        self.frame, self._next = int(state["frame"]), int(state["next"])
        self.live = [_Track(int(d["id"]), np.asarray(d["box"], dtype=np.float64),
                            np.asarray(d["velocity"], dtype=np.float64),
                            None if d["points"] is None else np.asarray(d["points"], dtype=np.float32),
                            int(d["last_frame"]), int(d["first_frame"]), int(d["frames"]), int(d["gaps"]))
                     for d in state["live"]]
        return self

    def _match(self, t: _Track, f: FaceBox) -> None:
        box = np.array([f.x, f.y, f.w, f.h], dtype=np.float64)
        dt = self.frame - t.last_frame
        if dt > 1:
            t.gaps += 1
        t.velocity = (box - t.box) / dt
        t.box, t.points, t.last_frame = box, f.points, self.frame
        t.frames += 1

    def summary(self) -> dict:
        """Tracks so far: their count, and per id the first and last frame, frames with a face and bridged gaps."""
        tracks = sorted(self.ended + self.live, key=lambda t: t.id)
        return {"tracks": len(tracks), "gaps_bridged": sum(t.gaps for t in tracks),
                "per_track": {t.id: {"first": t.first_frame, "last": t.last_frame, "frames": t.frames,
                                     "gaps": t.gaps} for t in tracks}}


def track_faces(frames_faces: Sequence[Sequence[FaceBox]], **kwargs) -> tuple[list[list[tuple[int, FaceBox]]], dict]:
    """Every frame's faces (a detector's detect_batch over a clip's frames, in order) with track ids, and the
    tracker's summary."""
    tracker = FaceTracker(**kwargs)
    return [tracker.update(f) for f in frames_faces], tracker.summary()


def pick_target(summary: dict, frames_faces: Sequence[Sequence[tuple[int, FaceBox]]], rule: str = "longest",
                frame_size: tuple[int, int] | None = None) -> int | None:
    """The target identity of a clip: the `longest`-lived track (most frames with a face), the `largest` (mean box
    area) or the most `central` (mean distance of its box centre from the centre of a frame of `frame_size`
    (height, width)); ties to the lower id. None for a clip without faces."""
    if rule not in ("longest", "largest", "central"):
        raise ValueError(f"unknown target rule '{rule}' (expected longest, largest or central)")
    if rule == "central" and frame_size is None:
        raise ValueError("the 'central' target rule needs frame_size=(height, width)")
    areas: dict[int, list[float]] = {}
    centres: dict[int, list[np.ndarray]] = {}
    for faces in frames_faces:
        for tid, f in faces:
            areas.setdefault(tid, []).append(f.area)
            centres.setdefault(tid, []).append(np.array([f.x + f.w / 2, f.y + f.h / 2]))
    if not areas:
        return None
    ids = sorted(areas)
    if rule == "longest":
        return max(ids, key=lambda i: (len(areas[i]), -i))
    if rule == "largest":
        return max(ids, key=lambda i: (float(np.mean(areas[i])), -i))
    mid = np.array([frame_size[1] / 2, frame_size[0] / 2])
    return min(ids, key=lambda i: (float(np.linalg.norm(np.stack(centres[i]) - mid, axis=1).mean()), i))

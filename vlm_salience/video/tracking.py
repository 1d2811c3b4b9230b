"""One face box per sampled frame: gaps filled, jitter smoothed.

A per-frame detector misses some frames (profile, blur, occlusion) and its boxes wobble by a few pixels from frame
to frame; a face stream cut from raw boxes then shakes, and the encoder sees the shake as motion. Here the boxes of
one clip (sampled frames, in time order) become one box per frame: frames without a detection reuse the previous
box (before the first detection: the first detected box, or the centre box where the clip has none), and the
centre and size are smoothed over time (a running median, which ignores a single wild box, or an exponential
moving average run forwards and backwards, which has no lag). Boxes are (x, y, w, h) in pixels of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Smoothing = Literal["median", "ema", "none"]


@dataclass(frozen=True)
class Track:
    """The boxes of one clip after gap filling and smoothing."""

    boxes: np.ndarray  # (T, 4) float32: x, y, w, h
    detected: np.ndarray  # (T,) bool: the detector found a face on this frame
    missed: int  # frames whose box was reused from a neighbour or is the centre box


def centre_box(height: int, width: int, share: float = 0.5) -> np.ndarray:
    """A square box in the middle of the frame, `share` of its shorter side: where a face most often is."""
    side = share * min(height, width)
    return np.array([(width - side) / 2, (height - side) / 2, side, side], dtype=np.float32)


def fill_gaps(boxes: list[np.ndarray | None], height: int, width: int) -> Track:
    """Boxes per frame (None where no face was found) -> one box per frame and the count of filled frames."""
    detected = np.array([b is not None for b in boxes], dtype=bool)
    out = np.empty((len(boxes), 4), dtype=np.float32)
    first = next((b for b in boxes if b is not None), None)
    prev = np.asarray(first, dtype=np.float32) if first is not None else centre_box(height, width)
    for i, b in enumerate(boxes):
        if b is not None:
            prev = np.asarray(b, dtype=np.float32)
        out[i] = prev
    return Track(out, detected, int((~detected).sum()))


def _to_cs(boxes: np.ndarray) -> np.ndarray:
    """(x, y, w, h) -> (cx, cy, side): the crop is square, so one size is smoothed, not two."""
    return np.stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2,
                     np.maximum(boxes[:, 2], boxes[:, 3])], axis=1)


def _from_cs(cs: np.ndarray) -> np.ndarray:
    side = cs[:, 2]
    return np.stack([cs[:, 0] - side / 2, cs[:, 1] - side / 2, side, side], axis=1).astype(np.float32)


def _running_median(x: np.ndarray, window: int) -> np.ndarray:
    half = window // 2
    padded = np.pad(x, ((half, half), (0, 0)), mode="edge")
    views = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (T, C, window)
    return np.median(views, axis=-1)


def _ema_both_ways(x: np.ndarray, alpha: float) -> np.ndarray:
    def ema(v: np.ndarray) -> np.ndarray:
        out = np.empty_like(v)
        out[0] = v[0]
        for i in range(1, len(v)):
            out[i] = alpha * v[i] + (1 - alpha) * out[i - 1]
        return out
    return (ema(x) + ema(x[::-1])[::-1]) / 2


def smooth(boxes: np.ndarray, method: Smoothing = "median", window: int = 5, alpha: float = 0.5) -> np.ndarray:
    """Smooth centre and size over time; returns square boxes (x, y, side, side)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if len(boxes) == 0:
        return boxes.astype(np.float32).reshape(0, 4)
    cs = _to_cs(boxes)
    if method == "median" and window > 1 and len(cs) > 1:
        cs = _running_median(cs, window if window % 2 else window + 1)
    elif method == "ema" and len(cs) > 1:
        cs = _ema_both_ways(cs, alpha)
    return _from_cs(cs)


def track(boxes: list[np.ndarray | None], height: int, width: int, *, method: Smoothing = "median",
          window: int = 5, alpha: float = 0.5) -> Track:
    """Gap filling then smoothing: what the face stream crops with."""
    filled = fill_gaps(boxes, height, width)
    return Track(smooth(filled.boxes, method, window, alpha), filled.detected, filled.missed)


def jitter(boxes: np.ndarray) -> float:
    """Mean frame-to-frame movement of the box centre, in pixels (how much a face stream would shake)."""
    cs = _to_cs(np.asarray(boxes, dtype=np.float64))
    if len(cs) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(cs[:, :2], axis=0), axis=1).mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax0, ay0, aw, ah = (float(v) for v in a)
    bx0, by0, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0

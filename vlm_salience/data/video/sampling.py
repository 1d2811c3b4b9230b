"""TSN-style frame sampling: N equal segments, one frame from each (as DFER-CLIP samples its clips).

Training takes a random frame inside each segment (a fresh temporal jitter every epoch), evaluation the middle
frame of each segment (the same frames every run). A clip shorter than N frames is padded by repeating frames in
order (frame i fills the segments that fall on it), so every clip yields exactly N indices.
"""

from __future__ import annotations

import numpy as np


def segment_indices(n_frames: int, n_segments: int = 16, *, train: bool,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """`n_segments` frame indices in [0, n_frames), non-decreasing. `rng` is required when `train` is True."""
    if n_segments < 1:
        raise ValueError(f"n_segments must be >= 1, got {n_segments}")
    if n_frames < 1:
        raise ValueError(f"a clip with {n_frames} frames has nothing to sample; count_frames rejects such clips")
    if train and rng is None:
        raise ValueError("training sampling is random: pass rng (a seeded np.random.Generator)")
    if n_frames < n_segments:
        # Each segment is shorter than a frame: it shows the frame it starts in (repeats, order kept).
        return (np.arange(n_segments) * n_frames) // n_segments
    edges = (np.arange(n_segments + 1) * n_frames) // n_segments  # integer edges, every segment >= 1 frame
    start, stop = edges[:-1], edges[1:]
    if train:
        return rng.integers(start, stop)
    return (start + stop - 1) // 2

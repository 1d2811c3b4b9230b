"""Video corpora: clips, folds, frame reading and TSN sampling. Nothing outside `data/` knows a video layout.

Reading API (what models and the preprocessing cache use)::

    corpus = load_video_corpus("configs/data/dfew.yaml", drop_invalid=False, overrides=["root=/data/DFEW"])
    # DFER-CLIP's lists (`path num_frames label`, 0-based, its own class order): overrides=["list_format=dfer_clip"]
    corpus.classes                      # ["happy", "sad", ...]; VideoClip.label indexes it (0-based)
    corpus.folds["set_1"]["train"]      # clip ids; corpus.split("set_1", "test") -> [VideoClip]
    clip = corpus.clips[0]              # VideoClip(clip_id, source, label, face_source, polarity, text, meta)
    n = count_frames(clip.source)       # frames of a video file or a frame folder (DataError if none)
    idx = segment_indices(n, 16, train=True, rng=np.random.default_rng(seed))
    frames = read_frames(clip.source, idx)   # (16, H, W, 3) uint8 RGB; decodes only what idx needs
    frames = sample_clip(clip.source, 16, train=False)   # the same in one call (evaluation: segment middles)

`VideoCorpus.polarity_source` says where `VideoClip.polarity` (0 negative, 1 neutral, 2 positive) comes from:
"column" (the generic CSV has one), "mapping" (the YAML's `polarity_map`: derived from the label) or "none".
`VideoCorpus.dropped` lists what `drop_invalid=True` skipped, per file and reason. Bad input raises
`vlm_salience.errors.DataError` naming the file, the line and the column, and the fix.
Layouts: `format: dfew | ferv39k | mafw | video_csv` (see config.py for the folder and file names each expects).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlm_salience.data.video.config import (
    VIDEO_FORMATS, DfewConfig, Ferv39kConfig, MafwConfig, VideoCsvConfig, VideoDataConfig, load_video_data_config,
)
from vlm_salience.data.video.frames import clip_fingerprint, count_frames, frame_files, read_frames
from vlm_salience.data.video.records import POLARITIES, VideoClip, VideoCorpus
from vlm_salience.data.video.sampling import segment_indices


def load_video_corpus(config: VideoDataConfig | str | Path, *, drop_invalid: bool = False,
                      overrides: list[str] | tuple[str, ...] = (), progress: bool = False) -> VideoCorpus:
    """Load a video corpus from its data YAML (or a parsed config). Checks are cheap: files exist, labels are
    known, ids are unique; decoding problems surface in count_frames/read_frames. `progress`: bars while a large
    corpus's clips are found and fingerprinted (tens of seconds for FERV39k)."""
    from vlm_salience.data.video.loaders import LOADERS

    if not isinstance(config, (DfewConfig, Ferv39kConfig, MafwConfig, VideoCsvConfig)):
        config = load_video_data_config(config, overrides)
    return LOADERS[type(config)](config, drop_invalid=drop_invalid, progress=progress)


def is_video_data_config(path: str | Path) -> bool:
    """True when a data YAML declares a video format (so `data check`-like commands can dispatch on it)."""
    from vlm_salience.config import read_yaml

    return read_yaml(path).get("format") in VIDEO_FORMATS


def sample_clip(source: Path, n_segments: int = 16, *, train: bool,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """`n_segments` frames of a clip, TSN-style: (n_segments, H, W, 3) uint8 RGB."""
    return read_frames(source, segment_indices(count_frames(source), n_segments, train=train, rng=rng))


__all__ = [
    "POLARITIES", "VIDEO_FORMATS", "DfewConfig", "Ferv39kConfig", "MafwConfig", "VideoClip", "VideoCorpus",
    "VideoCsvConfig", "VideoDataConfig", "clip_fingerprint", "count_frames", "frame_files", "is_video_data_config",
    "load_video_corpus", "load_video_data_config", "read_frames", "sample_clip", "segment_indices",
]

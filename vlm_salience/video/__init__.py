"""Video preprocessing: face and scene streams, box tracking, the preprocessed-clip cache and `prepare`.

    summary = prepare_corpus("configs/data/dfew.yaml", "configs/video/prepare.yaml", "video_cache/dfew")
    cache = ClipCache("video_cache/dfew")
    clip = cache.load(cache.ids()[0])                  # PreparedClip: face, scene, slots, boxes, ...
    rows = sample(clip, 16, train=True, rng=rng)       # one cached candidate per segment (the middle one in eval)
    faces, scenes = clip.face[rows], clip.scene[rows]  # (16, S, S, 3) uint8 each: no decoding at training time
"""

from vlm_salience.video.cache import ClipCache, PreparedClip, sample
from vlm_salience.video.prepare import PrepareConfig, load_prepare_config, prepare_corpus
from vlm_salience.video.streams import DetectionConfig, StreamConfig, Streams, face_finder, make_streams

__all__ = ["ClipCache", "DetectionConfig", "PrepareConfig", "PreparedClip", "StreamConfig", "Streams", "face_finder",
           "load_prepare_config", "make_streams", "prepare_corpus", "sample"]

"""`vlm-salience video prepare`: decode the sampled frames of every clip once, cut the streams, cache them.

Per clip: count its frames, choose K candidate frames in each of N segments (the segment's middle frame first:
the evaluation sample; the others spread over the segment: training draws among them), decode only those frames,
find the face on the middle frames of the segments on a downscaled copy, fill gaps, smooth and interpolate the
boxes, cut the face and scene streams and write them to the cache (`cache.py`). A rerun skips every clip whose key
(source fingerprint + config hash) is already cached, so an interrupted prepare resumes where it stopped and a
changed video or setting is prepared again. Bad clips (corrupt video, zero frames, unreadable images) stop the run
with an error naming the file, or are skipped and listed under `drop_invalid`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from vlm_salience import atomic
from vlm_salience.config import StrictModel, apply_overrides, load_config, validate
from vlm_salience.data.video.frames import count_frames, read_frames
from vlm_salience.data.video.records import VideoClip, VideoCorpus
from vlm_salience.data.video.sampling import segment_indices
from vlm_salience.errors import DataError
from vlm_salience.video.cache import ClipCache, PreparedClip, clip_key, config_hash, read_clip
from vlm_salience.video.streams import FaceFinder, StreamConfig, face_finder, make_streams

MANIFEST_EVERY = 25  # clips between manifest rewrites during a run (the clip files themselves are the truth)


class PrepareConfig(StrictModel):
    """What `prepare` caches per clip (configs/video/prepare*.yaml)."""

    n_segments: int = Field(16, ge=1)  # TSN segments (the training sampler's N)
    candidates_per_segment: int = Field(3, ge=1, le=16)  # K frames cached per segment (1: evaluation only)
    streams: StreamConfig = StreamConfig()
    compress: bool = False  # zip-compress clip files (about half the disk, slower to load)


def load_prepare_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PrepareConfig:
    """A prepare YAML (configs/video/prepare*.yaml) with dotted overrides; None: the defaults."""
    if path is None:
        return validate(apply_overrides({}, list(overrides)), PrepareConfig, source="prepare defaults",
                        base_dir=None)
    return load_config(path, PrepareConfig, overrides)


def hashed_settings(cfg: PrepareConfig, finder: FaceFinder | None = None) -> dict[str, Any]:
    """The settings that change the cached frames: the config (without storage options, with the detector's own
    settings in place of its YAML's path, so moving the YAML does not invalidate the cache)."""
    data = cfg.model_dump(mode="json", exclude={"compress"})
    det = data["streams"]["detection"]
    det.pop("detector", None)
    detector_cfg = getattr(finder, "detector_config", None)
    det["detector_settings"] = detector_cfg.model_dump(mode="json", exclude={"name"}) if detector_cfg else None
    if det["detector_settings"] is not None:
        det["detector_settings"].pop("cascade", None)
    return data


def candidate_frames(n_frames: int, n_segments: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots (N, K) rows, frame_index (F,)): K candidate frames per segment, the middle one (the evaluation
    frame of `segment_indices`) first, the others spread evenly over the segment; -1 where a segment has fewer
    distinct frames. Rows index the distinct frames in time order."""
    middle = segment_indices(n_frames, n_segments, train=False)
    if n_frames < n_segments:
        start, stop = middle, middle + 1
    else:
        edges = (np.arange(n_segments + 1) * n_frames) // n_segments
        start, stop = edges[:-1], edges[1:]
    per_seg: list[list[int]] = []
    for s in range(n_segments):
        cands = [int(middle[s])]
        length = int(stop[s] - start[s])
        for j in range(k):
            f = int(start[s] + ((2 * j + 1) * length) // (2 * k))
            if f not in cands and len(cands) < k:
                cands.append(f)
        per_seg.append(cands)
    frame_index = np.array(sorted({f for c in per_seg for f in c}), dtype=np.int64)
    row = {int(f): i for i, f in enumerate(frame_index)}
    slots = np.full((n_segments, k), -1, dtype=np.int64)
    for s, cands in enumerate(per_seg):
        slots[s, :len(cands)] = [row[f] for f in cands]
    return slots, frame_index


def prepare_clip(clip: VideoClip, cfg: PrepareConfig, finder: FaceFinder) -> PreparedClip:
    """Decode the candidate frames of one clip and cut both streams. DataError (naming the file) for bad input."""
    n = count_frames(clip.source)
    slots, frame_index = candidate_frames(n, cfg.n_segments, cfg.candidates_per_segment)
    frames = read_frames(clip.source, frame_index)
    face_frames = None
    if clip.face_source is not None and cfg.streams.use_face_source:
        nf = count_frames(clip.face_source)
        mapped = np.round(frame_index * (nf - 1) / max(1, n - 1)).astype(np.int64)
        face_frames = read_frames(clip.face_source, mapped)
    detect_rows = slots[:, 0] if cfg.streams.detection.detect_on == "segment_middles" else None
    st = make_streams(frames, finder, cfg.streams, face_frames, frame_index=frame_index, detect_rows=detect_rows)
    detect_frames = len(np.unique(slots[:, 0])) if detect_rows is not None else len(frame_index)
    return PreparedClip(clip_id=clip.clip_id, face=st.face, scene=st.scene, slots=slots, frame_index=frame_index,
                        boxes=st.boxes, detected=st.detected, missed=st.missed, detect_frames=detect_frames,
                        n_source_frames=n)


def _entry(clip: VideoClip, key: str, rel: str, prepared: PreparedClip) -> dict[str, Any]:
    return {"key": key, "file": rel, "label": int(clip.label), "polarity": clip.polarity,
            "source": str(clip.source), "frames": int(len(prepared.frame_index)),
            "n_source_frames": prepared.n_source_frames, "detect_frames": prepared.detect_frames,
            "missed": prepared.missed}


# -- worker processes ---------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(cfg_json: str) -> None:
    import cv2

    cv2.setNumThreads(1)
    cfg = PrepareConfig.model_validate_json(cfg_json)
    _WORKER.update(cfg=cfg, finder=face_finder(cfg.streams.detection))


def _worker_run(clip: VideoClip, key: str, root: str) -> tuple[str, Any]:
    cfg, finder = _WORKER["cfg"], _WORKER["finder"]
    return _process(clip, key, ClipCache(root), cfg, finder)


def _process(clip: VideoClip, key: str, cache: ClipCache, cfg: PrepareConfig,
             finder: FaceFinder) -> tuple[str, Any]:
    """('ok', entry) or ('invalid', {clip_id, file, error}) for one clip."""
    try:
        prepared = prepare_clip(clip, cfg, finder)
    except DataError as exc:
        return "invalid", {"clip_id": clip.clip_id, "file": str(exc.file or clip.source), "error": str(exc)}
    except OSError as exc:
        err = DataError(f"clip '{clip.clip_id}' cannot be read ({exc}).", file=clip.source,
                        fix="check the file, or pass --drop-invalid.")
        return "invalid", {"clip_id": clip.clip_id, "file": str(clip.source), "error": str(err)}
    rel = cache.write(key, prepared, compress=cfg.compress)
    return "ok", _entry(clip, key, rel, prepared)


def _clips_of(corpus: VideoCorpus, fold: str | None) -> list[VideoClip]:
    if fold is None:
        return list(corpus.clips)
    if fold not in corpus.folds:
        raise DataError(f"corpus '{corpus.name}' has no fold '{fold}'.", fix=f"use one of {sorted(corpus.folds)}.")
    ids: list[str] = []
    for part in corpus.folds[fold].values():
        ids.extend(i for i in part if i not in ids)
    return [corpus.clip(i) for i in ids]


def _load_corpus(data: str | Path | VideoCorpus, drop_invalid: bool) -> VideoCorpus:
    if isinstance(data, VideoCorpus):
        return data
    from vlm_salience.data.video import load_video_corpus

    return load_video_corpus(data, drop_invalid=drop_invalid)


def prepare_corpus(data: str | Path | VideoCorpus, prepare_cfg: str | Path | PrepareConfig | None = None,
                   out_cache_dir: str | Path = "video_cache", *, fold: str | None = None,
                   drop_invalid: bool = False, progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """Prepare every clip of a corpus (a data YAML, or a loaded VideoCorpus) into `out_cache_dir`.

    Returns (and writes to CACHE/summary.json) {clips, prepared, skipped, cached, invalid: [{clip_id, file,
    error}], missed_detection_frames, detection_frames, clips_with_missed, dropped_rows (what the corpus loader
    skipped under drop_invalid), config_hash, out}. `skipped` clips
    were already cached with this config and unchanged source. Raises DataError naming the file for the first bad
    clip unless `drop_invalid`; whatever was prepared before it stays cached.
    """
    from tqdm.auto import tqdm

    corpus = _load_corpus(data, drop_invalid)
    cfg = prepare_cfg if isinstance(prepare_cfg, PrepareConfig) else load_prepare_config(prepare_cfg)
    finder = face_finder(cfg.streams.detection)
    settings = hashed_settings(cfg, finder)
    h = config_hash(settings)
    cache = ClipCache(out_cache_dir)
    cache.root.mkdir(parents=True, exist_ok=True)
    entries = cache.read_existing_entries(h)
    clips = _clips_of(corpus, fold)
    use_face = cfg.streams.use_face_source

    todo: list[tuple[VideoClip, str]] = []
    skipped = 0
    for clip in clips:
        key = clip_key(clip.source, clip.face_source if use_face else None, h)
        old = entries.get(clip.clip_id)
        if old is not None and old.get("key") == key and cache.has_valid(key):
            skipped += 1
        elif cache.has_valid(key):  # written by an interrupted run before its manifest was saved
            entries[clip.clip_id] = _entry(clip, key, cache.relpath(key), read_clip(cache.root / cache.relpath(key)))
            skipped += 1
        else:
            entries.pop(clip.clip_id, None)
            todo.append((clip, key))

    def save_manifest() -> None:
        cache.write_manifest(settings, h, entries, corpus=corpus.name, classes=list(corpus.classes))

    invalid: list[dict[str, Any]] = []
    prepared = 0
    bar = tqdm(total=len(todo), desc=f"prepare {corpus.name}", unit="clip", disable=not progress)

    def handle(clip: VideoClip, status: str, payload: Any) -> None:
        nonlocal prepared
        if status == "ok":
            entries[clip.clip_id] = payload
            prepared += 1
            if prepared % MANIFEST_EVERY == 0:
                save_manifest()
        else:
            invalid.append(payload)
            if not drop_invalid:
                save_manifest()
                raise DataError(payload["error"])
        bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for clip, key in todo:
                status, payload = _process(clip, key, cache, cfg, finder)
                handle(clip, status, payload)
        else:
            _run_pool(todo, cache, cfg, workers, handle)
    finally:
        bar.close()
        save_manifest()

    missed = sum(int(entries[c.clip_id]["missed"]) for c in clips if c.clip_id in entries)
    detect = sum(int(entries[c.clip_id]["detect_frames"]) for c in clips if c.clip_id in entries)
    summary = {"corpus": corpus.name, "fold": fold, "clips": len(clips), "prepared": prepared, "skipped": skipped,
               "cached": sum(c.clip_id in entries for c in clips), "invalid": invalid,
               "missed_detection_frames": missed, "detection_frames": detect,
               "clips_with_missed": sum(int(entries[c.clip_id]["missed"]) > 0 for c in clips
                                        if c.clip_id in entries),
               "dropped_rows": corpus.dropped.to_dict(), "config_hash": h, "out": str(cache.root)}
    atomic.write_text(cache.root / "summary.json", json.dumps(summary, indent=2))
    return summary


def _run_pool(todo: list[tuple[VideoClip, str]], cache: ClipCache, cfg: PrepareConfig, workers: int,
              handle: Any) -> None:
    """Clips in worker processes, at most 2 x workers in flight; results handled in the main process."""
    workers = min(workers, os.cpu_count() or 1, len(todo))
    # "spawn": a forked child inherits the parent's OpenCV/FFmpeg thread pools mid-flight and can deadlock
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(cfg.model_dump_json(),)) as pool:
        pending: dict[Any, VideoClip] = {}
        it = iter(todo)
        try:
            for clip, key in it:
                pending[pool.submit(_worker_run, clip, key, str(cache.root))] = clip
                if len(pending) >= 2 * workers:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        handle(pending.pop(fut), *fut.result())
            for fut in list(pending):
                handle(pending.pop(fut), *fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise

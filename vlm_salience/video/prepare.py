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
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from vlm_salience import atomic
from vlm_salience.config import StrictModel, apply_overrides, load_config, validate
from vlm_salience.data.video.frames import count_frames, read_frames
from vlm_salience.data.video.records import VideoClip, VideoCorpus
from vlm_salience.data.video.sampling import segment_indices
from vlm_salience.errors import ConfigError, DataError, without_drop_advice
from vlm_salience.video.cache import ClipCache, PreparedClip, clip_key, config_hash, read_clip
from vlm_salience.video.streams import FaceFinder, StreamConfig, face_finder, make_streams

PARTS = ("all", "train", "test", "val")


class Stopped(KeyboardInterrupt):
    """SIGTERM (timeout, Slurm, kill) during a prepare: raised in the main thread so the workers are stopped and
    the manifest saved before the process ends."""


class PrepareConfig(StrictModel):
    """What `prepare` caches per clip (configs/video/prepare*.yaml)."""

    n_segments: int = Field(16, ge=1)  # TSN segments (the training sampler's N)
    candidates_per_segment: int = Field(3, ge=1, le=16)  # K frames cached per segment (1: evaluation only)
    streams: StreamConfig = StreamConfig()
    compress: bool = False  # zip-compress clip files (about half the disk, slower to load)
    # raw: frames as uint8 arrays; jpeg: each cached frame as a JPEG of `jpeg_quality` (about a tenth of the disk;
    # decoded when a clip is read, equal to the raw frames to JPEG tolerance)
    frame_codec: Literal["raw", "jpeg"] = "raw"
    jpeg_quality: int = Field(95, ge=50, le=100)


def load_prepare_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PrepareConfig:
    """A prepare YAML (configs/video/prepare*.yaml) with dotted overrides; None: the defaults. An override of a
    data-config field (root=...) is named as such: it belongs to --data-set, not --set."""
    from vlm_salience.data.video.config import DfewConfig, Ferv39kConfig, MafwConfig, VideoCsvConfig

    data_fields = set().union(*(m.model_fields for m in (DfewConfig, Ferv39kConfig, MafwConfig, VideoCsvConfig)))
    for item in overrides:
        top = item.split("=", 1)[0].split(".")[0].strip()
        if top not in PrepareConfig.model_fields and top in data_fields:
            raise ConfigError(f"--set {item}: '{top}' is a field of the data config, not of the prepare config. "
                              f"Fix: pass --data-set {item} (--set overrides the prepare YAML: "
                              f"{', '.join(PrepareConfig.model_fields)}).")
    if path is None:
        return validate(apply_overrides({}, list(overrides)), PrepareConfig, source="prepare defaults",
                        base_dir=None)
    return load_config(path, PrepareConfig, overrides)


def hashed_settings(cfg: PrepareConfig, finder: FaceFinder | None = None) -> dict[str, Any]:
    """The settings that change the cached frames: the config (without storage options, with the detector's own
    settings in place of its YAML's path, so moving the YAML does not invalidate the cache)."""
    data = cfg.model_dump(mode="json", exclude={"compress"})
    if data.pop("frame_codec") == "raw":  # raw frames hash as before the codec existed: old caches stay valid
        data.pop("jpeg_quality")
    else:
        data["frame_codec"] = "jpeg"
    det = data["streams"]["detection"]
    det.pop("detector", None)
    if det.get("target") is None:  # identities off: hashed as before the option existed (old caches stay valid)
        det.pop("target", None)
        det.pop("max_gap", None)
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


def _worker_init(cfg_json: str, parent: int) -> None:
    import threading

    import cv2

    cv2.setNumThreads(1)
    # A parent killed outright (SIGKILL, OOM) cannot stop its workers: each leaves when it is orphaned.
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    cfg = PrepareConfig.model_validate_json(cfg_json)
    _WORKER.update(cfg=cfg, finder=face_finder(cfg.streams.detection))


def _exit_when_orphaned(parent: int, every: float = 0.5) -> None:
    import time

    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _worker_run(clip: VideoClip, key: str, root: str) -> tuple[str, Any]:
    cfg, finder = _WORKER["cfg"], _WORKER["finder"]
    return _process(clip, key, ClipCache(root), cfg, finder)


def _process(clip: VideoClip, key: str, cache: ClipCache, cfg: PrepareConfig,
             finder: FaceFinder) -> tuple[str, Any]:
    """('ok', entry) or ('invalid', {clip_id, file, error}) for one clip."""
    try:
        prepared = prepare_clip(clip, cfg, finder)
    except DataError as exc:  # it names the file; the clip's id and list line say which row to fix or drop
        return "invalid", {"clip_id": clip.clip_id, "where": clip.where, "file": str(exc.file or clip.source),
                           "error": f"{clip.named()}: {exc}"}
    except OSError as exc:
        err = DataError(f"{clip.named()} cannot be read ({exc}).", file=clip.source,
                        fix="check the file, or pass --drop-invalid.")
        return "invalid", {"clip_id": clip.clip_id, "where": clip.where, "file": str(clip.source),
                           "error": str(err)}
    rel = cache.write(key, prepared, compress=cfg.compress,
                      jpeg_quality=cfg.jpeg_quality if cfg.frame_codec == "jpeg" else None)
    return "ok", {**_entry(clip, key, rel, prepared), **(getattr(finder, "last_identity", None) or {})}


def _clips_of(corpus: VideoCorpus, fold: str | None, part: str = "all") -> list[VideoClip]:
    """The clips of one fold (every fold: None) and part ("all": train, test and val), in corpus order."""
    if part not in PARTS:
        raise DataError(f"unknown part '{part}'.", fix=f"use one of {', '.join(PARTS)}.")
    if fold is None and part == "all":
        return list(corpus.clips)
    if fold is not None and fold not in corpus.folds:
        raise DataError(f"corpus '{corpus.name}' has no fold '{fold}'.", fix=f"use one of {sorted(corpus.folds)}.")
    wanted: set[str] = set()
    for name in ([fold] if fold is not None else list(corpus.folds)):
        for p, ids in corpus.folds[name].items():
            if part in ("all", p):
                wanted.update(ids)
    return [c for c in corpus.clips if c.clip_id in wanted]


def _load_corpus(data: str | Path | VideoCorpus, drop_invalid: bool, overrides: list[str] | tuple[str, ...] = (),
                 progress: bool = False) -> VideoCorpus:
    if isinstance(data, VideoCorpus):
        return data
    from vlm_salience.data.video import load_video_corpus

    return load_video_corpus(data, drop_invalid=drop_invalid, overrides=overrides, progress=progress)


def _stop_on_sigterm() -> Any:
    """Turn SIGTERM into `Stopped` in the main thread (so `finally` blocks stop the workers); returns the
    previous handler, or None where signals cannot be set (not the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Stopped("stopped by SIGTERM")
    return signal.signal(signal.SIGTERM, handler)


def prepare_corpus(data: str | Path | VideoCorpus, prepare_cfg: str | Path | PrepareConfig | None = None,
                   out_cache_dir: str | Path = "video_cache", *, fold: str | None = None, part: str = "all",
                   drop_invalid: bool = False, progress: bool = True, workers: int = 1,
                   data_overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Prepare every clip of a corpus (a data YAML with `data_overrides`, or a loaded VideoCorpus) into
    `out_cache_dir`; `fold` and `part` ("train", "test", "val" or "all") restrict it to what one run needs.

    Returns (and writes to CACHE/summary.json) {clips, prepared, skipped, cached, invalid: [{clip_id, file,
    error}], missed_detection_frames, detection_frames, clips_with_missed, dropped_rows (what the corpus loader
    skipped under drop_invalid), config_hash, out}. `skipped` clips
    were already cached with this config and unchanged source. Raises DataError naming the file for the first bad
    clip unless `drop_invalid`; whatever was prepared before it stays cached. SIGTERM stops the workers, saves
    the manifest and raises `Stopped` (a KeyboardInterrupt); a rerun resumes.
    """
    previous = _stop_on_sigterm()
    try:
        return _prepare(data, prepare_cfg, out_cache_dir, fold=fold, part=part, drop_invalid=drop_invalid,
                        progress=progress, workers=workers, data_overrides=data_overrides)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _prepare(data, prepare_cfg, out_cache_dir, *, fold, part, drop_invalid, progress, workers,
             data_overrides) -> dict[str, Any]:
    from tqdm.auto import tqdm

    corpus = _load_corpus(data, drop_invalid, data_overrides, progress)
    cfg = prepare_cfg if isinstance(prepare_cfg, PrepareConfig) else load_prepare_config(prepare_cfg)
    finder = face_finder(cfg.streams.detection)
    settings = hashed_settings(cfg, finder)
    h = config_hash(settings)
    cache = ClipCache(out_cache_dir)
    cache.root.mkdir(parents=True, exist_ok=True)
    entries = cache.read_existing_entries(h)
    clips = _clips_of(corpus, fold, part)
    use_face = cfg.streams.use_face_source

    todo: list[tuple[VideoClip, str]] = []
    skipped = 0
    for clip in tqdm(clips, desc=f"{corpus.name}: clip keys and cache", unit="clip", disable=not progress,
                     mininterval=1.0):
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

    cache.begin(settings, h, entries, corpus=corpus.name, classes=list(corpus.classes))

    invalid: list[dict[str, Any]] = []
    prepared = 0
    bar = tqdm(total=len(todo), desc=f"prepare {corpus.name}", unit="clip", disable=not progress)

    def handle(clip: VideoClip, status: str, payload: Any) -> None:
        nonlocal prepared
        if status == "ok":
            entries[clip.clip_id] = payload
            cache.append(clip.clip_id, payload)
            prepared += 1
        else:
            if not drop_invalid:
                raise DataError(payload["error"])
            invalid.append({**payload, "error": without_drop_advice(payload["error"])})  # it was passed
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
    summary = {"corpus": corpus.name, "fold": fold, "part": part, "clips": len(clips), "prepared": prepared, "skipped": skipped,
               "cached": sum(c.clip_id in entries for c in clips), "invalid": invalid,
               "missed_detection_frames": missed, "detection_frames": detect,
               "clips_with_missed": sum(int(entries[c.clip_id]["missed"]) > 0 for c in clips
                                        if c.clip_id in entries),
               "dropped_rows": corpus.dropped.to_dict(), "config_hash": h, "out": str(cache.root)}
    if cfg.streams.detection.target is not None:  # faces linked into identities: what the target rule faced
        kept = [entries[c.clip_id] for c in clips if c.clip_id in entries]
        summary.update({k: sum(int(e.get(k, 0)) for e in kept) for k in ("identity_switches", "target_gaps")})
        summary["clips_with_several_identities"] = sum(int(e.get("identities", 0)) > 1 for e in kept)
    atomic.write_text(cache.root / "summary.json", json.dumps(summary, indent=2))
    return summary


def _run_pool(todo: list[tuple[VideoClip, str]], cache: ClipCache, cfg: PrepareConfig, workers: int,
              handle: Any) -> None:
    """Clips in worker processes, at most 2 x workers in flight; results handled in the main process."""
    workers = min(workers, os.cpu_count() or 1, len(todo))
    # "spawn": a forked child inherits the parent's OpenCV/FFmpeg thread pools mid-flight and can deadlock
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(cfg.model_dump_json(), os.getpid()))
    pending: dict[Any, VideoClip] = {}
    try:
        for clip, key in todo:
            pending[pool.submit(_worker_run, clip, key, str(cache.root))] = clip
            if len(pending) >= 2 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    handle(pending.pop(fut), *fut.result())
        for fut in list(pending):
            handle(pending.pop(fut), *fut.result())
    except BaseException:
        # SIGTERM, Ctrl-C or a bad clip: stop the workers now rather than after the clips they hold
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(5)
        raise
    pool.shutdown(wait=True)

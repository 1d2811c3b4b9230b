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


def _worker_init(cfg_json: str, parent: int, device: str | None = None) -> None:
    import threading

    import cv2

    cv2.setNumThreads(1)
    # A parent killed outright (SIGKILL, OOM) cannot stop its workers: each leaves when it is orphaned.
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    cfg = PrepareConfig.model_validate_json(cfg_json)
    finder = face_finder(cfg.streams.detection)
    if device is not None:  # under accelerate launch: the rank's own GPU
        finder.to(device)
    _WORKER.update(cfg=cfg, finder=finder)


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
                   data_overrides: list[str] | tuple[str, ...] = (), by_rank: bool = False) -> dict[str, Any]:
    """Prepare every clip of a corpus (a data YAML with `data_overrides`, or a loaded VideoCorpus) into
    `out_cache_dir`; `fold` and `part` ("train", "test", "val" or "all") restrict it to what one run needs.

    Returns (and writes to CACHE/summary.json) {clips, prepared, skipped, cached, invalid: [{clip_id, file,
    error}], missed_detection_frames, detection_frames, clips_with_missed, dropped_rows (what the corpus loader
    skipped under drop_invalid), config_hash, out}. `skipped` clips
    were already cached with this config and unchanged source. Raises DataError naming the file for the first bad
    clip unless `drop_invalid`; whatever was prepared before it stays cached. SIGTERM stops the workers, saves
    the manifest and raises `Stopped` (a KeyboardInterrupt); a rerun resumes.

    `by_rank` (what `vlm-salience video prepare` passes): under `accelerate launch` (WORLD_SIZE > 1) every rank
    calls this and prepares its share of the clips (`_prepare_ranks`). Off (the default), one process prepares
    everything even under a launch, as `video train` does on its main process while the others wait: a rank-split
    prepare there would wait for ranks that never join it.
    """
    previous = _stop_on_sigterm()
    try:
        return _prepare(data, prepare_cfg, out_cache_dir, fold=fold, part=part, drop_invalid=drop_invalid,
                        progress=progress, workers=workers, data_overrides=data_overrides, by_rank=by_rank)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _prepare(data, prepare_cfg, out_cache_dir, *, fold, part, drop_invalid, progress, workers,
             data_overrides, by_rank) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from vlm_salience.rank_split import world_size

    split = by_rank and world_size() > 1  # under accelerate launch: each rank its share (_prepare_ranks)
    state = None
    if split:
        from vlm_salience.rank_split import rank_state

        state = rank_state()
        progress = progress and state.is_main_process
    corpus = _load_corpus(data, drop_invalid, data_overrides, progress)
    cfg = prepare_cfg if isinstance(prepare_cfg, PrepareConfig) else load_prepare_config(prepare_cfg)
    finder = face_finder(cfg.streams.detection)
    settings = hashed_settings(cfg, finder)  # hashed with the configured device: every rank writes the same keys
    h = config_hash(settings)
    cache = ClipCache(out_cache_dir)
    cache.root.mkdir(parents=True, exist_ok=True)
    entries = cache.read_existing_entries(h)
    clips = _clips_of(corpus, fold, part)
    if split:
        return _prepare_ranks(state, corpus, clips, cfg, finder, settings, h, cache, entries, fold=fold, part=part,
                              drop_invalid=drop_invalid, progress=progress, workers=workers)
    use_face = cfg.streams.use_face_source

    todo: list[tuple[VideoClip, str]] = []
    skipped = 0
    for clip in tqdm(clips, desc=f"{corpus.name}: clip keys and cache", unit="clip", disable=not progress,
                     mininterval=1.0):
        kind, key, entry = _look_up(clip, cache, h, entries, use_face)
        if kind == "todo":
            todo.append((clip, key))
        else:
            skipped += 1

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
        _run(todo, cache, cfg, finder, workers, handle)
    finally:
        bar.close()
        save_manifest()
    return _summarise(corpus, cfg, cache, clips, entries, fold=fold, part=part, prepared=prepared,
                      skipped=skipped, invalid=invalid, h=h)


def _look_up(clip: VideoClip, cache: ClipCache, h: str, entries: dict[str, Any],
             use_face: bool) -> tuple[str, str, dict[str, Any] | None]:
    """Where one clip stands, updating `entries` as a prepare does: ("skip", key, None) cached under its manifest
    entry; ("recover", key, entry) its file written by an interrupted run that never listed it; ("todo", key, None)
    to prepare (its stale entry removed)."""
    key = clip_key(clip.source, clip.face_source if use_face else None, h)
    old = entries.get(clip.clip_id)
    if old is not None and old.get("key") == key and cache.has_valid(key):
        return "skip", key, None
    if cache.has_valid(key):  # written by an interrupted run before its manifest was saved
        entry = _entry(clip, key, cache.relpath(key), read_clip(cache.root / cache.relpath(key)))
        entries[clip.clip_id] = entry
        return "recover", key, entry
    entries.pop(clip.clip_id, None)
    return "todo", key, None


def _run(todo: list[tuple[VideoClip, str]], cache: ClipCache, cfg: PrepareConfig, finder: FaceFinder,
         workers: int, handle: Any, device: str | None = None) -> None:
    """Every clip of `todo` through `handle(clip, status, payload)`: here, or in `workers` processes."""
    if workers <= 1 or len(todo) <= 1:
        for clip, key in todo:
            handle(clip, *_process(clip, key, cache, cfg, finder))
    else:
        _run_pool(todo, cache, cfg, workers, handle, device)


def _summarise(corpus: VideoCorpus, cfg: PrepareConfig, cache: ClipCache, clips: list[VideoClip],
               entries: dict[str, Any], *, fold: str | None, part: str, prepared: int, skipped: int,
               invalid: list[dict[str, Any]], h: str) -> dict[str, Any]:
    """The run's summary, also written to CACHE/summary.json."""
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


# -- accelerate launch: the clips split across processes by rank ---------------------------------------------------
def rank_part(cache: ClipCache, rank: int, world: int) -> Path:
    """Where rank `rank` of `world` leaves what its share did, for rank 0 to merge (removed after the merge)."""
    return cache.root / f".prepare.rank{rank}-of-{world}.json"


def _prepare_ranks(state: Any, corpus: VideoCorpus, clips: list[VideoClip], cfg: PrepareConfig,
                   finder: FaceFinder, settings: dict[str, Any], h: str, cache: ClipCache,
                   entries: dict[str, Any], *, fold: str | None, part: str, drop_invalid: bool, progress: bool,
                   workers: int) -> dict[str, Any]:
    """`video prepare` under `accelerate launch`: each rank looks up and prepares a contiguous share of the clips
    (its clip files go straight into the shared, content-keyed `clips/`; its MTCNN on its own GPU where the
    detector's device is CUDA), and records what it did in a part file. Rank 0 then applies every rank's records
    to the manifest in corpus order, as one process applies them one clip after another, and writes the manifest
    and summary.json a single process writes (the same bytes). No manifest is written before then: a killed
    launch leaves the clip files, which a rerun finds (`has_valid`) and lists without preparing them again.
    Without --drop-invalid each rank stops at its first bad clip; every rank raises the first in corpus order,
    after the manifest lists what was prepared."""
    from tqdm.auto import tqdm

    rank, world = state.process_index, state.num_processes
    device = _move_finder(finder, state)
    mine_entries = dict(entries)  # every rank read the same manifest; nobody writes it before the merge
    records: list[dict[str, Any]] = []
    todo: list[tuple[VideoClip, str]] = []
    with state.split_between_processes(clips) as mine:
        for clip in mine:
            kind, key, entry = _look_up(clip, cache, h, mine_entries, cfg.streams.use_face_source)
            records.append({"clip_id": clip.clip_id, "kind": kind, "entry": entry})
            if kind == "todo":
                todo.append((clip, key))
    state.wait_for_everyone()  # every look-up sees the cache as it was, as one process's look-ups all do
    results: dict[str, dict[str, Any]] = {}
    error: str | None = None
    bar = tqdm(total=len(todo), desc=f"prepare {corpus.name} (rank 0 of {world})", unit="clip",
               disable=not progress)

    class _Stop(Exception):
        pass

    def handle(clip: VideoClip, status: str, payload: Any) -> None:
        nonlocal error
        results[clip.clip_id] = {"status": status, "payload": payload}
        bar.update(1)
        if status != "ok" and not drop_invalid:
            error = payload["error"]
            raise _Stop

    try:
        _run(todo, cache, cfg, finder, workers, handle, device)
    except _Stop:
        pass
    finally:
        bar.close()
    for r in records:
        r.update(results.get(r["clip_id"], {}))
    atomic.write_text(rank_part(cache, rank, world), json.dumps({"records": records, "error": error}))
    state.wait_for_everyone()
    parts = [json.loads(rank_part(cache, r, world).read_text(encoding="utf-8")) for r in range(world)]
    state.wait_for_everyone()  # every rank has read every part
    prepared, skipped, invalid = 0, 0, []
    recs = [r for p in parts for r in p["records"]]  # corpus order: the shares are contiguous, in rank order
    for r in recs:  # the look-ups, as one process makes them clip after clip
        if r["kind"] == "recover":
            entries[r["clip_id"]] = r["entry"]
        elif r["kind"] == "todo":
            entries.pop(r["clip_id"], None)
        skipped += r["kind"] != "todo"
    for r in recs:  # then the prepared clips, in corpus order
        if r.get("status") == "ok":
            entries[r["clip_id"]] = r["payload"]
            prepared += 1
        elif r.get("status") == "invalid" and drop_invalid:
            invalid.append({**r["payload"], "error": without_drop_advice(r["payload"]["error"])})
    first_error = next((p["error"] for p in parts if p["error"]), None)
    summary = None
    if state.is_main_process:
        cache.write_manifest(settings, h, entries, corpus=corpus.name, classes=list(corpus.classes))
        for r in range(world):
            rank_part(cache, r, world).unlink(missing_ok=True)
        if first_error is None:
            summary = _summarise(corpus, cfg, cache, clips, entries, fold=fold, part=part, prepared=prepared,
                                 skipped=skipped, invalid=invalid, h=h)
    state.wait_for_everyone()
    if first_error is not None:
        raise DataError(first_error)
    if summary is None:  # the other ranks: the summary rank 0 wrote
        summary = json.loads((cache.root / "summary.json").read_text(encoding="utf-8"))
    return {**summary, "rank": rank, "processes": world}


def _move_finder(finder: FaceFinder, state: Any) -> str | None:
    """Put a detector configured for CUDA on this rank's own GPU (cuda:LOCAL_RANK); returns that device, or None
    where the detector stays as configured (the CPU, or no GPU)."""
    from vlm_salience.rank_split import rank_device

    configured = getattr(getattr(finder, "detector_config", None), "device", None)
    if configured is None or rank_device(configured, state) == str(configured):
        return None
    device = rank_device(configured, state)
    finder.to(device)
    return device


def _run_pool(todo: list[tuple[VideoClip, str]], cache: ClipCache, cfg: PrepareConfig, workers: int,
              handle: Any, device: str | None = None) -> None:
    """Clips in worker processes, at most 2 x workers in flight; results handled in the main process."""
    workers = min(workers, os.cpu_count() or 1, len(todo))
    # "spawn": a forked child inherits the parent's OpenCV/FFmpeg thread pools mid-flight and can deadlock
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(cfg.model_dump_json(), os.getpid(), device))
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

"""The preprocessed-clip cache: face and scene frames as uint8 arrays, so training epochs never decode video again.

Layout of a cache folder (written by `prepare.prepare_corpus`):

    CACHE/manifest.json         which clip id is in which file, the preprocessing config and its hash
    CACHE/manifest.journal.jsonl  during a prepare: one line per clip prepared since manifest.json was written
                                (appended, so bookkeeping costs the same per clip at any corpus size); folded into
                                manifest.json when the run ends, and replayed by readers if it was interrupted
    CACHE/clips/ab/<key>.npz    one clip: face, scene, slots, frame_index, boxes, detected, meta
    CACHE/summary.json          what the last prepare did (clips, cached, skipped, invalid, missed detections)

The key of a clip is a hash of its source's fingerprint (path, size and mtime; the content for small files; every
file's for a frame folder) and of the preprocessing config: changing a video, or a setting that changes the frames,
gives a new key, and nothing else does. Each clip file is written to a temporary name and renamed, so a crash never
leaves a half-written clip that reads as valid; the manifest is rewritten the same way (at the start and the end of
a run), and a torn last journal line is ignored.

Reading (what a training task needs):

    cache = ClipCache("CACHE")
    clip = cache.load("clip_0007")         # PreparedClip
    rows = sample(clip, 16, train=True, rng=np.random.default_rng(0))
    faces, scenes = clip.face[rows], clip.scene[rows]     # (16, S, S, 3) uint8 each

A clip stores K candidate frames for each of its N segments (`slots[n, k]` is a row of `face`/`scene`, -1 where a
short segment has fewer distinct frames; `slots[n, 0]` is the segment's middle frame). `sample` draws one candidate
per segment at random when training (TSN sampling without decoding) and takes the middle one when evaluating.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm_salience import atomic
from vlm_salience.errors import DataError

CACHE_FORMAT = "vlm_salience.video_cache"
CACHE_VERSION = 1
SMALL_FILE = 4 << 20  # files up to this size are fingerprinted by content (survives copies and touches)


@dataclass
class PreparedClip:
    """One cached clip. Rows of `face`, `scene`, `frame_index`, `boxes` and `detected` are the distinct sampled
    frames in time order."""

    clip_id: str
    face: np.ndarray  # (F, S, S, 3) uint8
    scene: np.ndarray  # (F, S2, S2, 3) uint8
    slots: np.ndarray  # (N, K) int: row of segment n's k-th candidate; -1 = none; column 0 = the middle frame
    frame_index: np.ndarray  # (F,) int: frame number in the source clip
    boxes: np.ndarray  # (F, 4) float32: the face box (x, y, w, h) in source pixels
    detected: np.ndarray  # (F,) bool: a face was detected on this frame (False: box reused or interpolated)
    missed: int  # detection frames without a face (the box was reused from a neighbour, or the centre box)
    detect_frames: int  # frames the detector ran on
    n_source_frames: int  # frames in the source clip

    @property
    def n_segments(self) -> int:
        return int(self.slots.shape[0])

    @property
    def segment_of_frame(self) -> np.ndarray:
        """(F,) the first segment each row is a candidate of."""
        seg = np.full(len(self.frame_index), -1, dtype=np.int64)
        for n in range(self.slots.shape[0] - 1, -1, -1):
            rows = self.slots[n][self.slots[n] >= 0]
            seg[rows] = n
        return seg

    def middle_rows(self) -> np.ndarray:
        """(N,) rows of each segment's middle frame: the evaluation sample."""
        return self.slots[:, 0].astype(np.int64)


def sample(clip: PreparedClip, n_segments: int | None = None, *, train: bool,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """Rows of `clip` to read, one per segment: a random candidate per segment when training, the middle frame
    when evaluating. With `n_segments` other than the cached N, segment j reads cached segment
    floor((j + 0.5) * N / n_segments) (so fewer segments spread over the clip; more repeat frames)."""
    n = clip.n_segments if n_segments is None else int(n_segments)
    if n < 1:
        raise ValueError(f"n_segments must be >= 1, got {n}")
    src = np.floor((np.arange(n) + 0.5) * clip.n_segments / n).astype(np.int64)
    slots = clip.slots[src]
    if not train:
        return slots[:, 0].astype(np.int64)
    if rng is None:
        raise ValueError("training samples need an rng (np.random.Generator) so that runs are reproducible")
    valid = (slots >= 0).sum(axis=1)
    pick = np.floor(rng.random(n) * valid).astype(np.int64)
    return slots[np.arange(n), pick].astype(np.int64)


def fingerprint(path: str | Path | None) -> str:
    """What identifies a source's content without decoding it: path, size and mtime (content for small files);
    for a frame folder, every file's. '' for None (no face source)."""
    if path is None:
        return ""
    p = Path(path)
    h = hashlib.sha256()
    h.update(str(p.resolve()).encode())
    if p.is_dir():  # os.walk and os.stat: a quarter of rglob's time per folder (the same bytes hashed)
        files = []
        for dirpath, _, names in os.walk(p):
            rel = Path(dirpath).relative_to(p).parts
            files += [(rel + (name,), os.path.join(dirpath, name)) for name in names]
        for parts, full in sorted(files, key=lambda t: t[0]):
            try:
                st = os.stat(full)
            except OSError:  # a dangling link: not a file
                continue
            if stat.S_ISREG(st.st_mode):
                h.update(f"\0{os.path.join(*parts)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    elif p.is_file():
        st = p.stat()
        if st.st_size <= SMALL_FILE:
            h.update(f"\0content\0{st.st_size}\0".encode())
            h.update(p.read_bytes())
        else:
            h.update(f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
    else:
        h.update(b"\0missing")
    return h.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    """Hash of the preprocessing settings that change the cached frames (and of the cache format)."""
    text = json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "config": config}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def clip_key(source: str | Path, face_source: str | Path | None, cfg_hash: str) -> str:
    text = "\0".join([fingerprint(source), fingerprint(face_source), cfg_hash])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jpeg(frames: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """Each RGB frame as a JPEG, concatenated, with the F + 1 offsets that cut them apart."""
    import cv2

    bufs = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(f[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        bufs.append(buf.reshape(-1))
    offsets = np.cumsum([0] + [len(b) for b in bufs]).astype(np.int64)
    return (np.concatenate(bufs) if bufs else np.zeros(0, np.uint8)), offsets


def _unjpeg(data: np.ndarray, offsets: np.ndarray, shape: np.ndarray) -> np.ndarray:
    import cv2

    out = np.empty(tuple(int(x) for x in shape), np.uint8)
    for i in range(len(offsets) - 1):
        img = cv2.imdecode(data[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        if img is None or img.shape != out.shape[1:]:
            raise ValueError(f"frame {i} does not decode to {tuple(out.shape[1:])}")
        out[i] = img[..., ::-1]
    return out


def _arrays(clip: PreparedClip, jpeg_quality: int | None = None) -> dict[str, np.ndarray]:
    meta = {"clip_id": clip.clip_id, "missed": int(clip.missed), "detect_frames": int(clip.detect_frames),
            "n_source_frames": int(clip.n_source_frames)}
    out = {"slots": clip.slots.astype(np.int32),
           "frame_index": clip.frame_index.astype(np.int32), "boxes": clip.boxes.astype(np.float32),
           "detected": clip.detected.astype(bool), "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for name in ("face", "scene"):
        frames = getattr(clip, name)
        if jpeg_quality is None:
            out[name] = frames
        else:  # the candidates as JPEGs: a tenth of the bytes, decoded when the clip is read
            out[f"{name}_jpeg"], out[f"{name}_offsets"] = _jpeg(frames, jpeg_quality)
            out[f"{name}_shape"] = np.array(frames.shape, np.int64)
    return out


def write_clip(path: Path, clip: PreparedClip, *, compress: bool = False, jpeg_quality: int | None = None) -> Path:
    """Atomically write one clip (temp file + rename); `jpeg_quality`: face and scene frames as JPEGs."""
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **_arrays(clip, jpeg_quality))
    return atomic.write_bytes(path, buf.getvalue())


def _frames(z: Any, name: str) -> np.ndarray:
    if f"{name}_jpeg" in z.files:
        return _unjpeg(z[f"{name}_jpeg"], z[f"{name}_offsets"], z[f"{name}_shape"])
    return z[name]


def read_clip(path: Path) -> PreparedClip:
    """Read one clip file; a damaged one is a DataError that names it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            return PreparedClip(clip_id=meta["clip_id"], face=_frames(z, "face"), scene=_frames(z, "scene"),
                                slots=z["slots"],
                                frame_index=z["frame_index"], boxes=z["boxes"], detected=z["detected"],
                                missed=int(meta["missed"]), detect_frames=int(meta["detect_frames"]),
                                n_source_frames=int(meta["n_source_frames"]))
    except FileNotFoundError:
        raise DataError("cached clip file is missing.", file=path,
                        fix="run `vlm-salience video prepare` again (it re-creates missing clips).") from None
    except Exception as exc:  # zip, json or key errors: the file is not a complete clip
        raise DataError(f"cached clip file is damaged ({exc}).", file=path,
                        fix="delete it and run `vlm-salience video prepare` again.") from None


class ClipCache:
    """A cache folder: `load(clip_id)`, `ids()`, `entry(clip_id)` (label, file, counts), `config`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.journal_path = self.root / "manifest.journal.jsonl"
        self._manifest: dict[str, Any] | None = None
        self._journal: Any = None  # the open journal during a prepare

    # -- reading ------------------------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            if not self.manifest_path.is_file():
                raise DataError("no manifest.json: this folder is not a prepared clip cache.",
                                file=self.manifest_path,
                                fix="run `vlm-salience video prepare --data DATA.yaml --out FOLDER` first.")
            try:
                data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(f"manifest is not readable JSON ({exc}).", file=self.manifest_path,
                                fix="run `vlm-salience video prepare` again.") from None
            if data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
                raise DataError(f"not a clip cache of version {CACHE_VERSION} (format {data.get('format')!r}, "
                                f"version {data.get('version')!r}).", file=self.manifest_path,
                                fix="prepare the corpus again into a new folder.")
            data["clips"] = self._replay(data.get("config_hash"), dict(data.get("clips", {})))
            self._manifest = data
        return self._manifest

    def _replay(self, cfg_hash: str | None, clips: dict[str, Any]) -> dict[str, Any]:
        """`clips` with the journal of an unfinished (or running) prepare of the same config applied."""
        try:
            lines = self.journal_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return clips
        for n, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill mid-write: that clip is prepared again (its file is found)
            if n == 0:
                if rec.get("config_hash") != cfg_hash:
                    return clips
                continue
            if "entry" in rec:
                clips[rec["clip_id"]] = rec["entry"]
        return clips

    @property
    def config(self) -> dict[str, Any]:
        """The preprocessing settings the clips were made with (face_size, scene_size, n_segments, ...)."""
        return self.manifest["config"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes", []))

    def ids(self) -> list[str]:
        return list(self.manifest["clips"])

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self.manifest["clips"]

    def __len__(self) -> int:
        return len(self.manifest["clips"])

    def entry(self, clip_id: str) -> dict[str, Any]:
        try:
            return self.manifest["clips"][clip_id]
        except KeyError:
            raise DataError(f"clip '{clip_id}' is not in the cache.", file=self.manifest_path,
                            fix="prepare the corpus (or this fold) with `vlm-salience video prepare`.") from None

    def load(self, clip_id: str) -> PreparedClip:
        clip = read_clip(self.root / self.entry(clip_id)["file"])
        clip.clip_id = clip_id  # two ids may share one file (same source, same config)
        return clip

    # -- writing (prepare) --------------------------------------------------------------------------------------
    def relpath(self, key: str) -> str:
        return f"clips/{key[:2]}/{key}.npz"

    def has_valid(self, key: str) -> bool:
        """A complete clip file exists for `key` (renamed into place, so it is whole unless damaged later)."""
        path = self.root / self.relpath(key)
        if not path.is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as z:
                files = set(z.files)
                return {"slots", "meta"} <= files and all(n in files or f"{n}_jpeg" in files
                                                          for n in ("face", "scene"))
        except Exception:
            return False

    def write(self, key: str, clip: PreparedClip, *, compress: bool = False, jpeg_quality: int | None = None) -> str:
        rel = self.relpath(key)
        write_clip(self.root / rel, clip, compress=compress, jpeg_quality=jpeg_quality)
        return rel

    def read_existing_entries(self, cfg_hash: str) -> dict[str, Any]:
        """Manifest entries of an earlier prepare with the same config (kept when one fold is added later),
        with the journal of an interrupted one replayed."""
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if data.get("format") != CACHE_FORMAT or data.get("config_hash") != cfg_hash:
            return {}
        return self._replay(cfg_hash, dict(data.get("clips", {})))

    def write_manifest(self, config: dict[str, Any], cfg_hash: str, clips: dict[str, Any], *,
                       corpus: str = "", classes: list[str] | None = None) -> None:
        """The whole manifest, atomically; the journal it absorbs is removed (after the rename)."""
        data = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "corpus": corpus, "classes": classes or [],
                "config_hash": cfg_hash, "config": config, "clips": dict(clips)}
        atomic.write_text(self.manifest_path, json.dumps(data, separators=(",", ":")))
        self.close_journal()
        self.journal_path.unlink(missing_ok=True)
        self._manifest = data

    def begin(self, config: dict[str, Any], cfg_hash: str, clips: dict[str, Any], *, corpus: str = "",
              classes: list[str] | None = None) -> None:
        """Start a prepare: the manifest as it stands, then an empty journal that `append` adds clips to."""
        self.write_manifest(config, cfg_hash, clips, corpus=corpus, classes=classes)
        self._journal = open(self.journal_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by end/close
        self._journal.write(json.dumps({"config_hash": cfg_hash}) + "\n")
        self._journal.flush()

    def append(self, clip_id: str, entry: dict[str, Any]) -> None:
        """Record one prepared clip: one line, flushed (constant time whatever the corpus size)."""
        self._journal.write(json.dumps({"clip_id": clip_id, "entry": entry}, separators=(",", ":")) + "\n")
        self._journal.flush()
        if self._manifest is not None:
            self._manifest["clips"][clip_id] = entry

    def close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

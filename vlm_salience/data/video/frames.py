"""Reading clips: a video file (decoded with PyAV) or a folder of frame images, as uint8 RGB arrays.

`read_frames` decodes only what the sampled indices need: images are opened one by one by index; a video is
decoded forward, frames that are not wanted are never converted to RGB, decoding stops after the last wanted
index, and a wide gap between wanted indices is crossed by seeking to the keyframe before the next one (when the
stream has timestamps). Decoding problems surface here, as DataErrors that name the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlm_salience.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
SEEK_GAP = 48  # frames: a wider gap between wanted frames is crossed by a seek rather than by decoding
# Containers whose timestamps give the frame index (AVI's do not, with B-frames): others decode sequentially.
TIMED_CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
# A video whose stream ends before this share of the frames its header promises is damaged (cut off, say), not a
# clip to pad with its last frame: a header a frame or two long is common, half a clip missing is not.
MIN_DECODED_SHARE = 0.9

_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort '2.jpg' before '10.jpg' (DFEW's 16-frame folders are not zero-padded)."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in _NUM.split(name))


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder, in frame order."""
    if not folder.is_dir():
        raise DataError("frame folder not found.", file=folder, fix="check the corpus root and its clip folders.")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def _open(path: Path):
    import av

    if not path.is_file():
        raise DataError("video file not found.", file=path, fix="check the corpus root and its clip files.")
    if path.stat().st_size == 0:
        raise DataError("the video file is empty (0 bytes).", file=path, fix="re-extract or re-download the clip.")
    try:
        container = av.open(str(path))
    except av.error.EOFError:
        raise DataError("the video holds no frames (the file ends before the first one).", file=path,
                        fix="re-extract or re-download the clip, or pass --drop-invalid.") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise DataError(f"not a readable video ({exc}).", file=path,
                        fix="re-extract or re-download the clip, or pass --drop-invalid.") from None
    if not container.streams.video:
        container.close()
        raise DataError("the file has no video stream.", file=path, fix="point the clip at a video file.")
    return container


def open_video(path: str | Path):
    """A PyAV container with at least one video stream; a missing, empty, frameless or unreadable file is a
    DataError naming it. The caller closes it."""
    return _open(Path(path))


def count_frames(source: Path) -> int:
    """The number of frames of a clip; a clip with no frames is a DataError naming it."""
    source = Path(source)
    if source.is_dir():
        n = len(frame_files(source))
        if n == 0:
            raise DataError(f"the frame folder holds no images ({'/'.join(IMAGE_EXTS)}).", file=source,
                            fix="extract the clip's frames into it, or pass --drop-invalid.")
        return n
    if not source.exists():
        raise DataError("clip not found (neither a video file nor a frame folder).", file=source,
                        fix="check the corpus root and the clip's name.")
    container = _open(source)
    try:
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n <= 0:  # no count in the header: count the packets (no decoding)
            n = sum(1 for p in container.demux(stream) if p.size)
    except Exception as exc:  # noqa: BLE001 - any demux failure is this file's problem
        raise DataError(f"the video cannot be read ({exc}).", file=source,
                        fix="re-extract or re-download the clip, or pass --drop-invalid.") from None
    finally:
        container.close()
    if n == 0:
        raise DataError("the video has no frames.", file=source, fix="re-extract the clip, or pass --drop-invalid.")
    return n


def verify_frames(source: Path) -> int:
    """Open every image of a frame folder and decode it (JPEGs at 1/8 scale: the whole file is read, at a
    fraction of the cost), so a damaged or foreign file is found before a long run (`data check --decode`).
    Returns the frame count; DataError naming the bad file."""
    source = Path(source)
    files = frame_files(source)
    if not files:
        raise DataError(f"the frame folder holds no images ({'/'.join(IMAGE_EXTS)}).", file=source,
                        fix="extract the clip's frames into it, or pass --drop-invalid.")
    for path in files:
        try:
            with Image.open(path) as img:
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"unreadable image ({exc}).", file=path,
                            fix="re-extract the frame, or pass --drop-invalid.") from None
    return len(files)


def _rgb(img: Image.Image, path: Path, size: tuple[int, int] | None) -> np.ndarray:
    img = img.convert("RGB")
    if size is not None and img.size != size:
        img = img.resize(size, Image.BILINEAR)  # odd frame of another size: match the clip's first frame
    return np.asarray(img, dtype=np.uint8)


def _read_images(folder: Path, indices: np.ndarray) -> np.ndarray:
    files = frame_files(folder)
    if not files:
        raise DataError("the frame folder holds no images.", file=folder, fix="extract the clip's frames into it.")
    cache: dict[int, np.ndarray] = {}
    size = None
    for i in indices:
        i = int(min(i, len(files) - 1))
        if i in cache:
            continue
        path = files[i]
        try:
            with Image.open(path) as img:
                arr = _rgb(img, path, size)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"unreadable image ({exc}).", file=path,
                            fix="re-extract the frame, or pass --drop-invalid.") from None
        size = size or (arr.shape[1], arr.shape[0])
        cache[i] = arr
    return np.stack([cache[int(min(i, len(files) - 1))] for i in indices])


def _read_video(path: Path, indices: np.ndarray) -> np.ndarray:
    import av

    wanted = sorted({int(i) for i in indices})
    got: dict[int, np.ndarray] = {}
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate, tb = stream.average_rate or stream.guessed_rate, stream.time_base
        start_pts = stream.start_time or 0
        # Frame index from timestamps, and so seeking, only where the container's timestamps are trustworthy.
        timed = rate is not None and tb is not None and path.suffix.lower() in TIMED_CONTAINERS
        decoder = container.decode(stream)
        k, count, seeked_for, last = 0, 0, -1, None
        while k < len(wanted):
            if timed and seeked_for != wanted[k] and wanted[k] - count > SEEK_GAP:
                seeked_for = wanted[k]
                container.seek(int(start_pts + wanted[k] / (rate * tb)), stream=stream, backward=True)
                decoder = container.decode(stream)
            try:
                frame = next(decoder)
            except StopIteration:
                break
            last = frame
            idx = count
            if timed and frame.pts is not None:
                idx = int(round(float((frame.pts - start_pts) * tb * rate)))
            count = idx + 1
            if idx < wanted[k]:
                continue  # not wanted: never converted to RGB
            arr = frame.to_ndarray(format="rgb24")
            while k < len(wanted) and wanted[k] <= idx:  # a frame the stream skipped gets the next one shown
                got[wanted[k]] = arr
                k += 1
        if k < len(wanted) and last is not None:
            _check_decoded(path, count, int(stream.frames or 0))
            # The header promised a few more frames than the stream holds: the tail repeats its last frame.
            arr = last.to_ndarray(format="rgb24")
            for i in wanted[k:]:
                got[i] = arr
    except av.error.FFmpegError as exc:
        raise DataError(f"the video cannot be decoded ({exc}).", file=path,
                        fix="re-extract or re-download the clip, or pass --drop-invalid.") from None
    finally:
        container.close()
    if not got:
        raise DataError("no frame could be decoded.", file=path, fix="re-extract the clip, or pass --drop-invalid.")
    return np.stack([got[int(i)] for i in indices])


def _check_decoded(path: Path, decoded: int, promised: int) -> None:
    """A stream that ended far short of its header's frame count is a damaged clip: a DataError naming it."""
    if promised > 0 and decoded < MIN_DECODED_SHARE * promised:
        raise DataError(f"the video decodes only {decoded} of the {promised} frames its header promises (the "
                        "file is cut off or damaged).", file=path,
                        fix="re-extract or re-download the clip, or pass --drop-invalid.")


def check_decodes(source: Path) -> int:
    """Decode every frame of a video file (never converted to RGB) and return how many decoded; a stream that
    fails to decode, or ends far short of its header's count, is a DataError naming the file. Frame folders:
    every image decoded (`verify_frames`)."""
    import av

    source = Path(source)
    if source.is_dir():
        return verify_frames(source)
    if not source.exists():
        return count_frames(source)
    container = _open(source)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = sum(1 for _ in container.decode(stream))
        promised = int(stream.frames or 0)
    except av.error.FFmpegError as exc:
        raise DataError(f"the video cannot be decoded ({exc}).", file=source,
                        fix="re-extract or re-download the clip, or pass --drop-invalid.") from None
    finally:
        container.close()
    if decoded == 0:
        raise DataError("no frame could be decoded.", file=source, fix="re-extract the clip, or pass --drop-invalid.")
    _check_decoded(source, decoded, promised)
    return decoded


def read_frames(source: Path, indices: Sequence[int]) -> np.ndarray:
    """Frames `indices` of a clip as a (T, H, W, 3) uint8 RGB array, in the order given (repeats allowed)."""
    source = Path(source)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("read_frames needs at least one index")
    if (idx < 0).any():
        raise ValueError(f"frame indices must be >= 0, got {idx.min()}")
    if source.is_dir():
        return _read_images(source, idx)
    if not source.exists():
        raise DataError("clip not found (neither a video file nor a frame folder).", file=source,
                        fix="check the corpus root and the clip's name.")
    return _read_video(source, idx)


def clip_fingerprint(source: Path) -> str:
    """A cheap hash of what a clip is made of (names, sizes, modification times), for caches keyed by clip."""
    source = Path(source)
    h = hashlib.sha256(str(source.resolve()).encode())
    paths = frame_files(source) if source.is_dir() else [source]
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]

"""`face video`: per frame and identity, the face box, five landmarks, head pose (yaw, roll), the expression
classifier's probabilities and expressivity, as one table per video in py-feat's `Fex`-like wide shape.

Streamed, so that an hour-long video costs the memory of one batch and the same time per frame at its end as at
its start: frames are decoded one by one with PyAV (only every `every`-th is converted to RGB), `batch` of them go
to the detector at once, each face is followed by one identity (models/faces/identities.py: the tracker keeps only
its live tracks), and every batch's rows are appended to `<stem>.csv.part` with one write and fsync.

Resumable: after each batch a progress record (`<stem>.progress.json`: the next frame, the part file's length, the
tracker's live tracks, the settings' digest) is written atomically. A rerun cuts the part file back to the recorded
length (rows written after the last record are dropped), restores the tracker, skips the frames already done and
goes on, so its table is the one an uninterrupted run writes. When the video ends, the part file is renamed to
`<stem>.csv` (atomic) and, where pyarrow is installed, converted to `<stem>.parquet` in bounded memory.

Bad input never stops a run of several videos: a missing, empty, frameless or unreadable file gets a table with one
`status=error` row naming the file and the reason; a video that breaks off mid-stream, or decodes far fewer frames
than its header promises (truncated), keeps the rows of the frames that decoded and ends with such an error row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlm_salience.atomic import write_text
from vlm_salience.errors import ConfigError, DataError

LANDMARKS = 5
STATUS = ("ok", "no_face", "error")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}
MIN_DECODED_SHARE = 0.9  # as data/video/frames.py: a stream ending before this share of its header's frames is cut


def fex_columns(classes: Sequence[str]) -> list[str]:
    """The table's columns: py-feat's Fex names for the face (FaceRect*, FaceScore, x_i/y_i landmarks, Yaw, Roll),
    one column per expression class (the classifier's own names), expressivity, and the run's bookkeeping."""
    return ["input", "frame", "time_s", "status", "identity", "FaceRectX", "FaceRectY", "FaceRectWidth",
            "FaceRectHeight", "FaceScore", *[f"x_{i}" for i in range(LANDMARKS)],
            *[f"y_{i}" for i in range(LANDMARKS)], "Yaw", "Roll", *classes, "expressivity", "error"]


@dataclass(frozen=True)
class VideoSettings:
    """What the rows depend on (a resumed part file must have been written with the same)."""

    every: int = 1  # analyse every n-th frame (1: all)
    batch: int = 16  # frames per detector call and per appended chunk
    expressivity: str = "not_neutral"
    max_gap: int = 10  # frames (analysed ones) an identity survives without its face

    def __post_init__(self) -> None:
        if self.every < 1 or self.batch < 1 or self.max_gap < 0:
            raise ConfigError(f"face video: every ({self.every}) and batch ({self.batch}) must be >= 1 and max_gap "
                              f"({self.max_gap}) >= 0.")


# ---------------------------------------------------------------------------------------------- decoding


class FrameReader:
    """Frames of one video, decoded in order: `frames(start)` yields (index, time in s, RGB array) for every
    `every`-th frame from `start`; `decoded` and `promised` (the header's count, 0 if none) say afterwards whether
    the stream was complete."""

    def __init__(self, path: Path, every: int = 1) -> None:
        from vlm_salience.data.video.frames import open_video

        self.path, self.every = path, every
        self.container = open_video(path)
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.stream = stream
        self.promised = int(stream.frames or 0)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.decoded = 0

    def frames(self, start: int = 0) -> Iterator[tuple[int, float, np.ndarray]]:
        for i, frame in enumerate(self.container.decode(self.stream)):
            self.decoded = i + 1
            if i < start or i % self.every:
                continue  # never converted to RGB
            t = float(frame.time) if frame.time is not None else (i / self.fps if self.fps else float("nan"))
            yield i, t, frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        self.container.close()


# ---------------------------------------------------------------------------------------------- rows


def _fmt(v) -> object:
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{float(v):.6g}"
    return v


def csv_text(rows: Sequence[Sequence], header: Sequence[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    return buf.getvalue()


def error_row(path: Path, n_columns: int, reason: str, frame: int | float = float("nan")) -> list:
    """A row with status=error naming the file and the reason (the empty face fields left blank)."""
    row: list = [float("nan")] * n_columns
    named = reason if reason.startswith(str(path)) else f"{path}: {reason}"
    row[0], row[1], row[3], row[-1] = str(path), frame, "error", named
    return row


def frame_rows(analyzer, tracker, path: Path, batch: list[tuple[int, float, np.ndarray]]) -> list[list]:
    """The rows of a batch of frames: one per (frame, identity), or one `no_face` row for a frame without."""
    from vlm_salience.models.faces.alignment import head_pose

    images = [im for _, _, im in batch]
    found = analyzer.detector.detect_batch(images)
    tracked = [tracker.update(faces) for faces in found]
    crops = [analyzer.crop(im, f) for im, faces in zip(images, tracked) for _, f in faces]
    probs = analyzer.classifier.predict(crops)
    expr = analyzer.scores(probs)
    C = len(analyzer.classifier.classes)
    nan_face = [float("nan")] * (5 + 2 * LANDMARKS + 2 + C + 1)
    rows, k = [], 0
    for (i, t, _), faces in zip(batch, tracked):
        if not faces:
            rows.append([str(path), i, t, "no_face", -1, *nan_face, ""])
        for j in sorted(range(len(faces)), key=lambda n: faces[n][0]):  # identities in order; crops in `faces` order
            tid, f = faces[j]
            if f.landmarks is not None:
                pts = f.points
                marks = [*pts[:, 0].tolist(), *pts[:, 1].tolist(), *head_pose(pts)]
            else:
                marks = [float("nan")] * (2 * LANDMARKS + 2)
            rows.append([str(path), i, t, "ok", tid, f.x, f.y, f.w, f.h, float(f.score), *marks, *probs[k + j],
                         float(expr[k + j]), ""])
        k += len(faces)
    return rows


# ---------------------------------------------------------------------------------------------- files


def output_paths(videos: Sequence[Path], out_dir: Path) -> dict[Path, Path]:
    """Each video's CSV in `out_dir`: `<stem>.csv`, or `<stem>-<hash of its path>.csv` where stems collide."""
    stems: dict[str, int] = {}
    for v in videos:
        stems[v.stem] = stems.get(v.stem, 0) + 1
    out = {}
    for v in videos:
        name = v.stem if stems[v.stem] == 1 else f"{v.stem}-{hashlib.sha256(str(v.resolve()).encode()).hexdigest()[:8]}"
        out[v] = out_dir / f"{name}.csv"
    return out


def collect_videos(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix: a bad one becomes an error row), and video files under folders."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        else:
            out.append(p)  # a missing file is reported in its own error row
    return list(dict.fromkeys(out))


def _part(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".part")


def _progress(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.stem + ".progress.json")


def _append(path: Path, text: str) -> int:
    """Append with one write and fsync; the file's new length."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def _source_id(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_progress(path: Path, record: dict) -> None:
    write_text(path, json.dumps(record) + "\n")


def _last_status(csv_path: Path) -> str | None:
    """The status field of a finished table's last row (read from its end: the table may be long)."""
    with open(csv_path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 65536))
        tail = fh.read().decode("utf-8", "replace").rstrip("\n").rsplit("\n", 1)[-1]
    fields = next(csv.reader([tail]), [])
    return fields[3] if len(fields) > 3 else None


# ---------------------------------------------------------------------------------------------- one video


def analyze_video(path: Path, out_csv: Path, analyzer, settings: VideoSettings, *, resume: bool = True,
                  progress: bool = True, on_chunk: Callable[[dict], None] | None = None) -> dict:
    """Stream one video into `out_csv` (see the module's docstring); return its summary."""
    from tqdm.auto import tqdm

    from vlm_salience.models.faces.identities import FaceTracker

    header = fex_columns(analyzer.classifier.classes)
    part, prog = _part(out_csv), _progress(out_csv)
    kept = {k: v for k, v in settings.__dict__.items() if k != "batch"}  # batching changes no row
    digest = hashlib.sha256(json.dumps({"settings": kept, "detector": _describe(analyzer.detector),
                                        "model": analyzer.classifier.name, "columns": header}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    if not resume:
        for p in (part, prog):
            p.unlink(missing_ok=True)
    tracker = FaceTracker(max_gap=settings.max_gap, keep_ended=False)
    start, resumed_from = 0, None
    try:
        reader = FrameReader(path, settings.every)
    except DataError as exc:
        from vlm_salience.errors import without_drop_advice

        return _finish_error(path, out_csv, header, without_drop_advice(str(exc)), part, prog)
    try:
        source = _source_id(path)
        if prog.is_file() and part.is_file():
            rec = json.loads(prog.read_text(encoding="utf-8"))
            if rec.get("digest") != digest or rec.get("source") != source:
                what = "settings" if rec.get("digest") != digest else "video file"
                raise ConfigError(f"{part}: a previous run with other {what} is half done here. Fix: pass --fresh to "
                                  "start this video again, or write into another --out folder.")
            with open(part, "r+b") as fh:  # rows appended after the last progress record are dropped
                fh.truncate(int(rec["part_bytes"]))
            tracker.restore(rec["tracker"])
            start = resumed_from = int(rec["next_frame"])
        else:
            write_text(part, csv_text([], header))
        total = (reader.promised + settings.every - 1) // settings.every if reader.promised else None
        bar = tqdm(total=total, initial=(start + settings.every - 1) // settings.every, desc=path.name,
                   unit="frame", disable=not progress)
        batch: list[tuple[int, float, np.ndarray]] = []
        failure: str | None = None
        frames = reader.frames(start)
        try:
            while True:
                try:
                    item = next(frames, None)
                except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's problem
                    failure = (f"decoding failed after {reader.decoded} frame(s) ({type(exc).__name__}: {exc}): the "
                               "file is cut off or damaged; the rows of the frames that decoded are kept")
                    item = None
                if item is not None:
                    batch.append(item)
                if batch and (item is None or len(batch) >= settings.batch):
                    rows = frame_rows(analyzer, tracker, path, batch)
                    size = _append(part, csv_text(rows))
                    nxt = batch[-1][0] + 1
                    write_progress(prog, {"digest": digest, "source": source, "next_frame": nxt,
                                          "part_bytes": size, "tracker": tracker.state()})
                    bar.update(len(batch))
                    if on_chunk is not None:
                        on_chunk({"next_frame": nxt, "frames": len(batch), "time_s": batch[-1][1]})
                    batch = []
                if item is None:
                    break
        finally:
            bar.close()
        n_total = max(reader.decoded, start)
        if failure is None and n_total == 0:
            failure = "the video holds no frames"
        elif failure is None and reader.promised and n_total < MIN_DECODED_SHARE * reader.promised:
            failure = (f"the video decodes only {n_total} of the {reader.promised} frames its header promises (the "
                       "file is cut off or damaged); the rows of the frames that decoded are kept")
        if failure is not None:
            _append(part, csv_text([error_row(path, len(header), failure, n_total)]))
    finally:
        reader.close()
    os.replace(part, out_csv)
    prog.unlink(missing_ok=True)
    summary = summarise_table(out_csv)
    summary["resumed_from_frame"] = resumed_from
    summary["parquet"] = to_parquet(out_csv, header)
    return summary


def _describe(detector) -> dict:
    cfg = getattr(detector, "cfg", None)
    return cfg.model_dump(mode="json") if cfg is not None and hasattr(cfg, "model_dump") else {"name": detector.name}


def _finish_error(path: Path, out_csv: Path, header: list[str], reason: str, part: Path, prog: Path) -> dict:
    write_text(out_csv, csv_text([error_row(path, len(header), reason)], header))
    part.unlink(missing_ok=True)
    prog.unlink(missing_ok=True)
    summary = summarise_table(out_csv)
    summary.update({"resumed_from_frame": None, "parquet": None})
    return summary


def summarise_table(out_csv: Path) -> dict:
    """Counts over one video's table, read row by row (constant memory): frames, face rows, frames without a face,
    identities, gaps (an identity missing for some analysed frames and back), and the error, if any."""
    faces, no_face, gaps, error = 0, 0, 0, None
    last: dict[str, int] = {}
    step: int | None = None  # frames between analysed frames (the smallest step seen)
    prev: int | None = None
    with open(out_csv, encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["status"] == "error":
                error = r["error"]
                continue
            f = int(r["frame"])
            if prev is not None and f != prev:
                step = f - prev if step is None else min(step, f - prev)
            prev = f
            if r["status"] == "no_face":
                no_face += 1
                continue
            faces += 1
            tid = r["identity"]
            if tid in last and step is not None and f - last[tid] > step:
                gaps += 1
            last[tid] = f
    return {"video": str(out_csv), "face_rows": faces, "no_face_frames": no_face, "identities": len(last),
            "gaps": gaps, "status": "error" if error else "ok", "error": error}


def to_parquet(out_csv: Path, header: list[str]) -> str | None:
    """`<stem>.parquet` beside the CSV, converted block by block (bounded memory), atomically; None without
    pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        return None
    types = {c: pa.float64() for c in header}
    types.update({"input": pa.string(), "status": pa.string(), "error": pa.string(), "frame": pa.int64(),
                  "identity": pa.int64()})
    target = out_csv.with_suffix(".parquet")
    tmp = target.with_name(f".{target.name}.tmp")
    reader = pacsv.open_csv(out_csv, convert_options=pacsv.ConvertOptions(
        column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False))
    try:
        with pq.ParquetWriter(tmp, reader.schema) as w:
            for block in reader:
                w.write_batch(block)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return str(target)


# ---------------------------------------------------------------------------------------------- several videos


def warm_up(analyzer) -> None:
    """Build the models' kernels for every batch size they will see before the first frame (the detector's
    `warm_up`, where it has one; the classifier at each padded batch size), so that the first minute of a video
    costs the memory and time per frame of the last."""
    if hasattr(analyzer.detector, "warm_up"):
        analyzer.detector.warm_up()
    from vlm_salience.models.faces.expression import bucket

    cls = analyzer.classifier
    cap = getattr(cls, "batch_size", 1)
    for n in sorted({bucket(k, cap) for k in range(1, cap + 1)}):
        cls.predict([np.zeros((64, 64, 3), np.uint8)] * n)



def face_video(inputs: Sequence[str | Path], out_dir: str | Path, detector_cfg: str | Path | None = "mtcnn",
               model_cfg: str | Path | None = None, settings: VideoSettings | None = None, *, fresh: bool = False,
               progress: bool = True, analyzer=None, on_chunk: Callable[[dict], None] | None = None) -> dict:
    """Every video of `inputs` into `out_dir` (one table each; finished ones are skipped unless `fresh`); the
    summary of all is written to `out_dir/face_video.summary.json` and returned."""
    from vlm_salience.face_scoring import sole_writer
    from vlm_salience.models.faces.analyzer import FaceAnalyzer

    settings = settings or VideoSettings()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; face video writes one table per video into a folder. Fix: "
                          "pass a folder path.")
    videos = collect_videos(inputs)
    if not videos:
        raise ConfigError(f"face video: no video files under {list(map(str, inputs))} "
                          f"({', '.join(sorted(VIDEO_SUFFIXES))}). Fix: pass video files or folders holding them.")
    out_dir.mkdir(parents=True, exist_ok=True)
    analyzer = analyzer or FaceAnalyzer.from_configs(detector_cfg, model_cfg, settings.expressivity)
    warm_up(analyzer)
    def run(items: list[tuple[Path, Path]], rank: int | None = None) -> list[dict]:
        results = []
        lock = out_dir / (".face_video" if rank is None else f".face_video.rank{rank}")
        with sole_writer(lock, what="face video"):
            for video, out_csv in items:
                results.append(_one(video, out_csv, analyzer, settings, fresh, progress, on_chunk))
        return results

    from vlm_salience.face_ranks import split_results, world_size

    items = list(output_paths(videos, out_dir).items())
    if world_size() > 1:  # under accelerate launch: each rank its share of the videos (face_ranks.py)
        results = split_results(items, out_dir, run)
        if results is None:
            return {"out": str(out_dir), "rank_only": True}
    else:
        results = run(items)
    summary = {"out": str(out_dir), "detector": analyzer.detector.name, "model": analyzer.classifier.name,
               "videos": len(results), "errors": sum(r["status"] == "error" for r in results),
               "face_rows": sum(r["face_rows"] for r in results), "per_video": results}
    write_text(out_dir / "face_video.summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _one(video: Path, out_csv: Path, analyzer, settings: VideoSettings, fresh: bool, progress: bool,
         on_chunk) -> dict:
    """One video's table (skipped where finished) and its summary."""
    if not fresh and out_csv.is_file() and not _progress(out_csv).exists() and _last_status(out_csv) != "error":
        s = summarise_table(out_csv)
        parquet = out_csv.with_suffix(".parquet")
        s.update({"skipped": True, "parquet": str(parquet) if parquet.is_file() else None})
    else:
        s = analyze_video(video, out_csv, analyzer, settings, resume=not fresh, progress=progress, on_chunk=on_chunk)
        s["skipped"] = False
    s["input"] = str(video)
    return s


def summary_text(summary: dict) -> str:
    if summary.get("rank_only"):
        return f"this rank's videos done -> {summary['out']} (rank 0 writes the summary)"
    return (f"{summary['videos']} videos ({summary['errors']} with errors): {summary['face_rows']} face rows, "
            f"{sum(r['identities'] for r in summary['per_video'])} identities -> {summary['out']}")


# ---------------------------------------------------------------------------------------------- command line


def add_cli(fsub, make_parser: Callable, json_flag: Callable, emit_json: Callable) -> None:
    """`vlm-salience face video`: the sub-command, wired by cli/face.py with its own parser helpers."""
    fv = make_parser(fsub, "video", help="per frame and identity: face box, 5 landmarks, yaw/roll, expression "
                     "probabilities and expressivity, one CSV (and Parquet) per video (streamed, resumable)",
                     example="vlm-salience face video clips/interview.mp4 --out runs/face_video")
    fv.add_argument("videos", nargs="+", metavar="VIDEO_OR_DIR", help="video files, or folders searched for videos")
    fv.add_argument("--out", required=True, help="folder for <video>.csv, <video>.parquet and the summary")
    fv.add_argument("--detector", default="mtcnn",
                    help="face detector: mtcnn (default: landmarks and pose), haar, or a detector YAML")
    fv.add_argument("--model", help="expression classifier YAML (default: configs/models/face_fer_torch.yaml)")
    fv.add_argument("--every", type=int, default=1, help="analyse every n-th frame (default 1: all)")
    fv.add_argument("--batch", type=int, default=16, help="frames per detector call and per written chunk")
    fv.add_argument("--max-gap", type=int, default=10,
                    help="analysed frames an identity survives without its face before it ends (default 10)")
    fv.add_argument("--expressivity", default="not_neutral",
                    choices=["not_neutral", "js_from_neutral", "kl_from_neutral"],
                    help="expressivity from the probabilities (default not_neutral: 1 - P(neutral))")
    fv.add_argument("--fresh", action="store_true", help="start every video again instead of resuming")
    json_flag(fv, "the summary")
    fv.set_defaults(func=lambda args: _cmd(args, emit_json))


def _cmd(args, emit_json: Callable) -> int:
    settings = VideoSettings(every=args.every, batch=args.batch, expressivity=args.expressivity,
                             max_gap=args.max_gap)
    summary = face_video(args.videos, args.out, detector_cfg=args.detector, model_cfg=args.model,
                         settings=settings, fresh=args.fresh, progress=not getattr(args, "quiet", False))
    print(summary_text(summary))
    emit_json(args.json, summary)
    return 0

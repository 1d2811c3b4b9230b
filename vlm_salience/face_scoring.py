"""`face score`: one CSV row per image with its largest face's box, the classifier's probabilities and expressivity.

Long runs resume: rows already in the CSV (faces found or not) are kept and their images skipped; rows that
recorded an error are retried. One writer at a time: a run holds a lock file beside the CSV (`<csv>.lock`, released
by the OS when the process ends), and a second run on the same CSV is refused instead of appending every row twice. Each chunk of rows is appended with one write and fsync, so an interruption loses at
most the chunk in flight, and a half-written last line (no newline) is dropped on resume. A file that cannot be
read as an image gets a row with status `error` and the reason (naming the file), instead of stopping the run;
`strict=True` stops at the first one, after what was already scored is on disk.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vlm_salience.atomic import write_text
from vlm_salience.errors import ConfigError, DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
STATUS = ("ok", "no_face", "error")


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix), and image files (by suffix) anywhere under given folders, sorted."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise DataError("no such file or folder.", file=p, fix="pass existing image files or folders.")
    return list(dict.fromkeys(out))


def columns(classes: Sequence[str]) -> list[str]:
    """The CSV's columns: the box, the probabilities, expressivity, the five landmarks and the head pose (yaw, roll
    in degrees; empty for a detector without landmarks, such as Haar), and the error of an unreadable image."""
    from vlm_salience.models.faces.analyzer import LANDMARK_COLUMNS

    return ["path", "status", "x", "y", "w", "h", "score", *[f"p_{c}" for c in classes], "expressivity",
            *LANDMARK_COLUMNS, "error"]


def _read_existing(out: Path, header: list[str]) -> list[dict[str, str]]:
    """Rows of a previous run's CSV, the last line dropped if it was cut off; error rows dropped (retried)."""
    text = out.read_text(encoding="utf-8")
    if not text.strip():
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text))
    found = next(reader, None)
    if found != header:
        raise DataError(f"has columns {found}, but this model writes {header}.", file=out, row=1,
                        fix="score into another --out file, or pass --fresh to start it again.")
    rows = []
    for line_no, r in enumerate(reader, start=2):
        if len(r) != len(header):
            raise DataError(f"has {len(r)} fields, expected {len(header)}.", file=out, row=line_no,
                            fix="repair or remove the line, or pass --fresh.")
        row = dict(zip(header, r))
        if row["status"] not in STATUS:
            raise DataError(f"unknown status '{row['status']}' (expected one of {list(STATUS)}).", file=out,
                            row=line_no, column="status", fix="repair the line, or pass --fresh.")
        if row["status"] != "error":
            rows.append(row)
    return list({r["path"]: r for r in rows}.values())  # one row per image: a later row wins over an earlier one


def _csv_text(rows: Iterable[Sequence], header: list[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    for r in rows:
        w.writerow(["" if (isinstance(v, float) and np.isnan(v)) else (f"{v:.6g}" if isinstance(v, float) else v)
                    for v in r])
    return buf.getvalue()


def _append(out: Path, text: str) -> None:
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def score_faces(inputs: Sequence[str | Path], out_csv: str | Path, model_cfg: str | Path | None = None,
                detector_cfg: str | Path | None = None, progress: bool = True, resume: bool = True,
                expressivity: str = "not_neutral", chunk: int = 64, strict: bool = False) -> dict:
    """Score every image under `inputs` into `out_csv`; return (and write beside it as .summary.json) the counts."""
    from vlm_salience.models.faces.analyzer import FaceAnalyzer
    from vlm_salience.models.faces.detector import read_image

    out = Path(out_csv)
    images = collect_images(inputs)
    analyzer = FaceAnalyzer.from_configs(detector_cfg, model_cfg, expressivity)

    def score(todo: list[Path], target: Path) -> dict:
        with sole_writer(target):
            return _score_faces(todo, target, analyzer, read_image, progress=progress, resume=resume, chunk=chunk,
                                strict=strict)

    from vlm_salience.face_ranks import score_split, world_size

    if world_size() > 1:  # under accelerate launch: each rank its share, rank 0 merges (face_ranks.py)
        header = columns(analyzer.classifier.classes)
        return score_split(images, out, score, lambda o: summarise(o, header))
    return score(images, out)


@contextmanager
def sole_writer(out: Path, what: str = "face score") -> Iterator[None]:
    """Hold `<out>.lock` while writing: two runs appending to one CSV would write every row twice."""
    from filelock import FileLock, Timeout

    parent = out.resolve().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not a folder you can write to. Fix: pass a CSV path in a "
                          "folder you can write to.")
    lock = FileLock(str(out) + ".lock")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"--out {out}: another `{what}` is writing this CSV (it holds {lock.lock_file}). "
                          "Fix: wait for it to finish, or write into another --out.") from None
    except OSError as exc:  # permissions the access check cannot see (ACLs, read-only mounts)
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc}). Fix: pass a CSV path in a "
                          "folder you can write to.") from None
    try:
        yield
    finally:
        lock.release()


def _score_faces(images: list[Path], out: Path, analyzer, read_image, *, progress: bool, resume: bool, chunk: int,
                 strict: bool) -> dict:
    from tqdm.auto import tqdm

    header = columns(analyzer.classifier.classes)
    if resume and out.is_file():
        _check_same_models(out, analyzer)
    kept = _read_existing(out, header) if resume and out.is_file() else []
    write_text(out, _csv_text([[r[c] for c in header] for r in kept], header))  # atomic: old rows, error rows out
    done = {r["path"] for r in kept}
    todo = [p for p in images if str(p) not in done]
    empty = [np.nan] * (len(header) - 3)  # all but path, status and error
    scored = 0
    bar = tqdm(total=len(todo), desc="face score", unit="img", disable=not progress)
    try:
        for start in range(0, len(todo), chunk):
            paths = todo[start:start + chunk]
            arrays, ok_paths, rows = [], [], {}
            first_error = None
            for p in paths:
                try:
                    arrays.append(read_image(p))
                    ok_paths.append(p)
                except DataError as exc:
                    rows[p] = [str(p), "error", *empty, str(exc)]
                    first_error = first_error or exc
            if arrays:
                table = analyzer.analyze(arrays, [str(p) for p in ok_paths], landmarks=True)
                for p, rec in zip(ok_paths, table.itertuples(index=False)):
                    rec = list(rec)
                    status = "ok" if rec[1] >= 0 else "no_face"
                    values = [int(v) if i < 4 and status == "ok" else float(v) for i, v in enumerate(rec[2:])]
                    rows[p] = [str(p), status, *values, ""]
            _append(out, _csv_text(rows[p] for p in paths))
            scored += len(paths)
            bar.update(len(paths))
            if strict and first_error is not None:
                raise first_error
    finally:
        bar.close()
    summary = summarise(out, header)
    summary.update({"out": str(out), "model": analyzer.classifier.name, "detector": analyzer.detector.name,
                    "inputs": len(images), "scored_now": scored, "resumed": len(images) - len(todo)})
    write_text(out.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def _check_same_models(out: Path, analyzer) -> None:
    """A CSV is resumed only with the detector and classifier that wrote its rows (its summary names them): the
    default detector `auto` depends on the install, so a run resumed elsewhere could otherwise mix two detectors'
    rows under one name."""
    prev = out.with_suffix(".summary.json")
    if not prev.is_file():
        return
    old = json.loads(prev.read_text())
    for key, now in (("detector", analyzer.detector.name), ("model", analyzer.classifier.name)):
        if old.get(key) not in (None, now):
            raise DataError(f"its rows were scored with {key} '{old[key]}', and this run uses '{now}' (the default "
                            "detector `auto` is MTCNN where its weights are installed, else Haar).", file=out,
                            fix=f"pass --{'detector' if key == 'detector' else 'model'} {old[key]} to resume it, or "
                                "--fresh (or another --out) to score every image again with this run's models.")


def summarise(out: Path, header: list[str]) -> dict:
    """Counts over the whole CSV: images, faces found, no-face rows, errors (and the first files that failed)."""
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by = {s: [r for r in rows if r["status"] == s] for s in STATUS}
    return {"images": len(rows), "faces": len(by["ok"]), "no_face": len(by["no_face"]), "errors": len(by["error"]),
            "error_files": [r["path"] for r in by["error"][:20]]}


def main_summary_text(summary: dict) -> str:
    """The one-line human summary the CLI prints without --json."""
    return (f"{summary['images']} images: {summary['faces']} with a face, {summary['no_face']} without, "
            f"{summary['errors']} errors -> {summary['out']}")



def demo_images(folder: str | Path, drawn: int = 4, seed: int = 0) -> list[Path]:
    """Images for `make demo`: scikit-image's astronaut photograph (a real smiling face, public domain; only when
    scikit-image is installed), a face-free crop of it, and `drawn` faces of data/faces.py (joy, anger, surprise,
    neutral, ...). Returns the files written."""
    from PIL import Image

    from vlm_salience.data.faces import ACTIONS, FaceStyle, render_face

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    try:
        from skimage import data

        a = data.astronaut()
        for name, img in [("astronaut.png", a), ("astronaut_no_face.png", a[300:, 300:])]:
            Image.fromarray(img).save(folder / name)
            out.append(folder / name)
    except ImportError:
        pass
    rng = np.random.default_rng(seed)
    emotions = ["joy", "anger", "surprise", "neutral", *[e for e in ACTIONS if e not in ("joy", "anger", "surprise",
                                                                                         "neutral")]]
    for e in emotions[:drawn]:
        path = folder / f"drawn_{e}.png"
        render_face(e, 1.0, FaceStyle.sample(rng), size=160).save(path)
        out.append(path)
    return out

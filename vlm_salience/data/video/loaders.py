"""Corpus layouts -> VideoCorpus. Each layout only lists rows (file, line, clip, label, fold part); one builder
checks them all the same way, cheaply: labels known, no duplicate ids, one label per clip, every clip (and face
clip) on disk. Decoding is left to count_frames/read_frames, which name the file they fail on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vlm_salience.data.corpus import DropReport
from vlm_salience.data.tables import read_table
from vlm_salience.data.video.config import DfewConfig, Ferv39kConfig, MafwConfig, VideoCsvConfig, VideoDataConfig
from vlm_salience.data.video.frames import VIDEO_EXTS, is_video_file, natural_key
from vlm_salience.data.video.records import POLARITIES, VideoClip, VideoCorpus
from vlm_salience.errors import DataError

_MISSING = {"", "na", "nan", "null", "none"}
_POLARITY_WORDS = {"negative": 0, "neg": 0, "0": 0, "neutral": 1, "neu": 1, "1": 1, "positive": 2, "pos": 2, "2": 2}


@dataclass
class Row:
    file: Path
    line: int
    key: str  # the clip as the split file names it (an id or a relative path)
    label: str
    fold: str
    part: str  # train / test / val
    id_column: str = "clip"
    label_column: str = "label"
    extra: dict = field(default_factory=dict)  # generic CSV: polarity, face, text, id columns; meta


def find_clip(folder: Path, name: str) -> Path | None:
    """A clip called `name` under `folder`: the path itself (a frame folder or a video file), or `name` with a
    video extension."""
    base = folder / name
    if base.is_dir() or (base.is_file() and is_video_file(base)):
        return base
    stem = base.with_suffix("") if is_video_file(base) else base
    if stem.is_dir():
        return stem
    for ext in VIDEO_EXTS:
        for cand in (stem.with_name(stem.name + ext), stem.with_name(stem.name + ext.upper())):
            if cand.is_file():
                return cand
    return None


class _Builder:
    def __init__(self, cfg: VideoDataConfig, drop_invalid: bool, progress: bool = False) -> None:
        self.cfg, self.drop_invalid, self.report, self.progress = cfg, drop_invalid, DropReport(), progress
        self.bad: set[str] = set()
        self.bad_rows: set[int] = set()
        self.reported: set[tuple[Path, int, str]] = set()
        self.has_polarity = False  # the generic CSV has a polarity column

    def fail(self, problem: str, row: Row, column: str, fix: str, value: str, *, key: bool = True) -> None:
        if not self.drop_invalid:
            raise DataError(f"{problem} (value {value!r}).", file=row.file, row=row.line, column=column, fix=fix)
        if (row.file, row.line, column) not in self.reported:  # a generic CSV row stands in every fold
            self.reported.add((row.file, row.line, column))
            self.report.add(self.rel(row.file), f"{problem} in column '{column}'", f"line {row.line} {value!r}")
        if key:
            self.bad.add(row.key)
        self.bad_rows.add(id(row))

    def rel(self, path: Path) -> str:
        """A split file as the drop report names it: relative to the corpus root (DFEW's train/set_1.csv and
        test/set_1.csv are two files), else the full path."""
        try:
            return Path(path).relative_to(self.cfg.root).as_posix()
        except ValueError:
            return str(path)

    def build(self, rows: list[Row], parse_label: Callable[[str], int | None],
              resolve: Callable[[Row], tuple[str, Path | None, Path | None, str]],
              files: list[Path], *, meta: Callable[[Row], dict[str, str]] | None = None,
              sort: bool = True) -> VideoCorpus:
        """`resolve(row)` -> (clip id, source or None if missing, face source or None, where it looked).
        Clips come sorted by id (numbers aware) when `sort`, else in the order the rows first name them."""
        cfg = self.cfg
        labels: dict[str, tuple[int, Row]] = {}
        seen: dict[tuple[Path, str, str], Row] = {}
        placed: dict[tuple[str, str], Row] = {}  # (fold, clip) -> the row that put it in a part of that fold
        for row in rows:
            if (row.file, row.fold, row.key) in seen:  # (fold: one generic CSV row is a row of every fold)
                first = seen[(row.file, row.fold, row.key)]
                self.fail(f"duplicate clip id (also on line {first.line})", row, row.id_column,
                          "list each clip once per split file.", row.key, key=False)
                continue
            seen[(row.file, row.fold, row.key)] = row
            other = placed.setdefault((row.fold, row.key), row)
            if other.part != row.part and row.part and other.part:
                self.fail(f"clip is in both the {other.part} list ({self.rel(other.file)} line {other.line}) and "
                          f"the {row.part} list ({self.rel(row.file)} line {row.line}) of fold {row.fold}", row,
                          row.id_column, "remove it from one of the two lists: a clip tested on must not be "
                          "trained on (were train_file and test_file given the same file?).", row.key)
                continue
            idx = parse_label(row.label)
            if idx is None:
                self.fail(f"unknown label (expected {self._expected()})", row, row.label_column,
                          "correct the label, or list the class under 'classes' in the data config.", row.label)
                continue
            if row.key in labels and labels[row.key][0] != idx:
                other = labels[row.key][1]
                self.fail(f"label differs from {self.rel(other.file)} line {other.line}", row, row.label_column,
                          "give the clip one label in every split file.", row.label)
                continue
            labels.setdefault(row.key, (idx, row))
        clips: dict[str, VideoClip] = {}
        ids: dict[str, str] = {}
        owner: dict[str, Row] = {}  # clip id -> the row that named it first
        for key, (idx, row) in tqdm(labels.items(), desc=f"{cfg.name}: finding clips", unit="clip",
                                    disable=not self.progress, mininterval=1.0):
            if key in self.bad:
                continue
            clip_id, source, face, looked = resolve(row)
            if row.key in self.bad:  # resolve() reported a problem of its own (e.g. a missing face clip)
                continue
            if source is None:
                self.fail(f"names a clip that does not exist (looked for {looked})", row, row.id_column,
                          "check 'root' and 'clip_dir' in the data config, or pass --drop-invalid.", key)
                continue
            if face is None and self._wants_face(row):
                self.fail(f"the clip has no face-crop clip (looked under {self._face_dir(row)})", row, row.id_column,
                          "check 'face_dir' in the data config (null if the copy has none), or pass --drop-invalid.",
                          key)
                continue
            polarity = self._polarity(row, idx)
            if polarity == -1:
                continue
            if clip_id in clips:  # an `id` column names the clip where the CSV has one: report that column
                from_id = bool(row.extra.get("id", "").strip())
                self.fail(f"duplicate clip id '{clip_id}' (also on line {owner[clip_id].line})", row,
                          "id" if from_id else row.id_column, "give every clip its own name.",
                          clip_id if from_id else key)
                continue
            owner[clip_id] = row
            text = row.extra.get("text") or None
            clips[clip_id] = VideoClip(clip_id=clip_id, source=source, label=idx, face_source=face,
                                       polarity=polarity, text=text, meta=meta(row) if meta else {},
                                       where=f"{self.rel(row.file)} line {row.line}")
            ids[key] = clip_id
        folds: dict[str, dict[str, list[str]]] = {}
        for row in rows:
            parts = folds.setdefault(row.fold, {"train": [], "test": []})
            if row.part and id(row) not in self.bad_rows and row.key in ids and row.key not in self.bad:
                parts.setdefault(row.part, []).append(ids[row.key])
        clip_list = list(clips.values())
        if sort:
            clip_list.sort(key=lambda c: natural_key(c.clip_id))
        source = "column" if isinstance(cfg, VideoCsvConfig) and self.has_polarity else (
            "mapping" if cfg.polarity_map else "none")
        return VideoCorpus(name=cfg.name, classes=list(cfg.classes), clips=clip_list, folds=folds,
                           polarity_source=source, dropped=self.report,
                           fingerprint=_fingerprint(cfg, files, clip_list, self.progress), root=Path(cfg.root))

    def _expected(self) -> str:
        if getattr(self.cfg, "list_format", None) == "dfer_clip":
            return f"0-{len(self.cfg.classes) - 1}, DFER-CLIP's 0-based labels"
        if isinstance(self.cfg, DfewConfig):
            return f"1-{len(self.cfg.classes)}"
        return "one of " + ", ".join(self.cfg.classes)

    def _wants_face(self, row: Row) -> bool:
        return getattr(self.cfg, "face_dir", None) is not None and not isinstance(self.cfg, VideoCsvConfig)

    def _face_dir(self, row: Row) -> Path:
        return Path(self.cfg.root) / str(getattr(self.cfg, "face_dir", ""))

    def _polarity(self, row: Row, idx: int) -> int | None:
        if self.has_polarity:
            raw = row.extra.get("polarity", "").strip().lower()
            if raw in _MISSING:
                return None
            if raw not in _POLARITY_WORDS:
                self.fail(f"unknown polarity (expected one of {', '.join(POLARITIES)} or 0/1/2)", row, "polarity",
                          "write negative, neutral or positive.", raw)
                return -1
            return _POLARITY_WORDS[raw]
        if self.cfg.polarity_map:
            pmap = {k.lower(): v for k, v in self.cfg.polarity_map.items()}
            return POLARITIES.index(pmap[self.cfg.classes[idx].lower()])
        return None


def _fingerprint(cfg: VideoDataConfig, files: list[Path], clips: list[VideoClip], progress: bool = False) -> str:
    """Config, split files' bytes, and each clip's path, size and modification time: cheap, changes with the data."""
    h = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    for f in files:
        h.update(f.read_bytes())
    for c in tqdm(clips, desc=f"{cfg.name}: fingerprint", unit="clip", disable=not progress, mininterval=1.0):
        for p in (c.source, c.face_source):
            if p is not None:
                st = p.stat()
                h.update(f"{c.clip_id}|{p}|{st.st_size}|{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _name_parser(classes: list[str]) -> Callable[[str], int | None]:
    lower = {c.lower(): i for i, c in enumerate(classes)}
    return lambda s: lower.get(s.strip().lower())


_DFER_CLIP_LINE = re.compile(r"\S+\s+\d+\s+\d+")
_DFER_CLIP_HINT = ("it looks like a DFER-CLIP list (`path num_frames label`, 0-based labels): set `list_format: "
                   "dfer_clip` in the data config (or --data-set list_format=dfer_clip), with train_file/test_file "
                   "naming the lists if they are not under root/annotation/.")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError("split file not found.", file=path,
                        fix="check 'root', 'list_format' and the split-file names ('train_file', 'test_file') in "
                            "the data config.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start}).", file=path,
                        fix="save the split file as UTF-8.") from None


def _read_pairs(path: Path, fold: str, part: str, id_column: str, label_column: str) -> list[Row]:
    """Split files of `<clip> <label>` lines (FERV39k, MAFW): whitespace- or comma-separated, no header."""
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = re.split(r"[,\s]+", line.strip())
        if len(parts) != 2:
            hint = " " + _DFER_CLIP_HINT if _DFER_CLIP_LINE.fullmatch(line.strip()) else ""
            raise DataError(f"expected '<clip> <label>', got {len(parts)} field(s) ({line.strip()!r}).{hint}",
                            file=path, row=n, column=id_column, fix="one clip and its label per line.")
        rows.append(Row(file=path, line=n, key=parts[0], label=parts[1], fold=fold, part=part,
                        id_column=id_column, label_column=label_column))
    return rows


def _read_dfer_clip(path: Path, fold: str, part: str, key_parts: int) -> list[Row]:
    """DFER-CLIP's lists: `path num_frames label` per line. The clip is the path's last `key_parts` parts (the
    folder prefix names the authors' machine); num_frames must be a whole number (kept in the row, unused)."""
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit():
            official = " (a list in the corpus's own format: set list_format: official)" if len(parts) == 2 else ""
            raise DataError(f"expected DFER-CLIP's 'path num_frames label', got {line.strip()!r}{official}.",
                            file=path, row=n, column="path", fix="one clip per line: its path, its frame count "
                            "and its 0-based label, separated by spaces.")
        tail = [p for p in parts[0].replace("\\", "/").split("/") if p][-key_parts:]
        rows.append(Row(file=path, line=n, key="/".join(tail), label=parts[2], fold=fold, part=part,
                        id_column="path", label_column="label", extra={"num_frames": parts[1]}))
    return rows


def _check_label_base(rows: list[Row], base: int, n_classes: int, list_format: str) -> None:
    """Refuse a list numbered from the wrong base, whatever --drop-invalid says: dropping its out-of-range labels
    would read every other label one class off, silently."""
    by_file: dict[Path, list[Row]] = {}
    for r in rows:
        by_file.setdefault(r.file, []).append(r)
    for file, rs in by_file.items():
        values = {r.label.strip() for r in rs}
        if base == 1 and "0" in values:
            first = next(r for r in rs if r.label.strip() == "0")
            raise DataError(f"label 0 in a list whose labels run 1-{n_classes} (the {list_format} format): the "
                            "list is 0-based, and reading it as 1-based would shift every label by one class.",
                            file=file, row=first.line, column=first.label_column,
                            fix="if this is a DFER-CLIP list (`path num_frames label`) set list_format: dfer_clip; "
                                "otherwise add 1 to every label.")
        if base == 0 and str(n_classes) in values and "0" not in values:
            first = next(r for r in rs if r.label.strip() == str(n_classes))
            raise DataError(f"label {n_classes} in a list read as 0-based (0-{n_classes - 1}, list_format "
                            f"{list_format}) that has no label 0: the list is 1-based, and reading it as 0-based "
                            "would shift every label by one class.", file=file, row=first.line,
                            column=first.label_column,
                            fix="subtract 1 from every label, or read the corpus's own lists (list_format: official).")


def _integer_parser(cfg: DfewConfig | Ferv39kConfig | MafwConfig, base: int) -> Callable[[str], int | None]:
    classes = cfg.integer_classes()

    def parse(s: str) -> int | None:
        s = s.strip()
        return classes[int(s) - base] if s.isdigit() and 0 <= int(s) - base < len(classes) else None
    return parse


def _fold_files(cfg: DfewConfig | MafwConfig) -> list[tuple[str, str, Path]]:
    out = []
    for f in cfg.folds:
        for part, pattern in (("train", cfg.train_file), ("test", cfg.test_file)):
            out.append((f"set_{f}", part, Path(cfg.root) / str(pattern).format(fold=f)))
    return out


def _read_dfer_clip_corpus(cfg, files: list[tuple[str, str, Path]], key_parts: int) -> tuple[list[Row], list[Path]]:
    rows: list[Row] = []
    for fold, part, path in files:
        rows += _read_dfer_clip(path, fold, part, key_parts)
    _check_label_base(rows, 0, len(cfg.classes), "dfer_clip")
    return rows, [p for _, _, p in files]


def _read_dfew_csv(path: Path, fold: str, part: str, id_width: int) -> list[Row]:
    text = _read_text(path)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if _DFER_CLIP_LINE.fullmatch(first):
        raise DataError(f"expected DFEW's CSV (video_name,label), got {first!r}. {_DFER_CLIP_HINT}", file=path,
                        row=1, fix="point train_file/test_file at DFEW's EmoLabel_DataSplit CSVs, or read this list "
                                   "as list_format: dfer_clip.")
    df = read_table(path)
    for col in ("video_name", "label"):
        if col not in df.columns:
            raise DataError(f"missing column '{col}'.", file=path, column=col,
                            fix=f"DFEW split files have the columns video_name,label; this has {list(df.columns)}.")
    rows = []
    for pos, (name, label) in enumerate(zip(df["video_name"], df["label"])):
        name = name.strip()
        key = name.zfill(id_width) if name.isdigit() else name
        rows.append(Row(file=path, line=pos + 2, key=key, label=label, fold=fold, part=part,
                        id_column="video_name"))
    return rows


def load_dfew(cfg: DfewConfig, *, drop_invalid: bool = False, progress: bool = False) -> VideoCorpus:
    if cfg.list_format == "dfer_clip":
        rows, files = _read_dfer_clip_corpus(cfg, _fold_files(cfg), 1)
        for r in rows:
            r.key = r.key.zfill(cfg.id_width) if r.key.isdigit() else r.key
        base = 0
    else:
        rows, files = [], []
        for fold, part, path in _fold_files(cfg):
            rows += _read_dfew_csv(path, fold, part, cfg.id_width)
            files.append(path)
        _check_label_base(rows, 1, len(cfg.classes), "official DFEW")
        base = 1

    clip_dir = Path(cfg.root) / cfg.clip_dir  # once: a Path per row costs seconds at DFEW's size
    face_dir = Path(cfg.root) / cfg.face_dir if cfg.face_dir else None

    def resolve(row: Row):
        face = find_clip(face_dir, row.key) if face_dir else None
        return row.key, find_clip(clip_dir, row.key), face, f"{clip_dir / row.key}/ or {row.key}.mp4"

    return _Builder(cfg, drop_invalid, progress).build(rows, _integer_parser(cfg, base), resolve, files)


def load_ferv39k(cfg: Ferv39kConfig, *, drop_invalid: bool = False, progress: bool = False) -> VideoCorpus:
    parts = [("default", "train", Path(cfg.root) / str(cfg.train_file)),
             ("default", "test", Path(cfg.root) / str(cfg.test_file))]
    if cfg.list_format == "dfer_clip":  # .../2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>: the last three parts
        rows, files = _read_dfer_clip_corpus(cfg, parts, 3)
        parse = _integer_parser(cfg, 0)
    else:
        rows, files = [], []
        for fold, part, path in parts:
            rows += _read_pairs(path, fold, part, "clip", "label")
            files.append(path)
        parse = _name_parser(cfg.classes)

    clip_dir = Path(cfg.root) / cfg.clip_dir if cfg.clip_dir is not None else None
    face_dir = Path(cfg.root) / cfg.face_dir if cfg.face_dir else None

    def resolve(row: Row):
        face = find_clip(face_dir, row.key) if face_dir else None
        if clip_dir is None:
            return row.key, face, face, f"{face_dir / row.key}/"
        return row.key, find_clip(clip_dir, row.key), face, f"{clip_dir / row.key}.mp4 or {row.key}/"

    def meta(row: Row) -> dict[str, str]:
        return {"scene": row.key.split("/")[0]} if "/" in row.key else {}

    return _Builder(cfg, drop_invalid, progress).build(rows, parse, resolve, files, meta=meta)


def load_mafw(cfg: MafwConfig, *, drop_invalid: bool = False, progress: bool = False) -> VideoCorpus:
    if cfg.list_format == "dfer_clip":  # .../MAFW/data/faces/<id>: the last part; labels in DFER-CLIP's order
        rows, files = _read_dfer_clip_corpus(cfg, _fold_files(cfg), 1)
        parse = _integer_parser(cfg, 0)
    else:
        rows, files = [], []
        for fold, part, path in _fold_files(cfg):
            rows += _read_pairs(path, fold, part, "clip", "label")
            files.append(path)
        parse = _name_parser(cfg.classes)

    clip_dir = Path(cfg.root) / cfg.clip_dir
    face_dir = Path(cfg.root) / cfg.face_dir if cfg.face_dir else None

    def resolve(row: Row):
        stem = Path(row.key).stem if is_video_file(Path(row.key)) else row.key
        face = find_clip(face_dir, stem) if face_dir else None
        return stem, find_clip(clip_dir, row.key), face, f"{clip_dir / row.key} or {stem}/"

    return _Builder(cfg, drop_invalid, progress).build(rows, parse, resolve, files)


_CSV_COLUMNS = {"clip", "label", "fold", "split", "polarity", "face", "text", "id"}


def load_video_csv(cfg: VideoCsvConfig, *, drop_invalid: bool = False, progress: bool = False) -> VideoCorpus:
    """Columns beyond the known ones land in VideoClip.meta as text (the synthetic corpus's ambiguous flag)."""
    path = Path(cfg.root) / cfg.file
    if not path.is_file():  # read_table's own fix names the rating corpora's `files` field
        raise DataError("clips CSV not found.", file=path, fix="check 'root' and 'file' in the data config.")
    df = read_table(path)
    for col in ("clip", "label"):
        if col not in df.columns:
            raise DataError(f"missing column '{col}'.", file=path, column=col,
                            fix="the CSV needs clip,label[,fold|split][,polarity][,face][,text][,id]; "
                            f"it has {list(df.columns)}.")
    if "fold" in df.columns and "split" in df.columns:
        raise DataError("has both a 'fold' and a 'split' column.", file=path, column="split",
                        fix="keep one: 'fold' (the test fold of each clip) or 'split' (train/val/test).")
    media = Path(cfg.root) / cfg.media_root if cfg.media_root else path.parent
    builder = _Builder(cfg, drop_invalid, progress)
    builder.has_polarity = "polarity" in df.columns
    rows = []
    fold_values: list[str] = []
    if "fold" in df.columns:
        fold_values = sorted({v.strip() for v in df["fold"] if v.strip().lower() not in _MISSING},
                             key=lambda v: (len(v), v))
    for pos, rec in enumerate(df.to_dict("records")):
        extra = {k: rec.get(k, "") for k in ("polarity", "face", "text", "id")}
        extra["meta"] = {k: str(v).strip() for k, v in rec.items() if k not in _CSV_COLUMNS}  # e.g. ambiguous
        base = dict(file=path, line=pos + 2, key=rec["clip"].strip(), label=rec["label"], id_column="clip",
                    extra=extra)
        if "fold" in df.columns:
            mine = rec["fold"].strip()
            if mine.lower() in _MISSING:
                builder.fail("missing fold", Row(fold="", part="", **base), "fold", "give every clip its test fold.",
                             mine)
                continue
            for f in fold_values:
                rows.append(Row(fold=f"set_{f}", part="test" if f == mine else "train", **base))
        elif "split" in df.columns:
            part = rec["split"].strip().lower()
            part = {"training": "train", "testing": "test", "valid": "val", "validation": "val"}.get(part, part)
            row = Row(fold="default", part=part, **base)
            if part not in ("train", "val", "test"):
                builder.fail("unknown split (expected train, val or test)", row, "split", "write train, val or test.",
                             rec["split"])
                continue
            rows.append(row)
        else:
            rows.append(Row(fold="all", part="train", **base))
    for r in rows:
        if not r.key or r.key.lower() in _MISSING:
            builder.fail("empty clip path", r, "clip", "give every row a clip.", r.key)
    rows = [r for r in rows if id(r) not in builder.bad_rows]

    def resolve(row: Row):
        src = find_clip(media, row.key)
        face_raw = row.extra.get("face", "").strip()
        face = None
        if face_raw and face_raw.lower() not in _MISSING:
            face = find_clip(media, face_raw)
            if face is None:
                builder.fail(f"names a face clip that does not exist (looked for {media / face_raw})", row, "face",
                             "correct the path, leave it empty, or pass --drop-invalid.", face_raw)
        clip_id = row.extra.get("id", "").strip() or row.key  # an optional id column names the clip
        return clip_id, src, face, str(media / row.key)

    return builder.build(rows, _name_parser(cfg.classes), resolve, [path], sort=False,  # the CSV's order
                         meta=lambda row: dict(row.extra["meta"]))


LOADERS: dict[type, Callable[..., VideoCorpus]] = {
    DfewConfig: load_dfew, Ferv39kConfig: load_ferv39k, MafwConfig: load_mafw, VideoCsvConfig: load_video_csv,
}

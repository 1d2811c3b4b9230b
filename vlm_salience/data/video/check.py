"""`data check` for video data YAMLs: load the corpus (cheap checks), optionally open every clip (every frame image
decoded, at 1/8 scale for JPEGs; videos opened and their frames counted), which finds corrupt, foreign, empty and
zero-frame clips before a long run, and summarise."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from vlm_salience.data.video import load_video_corpus
from vlm_salience.data.video.frames import check_decodes
from vlm_salience.data.video.records import VideoCorpus
from vlm_salience.errors import DataError


def decodable(corpus: VideoCorpus, *, drop_invalid: bool = False, progress: bool = True) -> VideoCorpus:
    """The corpus with every clip (and face clip) decoded to its end and its frames counted against its header
    (a clip cut short is damaged, not decoded). Strict: the first bad clip
    raises its DataError (file named); drop_invalid: bad clips leave the corpus and its folds, and are reported."""
    keep = []
    for clip in tqdm(corpus.clips, desc="checking clips", disable=not progress):
        try:
            check_decodes(clip.source)
            if clip.face_source is not None:
                check_decodes(clip.face_source)
        except DataError as exc:
            if not drop_invalid:
                raise
            corpus.dropped.add(_rel(Path(exc.file), corpus.root) if exc.file else clip.clip_id,
                               f"clip cannot be read: {exc.problem}", clip.named())
            continue
        keep.append(clip.clip_id)
    return corpus if len(keep) == len(corpus) else corpus.subset(keep)  # subset keeps the same DropReport


def _rel(path: Path, root: Path | None) -> str:
    try:
        return path.relative_to(root).as_posix() if root is not None else str(path)
    except ValueError:
        return str(path)


def check_video_data(path: str | Path, *, drop_invalid: bool = False, overrides: list[str] | tuple[str, ...] = (),
                     decode: bool = False, progress: bool = True) -> dict:
    """Summary of a video data YAML (what `vlm-salience data check` prints): clips per class and fold part,
    polarity source, face clips, dropped rows with reasons, fingerprint. `decode` also opens every clip."""
    corpus = load_video_corpus(path, drop_invalid=drop_invalid, overrides=overrides, progress=progress)
    if decode:
        corpus = decodable(corpus, drop_invalid=drop_invalid, progress=progress)
    return corpus.summary() | {"dropped_lines": corpus.dropped.lines(), "decoded": decode}

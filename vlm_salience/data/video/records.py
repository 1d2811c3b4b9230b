"""The records every video model reads: one `VideoClip` per clip, one `VideoCorpus` per data YAML.

Loaders (one per corpus layout) turn folders and split files into these; nothing downstream knows a file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from vlm_salience.data.corpus import DropReport

POLARITIES: tuple[str, ...] = ("negative", "neutral", "positive")
"""Scene polarity names by index: 0 negative, 1 neutral, 2 positive (OUS's three polarities)."""


@dataclass(frozen=True)
class VideoClip:
    """One labelled clip. `source` is a video file or a folder of frame images (sorted by name, numbers aware)."""

    clip_id: str
    source: Path
    label: int  # 0-based index into VideoCorpus.classes
    face_source: Path | None = None  # pre-cropped face frames/video where the corpus ships them
    polarity: int | None = None  # 0 negative / 1 neutral / 2 positive (a column, or mapped from the label)
    text: str | None = None  # a reference description (the synthetic corpus writes one)
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)  # FERV39k scene; CSV extras
    where: str = field(default="", compare=False, hash=False)  # the list file and line naming it, for messages

    def named(self) -> str:
        """How a message names the clip: its id and the line that listed it (a file error names only the file)."""
        return f"clip '{self.clip_id}'" + (f" ({self.where})" if self.where else "")


@dataclass
class VideoCorpus:
    """A labelled clip collection with its folds. Fold name -> {"train": [clip ids], "test": [clip ids]}
    (a "val" list too where the corpus has one)."""

    name: str
    classes: list[str]
    clips: list[VideoClip]
    folds: dict[str, dict[str, list[str]]]
    polarity_source: Literal["column", "mapping", "none"] = "none"
    dropped: DropReport = field(default_factory=DropReport)
    fingerprint: str = ""
    root: Path | None = None

    def __post_init__(self) -> None:
        self._index = {c.clip_id: i for i, c in enumerate(self.clips)}

    def __len__(self) -> int:
        return len(self.clips)

    def clip(self, clip_id: str) -> VideoClip:
        try:
            return self.clips[self._index[clip_id]]
        except KeyError:
            raise KeyError(f"corpus '{self.name}' has no clip '{clip_id}'") from None

    def index_of(self, clip_id: str) -> int:
        return self._index[clip_id]

    @property
    def clip_ids(self) -> list[str]:
        return [c.clip_id for c in self.clips]

    @property
    def labels(self) -> np.ndarray:
        return np.array([c.label for c in self.clips], dtype=np.int64)

    def chosen_folds(self, folds: list[str] | None, setting: str = "folds") -> list[str]:
        """The folds a run asked for (every fold when None). A name the corpus lacks is a ConfigError naming the
        setting, before any work starts."""
        from vlm_salience.errors import ConfigError

        chosen = [str(f) for f in folds] if folds else list(self.folds)
        unknown = [f for f in chosen if f not in self.folds]
        if unknown:
            raise ConfigError(f"{setting} names {unknown}, which corpus '{self.name}' does not have "
                              f"(folds: {sorted(self.folds)})")
        return chosen

    def split(self, fold: str, part: str = "train") -> list[VideoClip]:
        """The clips of one part ("train", "test", "val") of one fold, in the fold list's order."""
        if fold not in self.folds:
            raise KeyError(f"corpus '{self.name}' has no fold '{fold}'; folds: {sorted(self.folds)}")
        return [self.clip(i) for i in self.folds[fold].get(part, [])]

    def subset(self, clip_ids: list[str]) -> VideoCorpus:
        """The same corpus restricted to some clips; folds keep only those clips."""
        wanted = set(clip_ids)
        folds = {f: {p: [i for i in ids if i in wanted] for p, ids in parts.items()} for f, parts in self.folds.items()}
        return VideoCorpus(name=self.name, classes=list(self.classes),
                           clips=[c for c in self.clips if c.clip_id in wanted], folds=folds,
                           polarity_source=self.polarity_source, dropped=self.dropped,
                           fingerprint=self.fingerprint, root=self.root)

    def summary(self) -> dict:
        """Counts a `data check` prints: clips per class, per fold part, polarity source, dropped rows."""
        counts = np.bincount(self.labels, minlength=len(self.classes)) if self.clips else np.zeros(len(self.classes))
        return {
            "name": self.name, "clips": len(self.clips),
            "per_class": {c: int(n) for c, n in zip(self.classes, counts)},
            "folds": {f: {p: len(ids) for p, ids in parts.items()} for f, parts in self.folds.items()},
            "polarity_source": self.polarity_source,
            "with_face_source": sum(c.face_source is not None for c in self.clips),
            "dropped": self.dropped.to_dict(), "fingerprint": self.fingerprint,
        }


def carve_validation(corpus, train_ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(fit, validation) clip ids of a training fold, the one carving of clip training and clip routing: `fraction` of each class's clips (at least one where a class
    has two or more), drawn by a seeded generator; never a test clip (only `train_ids` are drawn from)."""
    rng = np.random.default_rng([seed, 17])
    labels = np.array([corpus.clip(c).label for c in train_ids])
    val: set[str] = set()
    for k in np.unique(labels):
        members = [c for c, y in zip(train_ids, labels) if y == k]
        n = int(round(fraction * len(members)))
        n = min(len(members) - 1, max(1, n)) if len(members) >= 2 else 0
        val.update(rng.permutation(members)[:n].tolist())
    return [c for c in train_ids if c not in val], [c for c in train_ids if c in val]

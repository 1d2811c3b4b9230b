"""The corpus data model every method reads: items (a face cue meets a situation) and judgements per condition.

A corpus holds ratings from three viewing conditions, as in cue-integration studies:
- face-only judgements, keyed by face id (what observers infer from the expression alone);
- context-only judgements, keyed by situation id (from the situation alone);
- combined judgements, keyed by item id (face and situation together): the targets.

Responses are either per-emotion ratings on a rating scale (`response="ratings"`, e.g. 8 emotions rated 1-9) or
choices over emotion labels (`response="choice"`: one-hot rows, counts or distributions), optionally with a rated
valence on its own scale. Where no valence is rated, valence is derived from the emotions by signed weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Condition = Literal["face", "context", "combined"]
CONDITIONS: tuple[Condition, ...] = ("face", "context", "combined")


@dataclass(frozen=True)
class RatingScale:
    low: float
    high: float
    step: float = 1.0

    @property
    def points(self) -> np.ndarray:
        n = int(round((self.high - self.low) / self.step)) + 1
        return self.low + self.step * np.arange(n, dtype=float)

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2.0

    def contains(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return (values >= self.low - 1e-9) & (values <= self.high + 1e-9)


@dataclass(frozen=True)
class Face:
    """The expressive cue: an image, frames or a video where the corpus has one; an utterance or description."""

    id: str
    text: str | None = None
    media: tuple[Path, ...] = ()
    media_kind: Literal["image", "frames", "video"] | None = None


@dataclass(frozen=True)
class Situation:
    """The context cue: structured fields, a readable description, and (where declared) its possible outcomes."""

    id: str
    features: dict[str, Any]
    text: str
    # (probability, feature values) per possible outcome, e.g. the three payoffs of a lottery wheel.
    outcomes: tuple[tuple[float, dict[str, Any]], ...] = ()


@dataclass(frozen=True)
class Item:
    """One face seen in one situation: the unit that every method predicts and every metric scores."""

    id: str
    face: Face
    situation: Situation
    # Grouping keys for cross-validation folds and retrieval leakage guards: face, participant, episode, ...
    groups: dict[str, str] = field(default_factory=dict)
    # A given expressivity score (e.g. a manifest column from an action-unit detector), if the corpus has one.
    expressivity: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Judgements:
    """All observer responses of one viewing condition, one row per judgement (or aggregated row)."""

    condition: Condition
    source: str
    key: np.ndarray  # face id, situation id or item id per row (object array of str)
    rater: np.ndarray  # rater id per row (object array of str)
    emotions: np.ndarray  # (n, K): ratings on the scale, or choice weights (one-hot, counts or a distribution)
    valence: np.ndarray | None = None  # (n,) rated valence, if the corpus rates it
    line: np.ndarray | None = None  # source line per row, for error messages

    def __len__(self) -> int:
        return len(self.key)

    def rows_for(self, keys: np.ndarray | list[str]) -> np.ndarray:
        """Boolean mask of the rows whose key is in `keys`."""
        return np.isin(self.key, np.asarray(keys, dtype=object))


@dataclass
class DropReport:
    """Rows skipped under --drop-invalid: how many, and why, per file."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, file: str, reason: str, example: str) -> None:
        key = (file, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.examples.setdefault(key, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        return [
            f"{file}: dropped {n} row(s): {reason} (first: {self.examples[(file, reason)]})"
            for (file, reason), n in sorted(self.counts.items())
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_reason": [
                {"file": f, "reason": r, "rows": n, "first": self.examples[(f, r)]}
                for (f, r), n in sorted(self.counts.items())
            ],
        }


@dataclass
class Corpus:
    name: str
    labels: tuple[str, ...]
    response: Literal["ratings", "choice"]
    items: list[Item]
    face_only: Judgements
    context_only: Judgements
    combined: Judgements | None
    scale: RatingScale | None = None  # emotion rating scale (response="ratings")
    valence_scale: RatingScale | None = None  # scale of a rated valence, if any
    valence_weights: np.ndarray | None = None  # (K,) signed weights: valence derived from the emotions
    neutral_label: str | None = None
    context_features: tuple[str, ...] = ()
    categorical_features: tuple[str, ...] = ()
    context_interactions: tuple[tuple[str, str], ...] = ()
    fingerprint: str = ""
    dropped: DropReport = field(default_factory=DropReport)
    root: Path | None = None
    # Every situation of the corpus, including ones only the context-only condition shows.
    situations: dict[str, Situation] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {item.id: i for i, item in enumerate(self.items)}
        for item in self.items:
            self.situations.setdefault(item.situation.id, item.situation)

    @property
    def item_ids(self) -> np.ndarray:
        return np.array([it.id for it in self.items], dtype=object)

    def index_of(self, item_id: str) -> int:
        return self._index[item_id]

    @property
    def has_targets(self) -> bool:
        return self.combined is not None and len(self.combined) > 0

    @property
    def rated_valence(self) -> bool:
        return self.valence_scale is not None

    def groups(self, name: str) -> np.ndarray:
        """Per-item value of a grouping key (e.g. 'face', 'participant'), for folds and leakage guards."""
        missing = [it.id for it in self.items if name not in it.groups]
        if missing:
            known = sorted({k for it in self.items for k in it.groups})
            raise KeyError(f"corpus '{self.name}' has no group '{name}' (item {missing[0]}); known groups: {known}")
        return np.array([it.groups[name] for it in self.items], dtype=object)

    def subset(self, item_ids: list[str] | np.ndarray) -> Corpus:
        """The same corpus restricted to some items (their judgements kept; others' face/context rows kept too)."""
        wanted = set(item_ids)
        items = [it for it in self.items if it.id in wanted]
        combined = None
        if self.combined is not None:
            combined = _take(self.combined, self.combined.rows_for(list(wanted)))
        return Corpus(
            name=self.name, labels=self.labels, response=self.response, items=items,
            face_only=self.face_only, context_only=self.context_only, combined=combined, scale=self.scale,
            valence_scale=self.valence_scale, valence_weights=self.valence_weights,
            neutral_label=self.neutral_label, context_features=self.context_features,
            categorical_features=self.categorical_features, context_interactions=self.context_interactions,
            fingerprint=self.fingerprint,
            dropped=self.dropped, root=self.root, situations=self.situations,
        )


def _take(j: Judgements, mask: np.ndarray) -> Judgements:
    return Judgements(
        condition=j.condition, source=j.source, key=j.key[mask], rater=j.rater[mask], emotions=j.emotions[mask],
        valence=None if j.valence is None else j.valence[mask], line=None if j.line is None else j.line[mask],
    )

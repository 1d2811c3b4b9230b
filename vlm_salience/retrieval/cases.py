"""Cases: what a retrieval index stores about each item, and the text that is embedded for it.

The embedded text describes the situation and the face (its expressivity level, an utterance, or later a face-only
model's answer) and never the item's own ratings, so that a query built from an item cannot find it by its target.
The stored payload does carry the observed ratings: they are what a few-shot example shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm_salience.data.corpus import Corpus, Item
from vlm_salience.errors import DataError

TEXT_VERSION = 1  # bump when query_text changes: indexes record it, and loading a stale one is an error


def expressivity_phrase(x: float | None) -> str | None:
    if x is None or not np.isfinite(x):
        return None
    if x < 1 / 3:
        return "a subtle facial expression that is hard to read"
    if x < 2 / 3:
        return "a moderately expressive face"
    return "a very expressive face"


def _check_text(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{where}: text is not valid UTF-8 ({exc.reason} at position {exc.start}).",
                        fix="re-save the source as UTF-8.") from None
    return text


def query_text(item: Item, expressivity: float | None = None, face_description: str | None = None) -> str:
    """The text embedded for an item: situation, then face; no ratings of any condition."""
    situation = (item.situation.text or "").strip()
    if not situation:
        raise DataError(f"item '{item.id}' has no context text: its situation has no fields to describe.",
                        fix="set situation.text in the data config.")
    parts = [f"Situation: {situation}"]
    face = []
    if face_description:
        face.append(face_description.strip())
    else:
        phrase = expressivity_phrase(expressivity if expressivity is not None else item.expressivity)
        if phrase:
            face.append(f"The player shows {phrase}.")
        if item.face.text:
            face.append(f'The player said "{item.face.text}".')
    if face:
        parts.append("Face: " + " ".join(face))
    return _check_text(" ".join(parts), f"item '{item.id}'")


@dataclass
class Case:
    """One stored case: its id, embedded text, leakage-guard keys and the payload a few-shot example shows."""

    id: str
    text: str
    keys: dict[str, str] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    image: str | None = None  # face image path, for optional image embeddings


def cases_from_corpus(corpus: Corpus, expressivity: np.ndarray | None = None,
                      face_descriptions: dict[str, str] | None = None) -> list[Case]:
    """One case per item. Payloads carry the combined-condition ratings where the corpus has them."""
    if not corpus.items:
        raise DataError(f"corpus '{corpus.name}' has no items: nothing to index.")
    observed = None
    if corpus.has_targets:
        from vlm_salience.predictions import observed as observed_targets

        observed = observed_targets(corpus)
    cases = []
    for i, item in enumerate(corpus.items):
        x = None if expressivity is None else float(expressivity[i])
        text = query_text(item, x, (face_descriptions or {}).get(item.id))
        payload: dict[str, Any] = {
            "item_id": item.id, "situation": item.situation.text, "features": item.situation.features,
            "face_text": item.face.text, "expressivity": x, "corpus": corpus.name,
        }
        if observed is not None:
            payload["observed"] = {
                "emotion_dist": dict(zip(corpus.labels, map(float, observed.emotion_dist[i]))),
                "valence": float(observed.valence[i]),
                **({"ratings": dict(zip(corpus.labels, map(float, observed.ratings[i])))}
                   if observed.ratings is not None else {}),
                "n_judgements": int(observed.meta["n_judgements"][i]),
            }
        image = str(item.face.media[0]) if item.face.media and item.face.media_kind == "image" else None
        cases.append(Case(id=item.id, text=text, keys={"item": item.id, **item.groups}, payload=payload,
                          image=image))
    return cases

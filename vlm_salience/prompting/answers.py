"""What an answer looks like, and the two ways of reading one.

1. Label scoring: each *slot* of the answer (the emotion, the valence, or each emotion's rating) is a prefix of a
   valid JSON answer followed by candidate values; the model's probability of each candidate after the prompt gives
   a full distribution without sampling.
2. Generate and parse: a robust parser finds the answer's JSON object in free text (after a chain of thought, in a
   code fence, with single quotes or trailing commas) and checks it against the corpus's labels and scales. An
   unparseable answer raises AnswerError with the reason; callers record it per item.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm_salience.data.corpus import Corpus, RatingScale


class AnswerError(ValueError):
    """An answer that cannot be read; the message says why (recorded per item, never zero-filled)."""


@dataclass(frozen=True)
class Slot:
    name: str  # "emotion", "valence" or "rating:<label>"
    prefix: str  # the start of a valid JSON answer, up to the value
    candidates: tuple[str, ...]  # each value as written
    values: tuple[Any, ...]
    # What may follow a complete value. A candidate's probability includes that of ending there: the mass of
    # every token starting with a terminator (tokenisers merge a closing quote with what follows, e.g. '",').
    terminators: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnswerSpec:
    response: str  # "choice" or "ratings"
    labels: tuple[str, ...]
    valence_scale: RatingScale | None
    scale: RatingScale | None
    neutral_label: str | None = None

    @classmethod
    def from_corpus(cls, corpus: Corpus) -> AnswerSpec:
        return cls(corpus.response, corpus.labels, corpus.valence_scale, corpus.scale, corpus.neutral_label)

    def variables(self) -> dict[str, Any]:
        v: dict[str, Any] = {"labels": list(self.labels), "response": self.response}
        if self.scale is not None:
            v.update(scale_low=_num(self.scale.low), scale_high=_num(self.scale.high))
        if self.valence_scale is not None:
            v.update(valence_low=_num(self.valence_scale.low), valence_high=_num(self.valence_scale.high))
        return v

    def slots(self) -> list[Slot]:
        numeric_end = (",", "}", "\n")
        if self.response == "choice":
            out = [Slot("emotion", '{"emotion": "', tuple(self.labels), self.labels, ('"',))]
            if self.valence_scale is not None:
                pts = [_num(p) for p in self.valence_scale.points]
                out.append(Slot("valence", '{"valence": ', tuple(str(p) for p in pts), tuple(pts), numeric_end))
            return out
        pts = [_num(p) for p in self.scale.points]
        return [Slot(f"rating:{lab}", '{"ratings": {"' + lab + '": ', tuple(str(p) for p in pts), tuple(pts),
                     numeric_end) for lab in self.labels]

    def answer_fields(self, observed: dict[str, Any], full: bool = True) -> dict[str, Any]:
        """The answer's fields from observed ratings (few-shot examples and training targets)."""
        if self.response == "ratings":
            return {"ratings": {k: int(round(v)) for k, v in observed["ratings"].items()}}
        dist = observed["emotion_dist"]
        fields: dict[str, Any] = {"emotion": max(dist, key=dist.get)}
        if self.valence_scale is not None:
            v = float(np.clip(round(observed["valence"]), self.valence_scale.low, self.valence_scale.high))
            fields["valence"] = _num(v)
        if full:
            fields["distribution"] = {k: round(float(v), 2) for k, v in dist.items()}
        return fields

    def example_answer(self, observed: dict[str, Any]) -> str:
        """How a retrieved case's observer ratings are shown in a few-shot example (the answer format)."""
        if self.response == "choice":
            dist = {k: round(v, 2) for k, v in observed["emotion_dist"].items()}
            top = max(dist, key=dist.get)
            return json.dumps({"valence": round(observed["valence"], 1), "emotion": top, "distribution": dist})
        return json.dumps({"ratings": {k: round(v, 1) for k, v in observed["ratings"].items()}})


def compose_answer(fields: dict[str, Any], rng: np.random.Generator | None = None) -> str:
    """The JSON answer text; with an rng, keys (and the ratings' emotions) come in a random order: JSON key order
    is free, and training on every order teaches every answer slot label scoring reads."""
    if rng is None:
        return json.dumps(fields)
    keys = list(fields)
    rng.shuffle(keys)
    out = {}
    for k in keys:
        v = fields[k]
        if k == "ratings" and isinstance(v, dict):
            inner = list(v)
            rng.shuffle(inner)
            v = {e: v[e] for e in inner}
        out[k] = v
    return json.dumps(out)


def _known_labels(obj: dict[str, Any], index: dict[str, int]) -> dict[str, Any]:
    """Keys lower-cased; any label outside the corpus's label set makes the answer invalid (never dropped)."""
    obj = _lower_keys(obj)
    unknown = sorted(set(obj) - set(index))
    if unknown:
        raise AnswerError(f"labels outside the corpus's label set: {unknown}")
    return obj


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


@dataclass
class ParsedAnswer:
    emotion_dist: np.ndarray  # (K,)
    valence: float | None = None
    ratings: np.ndarray | None = None  # (K,)


# ---------------------------------------------------------------------------------------------------------------
# Parsing

def _json_objects(text: str) -> list[str]:
    """Every balanced {...} span, braces inside strings ignored, outermost first in reading order."""
    spans, depth, start, in_str, esc, quote = [], 0, None, False, False, ""
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                in_str = False
            continue
        if ch in "\"'":
            in_str, quote = True, ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    return spans


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    fixed = re.sub(r",\s*([}\]])", r"\1", raw)  # trailing commas
    fixed = re.sub(r"(?<![\w\"])'([^'\n]*?)'", r'"\1"', fixed)  # single-quoted strings
    fixed = re.sub(r"([{,]\s*)([A-Za-z_][\w ]*?)\s*:", r'\1"\2":', fixed)  # bare keys
    fixed = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", fixed)))
    return json.loads(fixed)


def _lower_keys(d: dict) -> dict:
    return {str(k).strip().lower(): v for k, v in d.items()}


def parse_answer(text: str, spec: AnswerSpec) -> ParsedAnswer:
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("empty answer")
    candidates = []
    for raw in _json_objects(text):
        try:
            obj = _loads(raw)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            candidates.append(_lower_keys(obj))
    wanted = {"emotion", "distribution", "valence"} if spec.response == "choice" else {"ratings"}
    useful = [c for c in candidates if wanted & set(c)]
    if not useful:
        raise AnswerError("no JSON answer object found" if not candidates else
                          f"JSON answer lacks {sorted(wanted)} (has {sorted(candidates[-1])})")
    obj = useful[-1]  # after a chain of thought, the final answer is the last one
    index = {lab.lower(): i for i, lab in enumerate(spec.labels)}
    K = len(spec.labels)
    if spec.response == "ratings":
        ratings = obj["ratings"]
        if not isinstance(ratings, dict):
            raise AnswerError("'ratings' is not an object of emotion: rating")
        ratings = _known_labels(ratings, index)
        missing = [lab for lab in spec.labels if lab.lower() not in ratings]
        if missing:
            raise AnswerError(f"no rating for {missing}")
        values = np.array([_number(ratings[lab.lower()], f"rating of {lab}") for lab in spec.labels])
        if (~spec.scale.contains(values)).any():
            raise AnswerError(f"ratings outside the scale {spec.scale.low:g}-{spec.scale.high:g}")
        from vlm_salience.predictions import ratings_to_distribution

        return ParsedAnswer(emotion_dist=ratings_to_distribution(values, spec.scale), ratings=values)
    dist = np.zeros(K)
    if "distribution" in obj and obj["distribution"] is not None:
        d = obj["distribution"]
        if not isinstance(d, dict):
            raise AnswerError("'distribution' is not an object of emotion: probability")
        d = _known_labels(d, index)
        for lab, v in d.items():
            dist[index[lab]] = _number(v, f"probability of {lab}")
        if (dist < 0).any() or dist.sum() <= 0:
            raise AnswerError("distribution has negative or no mass")
        dist /= dist.sum()
    elif "emotion" in obj:
        lab = str(obj["emotion"]).strip().lower()
        if lab not in index:
            raise AnswerError(f"labels outside the corpus's label set: ['{obj['emotion']}']")
        dist[index[lab]] = 1.0
    else:
        raise AnswerError("answer has neither 'distribution' nor 'emotion'")
    valence = None
    if spec.valence_scale is not None:
        if "valence" not in obj:
            raise AnswerError("answer has no 'valence'")
        valence = _number(obj["valence"], "valence")
        if not spec.valence_scale.contains(np.array([valence]))[0]:
            raise AnswerError(f"valence {valence:g} outside {spec.valence_scale.low:g}-{spec.valence_scale.high:g}")
    return ParsedAnswer(emotion_dist=dist, valence=valence)


def _number(v: Any, what: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise AnswerError(f"{what} is not a number ({v!r})") from None
    if not np.isfinite(x):
        raise AnswerError(f"{what} is not finite")
    return x

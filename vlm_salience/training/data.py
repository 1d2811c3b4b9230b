"""Instruction data from any corpus: a prompt from prompts/ and a target answer written from observer ratings.

The target is the JSON answer format of the prompting templates, optionally after a short rationale written from
the item's fields (prompts/rationale.j2). The answer's fields are stored; the collator writes them in a fresh key
order each epoch (by default), so that every answer slot label scoring reads (`{"emotion": "`, `{"valence": `,
each rating) is a trained start of an answer for every item. Stored as a Hugging Face `datasets.Dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlm_salience.data.corpus import Corpus
from vlm_salience.errors import ConfigError
from vlm_salience.predictions import Predictions, observed
from vlm_salience.prompting.answers import AnswerSpec
from vlm_salience.prompting.images import ItemError
from vlm_salience.prompting.inputs import build_prompt
from vlm_salience.prompting.templates import load_template
from vlm_salience.splits import Splits, prepare_corpus_splits
from vlm_salience.splits import split_groups as _split_groups
from vlm_salience.training.config import AdapterSpec, SplitConfig, TrainConfig


def split_groups(corpus: Corpus, cfg: SplitConfig) -> Splits:
    """Test groups first (the same rule as prompting experiments), then validation groups from the rest."""
    return _split_groups(corpus, test_fraction=cfg.test_fraction, group=cfg.group, seed=cfg.seed,
                         validation_fraction=cfg.validation_fraction)


class TrainingData:
    """The corpus, its splits, expressivity and targets, shared by every adapter of a training config."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        prepared = prepare_corpus_splits(cfg.data.config, cfg.study, cfg.split)  # the same as prompting's
        self.corpus = prepared.corpus
        if not self.corpus.has_targets:
            raise ConfigError(f"corpus '{self.corpus.name}' has no combined judgements: nothing to train on")
        if prepared.expressivity is None:
            raise ConfigError(f"corpus '{self.corpus.name}': no judgement-based expressivity for the expert subsets "
                              f"and routing ({prepared.expressivity_error})")
        self.spec = AnswerSpec.from_corpus(self.corpus)
        self.study = prepared.study
        self.splits = prepared.splits
        self.expressivity = prepared.expressivity
        self.threshold = prepared.threshold
        # which faces count as expressive is the salience law's question (one concept, one place)
        self.split_law = prepared.split_law
        self.observed: Predictions = observed(self.corpus)

    def items_for(self, adapter: AdapterSpec, part: str = "train") -> np.ndarray:
        idx = getattr(self.splits, part)
        x = self.expressivity[idx]
        if adapter.subset == "expressive":
            idx = idx[self.split_law.is_expressive(x)]
        elif adapter.subset == "subtle":
            idx = idx[~self.split_law.is_expressive(x)]
        return idx

    def answer_fields(self, i: int) -> dict[str, Any]:
        o = self.observed
        payload = {"emotion_dist": dict(zip(self.spec.labels, o.emotion_dist[i])), "valence": float(o.valence[i])}
        if o.ratings is not None:
            payload["ratings"] = dict(zip(self.spec.labels, o.ratings[i]))
        return self.spec.answer_fields(payload, full=self.cfg.data.answer == "full")

    def rationale(self, i: int) -> str:
        from vlm_salience.retrieval.cases import expressivity_phrase

        item, x = self.corpus.items[i], float(self.expressivity[i])
        top = None
        if self.spec.response == "choice":
            top = self.spec.labels[int(np.argmax(self.observed.emotion_dist[i]))]
        face = expressivity_phrase(x) if item.face.media else (f'"{item.face.text}"' if item.face.text else None)
        msgs = load_template("rationale").render({"face": face, "situation": item.situation.text.rstrip("."),
                                                  "weighted": "face" if self.split_law.is_expressive(x) else "situation",
                                                  "top": top})
        return msgs[0]["content"][0]["text"].rstrip() + " "

    def dataset(self, adapter: AdapterSpec, part: str = "train", examples_index=None, *, clip_mode: str = "images"):
        """A datasets.Dataset of (item_id, messages, image, videos, clip_mode, answer, expressivity) for one adapter
        and split. A clip face is stored as LLaMA-Factory's video data is (a `videos` column of clip sources; its
        frames per clip, `data.clip.frames`, play the part of `video_maxlen`): the collator samples its frames
        afresh each epoch with the training sampler. `clip_mode` ("video" or "images") is the model family's."""
        from datasets import Dataset

        from vlm_salience.prompting.inputs import is_clip

        template = load_template(adapter.template)
        rows = []
        for i in self.items_for(adapter, part):
            item = self.corpus.items[i]
            examples = []
            if adapter.examples == "retrieved" and examples_index is not None:
                examples = examples_index(i, adapter.k)
            try:
                prompt = build_prompt(template, item, self.spec, examples=examples,
                                      expressivity=float(self.expressivity[i]), clip=self.cfg.data.clip,
                                      clip_mode=clip_mode)
            except ItemError as exc:
                raise ConfigError(f"adapter '{adapter.name}': {exc}") from None
            clip = prompt.clip is not None and is_clip(item)
            rows.append({"item_id": item.id, "messages": json.dumps(prompt.messages),
                         "image": str(item.face.media[0]) if prompt.images and not clip else "",
                         "videos": [str(p) for p in item.face.media] if clip else [],
                         "clip_mode": clip_mode if clip else "",
                         "answer_fields": json.dumps(self.answer_fields(i)),
                         "rationale": self.rationale(i) if self.cfg.data.rationale else "",
                         "expressivity": float(self.expressivity[i])})
        if not rows:
            raise ConfigError(f"adapter '{adapter.name}' has no {part} items (subset {adapter.subset})")
        return Dataset.from_list(rows)

    def save(self, dataset, folder: Path) -> None:
        from vlm_salience.atomic import replaced_dir

        with replaced_dir(folder) as stage:
            dataset.save_to_disk(str(stage))

"""Fusing two answer distributions by salience: VLM-BCI (a model's face-only and context-only answers) and the soft
router (a face expert's and a context expert's answers) both call `fuse`, with the laws BCI fits."""

from __future__ import annotations

import numpy as np

from vlm_salience import bci
from vlm_salience.cue_models import Block, CueTable
from vlm_salience.data.corpus import Corpus
from vlm_salience.predictions import Predictions, from_blocks
from vlm_salience.salience import SalienceLaw


def answer_blocks(face: Predictions, context: Predictions, response: str, *, floor: float = 1e-6
                  ) -> tuple[list[Block], np.ndarray]:
    """Blocks of (face, context, prior) distributions from two answer sets; the prior is the mean context answer.
    Items either side failed on get placeholder uniform rows (and are reported as failed)."""
    ok = face.ok & context.ok
    if response == "choice":
        pairs = {"emotions": (face.emotion_dist[:, None, :], context.emotion_dist[:, None, :])}
        if face.valence_dist is not None and context.valence_dist is not None:
            pairs["valence"] = (face.valence_dist[:, None, :], context.valence_dist[:, None, :])
    else:
        pairs = {"emotions": (face.rating_dist, context.rating_dist)}
    blocks = []
    for name, (pf, pc) in pairs.items():
        pf = np.where(ok[:, None, None], np.nan_to_num(pf, nan=1.0), 1.0)
        pc = np.where(ok[:, None, None], np.nan_to_num(pc, nan=1.0), 1.0)
        pf = np.clip(pf, floor, None) / np.clip(pf, floor, None).sum(-1, keepdims=True)
        pc = np.clip(pc, floor, None) / np.clip(pc, floor, None).sum(-1, keepdims=True)
        prior = np.repeat(pc[ok].mean(axis=0, keepdims=True) if ok.any() else pc[:1], len(pc), axis=0)
        blocks.append(Block(name, np.arange(pf.shape[-1], dtype=float), pf, pc, prior))
    return blocks, ok


def fuse(corpus: Corpus, name: str, face: Predictions, context: Predictions, rule: str, law: SalienceLaw,
         expressivity: np.ndarray) -> Predictions:
    blocks, ok = answer_blocks(face, context, corpus.response)
    table = CueTable(item_ids=face.item_ids, blocks=blocks)
    combined, w = bci.predict(table, rule, law, expressivity)
    pred = from_blocks(corpus, name, face.item_ids, combined, w, expressivity)
    why = np.where(~face.ok, "face answer failed: " + face.error.astype(str) if face.error is not None else "",
                   np.where(~context.ok, "context answer failed: " + context.error.astype(str)
                            if context.error is not None else "", ""))
    pred.error = np.asarray(why, dtype=object)
    pred.emotion_dist[~ok] = np.nan
    return pred


def mixture(corpus: Corpus, name: str, face: Predictions, context: Predictions, share: np.ndarray,
            expressivity: np.ndarray) -> Predictions:
    """share * face + (1 - share) * context, per item (a gate's output)."""
    blocks, ok = answer_blocks(face, context, corpus.response)
    mixed = {b.name: bci.linear_pool(b.face, b.context, share) for b in blocks}
    pred = from_blocks(corpus, name, face.item_ids, mixed, np.column_stack([share, 1 - share]), expressivity)
    pred.error = np.where(ok, "", "an expert's answer failed").astype(object)
    pred.emotion_dist[~ok] = np.nan
    return pred

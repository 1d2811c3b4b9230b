"""GRACE as a task of the shared video workflow: `VideoClassifierTask` plus the clip's text and motion weights.

What this adds to the base task (video/task.py), and nothing else:
- per clip, its text (CATE: the corpus's reference description refined by the lexicon rules, or the table that
  `describe` wrote), resolved once with the configured fallbacks; counts of fallbacks and of texts truncated to
  the text encoder's window go to OUT/grace/texts-<fold>.json;
- per batch, the motion weights of the sampled face frames (grace/motion.py) and the padded text token ids;
- the loss: cross-entropy + the transport cost + the CLIP-style contrastive term;
- `inspect`: transport plans, weights and tokens of some clips, for the report's plot and the mass shares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_salience.grace.config import GraceTrainConfig
from vlm_salience.grace.model import contrastive_loss
from vlm_salience.grace.motion import motion_weights
from vlm_salience.video.registry import register_video_model
from vlm_salience.video.task import VideoClassifierTask

_CORPORA: dict[tuple, Any] = {}


def _corpus(cfg):
    key = (str(cfg.data.config), tuple(cfg.data.overrides), cfg.data.drop_invalid)
    if key not in _CORPORA:
        from vlm_salience.video.train import load_corpus

        _CORPORA[key] = load_corpus(cfg)
    return _CORPORA[key]


class _TextTokenizer:
    """The encoder's tokenizer on the CPU, as `ClipEncoder.tokenize` pads (SigLIP: to the window), with a count of
    texts longer than the window."""

    def __init__(self, path: str) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from vlm_salience.models.encoders import family_of, text_max_length

        self.tok = AutoTokenizer.from_pretrained(path)
        self.family = family_of(AutoConfig.from_pretrained(path).model_type)
        self.window = text_max_length(path) or int(getattr(self.tok, "model_max_length", 77))

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(x) for x in self.tok(list(texts), truncation=False)["input_ids"]]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tok(list(texts), padding="max_length" if self.family == "siglip" else "longest",
                       truncation=True, max_length=self.window, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]


@register_video_model("grace")
class GraceTask(VideoClassifierTask):
    config_class = GraceTrainConfig
    streams = ("face",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._texts: dict[str, str] | None = None
        self._tokenizer: _TextTokenizer | None = None
        self._grid: tuple[int, int] | None = None
        self.text_report: dict[str, Any] = {}

    # -- model ---------------------------------------------------------------------------------------------------
    def build_model(self):
        from vlm_salience.grace.model import GraceModel
        from vlm_salience.models.encoders import load_encoder

        model = GraceModel(load_encoder(self.cfg.model.encoder), self.cfg.model, self.classes)
        self._grid = model.grid
        return model

    @property
    def grid(self) -> tuple[int, int]:
        if self._grid is None:
            from transformers import AutoConfig

            v = AutoConfig.from_pretrained(self.encoder_path()).vision_config
            self._grid = (int(v.image_size) // int(v.patch_size),) * 2
        return self._grid

    # -- text ----------------------------------------------------------------------------------------------------
    def clip_texts(self) -> dict[str, str]:
        """Every clip's text (all folds' clips that the cache holds), resolved once, with its counts."""
        if self._texts is not None:
            return self._texts
        from vlm_salience.grace.text import (load_lexicon, middle_frames, motion_profile, read_descriptions,
                                             refine_rules, resolve_texts)

        tc = self.cfg.model.text
        if tc.source == "none":
            self._texts = {}
            return self._texts
        lexicon = load_lexicon(tc.lexicon)
        ids = sorted(set(self.store.cache.ids()))
        if tc.source == "descriptions":
            if not tc.descriptions:
                from vlm_salience.errors import ConfigError

                raise ConfigError("model.text.source is 'descriptions' but model.text.descriptions names no file; "
                                  "set it to the descriptions.csv of `vlm-salience video describe`")
            coarse, refined = read_descriptions(tc.descriptions)
        else:
            coarse = {c.clip_id: c.text for c in _corpus(self.cfg).clips}
            refined = {}
            for cid in ids:
                profile = None
                if tc.profile:
                    profile = motion_profile(middle_frames(self.store.get(cid)))
                refined[cid] = refine_rules(coarse.get(cid), lexicon, profile)
        resolved = resolve_texts(ids, coarse, refined, tc, lexicon)
        tok = self.tokenizer()
        lengths = tok.lengths([resolved.texts[i] for i in ids])
        truncated = int(sum(n > tok.window for n in lengths))
        self.text_report = {"fold": self.fold, "clips": len(ids), "paths": resolved.counts,
                            "truncated": truncated, "window": tok.window,
                            "mean_tokens": float(np.mean(lengths)) if lengths else 0.0,
                            "examples": {i: resolved.texts[i] for i in ids[:3]}}
        self._texts = resolved.texts
        return self._texts

    def tokenizer(self) -> _TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = _TextTokenizer(self.encoder_path())
        return self._tokenizer

    # -- batches -------------------------------------------------------------------------------------------------
    def batch(self, clip_ids: list[str], epoch: int | None) -> dict[str, Any]:
        b = super().batch(clip_ids, epoch)
        b["motion"] = torch.from_numpy(motion_weights(b["face"].numpy(), self.grid, self.cfg.model.motion))
        if self.cfg.model.text.source != "none":
            texts = self.clip_texts()
            ids, mask = self.tokenizer()([texts[c] for c in clip_ids])
            b["text_ids"], b["text_mask"] = ids, mask
        return b

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys = ("face", "motion", "text_ids", "text_mask")
        return {k: batch[k] for k in keys if k in batch}

    def compute_loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        m = self.cfg.model
        loss = torch.nn.functional.cross_entropy(out["logits"].float(), batch["label"])
        if "cost" in out and m.ot.weight > 0:
            loss = loss + m.ot.weight * out["cost"].float().mean()
        if "text_embed" in out and m.contrastive_weight > 0 and len(batch["label"]) > 1:
            loss = loss + m.contrastive_weight * contrastive_loss(out["video"], out["text_embed"],
                                                                  m.contrastive_temperature)
        return loss

    def setup(self, accelerator=None):
        out = super().setup(accelerator)
        self.clip_texts()
        return out

    def finish(self, model, result: dict[str, Any]) -> None:
        super().finish(model, result)
        from vlm_salience.atomic import write_text

        folder = Path(self.cfg.out) / "grace"
        folder.mkdir(parents=True, exist_ok=True)
        self.clip_texts()
        write_text(folder / f"texts-{self.fold}.json", json.dumps(self.text_report, indent=2))

    # -- inspection ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def inspect(self, model, clip_ids: list[str], device: Any = None) -> dict[str, Any]:
        """Plans (n, L, T*P), motion weights (n, T, P), text tokens and masks of these clips (segment middles)."""
        device = device or next(model.parameters()).device
        model.eval()
        b = self.batch(list(clip_ids), None)
        out = model(**{k: v.to(device) for k, v in self.model_inputs(b).items()})
        tokens = []
        if "text_ids" in b:
            tok = self.tokenizer().tok
            tokens = [tok.convert_ids_to_tokens(row[m.bool()].tolist()) for row, m in zip(b["text_ids"],
                                                                                          b["text_mask"])]
        return {"clip_ids": list(clip_ids), "plan": out["plan"].cpu().numpy() if "plan" in out else None,
                "weights": b["motion"].numpy(), "tokens": tokens, "grid": self.grid,
                "text_mask": b["text_mask"].numpy() if "text_mask" in b else None,
                "face": b["face"].numpy(), "probs": torch.softmax(out["logits"].float(), -1).cpu().numpy()}

"""Batches for supervised fine-tuning of a VLM: the model's processor builds the inputs; the loss is on the
assistant's answer only (prompt, image and padding tokens are -100).

A clip face (a `videos` row) is sampled afresh each epoch by the video models' training sampler (a random frame
per TSN segment, seeded by (seed, epoch, item): a resumed run draws the same frames) and encoded as one native
video input or as its frames as images (`prompting/clips.py`); its prompt is never cached across epochs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_salience.errors import ConfigError
from vlm_salience.prompting.images import load_image

IGNORE = -100


class VLMCollator:
    """Encodes prompts once (cached by index), writes each answer for the epoch, pads batches (right)."""

    def __init__(self, processor, family: str, *, max_length: int, eos_token_id: int, pad_token_id: int,
                 shuffle_keys: bool = True, seed: int = 0, clip=None, clip_reader=None) -> None:
        from vlm_salience.prompting.clips import ClipSettings

        self.processor, self.family = processor, family
        self.clip = clip or ClipSettings()
        # (example, rng) -> the clip's training frames from elsewhere than its sources, e.g. the `video prepare`
        # frame cache (training/clip_training.py); None: decode the `videos` sources
        self.clip_reader = clip_reader
        self.tok = processor.tokenizer
        self.max_length, self.eos, self.pad = max_length, eos_token_id, pad_token_id
        self.shuffle_keys, self.seed = shuffle_keys, seed
        self._cache: dict[int, dict[str, Any]] = {}

    def answer_text(self, example: dict[str, Any], index: int, epoch: int) -> str:
        from vlm_salience.prompting.answers import compose_answer

        rng = np.random.default_rng([self.seed, epoch, index]) if self.shuffle_keys else None
        return example.get("rationale", "") + compose_answer(json.loads(example["answer_fields"]), rng)

    def encode(self, example: dict[str, Any], index: int, epoch: int = 0) -> dict[str, Any]:
        """Prompt tensors (cached) and this epoch's answer tokens with their labels."""
        prompt = self._prompt(example, index, epoch)
        answer_ids = torch.tensor(self.tok(self.answer_text(example, index, epoch),
                                           add_special_tokens=False).input_ids + [self.eos])
        ids = torch.cat([prompt["prompt_ids"], answer_ids])
        if len(ids) > self.max_length:
            raise ConfigError(f"item {example.get('item_id')}: {len(ids)} tokens exceed data.max_length "
                              f"{self.max_length}; raise it (examples are never silently truncated)")
        out = {"input_ids": ids, "labels": torch.cat([torch.full_like(prompt["prompt_ids"], IGNORE), answer_ids])}
        if "mm_token_type_ids" in prompt:
            out["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"],
                                                  torch.zeros(len(answer_ids), dtype=torch.long)])
        out.update({k: v for k, v in prompt.items() if k not in ("prompt_ids", "mm_token_type_ids")})
        return out

    def _frames(self, example: dict[str, Any], epoch: int) -> list[Any]:
        from vlm_salience.errors import DataError
        from vlm_salience.prompting.clips import sample_frames, training_rng

        rng = training_rng(self.clip, epoch, str(example.get("item_id")))
        try:
            if self.clip_reader is not None:
                return self.clip_reader(example, rng)
            return sample_frames([Path(p) for p in example["videos"]], self.clip, train=True, rng=rng)
        except DataError as exc:
            raise ConfigError(f"item {example.get('item_id')}: cannot read its face clip ({exc})") from None

    def _prompt(self, example: dict[str, Any], index: int, epoch: int = 0) -> dict[str, Any]:
        from vlm_salience.prompting.clips import encode_prompts

        clip = bool(example.get("videos"))
        if not clip and index in self._cache:
            return self._cache[index]
        messages = json.loads(example["messages"])
        n_images = sum(p["type"] == "image" for m in messages for p in m["content"])
        n_videos = sum(p["type"] == "video" for m in messages for p in m["content"])
        images, videos = [], []
        if clip:
            from vlm_salience.prompting.clips import stream_clips

            frames = self._frames(example, epoch)  # stream both: the face frames, then the scene frames
            clips = stream_clips(frames, self.clip)  # one video input per stream
            videos = clips * (n_videos // len(clips))
            images = frames * (n_images // len(frames)) if n_images else []
        elif n_images:
            images = [load_image(example["image"])] * n_images
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        enc = encode_prompts(self.processor, self.family, [prompt], [images], [videos], self.clip if clip else None,
                             padding=False)
        out = {"prompt_ids": enc.pop("input_ids")[0]}
        enc.pop("attention_mask", None)
        if "mm_token_type_ids" in enc:
            out["mm_token_type_ids"] = enc.pop("mm_token_type_ids")[0]
        out.update({k: v for k, v in enc.items() if torch.is_tensor(v)})
        if not clip:
            self._cache[index] = out
        return out

    def __call__(self, encoded: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        B = len(encoded)
        T = max(len(e["input_ids"]) for e in encoded)
        batch = {"input_ids": torch.full((B, T), self.pad, dtype=torch.long),
                 "labels": torch.full((B, T), IGNORE, dtype=torch.long),
                 "attention_mask": torch.zeros((B, T), dtype=torch.long)}
        if "mm_token_type_ids" in encoded[0]:
            batch["mm_token_type_ids"] = torch.zeros((B, T), dtype=torch.long)
        for b, e in enumerate(encoded):
            n = len(e["input_ids"])
            batch["input_ids"][b, :n] = e["input_ids"]
            batch["labels"][b, :n] = e["labels"]
            batch["attention_mask"][b, :n] = 1
            if "mm_token_type_ids" in batch:
                batch["mm_token_type_ids"][b, :n] = e["mm_token_type_ids"]
        for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask", "pixel_values_videos",
                    "video_grid_thw", "second_per_grid_ts"):
            parts = [e[key] for e in encoded if key in e]
            if parts:
                if len(parts) != B and key not in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts"):
                    raise ConfigError("a batch mixes examples with and without images; train such data "
                                      "in separate adapters or give every prompt the same inputs")
                batch[key] = torch.cat(parts, dim=0)
        return batch

    def trainable_tokens(self, encoded: dict[str, Any]) -> int:
        return int((encoded["labels"] != IGNORE).sum())

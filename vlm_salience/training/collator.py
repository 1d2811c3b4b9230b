"""Batches for supervised fine-tuning of a VLM: the model's processor builds the inputs; the loss is on the
assistant's answer only (prompt, image and padding tokens are -100)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from vlm_salience.errors import ConfigError
from vlm_salience.prompting.inputs import load_image

IGNORE = -100


class VLMCollator:
    """Encodes prompts once (cached by index), writes each answer for the epoch, pads batches (right)."""

    def __init__(self, processor, family: str, *, max_length: int, eos_token_id: int, pad_token_id: int,
                 shuffle_keys: bool = True, seed: int = 0) -> None:
        self.processor, self.family = processor, family
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
        prompt = self._prompt(example, index)
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

    def _prompt(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        if index in self._cache:
            return self._cache[index]
        messages = json.loads(example["messages"])
        n_images = sum(p["type"] == "image" for m in messages for p in m["content"])
        images = [load_image(example["image"])] * n_images if n_images else []
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
        if images:
            kwargs["images"] = [images] if self.family == "idefics3" else images
        enc = dict(self.processor(**kwargs))
        out = {"prompt_ids": enc.pop("input_ids")[0]}
        enc.pop("attention_mask", None)
        if "mm_token_type_ids" in enc:
            out["mm_token_type_ids"] = enc.pop("mm_token_type_ids")[0]
        out.update({k: v for k, v in enc.items() if torch.is_tensor(v)})
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
        for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask"):
            parts = [e[key] for e in encoded if key in e]
            if parts:
                if len(parts) != B and key != "image_grid_thw":
                    raise ConfigError("a batch mixes examples with and without images; train such data "
                                      "in separate adapters or give every prompt the same inputs")
                batch[key] = torch.cat(parts, dim=0)
        return batch

    def trainable_tokens(self, encoded: dict[str, Any]) -> int:
        return int((encoded["labels"] != IGNORE).sum())

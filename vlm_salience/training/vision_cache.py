"""Frozen vision features computed once per image and reused across epochs (issue 31's lever).

With LoRA on the language model the vision tower (and projector) is frozen and an image example's pixels are the
same every epoch (the collator caches each prompt's tensors; only clips are re-sampled), so the image features are
the same every epoch too. `VisionFeatureCache` computes them per example under `torch.no_grad()` the first time an
example is trained and hands the model the cached features afterwards, through the `mm_encoder_outputs` argument
every supported family (Qwen2-VL, Qwen2.5-VL, LLaVA, Idefics3) takes in place of pixels.

It checks that the features are frozen (their output needs no gradient: no trainable weight in the tower or
projector, e.g. `lora.target: language+projector` or `all` turns it off) and is never used for clips. Per-example
features equal the batched ones to rounding (the tower sees one example's images at a time); the loss and
gradients are the same to tolerance (tests/test_training_levers.py).

Without the cache, `torch.no_grad()` around a frozen tower would change nothing: autograd already records nothing
for a module whose weights and inputs need no gradient.
"""

from __future__ import annotations

from typing import Any

IMAGE_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes")
PIXEL_KEYS = ("pixel_values", "pixel_attention_mask", "image_sizes")  # replaced by the features (the grid stays:
# Qwen2-VL's rotary positions read it)
INDEX_KEY = "example_index"  # the batch's example indices, added by the collate of a task with the cache on


def combine(parts: list[Any]):
    """Per-example pooler outputs -> the batch's: a tuple of per-image tensors (what every family returns)."""
    out: list[Any] = []
    for p in parts:
        if isinstance(p, (list, tuple)):
            out.extend(p)
        else:
            out.append(p)
    return tuple(out)


class VisionFeatureCache:
    """{example index: its images' features}, filled on first use; `inputs(model, batch, sources)` rewrites a batch."""

    def __init__(self) -> None:
        self.store: dict[int, Any] = {}
        self.frozen: bool | None = None  # None: not checked yet
        self.hits = self.misses = 0

    def _encode(self, model, source: dict[str, Any], device, grad: bool):
        import torch
        from accelerate.utils import extract_model_from_parallel

        base = extract_model_from_parallel(model)
        kwargs = {k: source[k].to(device) for k in IMAGE_KEYS if k in source}
        with torch.set_grad_enabled(grad):
            return base.get_image_features(**kwargs, return_dict=True).pooler_output

    def inputs(self, model, batch: dict[str, Any], sources: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The model's inputs for `batch`: cached features in place of pixels where it can, else the batch as it is
        (without its index key). `sources[i]` holds example i's image tensors (the collator's prompt cache)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        batch = dict(batch)
        index = batch.pop(INDEX_KEY, None)
        if (index is None or self.frozen is False or "pixel_values" not in batch or "pixel_values_videos" in batch):
            return batch
        keys = [int(i) for i in index.tolist()]
        if any(k not in sources or "pixel_values" not in sources[k] for k in keys):
            return batch  # a clip or an example without images: the model computes its features itself
        device = batch["pixel_values"].device
        for k in keys:
            if k in self.store:
                self.hits += 1
                continue
            self.misses += 1
            if self.frozen is None:  # the first example: with gradients on, to see that nothing trains
                feats = self._encode(model, sources[k], device, grad=True)
                self.frozen = not any(f.requires_grad for f in combine([feats]))
                if not self.frozen:
                    return batch
            else:
                feats = self._encode(model, sources[k], device, grad=False)
            self.store[k] = tuple(f.detach() for f in combine([feats]))
        out = {k: v for k, v in batch.items() if k not in PIXEL_KEYS}
        out["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(
            pooler_output=combine([self.store[k] for k in keys]))}
        return out

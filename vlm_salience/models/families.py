"""What differs between VLM families: module names, special tokens, position ids after a cached prefix."""

from __future__ import annotations

FAMILIES = {
    "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl",
    "llava": "llava", "llava_next": "llava",
    "idefics3": "idefics3", "smolvlm": "idefics3",
}
# Vision towers and projectors: kept out of 4-bit quantisation (their input sizes need not fit the block size)
# and, by default, out of LoRA.
VISION_MODULES = ["visual", "vision_tower", "multi_modal_projector", "vision_model", "connector"]
# The same modules as a pattern for transformers' quantisers, which match from the start of a module's full name.
VISION_MODULE_PATTERN = r"(?:.*\.)?(?:" + "|".join(VISION_MODULES) + ")"


def family_of(model_type: str) -> str:
    if model_type not in FAMILIES:
        raise ValueError(f"model type '{model_type}' is not a supported VLM family; supported: "
                         f"{sorted(FAMILIES)}")
    return FAMILIES[model_type]


def continuation_positions(model, family: str, full_mask, new_tokens: int, repeats: int):
    """Position ids for `new_tokens` appended after a cached (left-padded) prefix whose batch was repeated
    `repeats` times per item. Qwen2-VL adds its multimodal rope offset (rope_deltas) and uses 3 position axes."""
    pos = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new_tokens:]
    if family == "qwen2_vl":
        deltas = getattr(getattr(model, "model", model), "rope_deltas", None)
        if deltas is not None:
            pos = pos + deltas.to(pos.device).repeat_interleave(repeats, dim=0)
        return pos[None].expand(3, -1, -1)
    return pos

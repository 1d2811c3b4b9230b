"""What differs between VLM families: module names, special tokens, position ids after a cached prefix."""

from __future__ import annotations

FAMILIES = {
    "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl",
    "llava": "llava", "llava_next": "llava",
    # their own families: each has a native video path (prompting/llava_video.py)
    "llava_onevision": "llava_onevision", "llava_next_video": "llava_next_video",
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

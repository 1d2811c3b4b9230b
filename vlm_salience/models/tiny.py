"""Tiny randomly initialised models built from configs and saved like real checkpoints (safetensors + processor).

They stand in for real models where no hub is reachable (tests, CI, the demo): the loading code that reads them
is the same code that reads a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_clip(out: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A CLIP-style image encoder (random weights) with a PIL image processor, saved to `out`."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = Path(out)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 128, "max_position_embeddings": 32},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": 8},
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(out, safe_serialization=True)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out

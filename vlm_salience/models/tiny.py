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


# ---------------------------------------------------------------------------------------------------------------
# Tiny VLMs: Qwen2-VL, LLaVA, LLaVA-OneVision, LLaVA-NeXT-Video and Idefics3 families, random weights, a locally
# trained tokenizer, a chat template.

from typing import Any, Literal  # noqa: E402

from vlm_salience.config import StrictModel  # noqa: E402

_SPECIALS = {
    "qwen2_vl": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"], "<|im_end|>", "<|endoftext|>"),
    "llava": (["<pad>", "</s>", "<s>", "<image>"], "</s>", "<pad>"),
    "llava_onevision": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"], "<|im_end|>",
                        "<|endoftext|>"),
    "llava_next_video": (["<pad>", "</s>", "<s>", "<image>", "<video>"], "</s>", "<pad>"),
    "idefics3": (["<pad>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"],
                 "<end_of_utterance>", "<pad>"),
}


class TinyVLMConfig(StrictModel):
    """Sizes of a tiny random VLM (configs/models/*.yaml)."""

    family: Literal["qwen2_vl", "llava", "llava_onevision", "llava_next_video", "idefics3"]
    vocab_size: int = 2000
    text: dict[str, Any]
    vision: dict[str, Any]
    image_size: int = 56
    seed: int = 0


def _chat_template(family: str) -> str:
    return (Path(__file__).parent / "chat_templates" / f"{family}.jinja").read_text(encoding="utf-8")


def build_tiny_vlm(cfg: TinyVLMConfig, out: str | Path) -> Path:
    """Build, save (safetensors + processor + chat template) and return the folder of a tiny random VLM."""
    import torch

    from vlm_salience.atomic import replaced_dir
    from vlm_salience.models.tokenizer import train_tokenizer

    out = Path(out)
    torch.manual_seed(cfg.seed)
    specials, eos, pad = _SPECIALS[cfg.family]
    tok = train_tokenizer(specials, vocab_size=cfg.vocab_size, eos=eos, pad=pad)
    builder = {"qwen2_vl": _qwen2_vl, "llava": _llava, "llava_onevision": _llava_onevision,
               "llava_next_video": _llava_next_video, "idefics3": _idefics3}[cfg.family]
    model, processor = builder(cfg, tok, _chat_template(cfg.family))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(eos)
    with replaced_dir(out) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    return out


def _text_config(cfg: TinyVLMConfig, tok, **extra) -> dict[str, Any]:
    return {"vocab_size": len(tok), "max_position_embeddings": 4096, "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id, "bos_token_id": None, "tie_word_embeddings": False,
            **cfg.text, **extra}


def _qwen2_vl(cfg: TinyVLMConfig, tok, chat: str):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlm_salience.models.processors import Qwen2VLImageOnlyProcessor

    head_dim = cfg.text["hidden_size"] // cfg.text["num_attention_heads"]
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]  # temporal, height, width halves of the rope
    text = _text_config(cfg, tok, rope_parameters={"rope_type": "default", "mrope_section": section,
                                                    "rope_theta": 10000.0})
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    vision = {"hidden_size": cfg.text["hidden_size"], "temporal_patch_size": 2, **cfg.vision}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    pixels = cfg.image_size * cfg.image_size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels,
                                               patch_size=cfg.vision["patch_size"],
                                               merge_size=cfg.vision["spatial_merge_size"], temporal_patch_size=2)
    processor = Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tok, chat_template=chat)
    return Qwen2VLForConditionalGeneration(config), processor


def _llava(cfg: TinyVLMConfig, tok, chat: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.processing_llava import LlavaProcessor

    s = cfg.image_size
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=s, **cfg.vision), text_config=LlamaConfig(**_text_config(cfg, tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=cfg.vision["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=chat)
    return LlavaForConditionalGeneration(config), processor


def _llava_onevision(cfg: TinyVLMConfig, tok, chat: str):
    """SigLIP tower (no CLS: feature strategy "full"), Qwen2 text, anyres grid of 1x1..2x2 tiles of image_size."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    from vlm_salience.models.processors import LlavaOnevisionImageOnlyProcessor

    s = cfg.image_size
    pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(image_size=s, vision_use_head=False, **cfg.vision),
        text_config=Qwen2Config(**_text_config(cfg, tok)), image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full", vision_feature_layer=-1)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": s, "width": s}, image_grid_pinpoints=pinpoints)
    processor = LlavaOnevisionImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tok, num_image_tokens=(s // cfg.vision["patch_size"]) ** 2,
        vision_feature_select_strategy="full", chat_template=chat)
    return LlavaOnevisionForConditionalGeneration(config), processor


def _llava_next_video(cfg: TinyVLMConfig, tok, chat: str):
    """CLIP tower (CLS dropped: strategy "default"), Llama text, anyres grid of 1x1..2x2 tiles of image_size;
    video frames average-pooled with stride 2 (an even patch grid: the processor counts n^2 // 4 per frame)."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig,
                              LlavaNextVideoForConditionalGeneration)
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from vlm_salience.models.processors import LlavaNextVideoImageOnlyProcessor

    s, p = cfg.image_size, cfg.vision["patch_size"]
    if (s // p) % 2:
        raise ValueError(f"llava_next_video: image_size / patch_size = {s // p} must be even (stride-2 video pooling)")
    pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    n = (s // p) ** 2
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(image_size=s, **cfg.vision), text_config=LlamaConfig(**_text_config(cfg, tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default", vision_feature_layer=-1,
        spatial_pool_mode="average", spatial_pool_stride=2, image_seq_length=n, video_seq_length=n // 4)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextVideoImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=p, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat)
    return LlavaNextVideoForConditionalGeneration(config), processor


def _idefics3(cfg: TinyVLMConfig, tok, chat: str):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

    s, scale = cfg.image_size, 2
    config = Idefics3Config(vision_config=Idefics3VisionConfig(image_size=s, **cfg.vision),
                            text_config=LlamaConfig(**_text_config(cfg, tok)),
                            image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale)
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": s},
                                                max_image_size={"longest_edge": s})
    seq_len = (s // cfg.vision["patch_size"]) ** 2 // scale**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len,
                                  chat_template=chat)
    return Idefics3ForConditionalGeneration(config), processor

"""Processors that work without torchvision, and one `load_processor` for any checkpoint.

The stock Qwen2-VL / Qwen2.5-VL, LLaVA-OneVision and LLaVA-NeXT-Video processors require a video processor, which
needs torchvision;
the image-only subclasses below drop it (clips are built from the image processor: prompting/clips.py,
prompting/llava_video.py). They are registered with AutoProcessor, so tiny checkpoints saved with them reload
through `AutoProcessor.from_pretrained`, and real Qwen checkpoints load with them where torchvision is missing.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from transformers import AutoConfig, AutoProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.models.llava_next_video import LlavaNextVideoConfig
from transformers.models.llava_next_video.processing_llava_next_video import LlavaNextVideoProcessor
from transformers.models.llava_onevision import LlavaOnevisionConfig
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLConfig
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class LlavaOnevisionImageOnlyProcessor(LlavaOnevisionProcessor):
    """Its settings are named in the signature: a processor saves only the __init__ arguments it can see."""

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, video_token=video_token,
                         vision_aspect_ratio=vision_aspect_ratio, **kwargs)


class LlavaNextVideoImageOnlyProcessor(LlavaNextVideoProcessor):
    """Its settings are named in the signature: a processor saves only the __init__ arguments it can see. The
    parent's __init__ hands its parts on by position (video processor first), so its settings are set here and
    ProcessorMixin is given the two parts this processor has."""

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, patch_size=None,
                 vision_feature_select_strategy=None, video_token="<video>", image_token="<image>",
                 num_additional_image_tokens=0, **kwargs):
        self.patch_size = patch_size
        self.num_additional_image_tokens = num_additional_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = getattr(tokenizer, "image_token", image_token)
        self.video_token = getattr(tokenizer, "video_token", video_token)
        self.image_token_id = (getattr(tokenizer, "image_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.image_token))
        self.video_token_id = (getattr(tokenizer, "video_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.video_token))
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


IMAGE_ONLY = {"qwen2_vl": Qwen2VLImageOnlyProcessor, "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
              "llava_onevision": LlavaOnevisionImageOnlyProcessor,
              "llava_next_video": LlavaNextVideoImageOnlyProcessor}
AutoProcessor.register(Qwen2VLConfig, Qwen2VLImageOnlyProcessor, exist_ok=True)
AutoProcessor.register(Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
AutoProcessor.register(LlavaOnevisionConfig, LlavaOnevisionImageOnlyProcessor, exist_ok=True)
AutoProcessor.register(LlavaNextVideoConfig, LlavaNextVideoImageOnlyProcessor, exist_ok=True)


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _declared_processor(path: str) -> str | None:
    cfg = Path(path) / "processor_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("processor_class")
    return None


def has_image_processor(processor) -> bool:
    """A multimodal processor, not what AutoProcessor falls back to when it finds no processor class (a bare
    tokenizer, which would turn every image prompt into text without pixels)."""
    return getattr(processor, "image_processor", None) is not None and hasattr(processor, "tokenizer")


def load_processor(path: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """The checkpoint's processor, checked to be one with an image processor.

    AutoProcessor returns a bare tokenizer when it cannot resolve the processor class (seen on a CUDA machine with
    torchvision for a saved tiny Qwen2-VL): for the families of IMAGE_ONLY (Qwen2-VL / Qwen2.5-VL, LLaVA-OneVision,
    LLaVA-NeXT-Video) the image-only processor is loaded instead; any other family is an error naming the
    checkpoint."""
    config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    image_only = IMAGE_ONLY.get(config.model_type)
    if image_only is not None and (not torchvision_available() or _declared_processor(path) == image_only.__name__):
        processor = image_only.from_pretrained(path, revision=revision)
    else:
        processor = AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        if not has_image_processor(processor) and image_only is not None:
            processor = image_only.from_pretrained(path, revision=revision)
    if not has_image_processor(processor):
        from vlm_salience.errors import ConfigError

        raise ConfigError(f"{path}: AutoProcessor loaded a {type(processor).__name__}, not a processor with an image "
                          f"processor (declared: {_declared_processor(path) or 'none'}); the checkpoint needs a "
                          "processor_config.json naming its processor class and a preprocessor_config.json "
                          "(save it with processor.save_pretrained)")
    return processor

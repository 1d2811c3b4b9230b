"""Loading real VLMs from any hub id or local path: dtype, device map, 8-bit / 4-bit (nf4) quantisation.

Weights load from safetensors only, and remote code stays off unless a config turns it on. `dtype: auto` means
bfloat16 where the device multiplies it natively and float32 elsewhere (models/hardware.py); the pick is logged
and recorded in the loaded config, so cache keys name the precision that ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from vlm_salience.config import StrictModel
from vlm_salience.models.families import VISION_MODULE_PATTERN, family_of

log = logging.getLogger(__name__)


class ModelConfig(StrictModel):
    name: str  # how results name this model
    path: str  # hub id or local folder
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device_map: str | dict[str, Any] | None = None  # e.g. "auto", "cpu", "cuda:0"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # e.g. "sdpa", "eager"


@dataclass
class LoadedVLM:
    model: Any
    processor: Any
    family: str
    config: ModelConfig

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self):
        return next(self.model.parameters()).device


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


def target_device(device_map: str | dict[str, Any] | None) -> str:
    """The device a device_map puts the weights on (the first one, for a dict): what `auto` dtypes are chosen for."""
    import torch

    if isinstance(device_map, dict):
        first = next(iter(device_map.values()), "cpu")
        device_map = f"cuda:{first}" if isinstance(first, int) else str(first)
    if device_map in (None, "cpu"):
        return "cpu"
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device_map)


def resolve_dtype(cfg: ModelConfig) -> str:
    """The dtype name that will load: `auto` becomes bfloat16 or float32 by the target device's hardware."""
    if cfg.dtype != "auto":
        return cfg.dtype
    from vlm_salience.models.hardware import auto_dtype

    device = target_device(cfg.device_map)
    picked = auto_dtype(device)
    log.info("model %s: dtype auto -> %s on %s", cfg.name, picked, device)
    return picked


def quantization_config(cfg: ModelConfig, compute_dtype=None):
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = [VISION_MODULE_PATTERN, "lm_head"]
    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)


def load_vlm(cfg: ModelConfig) -> LoadedVLM:
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlm_salience.models.processors import load_processor

    hf_config = AutoConfig.from_pretrained(cfg.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    family = family_of(hf_config.model_type)
    cfg = cfg.model_copy(update={"dtype": resolve_dtype(cfg)})
    dtype = torch_dtype(cfg.dtype)
    kwargs: dict[str, Any] = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code,
                              "use_safetensors": True, "dtype": dtype}
    if cfg.device_map is not None:
        kwargs["device_map"] = cfg.device_map
    q = quantization_config(cfg, dtype)
    if q is not None:
        kwargs["quantization_config"] = q
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(cfg.path, **kwargs).eval()
    processor = load_processor(cfg.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"{cfg.path} has no chat template; prompting needs one (set it in the processor config)")
    return LoadedVLM(model=model, processor=processor, family=family, config=cfg)

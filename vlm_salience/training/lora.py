"""LoRA and QLoRA with peft. Default targets: the language model's linear layers only (vision tower frozen);
options add the projector, or the vision tower too."""

from __future__ import annotations

import re

from vlm_salience.errors import ConfigError
from vlm_salience.models.families import VISION_MODULES
from vlm_salience.training.config import LoraConfig

PROJECTORS = ("multi_modal_projector", "connector", "merger")


def _linear_names(model) -> list[str]:
    import torch

    kinds = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb

        kinds = kinds + (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    except ImportError:
        pass
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def target_modules(model, cfg: LoraConfig) -> list[str]:
    """Full names of the linear layers LoRA adapts; an explicit pattern that matches nothing is an error."""
    names = _linear_names(model)
    if cfg.target_modules is not None:
        if isinstance(cfg.target_modules, str):
            chosen = [n for n in names if re.fullmatch(cfg.target_modules, n)]
        else:
            chosen = [n for n in names if any(n == t or n.endswith("." + t) for t in cfg.target_modules)]
        if not chosen:
            sample = sorted({n.split(".")[-1] for n in names})
            raise ConfigError(f"lora.target_modules {cfg.target_modules!r} matches no linear layer of the model; "
                              f"its linear layers end in {sample}")
        return chosen

    def part(n: str) -> str:
        pieces = set(n.split("."))
        if pieces & set(PROJECTORS):
            return "projector"
        if pieces & set(VISION_MODULES):
            return "vision"
        return "language"
    wanted = {"language": {"language"}, "language+projector": {"language", "projector"},
              "all": {"language", "projector", "vision"}}[cfg.target]
    chosen = [n for n in names if part(n) in wanted and not n.endswith("lm_head")]
    if not chosen:
        raise ConfigError(f"lora.target {cfg.target!r} finds no linear layer in this model")
    return chosen


def peft_config(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    if cfg.modules_to_save:
        names = {n.split(".")[-1] for n, _ in model.named_modules()}
        missing = [m for m in cfg.modules_to_save if m not in names]
        if missing:
            raise ConfigError(f"lora.modules_to_save {missing} names no module of the model")
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=target_modules(model, cfg), bias="none", task_type="CAUSAL_LM",
                          modules_to_save=cfg.modules_to_save or None)


def prepare_quantized(model, *, gradient_checkpointing: bool = False):
    """A quantized (8-bit / nf4) base made ready for LoRA: every base weight frozen, and every weight that was not
    quantized (vision tower, projector, embeddings, norms, lm_head) LEFT in the dtype it loaded in (the compute
    dtype, bf16 on a GPU), unlike peft's `prepare_model_for_kbit_training`, which casts all of them to fp32.

    Why (issue 31: nf4 needed 34.7 GB against bf16 LoRA's 19.6 GB at the 2B shapes): that upcast makes the frozen
    vision tower (0.67B parameters at the 2B shapes) and embeddings 4 bytes a weight instead of 2, and, worse, an
    fp32 embedding and fp32 norm weights turn the whole residual stream fp32 (bf16 activations x fp32 weight ->
    fp32), so every activation kept for the backward pass is twice the size (training/memory.py accounts both).
    The LoRA weights are fp32 regardless (peft's `autocast_adapter_dtype`), and so their gradients and optimizer
    state; RMSNorm computes its variance in fp32 either way. Gradient checkpointing as in the unquantized path."""
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def apply_lora(model, cfg: LoraConfig, adapter_name: str, *, gradient_checkpointing: bool = False):
    from peft import get_peft_model

    if cfg.quantization != "none":
        model = prepare_quantized(model, gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config(model, cfg), adapter_name=adapter_name)

"""Parameter memory of LoRA fine-tuning with a bf16, 8-bit or nf4 (QLoRA) base, by module group and dtype.

Issue 31 measured nf4 QLoRA at 34.7 GB against 19.6 GB for bf16 LoRA at Qwen2-VL-2B's shapes on an H100. This
module accounts where the bytes of the weights go, without a GPU and without allocating them: the model is built
on the meta device (shapes and dtypes only), the linear layers bitsandbytes would quantize (the same skip list as
`models/loading.py:quantization_config`, matched as transformers matches it) are replaced by frozen parameters of
their stored size and dtype (nf4: half a byte a weight, plus its block scales; 8-bit: a byte, plus a row scale),
then the project's preparation and LoRA are applied (`training/lora.py:apply_lora`) and every parameter is summed
by group and dtype. The same function reads a model really quantized by bitsandbytes (its `Params4bit` and
`Int8Params` with their quantization state): tests/test_training_memory.py checks the emulation against bitsandbytes
on a tiny model.

LoRA's trainable weights also carry their gradient and AdamW's two moments (fp32): the "LoRA training state" row.
Activations are not parameters: `saved_activation_bytes` sums what a training forward pass keeps for the backward
pass, by dtype.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from vlm_salience.models.families import VISION_MODULES

GROUPS = ("language linear", "vision", "embeddings", "lm_head", "norms and other", "LoRA")
NF4_BLOCK, NF4_BLOCK2 = 64, 256  # bitsandbytes' nf4 blocksize and its double quantisation's


def group_of(module_name: str, param_name: str, linear: bool) -> str:
    """The group a parameter's bytes are counted under."""
    full = f"{module_name}.{param_name}" if module_name else param_name
    pieces = set(full.split("."))
    if any(p.startswith("lora_") for p in pieces):
        return "LoRA"
    if pieces & set(VISION_MODULES):
        return "vision"
    if "lm_head" in pieces:
        return "lm_head"
    if "embed_tokens" in pieces:
        return "embeddings"
    return "language linear" if linear else "norms and other"


def _state_bytes(p) -> dict[str, int]:
    """Bytes a quantized weight keeps beside itself (bitsandbytes' quantization state, or the emulated one)."""
    import torch

    out: dict[str, int] = defaultdict(int)
    emulated = getattr(p, "emulated_state", None)
    if emulated is not None:
        for dtype, n in emulated.items():
            out[dtype] += n
        return out
    qs = getattr(p, "quant_state", None)
    tensors = []
    if qs is not None:
        tensors += [getattr(qs, "absmax", None), getattr(qs, "code", None), getattr(qs, "offset", None)]
        s2 = getattr(qs, "state2", None)
        if s2 is not None:
            tensors += [getattr(s2, "absmax", None), getattr(s2, "code", None)]
    tensors.append(getattr(p, "SCB", None))
    for t in tensors:
        if isinstance(t, torch.Tensor):
            out[str(t.dtype).replace("torch.", "")] += t.numel() * t.element_size()
    return out


def parameter_bytes(model) -> dict[str, dict[str, int]]:
    """{group: {dtype: bytes}} of every parameter (and quantization state) of `model`; works on the meta device."""
    import torch

    table: dict[str, dict[str, int]] = {g: defaultdict(int) for g in GROUPS}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        linear = isinstance(module, torch.nn.Linear)
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights count once
                continue
            seen.add(id(p))
            group = group_of(mname, pname, linear)
            table[group][str(p.dtype).replace("torch.", "")] += p.numel() * p.element_size()
            for dtype, n in _state_bytes(p).items():
                table[group][dtype] += n
    return {g: dict(v) for g, v in table.items()}


def frozen_fp32_bytes(model) -> int:
    """Bytes of frozen floating-point weights held in fp32 (what a bf16/quantized base should have none of)."""
    import torch

    return sum(p.numel() * p.element_size() for p in model.parameters()
               if not p.requires_grad and p.dtype == torch.float32)


def lora_training_bytes(model) -> int:
    """The trainable weights' gradient and AdamW's two moments, in fp32 (the weights are in the LoRA row)."""
    return sum(3 * p.numel() * 4 for p in model.parameters() if p.requires_grad)


# -- emulated quantization on the meta device ---------------------------------------------------------------------------

def quantized_targets(model, mode: str) -> list[str]:
    """Names of the linear layers bitsandbytes quantizes for `mode` ("8bit" / "4bit"): every torch.nn.Linear that the
    project's skip list (vision tower, projector, lm_head) does not exclude, matched as transformers matches it."""
    import torch
    from transformers.quantizers.quantizers_utils import should_convert_module

    from vlm_salience.models.loading import ModelConfig, quantization_config

    skip = quantization_config(ModelConfig(name="m", path="m", quantization=mode)).llm_int8_skip_modules
    return [n for n, m in model.named_modules()
            if type(m) is torch.nn.Linear and should_convert_module(n, skip)]


def emulate_quantization(model, mode: str) -> int:
    """Replace the weights bitsandbytes would quantize by frozen meta parameters of their stored size: nf4 packs two
    weights a byte (uint8) with one absmax per 64 weights, itself 8-bit with an fp32 scale per 256 (double
    quantisation, as `quantization_config` asks); 8-bit is one int8 a weight and an fp32 scale per row. Returns how
    many layers were replaced."""
    import torch

    names = quantized_targets(model, mode)
    modules = dict(model.named_modules())
    for name in names:
        m = modules[name]
        n = m.weight.numel()
        if mode == "4bit":
            w = torch.empty((math.ceil(n / 2), 1), dtype=torch.uint8, device="meta")
            blocks = math.ceil(n / NF4_BLOCK)
            state = {"uint8": blocks, "float32": 4 * (math.ceil(blocks / NF4_BLOCK2) + 16 + 256 + 1)}
        elif mode == "8bit":
            w = torch.empty(tuple(m.weight.shape), dtype=torch.int8, device="meta")
            state = {"float32": 4 * m.weight.shape[0]}
        else:
            raise ValueError(f"mode {mode!r}: 4bit or 8bit")
        param = torch.nn.Parameter(w, requires_grad=False)
        param.emulated_state = state
        m.weight = param
    return len(names)


def build_meta_model(yaml_path, dtype: str = "bfloat16", text_layers: int | None = None,
                     vision_layers: int | None = None):
    """The random VLM of a tiny-model YAML (configs/models/*.yaml; Qwen2-VL family) on the meta device in `dtype`:
    shapes and dtypes only, no memory; optionally at reduced depth."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vlm_salience.config import load_config
    from vlm_salience.models.tiny import TinyVLMConfig

    cfg = load_config(yaml_path, TinyVLMConfig)
    if cfg.family != "qwen2_vl":
        raise ValueError(f"{yaml_path}: memory accounting builds the qwen2_vl family only, not {cfg.family}")
    text = dict(cfg.text)
    vision = {"hidden_size": text["hidden_size"], "temporal_patch_size": 2, **cfg.vision}
    if text_layers is not None:
        text["num_hidden_layers"] = text_layers
    if vision_layers is not None:
        vision["depth"] = vision_layers
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2VLConfig(
        text_config={"vocab_size": cfg.vocab_size, "max_position_embeddings": 4096, "tie_word_embeddings": False,
                     "rope_parameters": {"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0},
                     **text},
        vision_config=vision, image_token_id=cfg.vocab_size - 2, video_token_id=cfg.vocab_size - 1)
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(config)
    return model.to(getattr(torch, dtype))


def account(model_yaml, modes=("bf16", "8bit", "4bit"), *, lora_r: int = 8, upcast: bool = False,
            text_layers: int | None = None, vision_layers: int | None = None) -> dict[str, dict[str, Any]]:
    """{mode: {"groups": {group: {dtype: bytes}}, "total": bytes, "frozen_fp32": bytes, "lora_state": bytes}} of
    LoRA (r = lora_r, the default targets) on a bf16 base ("bf16") and on an 8-bit or nf4 base, each prepared by the
    project's path (`apply_lora`). `upcast=True` prepares the quantized bases with peft's
    `prepare_model_for_kbit_training` instead (the path before issue 31's fix), to show what it costs."""
    from vlm_salience.training.config import LoraConfig
    from vlm_salience.training import lora as lora_mod

    out = {}
    for mode in modes:
        model = build_meta_model(model_yaml, "bfloat16", text_layers, vision_layers)
        quant = {"bf16": "none", "8bit": "8bit", "4bit": "4bit"}[mode]
        if quant != "none":
            emulate_quantization(model, quant)
        cfg = LoraConfig(r=lora_r, quantization=quant)
        if upcast and quant != "none":
            from peft import get_peft_model, prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            peft = get_peft_model(model, lora_mod.peft_config(model, cfg), adapter_name="a")
        else:
            peft = lora_mod.apply_lora(model, cfg, "a")
        groups = parameter_bytes(peft)
        out[mode] = {"groups": groups, "total": sum(sum(v.values()) for v in groups.values()),
                     "frozen_fp32": frozen_fp32_bytes(peft), "lora_state": lora_training_bytes(peft)}
    return out


def format_table(acc: dict[str, dict[str, Any]], unit: float = 2**30, unit_name: str = "GiB") -> str:
    """A markdown table: one row per group, one column per mode, bytes in `unit_name` (each cell by dtype)."""
    modes = list(acc)
    lines = ["| group | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]

    def cell(d: dict[str, int]) -> str:
        parts = [f"{n / unit:.3f} {t}" for t, n in sorted(d.items(), key=lambda kv: -kv[1]) if n]
        return ", ".join(parts) or "0"

    for g in GROUPS:
        lines.append(f"| {g} | " + " | ".join(cell(acc[m]["groups"].get(g, {})) for m in modes) + " |")
    lines.append("| LoRA training state (grads + AdamW, fp32) | "
                 + " | ".join(f"{acc[m]['lora_state'] / unit:.3f}" for m in modes) + " |")
    lines.append("| frozen weights in fp32 | " + " | ".join(f"{acc[m]['frozen_fp32'] / unit:.3f}" for m in modes)
                 + " |")
    lines.append(f"| **total parameters ({unit_name})** | "
                 + " | ".join(f"**{(acc[m]['total'] + acc[m]['lora_state']) / unit:.3f}**" for m in modes) + " |")
    return "\n".join(lines)


def saved_activation_bytes(model, batch) -> dict[str, int]:
    """{dtype: bytes} of the tensors one training forward pass (loss) keeps for the backward pass, parameters
    excluded (torch.autograd.graph.saved_tensors_hooks; a tensor saved twice counts once)."""
    import torch

    params = {p.data_ptr() for p in model.parameters()}
    seen: set[tuple[int, int]] = set()
    out: dict[str, int] = defaultdict(int)

    def pack(t):
        key = (t.data_ptr(), t.numel())
        if t.data_ptr() not in params and key not in seen and t.numel() > 1:
            seen.add(key)
            out[str(t.dtype).replace("torch.", "")] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss
    return dict(out)

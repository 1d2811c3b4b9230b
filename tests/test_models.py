"""Model loading: tiny checkpoints of each family reload through AutoProcessor / AutoModelForImageTextToText."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_salience.models.loading import ModelConfig, load_vlm, quantization_config


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
def test_tiny_checkpoints_reload_through_the_auto_classes(tiny_vlms, family):
    from transformers import AutoModelForImageTextToText

    from vlm_salience.models.processors import has_image_processor, load_processor

    path = tiny_vlms[family]
    assert (path / "model.safetensors").is_file() and (path / "chat_template.jinja").is_file()
    # through AutoProcessor, checked to hold an image processor (where torchvision is installed AutoProcessor once
    # returned a bare tokenizer for the tiny Qwen2-VL: tests/test_training_cuda_logic.py simulates it)
    processor = load_processor(str(path))
    assert has_image_processor(processor)
    model = AutoModelForImageTextToText.from_pretrained(path)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How does the player feel?"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    image = Image.new("RGB", (80, 80), "white")
    inputs = processor(text=[text], images=[[image]] if family == "idefics3" else [image], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    loaded = load_vlm(ModelConfig(name=family, path=str(path)))
    assert loaded.family == family and loaded.tokenizer.pad_token_id is not None


def test_dtype_and_quantisation_options(tiny_vlms):
    v = load_vlm(ModelConfig(name="bf16", path=str(tiny_vlms["llava"]), dtype="bfloat16"))
    assert next(v.model.parameters()).dtype == torch.bfloat16
    q4 = quantization_config(ModelConfig(name="q", path="x", quantization="4bit"), torch.float32)
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4" and "lm_head" in q4.llm_int8_skip_modules
    assert quantization_config(ModelConfig(name="q", path="x", quantization="8bit")).load_in_8bit
    assert quantization_config(ModelConfig(name="q", path="x")) is None


def test_8bit_loading_runs_on_cpu(tiny_vlms):
    """bitsandbytes 0.50 runs int8 on CPU; the vision tower and lm_head stay in full precision."""
    pytest.importorskip("bitsandbytes")
    v = load_vlm(ModelConfig(name="q8", path=str(tiny_vlms["qwen2_vl"]), quantization="8bit"))
    kinds = {type(m).__name__ for m in v.model.modules()}
    assert "Linear8bitLt" in kinds
    visual = {type(m).__name__ for m in v.model.model.visual.modules()}
    assert "Linear8bitLt" not in visual


def test_weights_load_from_safetensors_only_and_a_chat_template_is_required(tiny_vlms, tmp_path):
    import shutil

    from transformers import AutoModelForImageTextToText

    src = tiny_vlms["llava"]
    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled)
    model = AutoModelForImageTextToText.from_pretrained(src)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # a pickle checkpoint: never loaded
    with pytest.raises(OSError):
        load_vlm(ModelConfig(name="p", path=str(pickled)))
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    (bare / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        load_vlm(ModelConfig(name="b", path=str(bare)))

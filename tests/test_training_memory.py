"""QLoRA memory (issue 31): the project's 8-bit / nf4 path keeps no frozen weight in fp32 (peft's
`prepare_model_for_kbit_training` casts every unquantized one to fp32), so nf4 is the smallest of bf16 LoRA, 8-bit
and nf4 by parameter bytes at Qwen2-VL-2B's shapes; the accounting's emulated quantization (meta device) stores
what bitsandbytes stores; a planted fp32 upcast fails these tests."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES_2B = REPO / "configs" / "models" / "qwen2_vl_2b_shape.yaml"


def test_nf4_is_the_smallest_at_the_2b_shapes_and_keeps_nothing_frozen_in_fp32():
    from vlm_salience.training.memory import account, format_table

    acc = account(SHAPES_2B)
    total = {m: a["total"] + a["lora_state"] for m, a in acc.items()}
    assert total["4bit"] < total["8bit"] < total["bf16"], total
    for mode, a in acc.items():
        assert a["frozen_fp32"] == 0, (mode, a["groups"])
        lora = a["groups"]["LoRA"]
        assert set(lora) == {"float32"} and lora["float32"] > 0  # only LoRA weights (and their state) in fp32
    # the shapes are the 2B model's: 2.0B parameters in bf16 (2 bytes each), about 0.67B of them vision
    bf16 = acc["bf16"]["groups"]
    assert 1.9e9 < sum(sum(g.values()) for n, g in bf16.items() if n != "LoRA") / 2 < 2.1e9
    assert 0.6e9 < bf16["vision"]["bfloat16"] / 2 < 0.7e9
    assert acc["4bit"]["groups"]["vision"] == bf16["vision"]  # not quantized, not upcast
    # nf4 stores half a byte a quantized weight, plus under 2% of block scales
    q = acc["4bit"]["groups"]["language linear"]
    assert q["uint8"] / (bf16["language linear"]["bfloat16"] / 2) == pytest.approx(0.5 + 1 / 64, rel=0.01)
    assert "| vision |" in format_table(acc)

    # what the fix removed: peft's preparation upcasts the vision tower, embeddings, norms and lm_head to fp32
    old = account(SHAPES_2B, modes=("4bit",), upcast=True)["4bit"]
    assert old["frozen_fp32"] > 0.6e9 * 4 and old["groups"]["vision"].keys() == {"float32"}
    assert old["total"] > acc["4bit"]["total"] + 1.3e9


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_emulated_quantization_stores_what_bitsandbytes_stores(tiny_vlms, mode):
    """The meta-device emulation of the accounting against a model bitsandbytes really quantized (on this CPU):
    the same layers quantized, the same bytes by dtype in every group."""
    pytest.importorskip("bitsandbytes")
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.training.memory import emulate_quantization, parameter_bytes

    real = load_vlm(ModelConfig(name="q", path=str(tiny_vlms["qwen2_vl"]), quantization=mode,
                                dtype="bfloat16")).model
    with torch.device("meta"):
        twin = type(real)(real.config)
    twin = twin.to(torch.bfloat16)
    n = emulate_quantization(twin, mode)
    kinds = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}[mode]
    assert n == sum(type(m).__name__ == kinds for m in real.modules()) > 0
    want, got = parameter_bytes(real), parameter_bytes(twin)
    for group in want:
        for dtype in set(want[group]) | set(got[group]):
            a, b = want[group].get(dtype, 0), got[group].get(dtype, 0)
            assert a == pytest.approx(b, rel=0.01, abs=4096), (mode, group, dtype, a, b)


def test_the_qlora_path_keeps_unquantized_weights_in_the_compute_dtype(tiny_vlms):
    """A real nf4 load in bf16 through the project's LoRA path: only LoRA weights are fp32 (peft's
    prepare_model_for_kbit_training would have made the vision tower, embeddings, norms and lm_head fp32)."""
    pytest.importorskip("bitsandbytes")
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.training.config import LoraConfig
    from vlm_salience.training.lora import apply_lora
    from vlm_salience.training.memory import frozen_fp32_bytes

    model = load_vlm(ModelConfig(name="q", path=str(tiny_vlms["qwen2_vl"]), quantization="4bit",
                                 dtype="bfloat16")).model
    peft = apply_lora(model, LoraConfig(r=4, quantization="4bit"), "a")
    assert frozen_fp32_bytes(peft) == 0
    fp32 = {n for n, p in peft.named_parameters() if p.dtype == torch.float32}
    assert fp32 and all("lora_" in n for n in fp32)
    assert all(p.requires_grad == ("lora_" in n) for n, p in peft.named_parameters())

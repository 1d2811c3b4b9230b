"""Fine-tuning speed levers (issue 31): each lever kept changes no result.

Logits and loss at the answer positions only (`vlm_task.answer_only_loss`): the same loss and the same LoRA
gradients as the model's own loss over the whole sequence, on a real collated batch (images, right padding, answers
of different lengths) of a tiny model of each family.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.conftest import REPO
from vlm_salience.config import load_config
from vlm_salience.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch_and_model(tmp_path, corpus, model_path):
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.training.collator import VLMCollator
    from vlm_salience.training.config import LoraConfig
    from vlm_salience.training.data import TrainingData
    from vlm_salience.training.lora import apply_lora

    cfg = {"name": "t", "model": {"name": "tiny", "path": str(model_path)}, "data": {"config": str(corpus)},
           "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
           "split": {"test_fraction": 0.25, "validation_fraction": 0.0, "group": "participant"},
           "adapters": [{"name": "combined", "template": "combined"}], "tensorboard": False,
           "out": str(tmp_path / "out")}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    tc = load_config(path, TrainConfig)
    ds = TrainingData(tc).dataset(tc.adapters[0])
    v = load_vlm(ModelConfig(name="tiny", path=str(model_path)))
    tok = v.tokenizer
    col = VLMCollator(v.processor, v.family, max_length=1024, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, seed=0)
    batch = col([col.encode(dict(ds[i]), i, epoch=0) for i in range(3)])
    torch.manual_seed(0)
    model = apply_lora(v.model, LoraConfig(r=4, alpha=8, dropout=0.0), "combined")
    for n, p in model.named_parameters():  # LoRA B starts at zero: make the adapter matter
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    return model, batch


def _loss_and_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_supervised_positions_are_those_before_each_answer_token():
    from vlm_salience.training.vlm_task import supervised_positions

    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    mask, targets = supervised_positions(labels)
    assert mask.tolist() == [[False, True, True, False, False], [True, False, False, False, False]]
    assert targets.tolist() == [7, 8, 5]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
def test_answer_only_logits_give_the_models_own_loss_and_gradients(tmp_path, small_synth_corpus, tiny_vlms,
                                                                    family):
    from vlm_salience.training.vlm_task import answer_only_loss

    model, batch = _batch_and_model(tmp_path, small_synth_corpus, tiny_vlms[family])
    lengths = (batch["labels"] != -100).sum(1)
    assert lengths.min() > 0 and (batch["attention_mask"] == 0).any()  # answers, and padding to skip
    model.train()
    full, g_full = _loss_and_grads(model, model(**batch).loss)
    fast, g_fast = _loss_and_grads(model, answer_only_loss(model, batch))
    assert torch.isfinite(full) and torch.allclose(fast, full, rtol=1e-5, atol=1e-6), (fast, full)
    assert g_fast.keys() == g_full.keys() and g_full
    for name in g_full:
        assert torch.allclose(g_fast[name], g_full[name], rtol=1e-4, atol=1e-6), name
    # the hook is gone afterwards: the model's own forward gives full-length logits again
    with torch.no_grad():
        assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]


def test_answer_only_logits_catch_a_selection_one_position_off(tmp_path, small_synth_corpus, tiny_vlms,
                                                               monkeypatch):
    """The comparison above is sharp enough: the answer positions taken one step late (no shift) or one step
    early give another loss."""
    from vlm_salience.training import vlm_task

    model, batch = _batch_and_model(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"])
    model.eval()
    with torch.no_grad():
        full = model(**batch).loss
        right = vlm_task.answer_only_loss(model, batch)
        assert torch.allclose(right, full, rtol=1e-5, atol=1e-6)
        for shift in (1, -1):
            real = vlm_task.supervised_positions

            def off(labels, shift=shift, real=real):
                mask, targets = real(labels)
                return torch.roll(mask, shift, dims=1), targets
            monkeypatch.setattr(vlm_task, "supervised_positions", off)
            wrong = vlm_task.answer_only_loss(model, batch)
            monkeypatch.setattr(vlm_task, "supervised_positions", real)
            assert not torch.allclose(wrong, full, rtol=1e-3, atol=1e-4), shift


def test_the_task_uses_the_lever_and_can_turn_it_off(monkeypatch):
    from vlm_salience.training import vlm_task

    calls = []
    monkeypatch.setattr(vlm_task, "answer_only_loss", lambda model, batch: calls.append("fast") or 0.0)

    class Out:
        loss = 1.0

    def model(**batch):
        calls.append("full")
        return Out()
    task = vlm_task.VLMTask.__new__(vlm_task.VLMTask)
    assert not task.answer_only_logits  # off by default: it did not pay on the CPU and changes the rounding
    task.answer_only_logits = True
    task.loss(model, {"labels": torch.zeros(1, 2)})
    task.answer_only_logits = False
    task.loss(model, {"labels": torch.zeros(1, 2)})
    assert calls == ["fast", "full"]

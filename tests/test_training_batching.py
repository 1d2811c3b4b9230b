"""Batches by token budget (engine `batching.max_tokens`) and padding-free packed batches (`batching.packed`, the VLM
task's `pack_batch`), issue 31: the budget holds, every epoch has the same number of steps and exact resume holds;
a packed batch gives the padded batch's loss and LoRA gradients (Qwen2-VL's 3-D rope included), and a packing
whose positions do not restart per example (attention across examples) or drop the 3-D rope is caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_engine import Crash, LinearTask, config, same
from tests.test_training_speed import _batch_and_model, _loss_and_grads
from vlm_salience.engine.engine import token_budget_plan, train
from vlm_salience.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the token-budget plan ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world,accum", [(1, 1), (2, 1), (1, 3), (2, 2)])
@pytest.mark.parametrize("packed", [False, True])
def test_token_budget_batches_fit_the_budget_and_every_epoch_has_as_many(world, accum, packed):
    lengths = np.random.default_rng(0).integers(5, 50, 211)
    budget = 160
    plans = [token_budget_plan(lengths, budget, world, epoch, seed=3, accum=accum, packed=packed)
             for epoch in range(4)]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) % accum == 0  # same steps every epoch
    for plan in plans:
        seen = []
        for micro in plan:
            assert len(micro) == world
            for shard in micro:
                cost = lengths[shard].sum() if packed else lengths[shard].max() * len(shard)
                assert 0 < cost <= budget
                seen += shard
        assert len(set(seen)) == len(seen)  # disjoint across ranks, micro-steps and steps
    # most examples train in every epoch (only a ragged tail of batches is dropped)
    assert len({i for m in plans[0] for s in m for i in s}) > 0.8 * len(lengths)
    # deterministic in (seed, epoch); another epoch has other batches, not just another order
    assert plans[0] == token_budget_plan(lengths, budget, world, 0, seed=3, accum=accum, packed=packed)
    batches = [{frozenset(s) for m in p for s in m} for p in plans[:2]]
    assert batches[0] != batches[1]
    # the budget is used: batches are not needlessly small (padded: similar lengths share a batch)
    sizes = [len(s) for m in plans[0] for s in m]
    assert np.mean(sizes) > 3


def test_token_budget_errors_name_the_fix():
    with pytest.raises(ConfigError, match="example 1 alone has 90 tokens.*at least 90"):
        token_budget_plan(np.array([10, 90, 20]), 50, 1, 0, 0)
    with pytest.raises(ConfigError, match="fewer than 2 process"):
        token_budget_plan(np.array([10, 10]), 100, 2, 0, 0)


def test_token_budget_resumes_exactly_and_a_changed_budget_is_refused(tmp_path):
    """A run crashed mid-way and resumed under the same budget ends at the uninterrupted run's weights bit for bit
    (dropout on: RNG state and data position both matter); resuming under another budget, or none, is refused."""
    over = {"batching__max_tokens": 14, "optim__max_steps": 12}
    straight = LinearTask(dropout=0.5)
    r = train(config(tmp_path / "a", **over), straight, progress=False)
    assert r["steps"] == 12
    with pytest.raises(Crash):
        train(config(tmp_path / "b", **over), LinearTask(dropout=0.5, crash_at=9), progress=False)
    resumed = LinearTask(dropout=0.5)
    train(config(tmp_path / "b", **over), resumed, resume=True, progress=False)
    assert same(straight.final, resumed.final)
    assert resumed.calls == straight.calls[8:]  # the checkpoint at step 8: the same batches after it
    sizes = {len(c[0]) for c in straight.calls}
    assert len(sizes) > 1  # batch sizes follow the lengths, not optim.batch_size
    for other in ({"batching__max_tokens": 20}, {}):
        with pytest.raises(ConfigError, match="another batch plan.*max_tokens"):
            train(config(tmp_path / "b", optim__max_steps=12, **other), LinearTask(dropout=0.5), resume=True,
                  progress=False)


def test_packed_batches_are_refused_for_a_task_that_cannot_pack_and_a_budget_needs_lengths(tmp_path):
    with pytest.raises(ConfigError, match="cannot train padding-free"):
        train(config(tmp_path / "a", batching__packed=True), LinearTask(), progress=False)

    class NoLengths(LinearTask):
        def lengths(self):
            return None
    with pytest.raises(ConfigError, match="reports no lengths"):
        train(config(tmp_path / "b", batching__max_tokens=10), NoLengths(), progress=False)


# -- padding-free (packed) batches of the VLM task ----------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
def test_a_packed_batch_gives_the_padded_loss_and_gradients(tmp_path, small_synth_corpus, tiny_vlms, family):
    from vlm_salience.training.vlm_task import answer_only_loss, pack_batch

    model, batch = _batch_and_model(tmp_path, small_synth_corpus, tiny_vlms[family])
    model.train()
    mask = batch["attention_mask"]
    assert mask.sum() < mask.numel()  # the padded batch has padding to drop
    want_loss, want_grads = _loss_and_grads(model, model(**batch).loss)
    packed = pack_batch(model, batch)
    assert packed["input_ids"].shape == (1, int(mask.sum())) and "attention_mask" not in packed
    loss, grads = _loss_and_grads(model, model(**packed).loss)
    assert torch.allclose(loss, want_loss, rtol=1e-5, atol=1e-6), (family, loss, want_loss)
    for n in want_grads:
        assert torch.allclose(grads[n], want_grads[n], rtol=1e-4, atol=1e-6), (family, n)
    a_loss, _ = _loss_and_grads(model, answer_only_loss(model, {**packed}))  # with answer-only logits too
    assert torch.allclose(a_loss, want_loss, rtol=1e-5, atol=1e-6)

    # the logits at every real token agree too; the planted mistakes below move them (a random model's loss
    # hardly notices positions, so the logits are compared)
    with torch.no_grad():
        want = model(**batch).logits[mask.bool()]
        assert (model(**packed).logits[0] - want).abs().max() < 1e-4

        def moved(position_ids) -> float:
            return float((model(**{**packed, "position_ids": position_ids}).logits[0] - want).abs().max())

        # planted: positions that run on across examples -> one long sequence, attention across examples
        run_on = torch.arange(packed["input_ids"].shape[1])[None]
        assert moved(torch.cat([run_on[None], packed["position_ids"][1:]]) if family == "qwen2_vl"
                     else run_on) > 1e-3, family
        if family == "qwen2_vl":  # planted: the 3-D rope of the image tokens replaced by text positions
            assert moved(packed["position_ids"][:1].expand(4, -1, -1)) > 1e-3


def test_training_with_packed_batches_ends_at_the_same_weights(tmp_path, small_synth_corpus,
                                                                          tiny_vlms):
    """The same batches trained padded and packed: the same adapter to tolerance."""
    from tests.test_training import _config
    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.loop import Trainer

    weights, results = {}, {}
    for packed in (False, True):
        cfg = load_config(_config(tmp_path / str(packed), small_synth_corpus, tiny_vlms["qwen2_vl"],
                                  batching={"packed": packed}, optim__max_steps=3,
                                  checkpoint__every_steps=None, lora__dropout=0.0,
                                  split__validation_fraction=0.0), TrainConfig)
        trainer = Trainer(cfg, cfg.adapters[0], progress=False)
        results[packed] = trainer.train()
        weights[packed] = {n: p.detach().clone() for n, p in trainer._unwrapped().named_parameters()
                           if p.requires_grad}
    moved = max(float((weights[True][n] - weights[False][n]).abs().max()) for n in weights[True])
    assert moved < 1e-4, moved
    assert any(float(w.abs().max()) > 0 for n, w in weights[True].items() if "lora_B" in n)  # it trained

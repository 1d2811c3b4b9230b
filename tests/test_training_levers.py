"""Speed levers of `vlm-salience train` (issue 31) change no result: the frozen vision features cached per image
(training/vision_cache.py) give the loss and LoRA gradients of the uncached model, in any batch order, are never
used for a trained tower, and a whole training run ends at the same weights to tolerance."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.test_training_speed import _batch_and_model, _loss_and_grads

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sources(batch, n: int, family: str):
    """Each example's own image tensors, as the collator's prompt cache holds them (one example per slice)."""
    out = {}
    per = batch["pixel_values"].shape[0] // n
    for i in range(n):
        src = {"pixel_values": batch["pixel_values"][i * per:(i + 1) * per]}
        if "image_grid_thw" in batch:
            src["image_grid_thw"] = batch["image_grid_thw"][i:i + 1]
        if "pixel_attention_mask" in batch:
            src["pixel_attention_mask"] = batch["pixel_attention_mask"][i * per:(i + 1) * per]
        out[i] = src
    return out


def _reorder(batch, order: list[int], n: int):
    per = batch["pixel_values"].shape[0] // n
    out = {}
    for k, v in batch.items():
        if k in ("pixel_values", "pixel_attention_mask"):
            out[k] = torch.cat([v[i * per:(i + 1) * per] for i in order])
        else:
            out[k] = v[order]
    return out


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
def test_cached_vision_features_give_the_models_own_loss_and_gradients(tmp_path, small_synth_corpus, tiny_vlms,
                                                                       family):
    from vlm_salience.training.vision_cache import INDEX_KEY, VisionFeatureCache

    model, batch = _batch_and_model(tmp_path, small_synth_corpus, tiny_vlms[family])
    model.train()
    sources = _sources(batch, 3, family)
    cache = VisionFeatureCache()
    for order in ([0, 1, 2], [2, 0, 1]):  # computed (first), then reused in another batch order
        b = _reorder(batch, order, 3)
        want_loss, want_grads = _loss_and_grads(model, model(**b).loss)
        inputs = cache.inputs(model, {**b, INDEX_KEY: torch.tensor(order)}, sources)
        assert "pixel_values" not in inputs and INDEX_KEY not in inputs and "mm_encoder_outputs" in inputs
        loss, grads = _loss_and_grads(model, model(**inputs).loss)
        assert torch.allclose(loss, want_loss, rtol=1e-5, atol=1e-6), (family, order)
        for n in want_grads:
            assert torch.allclose(grads[n], want_grads[n], rtol=1e-4, atol=1e-6), (family, n)
    assert cache.frozen is True and cache.misses == 3 and cache.hits == 3


def test_a_trained_tower_is_never_cached_and_clips_pass_through(tmp_path, small_synth_corpus, tiny_vlms):
    from vlm_salience.training.vision_cache import INDEX_KEY, VisionFeatureCache

    model, batch = _batch_and_model(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"])
    sources = _sources(batch, 3, "qwen2_vl")
    visual = [p for n, p in model.named_parameters() if ".visual." in n]
    for p in visual[:2]:  # something in the tower trains (lora.target: all)
        p.requires_grad_(True)
    cache = VisionFeatureCache()
    inputs = cache.inputs(model, {**batch, INDEX_KEY: torch.arange(3)}, sources)
    assert cache.frozen is False and "pixel_values" in inputs and INDEX_KEY not in inputs and not cache.store
    for p in visual[:2]:
        p.requires_grad_(False)
    cache = VisionFeatureCache()
    inputs = cache.inputs(model, {**batch, INDEX_KEY: torch.arange(3)}, {0: {}, 1: {}, 2: {}})  # clips: no source
    assert "pixel_values" in inputs and not cache.store


def test_training_with_the_vision_cache_ends_at_the_same_weights(tmp_path, small_synth_corpus, tiny_vlms):
    """Two epochs (the second reuses every example's features): the adapter of a run with the cache equals the
    run without it to tolerance, and the cache was used."""
    from tests.test_training import _config
    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.loop import Trainer

    weights, caches = {}, {}
    for on in (False, True):
        cfg = load_config(_config(tmp_path / str(on), small_synth_corpus, tiny_vlms["qwen2_vl"], vision_cache=on,
                                  optim__max_steps=14, checkpoint__every_steps=None, lora__dropout=0.0,
                                  split__validation_fraction=0.0), TrainConfig)
        trainer = Trainer(cfg, cfg.adapters[0], progress=False)
        r = trainer.train()
        assert r["steps"] == 14 and trainer.engine.steps_per_epoch < 14  # more than one epoch
        weights[on] = {n: p.detach().clone() for n, p in trainer._unwrapped().named_parameters() if p.requires_grad}
        caches[on] = trainer.task.vision_cache
    assert caches[False] is None and caches[True].hits > 0 and caches[True].frozen
    moved = max(float((weights[True][n] - weights[False][n]).abs().max()) for n in weights[True])
    assert moved < 1e-4, moved
    assert any(float(w.abs().max()) > 0 for n, w in weights[True].items() if "lora_B" in n)  # it trained
    assert np.isfinite(moved)


# -- DataLoader workers (engine/loader.py) ---------------------------------------------------------------------------


def test_dataloader_workers_train_the_same_batches_to_the_same_weights(tmp_path):
    """Two worker processes collating ahead give the weights of in-loop collation bit for bit (dropout on: the
    RNG state stays the main process's), and a run crashed without workers resumes with them exactly."""
    from tests.test_engine import Crash, LinearTask, config, same
    from vlm_salience.engine.engine import train

    inline = LinearTask(dropout=0.5)
    train(config(tmp_path / "a"), inline, progress=False)
    ahead = LinearTask(dropout=0.5)
    train(config(tmp_path / "b", loader__workers=2), ahead, progress=False)
    assert same(inline.final, ahead.final)
    assert ahead.calls == []  # collated in the workers, not here
    with pytest.raises(Crash):
        train(config(tmp_path / "c"), LinearTask(dropout=0.5, crash_at=7), progress=False)
    resumed = LinearTask(dropout=0.5)
    train(config(tmp_path / "c", loader__workers=1), resumed, resume=True, progress=False)
    assert same(inline.final, resumed.final)


def test_micro_batches_come_in_plan_order_and_pinning_is_for_cuda_only():
    from vlm_salience.engine.loader import micro_batches, resolve_pin_memory

    class Echo:
        def collate(self, indices, epoch):
            return torch.tensor(indices + [epoch])

    shards = [[3, 1], [0, 2], [5, 4]]
    for workers in (0, 2):
        got = [b.tolist() for b in micro_batches(Echo(), shards, 7, workers=workers)]
        assert got == [[3, 1, 7], [0, 2, 7], [5, 4, 7]], workers
    assert resolve_pin_memory(None, True) and not resolve_pin_memory(None, False)
    assert not resolve_pin_memory(True, False) and not resolve_pin_memory(False, True)


# -- torch.compile of the language model ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VLM_SALIENCE_COMPILE_TEST"), reason="torch.compile takes minutes on a small "
                    "CPU (8 min here under load, aot_eager); set VLM_SALIENCE_COMPILE_TEST=1 to run it")
def test_a_compiled_language_model_gives_the_same_loss_and_gradients(tmp_path, small_synth_corpus, tiny_vlms):
    """With the aot_eager backend (graph capture and autograd tracing, no C++ code generation: the inductor
    default took 11 minutes on the loaded 2-core test machine; it passed these tolerances there once by hand)."""
    from vlm_salience.training.vlm_task import compile_language_model

    model, batch = _batch_and_model(tmp_path, small_synth_corpus, tiny_vlms["qwen2_vl"])
    model.train()
    want_loss, want_grads = _loss_and_grads(model, model(**batch).loss)
    lm = compile_language_model(model, backend="aot_eager")
    assert lm is model.get_base_model().model.language_model and lm._compiled_call_impl is not None
    loss, grads = _loss_and_grads(model, model(**batch).loss)
    assert torch.allclose(loss, want_loss, rtol=1e-4, atol=1e-5)
    for n in want_grads:
        assert torch.allclose(grads[n], want_grads[n], rtol=1e-3, atol=1e-5), n

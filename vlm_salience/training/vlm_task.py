"""The VLM LoRA SFT task: one LoRA adapter of a VLM on the instruction data of one `AdapterSpec`.

The engine (`engine/engine.py`) runs it; this module holds everything VLM-specific: loading (or building) the
base, the collator (answer-only loss), LoRA/QLoRA, the retrieved few-shot examples in the prompts, evaluation by
label scoring (valence MSE and r, KLD), and the adapter's safetensors export.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vlm_salience.errors import ConfigError
from vlm_salience.training.collator import IGNORE, VLMCollator
from vlm_salience.training.config import AdapterSpec, TrainConfig
from vlm_salience.training.data import TrainingData
from vlm_salience.engine.task import Task
from vlm_salience.models.fingerprint import checkpoint_fingerprint


def base_fingerprint(path: str | Path) -> str:
    """Identity of a base model: its config and the names and sizes of its weight files."""
    return checkpoint_fingerprint(path)


def adapter_path(cfg: TrainConfig, name: str) -> Path:
    return Path(cfg.out) / "adapters" / name


def save_adapter(model, name: str, folder: Path) -> None:
    """Save one adapter's weights (safetensors) and config directly into `folder` (peft nests every adapter not
    called "default" in a subfolder of its name; readers find it at the top level instead)."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        model.save_pretrained(tmp, selected_adapters=[name], safe_serialization=True)
        src = Path(tmp) / name if (Path(tmp) / name).is_dir() else Path(tmp)
        for f in src.iterdir():
            if f.is_file():
                os.replace(f, folder / f.name)


def retrieved_examples(data: TrainingData, adapter: AdapterSpec):
    """`examples: retrieved`: a function (item index, k) -> the k most similar training cases as few-shot examples.

    The index holds training items only, so no validation or test label reaches a prompt, and each item's own
    case (and its group's, by the leakage guard) is excluded from its examples."""
    from vlm_salience.config import load_config
    from vlm_salience.resources import shipped
    from vlm_salience.retrieval.cases import cases_from_corpus
    from vlm_salience.retrieval.index import CaseIndex, IndexConfig

    d = data
    cases = cases_from_corpus(d.corpus, d.expressivity)
    index = CaseIndex.build([cases[i] for i in d.splits.train], load_config(
        shipped("configs/retrieval/default.yaml"), IndexConfig), progress=False)

    def examples(i: int, k: int) -> list[dict]:
        hits = index.search(cases[i].text, k=k, exclude=index.guard_for(cases[i]))[0]
        return [{"item_id": h.payload["item_id"], "situation": h.payload["situation"],
                 "face": h.payload.get("face_text"), "answer": d.spec.example_answer(h.payload["observed"])}
                for h in hits]
    return examples


def supervised_positions(labels):
    """(mask, targets): the positions whose hidden state predicts an answer token (label != -100 one step later),
    as a B x T mask, and those tokens in the mask's (row-major) order."""
    import torch

    following = labels[:, 1:]
    keep = following != IGNORE
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = keep
    return mask, following[keep]


def answer_only_loss(model, batch):
    """The model's causal-LM loss (mean cross-entropy of the shifted answer tokens), with the output head applied
    only at the supervised positions: a pre-hook on the head selects those rows of its input for this call."""
    import torch.nn.functional as F
    from accelerate.utils import extract_model_from_parallel

    inputs = {k: v for k, v in batch.items() if k not in ("labels", "use_cache")}
    mask, targets = supervised_positions(batch["labels"])
    head = extract_model_from_parallel(model).get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _m, args: (args[0][mask], *args[1:]))
    try:
        logits = model(**inputs, use_cache=False).logits  # N x vocab
    finally:
        hook.remove()
    return F.cross_entropy(logits.float(), targets)


PACKED_AWAY = ("input_ids", "labels", "attention_mask", "mm_token_type_ids")


def pack_batch(model, batch: dict[str, Any]) -> dict[str, Any]:
    """A right-padded batch as one padding-free row: its examples' tokens concatenated, no attention mask, and
    position ids that restart at 0 for each example, from which transformers' masking utilities build attention
    that stays within each example (`find_packed_sequence_indices`; with SDPA a block-diagonal causal mask, with
    flash attention variable-length kernels). The model computes the same loss as on the padded batch: the mean
    cross-entropy over the answer tokens; no example's answer is predicted from another's tokens (each example's
    first label is a prompt token, -100, so the shifted loss never crosses a boundary: checked).

    Qwen2-VL's multimodal rope: its image tokens take 3-D (temporal, height, width) positions. They are the model's
    own `get_rope_index` of the padded batch (per example, padding left out), gathered at the real tokens, with the
    text positions (0 .. n-1 per example) prepended as a fourth row: transformers' Qwen2-VL reads `position_ids` of
    shape 4 x 1 x N as exactly that (row 0 for the packed mask, rows 1-3 for the rope). Other families: 1 x N."""
    import torch
    from accelerate.utils import extract_model_from_parallel

    mask = batch["attention_mask"].bool()
    if bool((batch["labels"][:, 0] != IGNORE).any()):
        raise ConfigError("batching.packed: an example's first token is supervised, so its label would be predicted "
                          "from the previous example's last token; train without packing")
    out = {k: v for k, v in batch.items() if k not in PACKED_AWAY}
    for k in ("input_ids", "labels", "mm_token_type_ids"):
        if k in batch:
            out[k] = batch[k][mask][None]
    text = (batch["attention_mask"].long().cumsum(-1) - 1)[mask][None]  # 1 x N, restarting per example
    base = extract_model_from_parallel(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    inner = getattr(base, "model", base)
    if hasattr(inner, "get_rope_index"):  # Qwen2-VL family: 3-D positions of image/video tokens
        grids = {k: batch[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in batch}
        if grids:
            rope, _ = inner.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                           attention_mask=batch["attention_mask"], **grids)
            rope = rope[:, mask][:, None]  # 3 x 1 x N
        else:
            rope = text[None].expand(3, -1, -1)
        out["position_ids"] = torch.cat([text[None], rope.to(text.dtype)], dim=0)  # 4 x 1 x N
    else:
        out["position_ids"] = text
    out["use_cache"] = False  # the masking utilities read packed positions only without a cache (a training pass)
    return out


def compile_language_model(model, backend: str = "inductor"):
    """torch.compile the language model (the decoder stack, where the FLOPs are) in place, with dynamic shapes so
    batches of other lengths do not recompile; the vision tower and the head stay eager."""
    from accelerate.utils import extract_model_from_parallel

    base = extract_model_from_parallel(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    lm = getattr(getattr(base, "model", base), "language_model", None) or base.get_decoder()
    lm.compile(dynamic=True, backend=backend)
    return lm


class VLMTask(Task):
    """LoRA SFT of one adapter: answer-only cross-entropy of the assistant's JSON answer."""

    def __init__(self, cfg: TrainConfig, adapter: AdapterSpec, data: TrainingData | None = None) -> None:
        self.cfg, self.adapter = cfg, adapter
        self.name = adapter.name
        self.packed = cfg.batching.packed
        self.data = data or TrainingData(cfg)

    def _load_base(self, accelerator):
        from vlm_salience.models.loading import ModelConfig, load_vlm

        m = self.cfg.model
        if m.build is not None and not Path(m.path).exists():
            from vlm_salience.config import load_config
            from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm

            if accelerator.is_main_process:
                build_tiny_vlm(load_config(m.build, TinyVLMConfig), m.path)
            accelerator.wait_for_everyone()
        mc = ModelConfig(**{k: v for k, v in m.model_dump().items() if k in ModelConfig.model_fields})
        if self.cfg.lora.quantization != "none":
            mc.quantization = self.cfg.lora.quantization
            if "dtype" not in m.model_fields_set:  # QLoRA computes in bf16 where the training device has it
                import torch  # natively (a GPU), not fp32; the unquantized modules stay in it (lora.py)

                from vlm_salience.models.hardware import auto_dtype

                mc.dtype = auto_dtype("cuda" if torch.cuda.is_available() else "cpu")
        return load_vlm(mc)

    def setup(self, accelerator):
        from vlm_salience.training.lora import apply_lora

        cfg = self.cfg
        self.loaded = self._load_base(accelerator)
        tok = self.loaded.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else self.loaded.model.generation_config.eos_token_id
        self.collator = VLMCollator(self.loaded.processor, self.loaded.family, max_length=cfg.data.max_length,
                                    eos_token_id=int(eos if not isinstance(eos, list) else eos[0]),
                                    pad_token_id=tok.pad_token_id, shuffle_keys=cfg.data.key_order == "shuffled",
                                    seed=cfg.seed, clip=cfg.data.clip,
                                    clip_reader=getattr(self.data, "clip_reader", None))  # clips: cached frames
        index = retrieved_examples(self.data, self.adapter) if self.adapter.examples == "retrieved" else None
        self.clip_mode = cfg.data.clip.resolved_mode(self.loaded.family, training=True)  # clip faces: native video or images
        self.train_set = self.data.dataset(self.adapter, "train", index, clip_mode=self.clip_mode)
        self.examples = [dict(ex) for ex in self.train_set]
        encoded = [self.collator.encode(ex, i) for i, ex in enumerate(self.examples)]
        tokens = sum(len(self.collator.tok(self.collator.answer_text(ex, i, 0), add_special_tokens=False).input_ids)
                     for i, ex in enumerate(self.examples))
        if tokens == 0:
            raise ConfigError(f"adapter '{self.adapter.name}': the training data has no trainable tokens (every "
                              "answer is empty); check the corpus's combined ratings")
        self._lengths = np.array([len(e["input_ids"]) for e in encoded])
        self.base_fingerprint = base_fingerprint(cfg.model.path)
        model = apply_lora(self.loaded.model, cfg.lora, self.adapter.name,
                           gradient_checkpointing=cfg.gradient_checkpointing)
        from vlm_salience.training.vision_cache import VisionFeatureCache

        self.vision_cache = VisionFeatureCache() if cfg.vision_cache else None
        if cfg.compile:
            compile_language_model(model)
        return model, [p for p in model.parameters() if p.requires_grad]

    def num_examples(self) -> int:
        return len(self.examples)

    def lengths(self) -> np.ndarray:
        return self._lengths

    def collate(self, indices: list[int], epoch: int):
        batch = self.collator([self.collator.encode(self.examples[i], i, epoch) for i in indices])
        if self.vision_cache is not None:
            import torch

            from vlm_salience.training.vision_cache import INDEX_KEY

            batch[INDEX_KEY] = torch.tensor(list(indices), dtype=torch.long)
        return batch

    # Logits and loss at the supervised (answer) positions only: the language-model head runs on the hidden states
    # whose next token is an answer token (a few dozen per example) instead of the whole padded sequence, so the
    # B x T x vocab logits (and their backward) shrink to N x vocab. The same loss as the model's own (mean
    # cross-entropy of the shifted answer tokens); benchmarks/bench_training.py measures it on and off.
    # Off by default: on this CPU it measured 1.00x (benchmarks/bench_training.py), and its different rounding
    # sends the demo's tiny random model down another training path (combined-adapter validation valence r 0.33
    # against -0.01 at 500 steps); off, training is bit-identical to before the lever. Turn it on where the
    # vocabulary is large (it removes the B x T x vocab logits) and measure it there.
    answer_only_logits: bool = False
    vision_cache: Any = None  # a VisionFeatureCache from setup() where cfg.vision_cache is on
    supports_packing = True  # batching.packed: each micro-batch as one padding-free row (pack_batch)
    packed: bool = False  # cfg.batching.packed, set in __init__ (a class default, like the levers above)

    def loss(self, model, batch):
        if self.vision_cache is not None:  # cached frozen image features in place of pixels (vision_cache.py)
            batch = self.vision_cache.inputs(model, batch, self.collator._cache)
        if self.packed:
            batch = pack_batch(model, batch)
        if not self.answer_only_logits or "labels" not in batch:
            return model(**batch).loss  # mean over the micro-batch's answer tokens
        return answer_only_loss(model, batch)

    def tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def fingerprint(self) -> dict[str, str]:
        c = self.cfg
        task = {"adapter": self.adapter.model_dump(mode="json"), "lora": c.lora.model_dump(mode="json"),
                "data": c.data.model_dump(mode="json"), "split": c.split.model_dump(mode="json"),
                "dtype": c.model.dtype}
        digest = hashlib.sha256(json.dumps(task, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {"base model": self.base_fingerprint, "task config (adapter, lora, data, split)": digest}

    def save(self, model, folder: Path) -> None:
        save_adapter(model, self.adapter.name, folder)

    def load(self, model, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(folder / "adapter_model.safetensors"))
        set_peft_model_state_dict(model, weights, adapter_name=self.adapter.name)

    def evaluate(self, model) -> dict[str, float]:
        """Label-scoring predictions of validation items with the current adapter: valence MSE/r and KLD."""
        from vlm_salience.metrics import score
        from vlm_salience.models.loading import LoadedVLM
        from vlm_salience.prompting.experiment import answers_to_predictions
        from vlm_salience.prompting.hf_backend import HFBackend
        from vlm_salience.prompting.inputs import build_prompt
        from vlm_salience.prompting.templates import load_template

        d = self.data
        idx = d.items_for(self.adapter, "validation")[:self.cfg.eval.max_items]
        if not len(idx):
            return {}
        vlm = LoadedVLM(model=model, processor=self.loaded.processor, family=self.loaded.family,
                        config=self.loaded.config)
        backend = HFBackend(vlm, batch_size=self.cfg.optim.batch_size)
        template = load_template(self.adapter.template)
        prompts = [build_prompt(template, d.corpus.items[i], d.spec, clip=self.cfg.data.clip,
                                clip_mode=self.clip_mode) for i in idx]  # clips: the evaluation sampler
        scores = backend.score(prompts, d.spec.slots())
        ids = d.corpus.item_ids[idx]
        pred = answers_to_predictions(d.corpus, d.spec, self.adapter.name, ids,
                                      [{"slots": {k: v.tolist() for k, v in s.items()}} for s in scores])
        m = score(pred, d.observed, n_boot=0)
        return {"eval/valence_mse": m["valence_mse"]["value"], "eval/valence_r": m["valence_r"]["value"],
                "eval/kld": m["kld"]["value"], "eval/r": m["r"]["value"]}

    def finish(self, model, result: dict[str, Any]) -> None:
        from vlm_salience.atomic import replaced_dir

        with replaced_dir(adapter_path(self.cfg, self.adapter.name)) as stage:
            save_adapter(model, self.adapter.name, stage)
            meta = {"adapter": self.adapter.name, **result, "template": self.adapter.template,
                    "subset": self.adapter.subset, "examples": self.adapter.examples, "base": self.cfg.model.path,
                    "base_fingerprint": self.base_fingerprint}
            (stage / "training.json").write_text(json.dumps(meta, indent=2, default=float))

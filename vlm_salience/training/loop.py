"""The training loop, on accelerate: one process or many (`accelerate launch`), CPU or GPU.

- Batches come from a deterministic plan (seed and epoch give the order; batches of similar length, less
  padding), sharded by rank, so a resumed run sees exactly the batches an uninterrupted one would.
- Gradient accumulation without gradient sync on the inner micro-steps; mixed precision through accelerate;
  gradient checkpointing; cosine / linear / constant schedules with warm-up.
- Checkpoints every N optimizer steps: the adapter (safetensors), optimizer and scheduler state, each rank's RNG
  state and the data position, written to a temporary folder and renamed. `resume` continues from the newest one;
  state loads with `weights_only=True`. SIGTERM finishes the current step, checkpoints and stops.
- Evaluation during training with the real metrics: label-scoring predictions of validation items -> valence MSE
  and r, KLD. TensorBoard through accelerate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm_salience.errors import ConfigError
from vlm_salience.training.collator import VLMCollator
from vlm_salience.training.config import AdapterSpec, TrainConfig
from vlm_salience.training.data import TrainingData


def base_fingerprint(path: str | Path) -> str:
    """Identity of a base model: its config and the names and sizes of its weight files."""
    path = Path(path)
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    if not cfg.is_file():
        h.update(str(path).encode())  # a hub id
    return h.hexdigest()[:16]


def batch_plan(lengths: np.ndarray, batch_size: int, world: int, epoch: int, seed: int,
               group_by_length: bool) -> list[list[list[int]]]:
    """Per global step of one epoch: one list of example indices per rank. Deterministic in (seed, epoch)."""
    rng = np.random.default_rng(seed * 1000 + epoch)
    order = rng.permutation(len(lengths))
    glob = batch_size * world
    if group_by_length:  # sort within mega-batches, so batches hold similar lengths but epochs still differ
        mega = glob * 16
        order = np.concatenate([sorted(order[s:s + mega], key=lambda i: -lengths[i])
                                for s in range(0, len(order), mega)])
    batches = [order[s:s + glob] for s in range(0, len(order), glob)]
    batches = [b for b in batches if len(b) == glob] or batches[:1]  # drop a ragged tail (ranks stay in step)
    perm = rng.permutation(len(batches))
    out = []
    for k in perm:
        b = batches[k]
        per = max(1, len(b) // world)
        out.append([b[r * per:(r + 1) * per].tolist() for r in range(world)])
    return out


@dataclass
class Checkpoint:
    folder: Path
    step: int


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    best = None
    for d in folder.glob("step-*"):
        if (d / "trainer_state.json").is_file():
            step = int(d.name.split("-")[1])
            if best is None or step > best.step:
                best = Checkpoint(d, step)
    return best


class Trainer:
    def __init__(self, cfg: TrainConfig, adapter: AdapterSpec, *, data: TrainingData | None = None,
                 resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.adapter, self.resume, self.progress = cfg, adapter, resume, progress
        self.data = data or TrainingData(cfg)
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints" / adapter.name
        self._stop = False

    # -- setup ------------------------------------------------------------------------------------------------
    def _load_base(self):
        from vlm_salience.models.loading import ModelConfig, load_vlm

        m = self.cfg.model
        if m.build is not None and not Path(m.path).exists():
            from vlm_salience.config import load_config
            from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm

            if self.accelerator.is_main_process:
                build_tiny_vlm(load_config(m.build, TinyVLMConfig), m.path)
            self.accelerator.wait_for_everyone()
        mc = ModelConfig(**{k: v for k, v in m.model_dump().items() if k in ModelConfig.model_fields})
        if self.cfg.lora.quantization != "none":
            mc.quantization = self.cfg.lora.quantization
        return load_vlm(mc)

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        # Without an accelerator device, processes started by `accelerate launch --multi_gpu` join over gloo on
        # the CPU (accelerate picks its multi-CPU backend only when told the run is on the CPU).
        on_cpu = not (torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available())
        from accelerate.state import AcceleratorState

        if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # one process: a previous run's settings must not stick
            AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(cpu=on_cpu, mixed_precision=cfg.precision,
                                       log_with="tensorboard" if cfg.tensorboard else None,
                                       project_dir=str(self.out / "logs"))
        set_seed(cfg.seed)
        self.loaded = self._load_base()
        tok = self.loaded.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else self.loaded.model.generation_config.eos_token_id
        self.collator = VLMCollator(self.loaded.processor, self.loaded.family, max_length=cfg.data.max_length,
                                    eos_token_id=int(eos if not isinstance(eos, list) else eos[0]),
                                    pad_token_id=tok.pad_token_id, shuffle_keys=cfg.data.key_order == "shuffled",
                                    seed=cfg.seed)
        self.train_set = self.data.dataset(self.adapter, "train", self._examples_index())
        self.examples = [dict(ex) for ex in self.train_set]
        encoded = [self.collator.encode(ex, i) for i, ex in enumerate(self.examples)]
        tokens = sum(len(self.collator.tok(self.collator.answer_text(ex, i, 0), add_special_tokens=False).input_ids)
                     for i, ex in enumerate(self.examples))
        if tokens == 0:
            raise ConfigError(f"adapter '{self.adapter.name}': the training data has no trainable tokens (every "
                              "answer is empty); check the corpus's combined ratings")
        self.lengths = np.array([len(e["input_ids"]) for e in encoded])
        self.fingerprint = base_fingerprint(cfg.model.path)
        self.start_step = 0
        resume_from = latest_checkpoint(self.ckpt_dir) if self.resume else None
        if resume_from is not None:
            state = json.loads((resume_from.folder / "trainer_state.json").read_text())
            if state["base_fingerprint"] != self.fingerprint:
                raise ConfigError(f"checkpoint {resume_from.folder} was trained on another base model "
                                  f"(fingerprint {state['base_fingerprint']}, this base {self.fingerprint}); "
                                  "point model.path at that base or start a fresh run in another out folder")
        from vlm_salience.training.lora import apply_lora

        model = apply_lora(self.loaded.model, cfg.lora, self.adapter.name,
                           gradient_checkpointing=cfg.gradient_checkpointing)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        world = self.accelerator.num_processes
        self.steps_per_epoch = math.ceil(len(batch_plan(self.lengths, cfg.optim.batch_size, world, 0, cfg.seed,
                                                        cfg.group_by_length)) / cfg.optim.grad_accum)
        self.total_steps = cfg.optim.max_steps or self.steps_per_epoch * cfg.optim.epochs
        from transformers import get_scheduler

        sched = get_scheduler(cfg.optim.schedule, opt, num_warmup_steps=int(cfg.optim.warmup_ratio * self.total_steps),
                              num_training_steps=self.total_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, opt, sched)
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        if cfg.tensorboard:
            self.accelerator.init_trackers(f"{cfg.name}-{self.adapter.name}",
                                           config={"lr": cfg.optim.lr, "r": cfg.lora.r, "batch": cfg.optim.batch_size})

    def _examples_index(self):
        if self.adapter.examples != "retrieved":
            return None
        from vlm_salience.resources import shipped
        from vlm_salience.retrieval.cases import cases_from_corpus
        from vlm_salience.retrieval.index import CaseIndex, IndexConfig
        from vlm_salience.config import load_config

        d = self.data
        cases = cases_from_corpus(d.corpus, d.expressivity)
        index = CaseIndex.build([cases[i] for i in d.splits.train], load_config(
            shipped("configs/retrieval/default.yaml"), IndexConfig), progress=False)

        def examples(i: int, k: int) -> list[dict]:
            hits = index.search(cases[i].text, k=k, exclude=index.guard_for(cases[i]))[0]
            return [{"situation": h.payload["situation"], "face": h.payload.get("face_text"),
                     "answer": d.spec.example_answer(h.payload["observed"])} for h in hits]
        return examples

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def save_checkpoint(self, step: int) -> Path:
        import torch

        acc = self.accelerator
        final = self.ckpt_dir / f"step-{step}"
        tmp = self.ckpt_dir / f".step-{step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        np_state = np.random.get_state()
        rng = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
               "numpy_pos": int(np_state[2]), "python": json.dumps(random.getstate()[1])}
        torch.save(rng, tmp / f"rng_rank{acc.process_index}.pt")
        if acc.is_main_process:
            save_adapter(self._unwrapped(), self.adapter.name, tmp / "adapter")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            state = {"global_step": step, "adapter": self.adapter.name, "base_fingerprint": self.fingerprint,
                     "world_size": acc.num_processes, "steps_per_epoch": self.steps_per_epoch,
                     "total_steps": self.total_steps, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            kept = sorted((c for c in self.ckpt_dir.glob("step-*") if c.is_dir()),
                          key=lambda c: int(c.name.split("-")[1]))
            for old in kept[:-self.cfg.checkpoint.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _load_checkpoint(self, ckpt: Checkpoint) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = json.loads((ckpt.folder / "trainer_state.json").read_text())
        if state["world_size"] != self.accelerator.num_processes:
            raise ConfigError(f"checkpoint {ckpt.folder} was written by {state['world_size']} process(es); resume "
                              f"it with as many (now {self.accelerator.num_processes})")
        weights = load_file(str(ckpt.folder / "adapter" / "adapter_model.safetensors"))
        set_peft_model_state_dict(self._unwrapped(), weights, adapter_name=self.adapter.name)
        self.optimizer.load_state_dict(torch.load(ckpt.folder / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(ckpt.folder / "scheduler.pt", weights_only=True))
        rng = torch.load(ckpt.folder / f"rng_rank{self.accelerator.process_index}.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
        random.setstate((3, tuple(json.loads(rng["python"])), None))
        self.start_step = state["global_step"]
        if self.accelerator.is_main_process:
            print(f"resuming adapter '{self.adapter.name}' from {ckpt.folder} (step {self.start_step})")

    # -- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
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
        model = self._unwrapped()
        model.eval()
        try:
            vlm = LoadedVLM(model=model, processor=self.loaded.processor, family=self.loaded.family,
                            config=self.loaded.config)
            backend = HFBackend(vlm, batch_size=self.cfg.optim.batch_size)
            template = load_template(self.adapter.template)
            prompts = [build_prompt(template, d.corpus.items[i], d.spec) for i in idx]
            scores = backend.score(prompts, d.spec.slots())
        finally:
            model.train()
        ids = d.corpus.item_ids[idx]
        pred = answers_to_predictions(d.corpus, d.spec, self.adapter.name, ids,
                                      [{"slots": {k: v.tolist() for k, v in s.items()}} for s in scores])
        m = score(pred, d.observed, n_boot=0)
        return {"eval/valence_mse": m["valence_mse"]["value"], "eval/valence_r": m["valence_r"]["value"],
                "eval/kld": m["kld"]["value"], "eval/r": m["r"]["value"]}

    # -- the loop -----------------------------------------------------------------------------------------------
    def _on_sigterm(self, *_):
        self._stop = True

    def train(self) -> dict[str, Any]:
        import torch
        from tqdm.auto import tqdm

        self.setup()
        cfg, acc = self.cfg, self.accelerator
        world, rank = acc.num_processes, acc.process_index
        accum = cfg.optim.grad_accum
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        step = self.start_step
        bar = tqdm(total=self.total_steps, initial=step, desc=f"training {self.adapter.name}", unit="step",
                   disable=not (self.progress and acc.is_main_process))
        tokens = 0
        t0 = time.perf_counter()
        losses: list[float] = []
        history: list[dict[str, float]] = []
        try:
            while step < self.total_steps and not self._stop:
                epoch, in_epoch = divmod(step, self.steps_per_epoch)
                plan = batch_plan(self.lengths, cfg.optim.batch_size, world, epoch, cfg.seed, cfg.group_by_length)
                for first in range(in_epoch * accum, len(plan), accum):
                    micro = plan[first:first + accum]
                    for j, per_rank in enumerate(micro):
                        batch = self.collator([self.collator.encode(self.examples[i], i, epoch)
                                               for i in per_rank[rank]])
                        batch = {k: v.to(acc.device) for k, v in batch.items()}
                        tokens += int(batch["attention_mask"].sum())
                        sync = j == len(micro) - 1
                        ctx = acc.no_sync(self.model) if not sync else _null()
                        with ctx:
                            loss = self.model(**batch).loss / len(micro)
                            acc.backward(loss)
                        losses.append(loss.detach().item() * len(micro))
                    if cfg.optim.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    step += 1
                    bar.update(1)
                    if step % cfg.log_every == 0 or step == self.total_steps:
                        logs = {"train/loss": float(np.mean(losses[-cfg.log_every * accum:])),
                                "train/lr": self.scheduler.get_last_lr()[0]}
                        if cfg.tensorboard:
                            acc.log(logs, step=step)
                        bar.set_postfix(loss=f"{logs['train/loss']:.3f}")
                    if cfg.eval.every_steps and step % cfg.eval.every_steps == 0:
                        self._eval_and_log(step, history)
                    if (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or self._stop:
                        self.save_checkpoint(step)
                    if step >= self.total_steps or self._stop:
                        break
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
        seconds = time.perf_counter() - t0
        if self._stop:
            return {"stopped_at": step, "checkpoint": str(self.ckpt_dir / f"step-{step}"),
                    "main_process": acc.is_main_process}
        final = self._eval_and_log(step, history)
        result = {"adapter": self.adapter.name, "main_process": acc.is_main_process, "steps": step,
                  "trainable_params": self.trainable,
                  "train_examples": len(self.examples), "tokens_per_s": tokens * world / max(seconds, 1e-9),
                  "seconds": seconds, "final_eval": final, "history": history}
        self._finish(result)
        return result

    def _eval_and_log(self, step: int, history: list) -> dict[str, float]:
        acc = self.accelerator
        metrics = self.evaluate() if acc.is_main_process else {}
        acc.wait_for_everyone()
        if metrics:
            history.append({"step": step, **metrics})
            if self.cfg.tensorboard:
                acc.log(metrics, step=step)
        return metrics

    def _finish(self, result: dict[str, Any]) -> None:
        from vlm_salience.atomic import replaced_dir

        acc = self.accelerator
        acc.wait_for_everyone()
        model = self._unwrapped()
        if acc.num_processes > 1:  # every rank records what it holds: replicas must agree
            digest = _digest(model, self.adapter.name)
            folder = self.out / "rank_digests"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{self.adapter.name}.rank{acc.process_index}.json").write_text(json.dumps(digest))
        if acc.is_main_process:
            with replaced_dir(self.out / "adapters" / self.adapter.name) as stage:
                save_adapter(model, self.adapter.name, stage)
                meta = {**result, "template": self.adapter.template, "subset": self.adapter.subset,
                        "base": self.cfg.model.path, "base_fingerprint": self.fingerprint}
                (stage / "training.json").write_text(json.dumps(meta, indent=2, default=float))
        if self.cfg.tensorboard:
            acc.end_training()
        acc.wait_for_everyone()


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


def _digest(model, adapter: str) -> dict[str, str]:
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter)
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().numpy().tobytes())
    return {"adapter": adapter, "sha256": h.hexdigest(), "tensors": len(state)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def adapter_path(cfg: TrainConfig, name: str) -> Path:
    return Path(cfg.out) / "adapters" / name


def train_all(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
              only: list[str] | None = None) -> dict[str, Any]:
    """Train every adapter of the config (or those named) in turn, each a fresh LoRA on the same base."""
    data = TrainingData(cfg)
    results = {}
    for spec in cfg.adapters:
        if only and spec.name not in only:
            continue
        results[spec.name] = Trainer(cfg, spec, data=data, resume=resume, progress=progress).train()
    return results

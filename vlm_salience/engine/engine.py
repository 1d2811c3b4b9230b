"""The training engine, on accelerate: one process or many (`accelerate launch`), CPU or GPU, any `Task`.

It never looks inside a batch: the task collates and computes the loss (`engine/task.py` is the contract).

- Batches come from a deterministic plan over optimizer steps (seed and epoch give the order; optionally batches
  of similar length), each step's examples split into micro-steps and then into one shard per rank, so a resumed
  run sees exactly the batches an uninterrupted one would, and batch 4 x accumulation 2 is the same update as
  batch 8. Or batches by token budget (`batching.max_tokens`): as many examples as fit, the same number of steps
  every epoch (`token_budget_plan`).
- Gradient accumulation without gradient sync on the inner micro-steps, each loss divided by the number of
  micro-steps; mixed precision through accelerate (from the config, from `accelerate launch`, or `auto`); gradient
  clipping; cosine / linear / constant schedules with warm-up, steps at epoch milestones, or ReduceLROnPlateau on a validation
  metric (stepped after each evaluation); AdamW, Adam or SGD; a configured lr no parameter group uses is refused.
- Checkpoints every N optimizer steps: the task's trainable weights (its save/load), optimizer and scheduler
  state, each rank's RNG state and the data position, with a manifest of sizes and digests, written to a
  temporary folder and renamed. `resume` continues from the newest one after checking the task's fingerprint,
  the plan and every file; state loads with `weights_only=True`. SIGTERM finishes the step, checkpoints, stops.
- Trackers through accelerate (TensorBoard, wandb, none), a metrics.jsonl beside them whatever the tracker, tqdm
  progress, the task's evaluation every N steps and at the end.
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
from vlm_salience.engine.config import EngineConfig
from vlm_salience.engine.loader import micro_batches, resolve_pin_memory
from vlm_salience.engine.task import Task

STATE = "trainer_state.json"
FORMAT = 2  # checkpoint format version: a manifest of every part


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed: another task, another plan, or a missing or damaged part."""


# -- precision -----------------------------------------------------------------------------------------------------

def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16); emulated bf16 is slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    from vlm_salience.models.hardware import CPU_BF16_FLAGS

    return bool(flags & set(CPU_BF16_FLAGS))


def resolve_precision(requested: str | None, *, on_cpu: bool, env: dict | None = None,
                      cpuinfo: str | None = None, cuda_bf16: bool | None = None) -> tuple[str, str]:
    """(precision, why): the config's value wins; None takes `accelerate launch`'s; "auto" picks bf16 only where
    the hardware has it natively (CUDA with bf16 support; a CPU with AMX or AVX512-BF16), else fp32 ("no")."""
    env = os.environ if env is None else env
    if requested is None:
        value = env.get("ACCELERATE_MIXED_PRECISION")
        if value:
            return value.lower(), f"from accelerate launch (ACCELERATE_MIXED_PRECISION={value})"
        return "no", "no precision in the config nor from accelerate launch: fp32"
    if requested != "auto":
        return requested, "from the training config"
    if not on_cpu:
        if cuda_bf16 is None:
            from vlm_salience.models.hardware import cuda_bf16 as native

            cuda_bf16 = native("cuda")
        if cuda_bf16:
            return "bf16", "auto: the GPU supports bf16"
        return "no", "auto: the GPU has no native bf16: fp32"
    if cpu_has_native_bf16(cpuinfo):
        return "bf16", "auto: the CPU has AMX/AVX512-BF16"
    return "no", "auto: the CPU has no native bf16 (no amx_bf16/avx512_bf16 flag): fp32"


# -- the batch plan --------------------------------------------------------------------------------------------------

def batch_plan(lengths: np.ndarray, batch_size: int, world: int, epoch: int, seed: int,
               group_by_length: bool, accum: int = 1) -> list[list[list[int]]]:
    """Per micro-step of one epoch: one list of example indices per rank. Deterministic in (seed, epoch).

    Micro-steps come in groups of `accum` (one optimizer step each): a step's batch_size x world x accum examples
    are drawn first and then split into micro-steps and ranks, so how a step is split does not change what it
    trains on. Shards of one micro-step are disjoint; a ragged tail (fewer examples than one step) is dropped.
    """
    n = len(lengths)
    per_step = batch_size * world * accum
    if n < world * accum:
        raise ConfigError(f"{n} training example(s) cannot fill {world} process(es) x {accum} accumulation "
                          "micro-steps; lower optim.grad_accum or the number of processes, or add data")
    rng = np.random.default_rng(seed * 1000 + epoch)
    order = rng.permutation(n)
    if group_by_length:  # sort within mega-batches, so batches hold similar lengths but epochs still differ
        mega = per_step * 16
        lengths = np.asarray(lengths)
        order = np.concatenate([sorted(order[s:s + mega], key=lambda i: -lengths[i])
                                for s in range(0, n, mega)])
    steps = [order[s:s + per_step] for s in range(0, n, per_step)]
    steps = [b for b in steps if len(b) == per_step] or steps[:1]  # ranks stay in step; tiny data: one smaller step
    out = []
    for k in rng.permutation(len(steps)):
        for micro in np.array_split(steps[k], accum):
            out.append([shard.tolist() for shard in np.array_split(micro, world)])
    return out


def token_budget_plan(lengths: np.ndarray, max_tokens: int, world: int, epoch: int, seed: int, accum: int = 1,
                      packed: bool = False) -> list[list[list[int]]]:
    """Per micro-step of one epoch: one list of example indices per rank, each list as many examples as fit
    `max_tokens` (padded cost: the longest x their number; packed: the sum of lengths). Deterministic in (seed,
    epoch).

    Examples are sorted by length, longest first, ties in an order drawn per epoch, and cut greedily into batches:
    the cuts depend only on the sorted lengths, so every epoch has the same number of batches (and steps: exact
    resume needs it), while which of the equally long examples share a batch changes per epoch. Batches are then
    shuffled per epoch and dealt world x accum to a step; a ragged tail of batches (fewer than one step) is dropped.
    """
    lengths = np.asarray(lengths).astype(np.int64)
    over = np.flatnonzero(lengths > max_tokens)
    if len(over):
        raise ConfigError(f"batching.max_tokens {max_tokens}: example {int(over[0])} alone has "
                          f"{int(lengths[over[0]])} tokens ({len(over)} example(s) exceed it); raise max_tokens to at "
                          f"least {int(lengths.max())}")
    rng = np.random.default_rng(seed * 1000 + epoch)
    order = np.lexsort((rng.random(len(lengths)), -lengths))  # by length (longest first), ties at random
    batches: list[list[int]] = []
    current: list[int] = []
    longest = total = 0
    for i in order:
        n = int(lengths[i])
        cost = total + n if packed else max(longest, n) * (len(current) + 1)
        if current and cost > max_tokens:
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(int(i))
        longest, total = max(longest, n), total + n
    if current:
        batches.append(current)
    per_step = world * accum
    if len(batches) < per_step:
        raise ConfigError(f"batching.max_tokens {max_tokens} makes {len(batches)} batch(es) of the {len(lengths)} "
                          f"examples, fewer than {world} process(es) x {accum} accumulation micro-steps; lower "
                          "max_tokens, optim.grad_accum or the number of processes")
    perm = rng.permutation(len(batches))
    out = []
    for s in range(len(batches) // per_step):
        step = [batches[k] for k in perm[s * per_step:(s + 1) * per_step]]
        for a in range(accum):
            out.append(step[a * world:(a + 1) * world])
    return out


# -- checkpoints -------------------------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    folder: Path
    step: int


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint (its state file is written last, then the folder renamed into place)."""
    best = None
    for d in Path(folder).glob("step-*"):
        if (d / STATE).is_file() and d.name.split("-")[1].isdigit():
            step = int(d.name.split("-")[1])
            if best is None or step > best.step:
                best = Checkpoint(d, step)
    return best


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file of a checkpoint but its state file."""
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _file_digest(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != STATE}


def read_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: {STATE} is unreadable ({exc}); delete the folder to resume "
                              "from the previous checkpoint, or start a fresh run") from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise CheckpointError(f"checkpoint {folder}: {STATE} has no global_step; delete the folder to resume from "
                              "the previous checkpoint, or start a fresh run")
    return state


def verify_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Every part the manifest lists is there with its size and digest, and nothing it needs is unlisted."""
    parts = state.get("manifest")
    if not isinstance(parts, dict) or not parts:
        raise CheckpointError(f"checkpoint {folder} has no manifest of its parts (format {state.get('format')}, "
                              f"this engine writes format {FORMAT}); start a fresh run in another out folder")
    for rel, meta in parts.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: part {rel} is missing; delete the folder to resume from "
                                  "the previous checkpoint, or start a fresh run")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"checkpoint {folder}: part {rel} has {size} bytes, the manifest says "
                                  f"{meta['bytes']} (truncated or overwritten); delete the folder to resume from "
                                  "the previous checkpoint")
        if _file_digest(path) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: part {rel} does not match its sha256 in the manifest "
                                  "(damaged); delete the folder to resume from the previous checkpoint")


def _rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
           "numpy_pos": int(np_state[2]), "python": json.dumps(random.getstate()[1])}
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return rng


def _set_rng_state(rng: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(json.loads(rng["python"])), None))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))


def _to_device(batch, device, non_blocking: bool = False):
    from accelerate.utils import send_to_device

    return send_to_device(batch, device, non_blocking=non_blocking)


def digest_parameters(model) -> dict[str, Any]:
    """sha256 of the trainable parameters, by name: replicas of a multi-process run must agree."""
    h = hashlib.sha256()
    named = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    for n, p in named:
        h.update(n.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return {"sha256": h.hexdigest(), "tensors": len(named)}


def check_configured_lr(optim, params: list, task: str) -> None:
    """Refuse an `optim.lr` written in the config that no parameter group trains at: every group of the task
    sets its own rate, so the configured one would be silently ignored. An unset optim.lr is only the default of
    groups that set none."""
    if "lr" not in optim.model_fields_set:
        return
    groups = [g for g in params if isinstance(g, dict)]
    if len(groups) != len(params) or any("lr" not in g for g in groups):
        return  # some parameters train at optim.lr
    if any(math.isclose(float(g["lr"]), optim.lr, rel_tol=1e-9) for g in groups):
        return
    rates = ", ".join(f"{g.get('name', i)} {g['lr']:g}" for i, g in enumerate(groups))
    raise ConfigError(f"optim.lr {optim.lr:g} is the rate of no parameter group of task '{task}' (its groups set "
                      f"their own: {rates}); set optim.lr to the rate you mean as the main one (one of those), or "
                      "the parts' rates (model.lr) to it")


# -- the engine ---------------------------------------------------------------------------------------------------------

class Engine:
    """Trains one `Task` under one `EngineConfig`: `Engine(cfg, task).run()`."""

    def __init__(self, cfg: EngineConfig, task: Task, *, resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.task, self.resume, self.progress = cfg, task, resume, progress
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints" / task.name
        self.start_step = 0
        self._stop = False

    # -- setup ------------------------------------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        # Without an accelerator device, or with fewer GPUs than processes (NCCL refuses a shared GPU), processes
        # started by `accelerate launch --multi_gpu` join over gloo on the CPU (accelerate picks its multi-CPU
        # backend only when told the run is on the CPU): engine/devices.py decides.
        from vlm_salience.engine.devices import placement_from_environment

        placement = placement_from_environment()
        on_cpu = placement.cpu
        if placement.reason and int(os.environ.get("RANK", "0")) == 0:
            print(f"note: {placement.reason}", flush=True)
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # one process: a previous run's settings must not stick
            AcceleratorState._reset_state(reset_partial_state=True)
        self.precision, self.precision_reason = resolve_precision(self.cfg.precision, on_cpu=on_cpu)
        log_with = None
        if self.cfg.tracker == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ConfigError("tracker: wandb needs the wandb package (pip install wandb); or use "
                                  "tracker: tensorboard | none") from None
            log_with = "wandb"
        elif self.cfg.tracker == "tensorboard":
            log_with = "tensorboard"
        return Accelerator(cpu=on_cpu, mixed_precision=self.precision, log_with=log_with,
                           project_dir=str(self.out / "logs"))

    def setup(self) -> None:
        import torch
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        cfg = self.cfg
        if cfg.deterministic:  # before any kernel runs: exact resume on CUDA (engine/devices.py)
            from vlm_salience.engine.devices import apply_determinism

            apply_determinism(True)
        self.accelerator = acc = self._accelerator()
        set_seed(cfg.seed)
        model, params = self.task.setup(acc)
        params = list(params)
        if not params:
            raise ConfigError(f"task '{self.task.name}' has no trainable parameters")
        flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        self.trainable = sum(p.numel() for p in flat)
        self.n_examples = int(self.task.num_examples())
        lengths = self.task.lengths()
        self.lengths = np.zeros(self.n_examples) if lengths is None else np.asarray(lengths)
        if len(self.lengths) != self.n_examples:
            raise ConfigError(f"task '{self.task.name}': lengths() has {len(self.lengths)} entries for "
                              f"{self.n_examples} examples")
        self.group = cfg.group_by_length and lengths is not None
        b = cfg.batching
        if b.max_tokens is not None and lengths is None:
            raise ConfigError(f"batching.max_tokens: task '{self.task.name}' reports no lengths() to budget by; "
                              "remove batching.max_tokens (optim.batch_size then sets the batch)")
        if b.packed and not getattr(self.task, "supports_packing", False):
            raise ConfigError(f"batching.packed: task '{self.task.name}' cannot train padding-free (packed) "
                              "batches; set batching.packed: false")
        self.fingerprint = {k: str(v) for k, v in self.task.fingerprint().items()}
        world = acc.num_processes
        self.steps_per_epoch = len(self._plan(0)) // cfg.optim.grad_accum
        self.total_steps = cfg.optim.max_steps or self.steps_per_epoch * cfg.optim.epochs
        resume_from = latest_checkpoint(self.ckpt_dir) if self.resume else None
        state = self._check(resume_from) if resume_from is not None else None
        model.train()
        o = cfg.optim
        check_configured_lr(o, params, self.task.name)
        if o.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        elif o.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        # The schedule is not handed to accelerate: its prepared scheduler steps once per process on every
        # optimizer step (it assumes per-process batches), which with N processes runs warm-up and decay N times
        # too fast, while total_steps counts optimizer steps. Here it steps once per optimizer step, on every rank.
        self.plateau = o.schedule == "plateau"
        if self.plateau:  # stepped by _evaluate on the metric
            p = o.plateau
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode=p.mode, factor=p.factor, patience=p.patience, threshold=p.threshold)
        elif o.schedule == "multistep":  # MultiStepLR over epochs, stepped per optimizer step
            bounds = [m * self.steps_per_epoch for m in o.milestones]
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: o.gamma ** sum(s >= b for b in bounds))
        else:
            self.scheduler = get_scheduler(o.schedule, opt, num_warmup_steps=int(o.warmup_ratio * self.total_steps),
                                           num_training_steps=self.total_steps)
        self.model, self.optimizer = acc.prepare(model, opt)
        if resume_from is not None:
            self._load_checkpoint(resume_from, state)
        if acc.is_main_process and self.progress:
            print(f"training {self.task.name}: precision {acc.mixed_precision} ({self.precision_reason}), "
                  f"{world} process(es), {self.n_examples} examples, {self.total_steps} steps", flush=True)
        if cfg.tracker != "none":
            acc.init_trackers(f"{cfg.name}-{self.task.name}",
                              config={"lr": cfg.optim.lr, "batch": cfg.optim.batch_size,
                                      "grad_accum": cfg.optim.grad_accum, "precision": acc.mixed_precision})

    def _plan(self, epoch: int) -> list[list[list[int]]]:
        o, b = self.cfg.optim, self.cfg.batching
        if b.max_tokens is not None:
            return token_budget_plan(self.lengths, b.max_tokens, self.accelerator.num_processes, epoch,
                                     self.cfg.seed, o.grad_accum, packed=b.packed)
        return batch_plan(self.lengths, o.batch_size, self.accelerator.num_processes, epoch, self.cfg.seed,
                          self.group, o.grad_accum)

    def optim_settings(self) -> dict[str, Any]:
        """What the restored optimiser and schedule were built with: resuming under other values would keep the old
        ones (their state is loaded) while the run's record names the new ones."""
        return {**self.cfg.optim.model_dump(mode="json"), "total_steps": self.total_steps}

    def plan_settings(self) -> dict[str, Any]:
        """What the data position of a checkpoint means: resuming under other values would train other batches."""
        o, b = self.cfg.optim, self.cfg.batching
        settings = {"world_size": self.accelerator.num_processes, "batch_size": o.batch_size,
                    "grad_accum": o.grad_accum, "seed": self.cfg.seed, "group_by_length": self.group,
                    "examples": self.n_examples, "steps_per_epoch": self.steps_per_epoch}
        if b.max_tokens is not None:  # only when set: checkpoints written before the option still resume
            settings["max_tokens"] = b.max_tokens
        if b.packed:  # packed changes a token budget's batches, and what a task trains on
            settings["packed"] = True
        return settings

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def unwrapped(self):
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
        torch.save(_rng_state(), tmp / f"rng_rank{acc.process_index}.pt")
        if acc.is_main_process:
            (tmp / "model").mkdir()
            self.task.save(self.unwrapped(), tmp / "model")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"format": FORMAT, "global_step": step, "task": self.task.name, "fingerprint": self.fingerprint,
                     "plan": self.plan_settings(), "optim": self.optim_settings(), "world_size": acc.num_processes,
                     "total_steps": self.total_steps, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "manifest": manifest(tmp)}
            (tmp / STATE).write_text(json.dumps(state, indent=2))  # last: a folder without it is incomplete
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            kept = sorted((c for c in self.ckpt_dir.glob("step-*") if c.is_dir() and c.name[5:].isdigit()),
                          key=lambda c: int(c.name.split("-")[1]))
            for old in kept[:-self.cfg.checkpoint.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _check(self, ckpt: Checkpoint) -> dict[str, Any]:
        """Refuse a checkpoint of another task, base or plan, or with a missing or damaged part."""
        state = read_state(ckpt.folder)
        theirs = state.get("fingerprint", {})
        for what, mine in self.fingerprint.items():
            if theirs.get(what) != mine:
                raise CheckpointError(
                    f"checkpoint {ckpt.folder} was trained on another {what} (fingerprint {theirs.get(what)}, this "
                    f"run {mine}); resume with the same {what}, or start a fresh run in another out folder")
        if state.get("world_size") != self.accelerator.num_processes:
            raise CheckpointError(f"checkpoint {ckpt.folder} was written by {state.get('world_size')} process(es); "
                                  f"resume it with as many (now {self.accelerator.num_processes})")
        plan = state.get("plan", {})
        mine = self.plan_settings()
        differ = {k: (plan.get(k), mine.get(k)) for k in {**plan, **mine} if plan.get(k) != mine.get(k)}
        if differ:
            said = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differ.items())
            raise CheckpointError(f"checkpoint {ckpt.folder} was written under another batch plan ({said}): its "
                                  "data position would point at other batches; resume with the same settings")
        optim = state.get("optim")  # absent in checkpoints written before it was recorded
        changed = {k: (optim.get(k), v) for k, v in self.optim_settings().items()
                   if optim is not None and optim.get(k) != v}
        if changed:
            said = ", ".join(f"{'' if k == 'total_steps' else 'optim.'}{k} {a} -> {b}" for k, (a, b) in changed.items())
            raise CheckpointError(f"checkpoint {ckpt.folder} was trained with other optimiser settings ({said}): the "
                                  "restored optimiser and schedule would keep the old ones while the run records the "
                                  "new; resume with the settings it was trained with, or start a fresh run in another "
                                  "out folder")
        verify_checkpoint(ckpt.folder, state)
        rank_file = ckpt.folder / f"rng_rank{self.accelerator.process_index}.pt"
        if f"rng_rank{self.accelerator.process_index}.pt" not in state["manifest"] or not rank_file.is_file():
            raise CheckpointError(f"checkpoint {ckpt.folder} has no RNG state for rank "
                                  f"{self.accelerator.process_index}")
        return state

    def _load_checkpoint(self, ckpt: Checkpoint, state: dict[str, Any]) -> None:
        import torch

        self.task.load(self.unwrapped(), ckpt.folder / "model")
        self.optimizer.load_state_dict(torch.load(ckpt.folder / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(ckpt.folder / "scheduler.pt", weights_only=True))
        _set_rng_state(torch.load(ckpt.folder / f"rng_rank{self.accelerator.process_index}.pt", weights_only=True))
        self.start_step = int(state["global_step"])
        if self.accelerator.is_main_process:
            print(f"resuming '{self.task.name}' from {ckpt.folder} (step {self.start_step})", flush=True)

    # -- the loop ---------------------------------------------------------------------------------------------------
    def _on_sigterm(self, *_):
        self._stop = True

    def _should_stop(self) -> bool:
        """SIGTERM on any rank stops every rank after the same step."""
        if self.accelerator.num_processes == 1:
            return self._stop
        import torch

        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _log(self, logs: dict[str, float], step: int) -> None:
        acc = self.accelerator
        if self.cfg.tracker != "none":
            acc.log(logs, step=step)
        if acc.is_main_process:  # a plain record whatever the tracker (and a condition tests can wait on)
            folder = self.out / "logs" / self.task.name
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, **logs}) + "\n")

    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        self.setup()
        cfg, acc, task = self.cfg, self.accelerator, self.task
        world, rank = acc.num_processes, acc.process_index
        accum = cfg.optim.grad_accum
        pin = resolve_pin_memory(cfg.loader.pin_memory, acc.device.type == "cuda")
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        step = self.start_step
        bar = tqdm(total=self.total_steps, initial=step, desc=f"training {task.name}", unit="step",
                   disable=not (self.progress and acc.is_main_process))
        tokens = 0
        t0 = time.perf_counter()
        losses: list[float] = []
        self.history: list[dict[str, float]] = []
        stop = False
        try:
            while step < self.total_steps and not stop:
                epoch, in_epoch = divmod(step, self.steps_per_epoch)
                plan = self._plan(epoch)
                shards = [m[rank] for m in plan[in_epoch * accum:self.steps_per_epoch * accum]]
                batches = micro_batches(task, shards, epoch, workers=cfg.loader.workers, pin_memory=pin,
                                        prefetch=cfg.loader.prefetch)  # engine/loader.py: collated in order
                for first in range(in_epoch * accum, self.steps_per_epoch * accum, accum):
                    micro = plan[first:first + accum]
                    for j, per_rank in enumerate(micro):
                        batch = _to_device(next(batches), acc.device, non_blocking=pin)
                        n = task.tokens(batch)
                        tokens += len(per_rank[rank]) if n is None else int(n)
                        with acc.no_sync(self.model) if j < len(micro) - 1 else _null():  # sync on the last
                            with acc.autocast():
                                loss = task.loss(self.model, batch) / len(micro)
                            acc.backward(loss)
                        losses.append(loss.detach().float().item() * len(micro))
                    if cfg.optim.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                    self.optimizer.step()
                    if not self.plateau and not getattr(self.optimizer, "step_was_skipped", False):
                        self.scheduler.step()  # not on a step fp16's loss scaler skipped (as accelerate did)
                    self.optimizer.zero_grad(set_to_none=True)
                    step += 1
                    bar.update(1)
                    stop = self._should_stop()
                    if step % cfg.log_every == 0 or step == self.total_steps or stop:
                        logs = {"train/loss": float(np.mean(losses[-cfg.log_every * accum:])),
                                "train/lr": float(self.scheduler.get_last_lr()[0])}
                        self._log(logs, step)
                        bar.set_postfix(loss=f"{logs['train/loss']:.3f}")
                    every = cfg.eval.every_epochs
                    if step < self.total_steps and (
                            (cfg.eval.every_steps and step % cfg.eval.every_steps == 0)
                            or (every and step % (every * self.steps_per_epoch) == 0)):
                        self._evaluate(step)
                    if (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or stop:
                        self.save_checkpoint(step)
                    if step >= self.total_steps or stop:
                        break
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
        seconds = time.perf_counter() - t0
        if stop:
            if cfg.tracker != "none":
                acc.end_training()
            return {"stopped_at": step, "checkpoint": str(self.ckpt_dir / f"step-{step}"),
                    "main_process": acc.is_main_process}
        final = self._evaluate(step)
        result = {"task": task.name, "main_process": acc.is_main_process, "steps": step,
                  "trainable_params": self.trainable, "train_examples": self.n_examples,
                  "tokens_per_s": tokens * world / max(seconds, 1e-9), "seconds": seconds,
                  "precision": acc.mixed_precision, "precision_source": self.precision_reason,
                  "final_eval": final, "history": self.history}
        self._finish(result)
        return result

    def _evaluate(self, step: int) -> dict[str, float]:
        import torch

        acc = self.accelerator
        metrics: dict[str, float] = {}
        if acc.is_main_process:
            model = self.unwrapped()
            model.eval()
            try:
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in self.task.evaluate(model).items()}
            finally:
                model.train()
        acc.wait_for_everyone()
        if metrics:
            self.history.append({"step": step, **metrics})
            self._log(metrics, step)
        if self.plateau:
            self._step_plateau(metrics)
        return metrics

    def _step_plateau(self, metrics: dict[str, float]) -> None:
        """ReduceLROnPlateau on the configured metric: read on the main process, broadcast, stepped on every rank
        (each holds its optimizer's rates)."""
        name = self.cfg.optim.plateau.metric
        value = [metrics.get(name)] if self.accelerator.is_main_process else [None]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(value, from_process=0)
        if value[0] is None:
            raise ConfigError(f"optim.plateau.metric '{name}': task '{self.task.name}' evaluated "
                              f"{sorted(metrics) or 'nothing (no validation split?)'}; name one of those, or use "
                              "another optim.schedule")
        self.scheduler.step(float(value[0]))

    def _finish(self, result: dict[str, Any]) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        model = self.unwrapped()
        if acc.num_processes > 1:  # every rank records what it holds: replicas must agree
            folder = self.out / "rank_digests"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{self.task.name}.rank{acc.process_index}.json").write_text(
                json.dumps({"task": self.task.name, **digest_parameters(model)}))
        if acc.is_main_process:
            self.task.finish(model, result)
        if self.cfg.tracker != "none":
            acc.end_training()
        acc.wait_for_everyone()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def train(cfg: EngineConfig, task: Task, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train `task` under `cfg`; see `Engine`."""
    return Engine(cfg, task, resume=resume, progress=progress).run()

"""The generic training engine, on a toy task (linear regression) that a reader can check by hand: exact resume
after a crash and after SIGTERM, accumulation against a larger batch, the batch plan's shards, precision, and
every integrity check of the checkpoint format."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vlm_salience.errors import ConfigError
from vlm_salience.engine.engine import (CheckpointError, Engine, batch_plan, cpu_has_native_bf16,
                                          latest_checkpoint, resolve_precision, train)
from vlm_salience.engine.config import EngineConfig
from vlm_salience.engine.task import Task


class Crash(Exception):
    """Stands for a killed process: nothing after it runs, no checkpoint is written."""


class LinearTask(Task):
    """y = x w + noise; a dropout on the input makes the RNG state matter for exact resume."""

    name = "linear"

    def __init__(self, n: int = 24, d: int = 5, dropout: float = 0.0, *, crash_at: int | None = None,
                 sigterm_at: int | None = None, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=g)
        self.y = self.x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        self.d, self.dropout = d, dropout
        self.crash_at, self.sigterm_at = crash_at, sigterm_at
        self.calls: list[tuple[list[int], int]] = []
        self.final: dict[str, torch.Tensor] | None = None

    def setup(self, accelerator):
        self.model = torch.nn.Sequential(torch.nn.Dropout(self.dropout), torch.nn.Linear(self.d, 1))
        return self.model, list(self.model.parameters())

    def num_examples(self) -> int:
        return len(self.x)

    def lengths(self):
        return np.arange(len(self.x)) % 7  # something to group by

    def collate(self, indices, epoch):
        self.calls.append((list(indices), epoch))
        if self.crash_at is not None and len(self.calls) == self.crash_at:
            raise Crash
        if self.sigterm_at is not None and len(self.calls) == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"x": self.x[indices], "y": self.y[indices]}

    def loss(self, model, batch):
        return ((model(batch["x"]) - batch["y"]) ** 2).mean()

    def save(self, model, folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))

    def load(self, model, folder: Path) -> None:
        model.load_state_dict(load_file(str(folder / "weights.safetensors")))

    def fingerprint(self) -> dict[str, str]:
        return {"data": hashlib.sha256(self.x.numpy().tobytes() + self.y.numpy().tobytes()).hexdigest()[:16]}

    def evaluate(self, model) -> dict[str, float]:
        return {"eval/mse": float(((model(self.x) - self.y) ** 2).mean())}

    def finish(self, model, result) -> None:
        self.final = {k: v.detach().clone() for k, v in model.state_dict().items()}


def config(tmp_path: Path, **over) -> EngineConfig:
    raw = {"name": "toy", "optim": {"lr": 0.05, "max_steps": 10, "batch_size": 4, "warmup_ratio": 0.2,
                                    "schedule": "cosine", "max_grad_norm": 10.0},
           "checkpoint": {"every_steps": 4, "keep": 5}, "tracker": "none", "out": str(tmp_path / "out"),
           "group_by_length": False}
    for key, value in over.items():
        node = raw
        *head, last = key.split("__")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    return EngineConfig.model_validate(raw)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- exact resume ----------------------------------------------------------------------------------------------------

def test_resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    # 24 examples / batch 4 = 6 steps an epoch: 10 steps cross an epoch boundary after the step-4 checkpoint
    straight = LinearTask(dropout=0.5)
    r = train(config(tmp_path / "a"), straight, progress=False)
    assert r["steps"] == 10 and straight.final is not None

    crashed = LinearTask(dropout=0.5, crash_at=7)  # dies in step 7, after the step-4 checkpoint
    with pytest.raises(Crash):
        train(config(tmp_path / "b"), crashed, progress=False)
    assert latest_checkpoint(tmp_path / "b" / "out" / "checkpoints" / "linear").step == 4
    resumed = LinearTask(dropout=0.5)
    r = train(config(tmp_path / "b"), resumed, resume=True, progress=False)
    assert r["steps"] == 10
    assert same(straight.final, resumed.final)
    # it saw exactly the batches the uninterrupted run saw from step 5 on (data position and epoch)
    assert resumed.calls == straight.calls[4:]
    assert [e for _, e in straight.calls] == [0] * 6 + [1] * 4  # step 7 is the second epoch's first
    # and the planted difference is visible: without resume, a fresh run differs from the continued one
    fresh = LinearTask(dropout=0.5)
    train(config(tmp_path / "c", optim__max_steps=6), fresh, progress=False)
    assert not same(fresh.final, straight.final)


def test_rng_state_is_part_of_the_checkpoint(tmp_path, monkeypatch):
    """With dropout, resuming without the RNG state would draw other masks: a planted omission must show."""
    from vlm_salience.engine import engine

    straight = LinearTask(dropout=0.5)
    train(config(tmp_path / "a"), straight, progress=False)
    with pytest.raises(Crash):
        train(config(tmp_path / "b"), LinearTask(dropout=0.5, crash_at=7), progress=False)
    monkeypatch.setattr(engine, "_set_rng_state", lambda rng: None)
    torch.manual_seed(12345)
    resumed = LinearTask(dropout=0.5)
    train(config(tmp_path / "b"), resumed, resume=True, progress=False)
    assert not same(straight.final, resumed.final)


def test_sigterm_finishes_the_step_checkpoints_stops_and_resumes_exactly(tmp_path):
    straight = LinearTask(dropout=0.5)
    train(config(tmp_path / "a", checkpoint__every_steps=None), straight, progress=False)
    stopped = LinearTask(dropout=0.5, sigterm_at=3)  # the signal arrives while step 3 is collated
    r = train(config(tmp_path / "b", checkpoint__every_steps=None), stopped, progress=False)
    assert r["stopped_at"] == 3 and stopped.final is None  # no export after a stop
    ckpt = latest_checkpoint(tmp_path / "b" / "out" / "checkpoints" / "linear")
    assert ckpt.step == 3 and len(stopped.calls) == 3  # it finished step 3 and began no other
    assert signal.getsignal(signal.SIGTERM) is not None
    resumed = LinearTask(dropout=0.5)
    r = train(config(tmp_path / "b", checkpoint__every_steps=None), resumed, resume=True, progress=False)
    assert r["steps"] == 10 and same(straight.final, resumed.final)


# -- accumulation -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_accumulation_equals_the_larger_batch(tmp_path, optimizer):
    """batch 4 x accumulation 2 is the same update as batch 8 (dropout 0); with SGD an undivided loss would
    double every step, so this fails if the engine does not divide by the number of micro-steps."""
    finals = {}
    for bs, acc in ((8, 1), (4, 2), (2, 4)):
        task = LinearTask(n=32)
        train(config(tmp_path / f"{bs}x{acc}", optim__batch_size=bs, optim__grad_accum=acc, optim__max_steps=6,
                     optim__optimizer=optimizer, optim__max_grad_norm=None), task, progress=False)
        finals[(bs, acc)] = task.final
        # every optimizer step drew the same 8 examples, whatever the split
        steps = [sorted(sum((c for c, _ in task.calls[s * acc:(s + 1) * acc]), [])) for s in range(6)]
        finals[(bs, acc, "steps")] = steps
    ref = finals[(8, 1)]
    for key in ((4, 2), (2, 4)):
        assert finals[key + ("steps",)] == finals[(8, 1, "steps")]
        for k in ref:
            assert torch.allclose(ref[k], finals[key][k], atol=1e-6), (key, k)
    if optimizer == "sgd":  # the planted bug class: no division would move the weights twice as far
        moved = LinearTask(n=32)
        train(config(tmp_path / "big-lr", optim__batch_size=8, optim__max_steps=6, optim__optimizer="sgd",
                     optim__max_grad_norm=None, optim__lr=0.1), moved, progress=False)
        assert not torch.allclose(moved.final["1.weight"], ref["1.weight"], atol=1e-4)


def test_logged_loss_is_the_mean_over_micro_steps(tmp_path):
    task = LinearTask(n=32)
    train(config(tmp_path, optim__batch_size=4, optim__grad_accum=2, optim__max_steps=1, log_every=1,
                 optim__lr=1e-9, optim__warmup_ratio=0.0), task, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "out" / "logs" / "linear" / "metrics.jsonl").open()]
    first = next(r for r in logged if "train/loss" in r)
    fresh = LinearTask(n=32)
    torch.manual_seed(0)
    model = fresh.setup(None)[0]
    model.load_state_dict(task.final)  # lr ~ 0: the weights are the initial ones
    want = np.mean([float(fresh.loss(model, fresh.collate(c, e))) for c, e in task.calls[:2]])
    assert first["train/loss"] == pytest.approx(want, rel=1e-5)


def test_gradients_are_clipped_to_max_grad_norm(tmp_path):
    """One SGD step moves the weights by lr x the clipped gradient: its norm is at most lr x max_grad_norm."""
    moved = {}
    for clip in (None, 1e-3):
        task = LinearTask(n=32)
        torch.manual_seed(0)
        init = {k: v.clone() for k, v in torch.nn.Sequential(torch.nn.Dropout(0.0),
                                                              torch.nn.Linear(5, 1)).state_dict().items()}
        train(config(tmp_path / str(clip), optim__optimizer="sgd", optim__max_grad_norm=clip, optim__max_steps=1,
                     optim__warmup_ratio=0.0, optim__schedule="constant", optim__lr=0.1), task, progress=False)
        moved[clip] = float(torch.sqrt(sum(((task.final[k] - init[k]) ** 2).sum() for k in init)))
    assert moved[None] > 1e-3  # unclipped, the step is large
    assert moved[1e-3] == pytest.approx(0.1 * 1e-3, rel=1e-3)


def test_learning_rate_warms_up_then_follows_the_schedule(tmp_path):
    task = LinearTask()
    train(config(tmp_path, log_every=1, optim__max_steps=10, optim__warmup_ratio=0.2), task, progress=False)
    lrs = [r["train/lr"] for r in map(json.loads, (tmp_path / "out" / "logs" / "linear" / "metrics.jsonl").open())
           if "train/lr" in r]
    assert len(lrs) == 10
    # lr after step s (scheduler stepped s times): warm-up over 2 steps, then cosine down to 0 at step 10
    want = [0.05 * min(1.0, s / 2) if s < 2 else 0.05 * 0.5 * (1 + np.cos(np.pi * (s - 2) / 8)) for s in range(1, 11)]
    assert lrs == pytest.approx(want, abs=1e-9)


# -- the batch plan ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("accum", [1, 2])
@pytest.mark.parametrize("group", [False, True])
def test_batch_plan_gives_each_rank_disjoint_shards_covering_the_epoch(world, accum, group):
    n, bs = 103, 4
    lengths = np.random.default_rng(0).integers(5, 50, n)
    plan = batch_plan(lengths, bs, world, epoch=0, seed=3, group_by_length=group, accum=accum)
    per_step = bs * world * accum
    assert len(plan) == (n // per_step) * accum
    seen = []
    for micro in plan:
        assert len(micro) == world and all(len(shard) == bs for shard in micro)
        flat = [i for shard in micro for i in shard]
        assert len(set(flat)) == len(flat)  # ranks never share an example in a micro-step
        seen += flat
    assert len(set(seen)) == len(seen)  # nor across the epoch
    assert len(seen) == n - n % per_step and set(seen) <= set(range(n))  # only a ragged tail is left out
    # each rank's shards are what that rank trains on: together they are the plan, apart they are disjoint
    ranks = [set(i for micro in plan for i in micro[r]) for r in range(world)]
    assert sum(len(r) for r in ranks) == len(set().union(*ranks)) == len(seen)
    # deterministic in (seed, epoch); another epoch is another order
    assert plan == batch_plan(lengths, bs, world, epoch=0, seed=3, group_by_length=group, accum=accum)
    assert plan != batch_plan(lengths, bs, world, epoch=1, seed=3, group_by_length=group, accum=accum)
    if group:  # similar lengths within a micro-batch: less spread than random batches
        spread = np.mean([np.ptp(lengths[[i for s in m for i in s]]) for m in plan])
        rand = batch_plan(lengths, bs, world, epoch=0, seed=3, group_by_length=False, accum=accum)
        assert spread < np.mean([np.ptp(lengths[[i for s in m for i in s]]) for m in rand])


def test_batch_plan_split_of_a_step_does_not_depend_on_world_or_accumulation():
    lengths = np.ones(64)
    one = batch_plan(lengths, 8, 1, 0, 0, False, 1)
    for world, accum in ((2, 1), (1, 2), (2, 2)):
        plan = batch_plan(lengths, 8 // (world * accum), world, 0, 0, False, accum)
        steps = [sorted(i for m in plan[s * accum:(s + 1) * accum] for sh in m for i in sh)
                 for s in range(len(plan) // accum)]
        assert steps == [sorted(m[0]) for m in one]


def test_batch_plan_refuses_data_smaller_than_the_ranks():
    with pytest.raises(ConfigError, match="cannot fill"):
        batch_plan(np.ones(3), 2, 2, 0, 0, False, 2)


# -- checkpoint integrity ------------------------------------------------------------------------------------------------

def _checkpointed(tmp_path: Path) -> Path:
    train(config(tmp_path, optim__max_steps=4), LinearTask(), progress=False)
    ckpt = latest_checkpoint(tmp_path / "out" / "checkpoints" / "linear")
    assert ckpt.step == 4
    return ckpt.folder


def _resume(tmp_path: Path, task: Task | None = None, **over):  # the optimiser settings it was checkpointed with
    return train(config(tmp_path, optim__max_steps=4, **over), task or LinearTask(), resume=True, progress=False)


def test_checkpoint_holds_every_part_and_a_manifest(tmp_path):
    folder = _checkpointed(tmp_path)
    state = json.loads((folder / "trainer_state.json").read_text())
    assert set(state["manifest"]) == {"model/weights.safetensors", "optimizer.pt", "scheduler.pt", "rng_rank0.pt"}
    torch.load(folder / "optimizer.pt", weights_only=True)  # state loads without unpickling code
    assert not list(folder.parent.glob(".step-*"))  # no temporary folder left behind
    assert _resume(tmp_path)["steps"] == 4


def test_a_checkpoint_of_other_data_is_refused(tmp_path):
    _checkpointed(tmp_path)
    with pytest.raises(CheckpointError, match="trained on another data"):
        _resume(tmp_path, LinearTask(seed=1))


@pytest.mark.parametrize("over, field", [({"optim__batch_size": 2}, "batch_size"),
                                         ({"optim__grad_accum": 2}, "grad_accum"), ({"seed": 5}, "seed")])
def test_a_checkpoint_of_another_batch_plan_is_refused(tmp_path, over, field):
    _checkpointed(tmp_path)
    with pytest.raises(CheckpointError, match=f"another batch plan.*{field}"):
        _resume(tmp_path, **over)


@pytest.mark.parametrize("part", ["model/weights.safetensors", "optimizer.pt", "scheduler.pt", "rng_rank0.pt"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped"])
def test_a_missing_or_damaged_part_is_refused(tmp_path, part, damage):
    folder = _checkpointed(tmp_path)
    path = folder / part
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    want = {"missing": "is missing", "truncated": "truncated", "flipped": "sha256"}[damage]
    with pytest.raises(CheckpointError, match=f"{part}.*{want}"):
        _resume(tmp_path)


def test_an_unreadable_state_or_one_without_manifest_is_refused(tmp_path):
    folder = _checkpointed(tmp_path)
    state_file = folder / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k != "manifest"}))
    with pytest.raises(CheckpointError, match="no manifest"):
        _resume(tmp_path)
    state_file.write_text('{"global_step": 4, ')
    with pytest.raises(CheckpointError, match="unreadable"):
        _resume(tmp_path)


def test_an_incomplete_checkpoint_folder_is_not_resumed(tmp_path):
    """A folder without its state file (written last) is not a checkpoint: the previous one is used."""
    train(config(tmp_path, optim__max_steps=12), LinearTask(), progress=False)
    ckpts = tmp_path / "out" / "checkpoints" / "linear"
    assert latest_checkpoint(ckpts).step == 12  # the newest of step-4, step-8, step-12
    (ckpts / "step-12" / "trainer_state.json").unlink()
    (ckpts / "step-16").mkdir()
    (ckpts / ".step-20.tmp").mkdir()
    assert latest_checkpoint(ckpts).step == 8


# -- precision -----------------------------------------------------------------------------------------------------------

AMD = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"


def test_precision_resolution_order():
    env = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    assert resolve_precision(None, on_cpu=True, env=env)[0] == "bf16"  # from accelerate launch
    assert "accelerate" in resolve_precision(None, on_cpu=True, env=env)[1]
    assert resolve_precision(None, on_cpu=True, env={})[0] == "no"
    assert resolve_precision("no", on_cpu=True, env=env)[0] == "no"  # an explicit value wins
    assert resolve_precision("fp16", on_cpu=False, env=env)[0] == "fp16"
    assert resolve_precision("auto", on_cpu=True, env=env, cpuinfo=AMD)[0] == "no"
    assert resolve_precision("auto", on_cpu=True, env={}, cpuinfo=SAPPHIRE)[0] == "bf16"
    assert resolve_precision("auto", on_cpu=False, env={}, cuda_bf16=True)[0] == "bf16"
    assert resolve_precision("auto", on_cpu=False, env={}, cuda_bf16=False)[0] == "no"
    assert not cpu_has_native_bf16(AMD) and cpu_has_native_bf16(SAPPHIRE)


def test_this_machine_auto_picks_what_its_cpu_has(tmp_path):
    task = LinearTask()
    r = train(config(tmp_path, precision="auto", optim__max_steps=2), task, progress=False)
    assert r["precision"] == ("bf16" if cpu_has_native_bf16() else "no") and "auto" in r["precision_source"]


def test_a_config_without_precision_takes_accelerates(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    r = train(config(tmp_path / "a", optim__max_steps=2), LinearTask(), progress=False)
    assert r["precision"] == "bf16" and "ACCELERATE_MIXED_PRECISION" in r["precision_source"]
    r = train(config(tmp_path / "b", optim__max_steps=2, precision="no"), LinearTask(), progress=False)
    assert r["precision"] == "no" and "config" in r["precision_source"]


def test_legacy_tensorboard_flag_maps_to_the_tracker(tmp_path):
    base = {"name": "x", "out": str(tmp_path)}
    assert EngineConfig.model_validate({**base, "tensorboard": False}).tracker == "none"
    assert EngineConfig.model_validate({**base, "tensorboard": True}).tracker == "tensorboard"
    assert EngineConfig.model_validate(base).precision is None


def test_tensorboard_tracker_writes_events_and_eval_runs_every_n_steps(tmp_path):
    task = LinearTask()
    r = train(config(tmp_path, tracker="tensorboard", eval__every_steps=3, optim__max_steps=7), task,
              progress=False)
    assert [h["step"] for h in r["history"]] == [3, 6, 7]  # every 3 steps and at the end
    assert r["final_eval"]["eval/mse"] == pytest.approx(r["history"][-1]["eval/mse"])
    assert list((tmp_path / "out" / "logs").rglob("events.out.tfevents.*"))


def test_engine_never_reads_batch_keys():
    """The engine's source names no key of any task's batch."""
    src = Path(Engine.__module__.replace(".", "/") + ".py")
    text = (Path(__file__).resolve().parents[1] / src).read_text()
    for key in ('"input_ids"', '"labels"', '"attention_mask"', '"pixel_values"', '["x"]'):
        assert key not in text


# -- several processes ---------------------------------------------------------------------------------------------------

def _multi_config(out: Path, world: int) -> EngineConfig:
    """48 examples, an effective batch of 16 (8 per micro-step x 2 micro-steps): 3 steps an epoch, 5 steps."""
    return EngineConfig.model_validate({
        "name": "toy", "out": str(out), "tracker": "none", "group_by_length": True, "log_every": 1,
        "optim": {"optimizer": "sgd", "lr": 0.05, "max_steps": 5, "batch_size": 8 // world, "grad_accum": 2,
                  "warmup_ratio": 0.0, "schedule": "constant", "max_grad_norm": None},
        "checkpoint": {"every_steps": None}})


class RecordingTask(LinearTask):
    def __init__(self, out: Path) -> None:
        super().__init__(n=48)
        self.out = out

    def finish(self, model, result) -> None:
        super().finish(model, result)
        save_file({k: v.contiguous() for k, v in self.final.items()}, str(self.out / "final.safetensors"))


def _multi_main(out: Path) -> None:
    """Entry point under `accelerate launch`: train, then record what this rank collated."""
    task = RecordingTask(out)
    engine = Engine(_multi_config(out, int(os.environ.get("WORLD_SIZE", "1"))), task, progress=False)
    engine.run()
    rank = engine.accelerator.process_index
    (out / f"calls.rank{rank}.json").write_text(json.dumps(task.calls))


@pytest.mark.slow
def test_two_processes_train_disjoint_shards_of_the_plan_and_equal_one_process(tmp_path):
    """Under `accelerate launch` (2 processes, gloo on the CPU) each rank trains on its own shard of the plan, the
    replicas stay identical, and the weights equal one process with the same effective batch."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "two"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    r = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                        str(repo / "configs" / "accelerate" / "cpu_ddp.yaml"), "--main_process_port", "29547",
                        str(Path(__file__).resolve()), str(out)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    calls = [json.loads((out / f"calls.rank{k}.json").read_text()) for k in range(2)]
    lengths = RecordingTask(out).lengths()
    plans = {e: batch_plan(lengths, 4, 2, e, 0, True, 2) for e in (0, 1)}
    for rank in range(2):  # rank k collated exactly shard k of every micro-step of the plan, in order
        want = [(plans[e][m][rank], e) for e, m in [(0, m) for m in range(6)] + [(1, m) for m in range(4)]]
        assert [(c, e) for c, e in calls[rank]] == want
    for e in (0, 1):  # within an epoch no example is on both ranks
        a, b = ({i for c, ep in calls[k] if ep == e for i in c} for k in range(2))
        assert a and b and not a & b
    digests = [json.loads(p.read_text()) for p in sorted((out / "rank_digests").glob("*.json"))]
    assert len(digests) == 2 and digests[0]["sha256"] == digests[1]["sha256"]
    one = RecordingTask(tmp_path)
    Engine(_multi_config(tmp_path / "one", 1), one, progress=False).run()
    two = load_file(str(out / "final.safetensors"))
    assert all(torch.allclose(one.final[k], two[k], atol=1e-6) for k in two)


if __name__ == "__main__":
    import sys

    _multi_main(Path(sys.argv[1]))

"""Mutation check of vlm_salience/training/: plant one realistic bug at a time, run the tests that should catch
it, restore the source, and report caught/total.

    .venv/bin/python tests/mutations_training.py [--only NAME ...] [--suite after|before] [--json out.json]

`--suite after` runs each mutant's own selection of the current tests (tests/test_engine.py and the new tests of
tests/test_training.py); `--suite before` runs the tests that existed before issue 19 (tests/test_training.py's
older tests: slow, minutes per mutant). Mutants are planted in a temporary copy of the package and the tests
(PYTHONPATH points there), never in the checkout others work in. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T = "vlm_salience/training/"
ENGINE = "tests/test_engine.py"
TRAINING = "tests/test_training.py"
# the tests of tests/test_training.py that existed before issue 19
BEFORE = [f"{TRAINING}::{name}" for name in (
    "test_instruction_data_masks_everything_but_the_answer", "test_lora_targets_the_language_model_unless_told_otherwise",
    "test_bad_configs_fail_before_training", "test_training_learns_saves_safetensors_and_resumes_exactly_after_sigkill",
    "test_sigterm_checkpoints_and_stops", "test_a_checkpoint_from_another_base_is_refused",
    "test_two_process_training_keeps_replicas_identical", "test_qlora_bf16_and_gradient_checkpointing_run",
    "test_experts_route_in_one_pass_and_export")]


@dataclass
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: list[str]  # pytest arguments of the `after` suite


MUTANTS = [
    Mutant("accumulation does not divide the loss", T + "engine.py",
           "loss = task.loss(self.model, batch) / len(micro)", "loss = task.loss(self.model, batch)",
           [ENGINE, "-k", "accumulation"]),
    Mutant("zero_grad forgotten after the optimizer step", T + "engine.py",
           "self.optimizer.zero_grad(set_to_none=True)", "pass", [ENGINE, "-k", "crash or accumulation"]),
    Mutant("gradients never synchronised across ranks", T + "engine.py",
           "with acc.no_sync(self.model) if j < len(micro) - 1 else _null():",
           "with acc.no_sync(self.model):", [ENGINE, "-k", "two_processes"]),
    Mutant("ranks share one shard", T + "engine.py",
           "out.append([shard.tolist() for shard in np.array_split(micro, world)])",
           "out.append([micro[:len(micro) // world].tolist() for _ in range(world)])", [ENGINE, "-k", "batch_plan"]),
    Mutant("every epoch has the same order", T + "engine.py",
           "rng = np.random.default_rng(seed * 1000 + epoch)", "rng = np.random.default_rng(seed * 1000)",
           [ENGINE, "-k", "batch_plan"]),
    Mutant("micro-steps drawn apart from their optimizer step", T + "engine.py",
           "per_step = batch_size * world * accum", "per_step = batch_size * world",
           [ENGINE, "-k", "batch_plan or accumulation"]),
    Mutant("RNG state not restored on resume", T + "engine.py",
           "        _set_rng_state(torch.load(ckpt.folder / f\"rng_rank{self.accelerator.process_index}.pt\", "
           "weights_only=True))\n", "", [ENGINE, "-k", "crash or sigterm"]),
    Mutant("resume restarts the epoch count", T + "engine.py",
           "epoch, in_epoch = divmod(step, self.steps_per_epoch)",
           "epoch, in_epoch = 0, step % self.steps_per_epoch", [ENGINE, "-k", "crash"]),
    Mutant("oldest checkpoint resumed", T + "engine.py",
           "if best is None or step > best.step:", "if best is None or step < best.step:",
           [ENGINE, "-k", "incomplete or crash"]),
    Mutant("fingerprint not compared", T + "engine.py",
           "            if theirs.get(what) != mine:", "            if False:",
           [ENGINE, "-k", "other_data"]),
    Mutant("batch plan not compared", T + "engine.py", "        if differ:", "        if False:",
           [ENGINE, "-k", "batch_plan_is_refused"]),
    Mutant("manifest not verified", T + "engine.py", "        verify_checkpoint(ckpt.folder, state)\n", "",
           [ENGINE, "-k", "damaged"]),
    Mutant("digest of a part not checked", T + "engine.py",
           "        if _file_digest(path) != meta[\"sha256\"]:", "        if False:", [ENGINE, "-k", "damaged"]),
    Mutant("SIGTERM stops without a checkpoint", T + "engine.py",
           "if (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or stop:",
           "if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:", [ENGINE, "-k", "sigterm"]),
    Mutant("gradients never clipped", T + "engine.py", "                    if cfg.optim.max_grad_norm:",
           "                    if False:", [ENGINE, "-k", "clipped"]),
    Mutant("scheduler never stepped", T + "engine.py", "                    self.scheduler.step()\n", "",
           [ENGINE, "-k", "warms"]),
    Mutant("evaluation cadence inverted", T + "engine.py",
           "if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < self.total_steps:",
           "if cfg.eval.every_steps and step % cfg.eval.every_steps != 0 and step < self.total_steps:",
           [ENGINE, "-k", "tensorboard"]),
    Mutant("config precision ignores accelerate launch", T + "engine.py",
           "        value = env.get(\"ACCELERATE_MIXED_PRECISION\")", "        value = None",
           [ENGINE, "-k", "precision"]),
    Mutant("auto picks bf16 on any CPU", T + "engine.py", "    if cpu_has_native_bf16(cpuinfo):", "    if True:",
           [ENGINE, "-k", "precision or auto"]),
    Mutant("few-shot index built from every item (test leakage)", T + "vlm_task.py",
           "index = CaseIndex.build([cases[i] for i in d.splits.train], load_config(",
           "index = CaseIndex.build(cases, load_config(", [TRAINING, "-k", "retrieved"]),
    Mutant("validation items left in the training split", "vlm_salience/splits.py",
           "        train = np.setdiff1d(train, validation)\n", "", [TRAINING, "-k", "retrieved"]),
    Mutant("prompt tokens not masked out of the loss", T + "collator.py",
           "\"labels\": torch.cat([torch.full_like(prompt[\"prompt_ids\"], IGNORE), answer_ids])",
           "\"labels\": torch.cat([prompt[\"prompt_ids\"], answer_ids])", [TRAINING, "-k", "masks"]),
]


def copy_repo() -> Path:
    """The package, tests, configs and prompts in a temporary folder, where mutants may be planted."""
    work = Path(tempfile.mkdtemp(prefix="mutants-training-"))
    for name in ("vlm_salience", "tests", "configs", "prompts", "retrieval_index"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.faiss"))
    shutil.copy(REPO / "pyproject.toml", work / "pyproject.toml")
    return work


def run(mutant: Mutant, suite: str, work: Path) -> dict:
    path = work / mutant.file
    source = path.read_text()
    if source.count(mutant.old) != 1:
        return {"name": mutant.name, "status": "stale (the edit no longer applies: update the mutant)"}
    tests = mutant.tests if suite == "after" else BEFORE
    t0 = time.perf_counter()
    try:
        path.write_text(source.replace(mutant.old, mutant.new))
        env = {**os.environ, "PYTHONPATH": str(work), "VLM_SALIENCE_HOME": str(work)}
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                             cwd=work, capture_output=True, text=True, env=env)
    finally:
        path.write_text(source)
    caught = res.returncode != 0
    tail = [line for line in res.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:1]
    return {"name": mutant.name, "status": "caught" if caught else "survived", "by": tail[0] if tail else "",
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=["after", "before"], default="after")
    ap.add_argument("--only", nargs="*", help="substrings of mutant names")
    ap.add_argument("--json")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    results = []
    work = copy_repo()
    for m in chosen:
        r = run(m, args.suite, work)
        results.append(r)
        print(f"{r['status']:>8}  {m.name}  {r.get('by', '')}", flush=True)
    caught = sum(r["status"] == "caught" for r in results)
    print(f"mutation score ({args.suite}): {caught}/{len(results)} caught")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Fine-tuning speed (issues 5 and 31), each figure against its baseline in the same run, printed as measured.

1. Training tokens/s of `vlm-salience train` against TRL's SFTTrainer with the same model (a random Qwen2-VL:
   configs/models/bench_qwen2_vl.yaml on a CPU, configs/models/qwen2_vl_2b_shape.yaml, Qwen2-VL-2B's shapes, on
   CUDA), LoRA config (r=8 on the language model's linear layers), data (combined prompts of the synthetic
   Split-Steal corpus with their answers), batch size (8) and precision. fp32 always; bf16 only where the device
   multiplies it natively (CUDA with bf16, a CPU with AMX-BF16/AVX512-BF16), or with --bf16. Tokens are the real
   (unpadded) tokens of each trainer's batches. Peak memory: max RSS on a CPU, torch.cuda.max_memory_allocated on
   CUDA (each run in its own process).
2. Model FLOPs utilisation of every run, against the matrix-multiply peak of this device measured in the same run
   (on CUDA with torch.cuda.synchronize around the timed multiplies).
3. Levers of ours, each against ours at its defaults, same everything else: `answer-only` (logits and loss at the
   answer positions only, training/vlm_task.py); `vision-cache` (the frozen vision tower's features computed once
   per image and reused from the second epoch on, training/vision_cache.py), measured as the time of one training
   step with pixels against one with the cached features (the steady state of every epoch after the first), with
   the vision forward's share of a step; the collation's share of the step time (what DataLoader workers could
   take off the loop); `token-budget` (batching.max_tokens: 1800, batches by padded tokens instead of 8 examples)
   and `packed` (batching.packed: each batch of 8 as one padding-free row, attention within each example by
   position ids) as whole runs; with --levers also `workers` (engine loader.workers: 1), `compile`
   (torch.compile of the language model), and `nf4` / `8bit` (a QLoRA base; with its peak memory).
5. Parameter memory of LoRA on a bf16, 8-bit and nf4 base at Qwen2-VL-2B's shapes (training/memory.py: built on the
   meta device, quantization emulated as bitsandbytes stores it, the project's preparation applied), by module group
   and dtype, beside nf4 as peft's prepare_model_for_kbit_training left it (everything unquantized in fp32).
4. Routed inference of a batch that mixes two LoRA experts (one pass, peft adapter_names) <= 1.3x the time of the
   same batch through a single adapter.

TRL's SFTConfig turns gradient checkpointing on by default; here it is off for both trainers (the same settings:
ours has it off by default), and --trl-default adds TRL at its own default (less memory, slower).
Each training run is repeated (--repeats, in alternating order) and each ratio is that of the medians: see
benchmarks/_harness.py for why a shared virtual machine needs that. Every line carries the 1-minute load average.
The defaults finish within 10 minutes on a 2-core CPU; --full takes more steps and rounds. On CUDA both trainers'
times end on a host sync (ours reads each step's loss, the HF Trainer the summed loss before its runtime).

    python benchmarks/bench_training.py [--full] [--steps N] [--repeats N] [--bf16] [--model YAML] [--json out.json]
                                        [--levers workers,compile] [--trl-default]
    (needs: pip install ".[bench]")
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import alternating, describe, median_run, paired_ratio, run_child

HERE = Path(__file__).resolve()
CPU_MODEL = "configs/models/bench_qwen2_vl.yaml"
CUDA_MODEL = "configs/models/qwen2_vl_2b_shape.yaml"


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


SMALL_CORPUS = ["participants=12", "rounds=4"]  # 48 items, 36 for training: enough for the default 3 steps


def setup(work: Path, model_yaml: str, full: bool = True) -> tuple[Path, Path]:
    """The random model of `model_yaml` and the synthetic corpus (the shipped one, or a small one whose encoding
    and tokenising in every child takes seconds rather than a minute), built once into `work`."""
    from vlm_salience.config import load_config
    from vlm_salience.data.synth import SynthConfig, write_corpus
    from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm
    from vlm_salience.resources import shipped

    model = work / Path(model_yaml).stem
    if not model.exists():
        src = Path(model_yaml) if Path(model_yaml).exists() else shipped(model_yaml)
        build_tiny_vlm(load_config(src, TinyVLMConfig), model)
    corpus = work / ("corpus" if full else "corpus_small")
    if not corpus.exists():
        write_corpus(load_config(shipped("configs/synth/split_steal.yaml"), SynthConfig, [] if full else SMALL_CORPUS),
                     corpus, progress=False)
    return model, corpus / "data.yaml"


TOKEN_BUDGET = 1800  # tokens a micro-batch may hold, padded: about batch 8 at the benchmark corpus's ~220-token examples
LEVERS = {"workers": {"loader": {"workers": 1}}, "compile": {"compile": True}, "vision-cache": {"vision_cache": True},
          "token-budget": {"batching": {"max_tokens": TOKEN_BUDGET}}, "packed": {"batching": {"packed": True}},
          # QLoRA bases (--levers nf4,8bit): peak memory against ours's bf16/fp32 LoRA (the 2B shapes on CUDA)
          "nf4": {"lora": {"r": 8, "alpha": 16, "dropout": 0.05, "quantization": "4bit"}},
          "8bit": {"lora": {"r": 8, "alpha": 16, "dropout": 0.05, "quantization": "8bit"}}}
DEFAULT_LEVERS = ["answer-only", "token-budget", "packed"]


def train_config(work: Path, model: Path, corpus: Path, precision: str, steps: int, lever: str = "") -> Path:
    import yaml

    from vlm_salience.resources import home

    cfg = {
        "name": "bench", "model": {"name": "bench", "path": str(model)}, "data": {"config": str(corpus)},
        "study": str(home() / "configs" / "experiment" / "bci_synthetic.yaml"),
        "split": {"test_fraction": 0.25, "validation_fraction": 0.0, "group": "participant"},
        "adapters": [{"name": "combined", "template": "combined"}],
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
        "optim": {"lr": 2e-4, "max_steps": steps, "batch_size": 8, "warmup_ratio": 0.0},
        "precision": precision, "checkpoint": {"every_steps": None}, "tensorboard": False,
        "out": str(work / f"out_{precision}{lever}"),
        **LEVERS.get(lever, {}),
    }
    path = work / f"train_{precision}{lever}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def flops_per_token(model, tokens: int, seq_len: float, patches_per_token: float) -> float:
    """Model FLOPs of one trained token with LoRA: forward and the backward pass to the activations through the
    language model (no gradients of frozen weights), attention and the output head at every position included
    (the same count for every run, so MFU compares as tokens/s does); the frozen vision tower forward only."""
    cfg = model.config.text_config
    lm_linear = sum(p.numel() for n, p in model.named_parameters()
                    if p.ndim == 2 and "visual" not in n and "embed_tokens" not in n and "lora_" not in n)
    vision = sum(p.numel() for n, p in model.named_parameters() if "visual" in n)
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    forward = 2 * lm_linear + 4 * layers * seq_len * d
    return 2 * forward + 2 * vision * patches_per_token


def _count(batch, counted: dict):
    """Tally what a collator emits: tokens actually attended, sequence lengths, image patches (for FLOPs). Per batch:
    the HF Trainer's data loader collates one batch ahead of the last step, which must not count."""
    counted.setdefault("per_batch", []).append(int(batch["attention_mask"].sum()))
    counted["tokens"] += int(batch["attention_mask"].sum())
    counted["seq"].append(batch["attention_mask"].shape[1])
    counted["images"] += int(batch["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in batch else 0
    return batch


def peak_memory_mb() -> float:
    """This process's peak memory: CUDA's allocator peak on a GPU, max RSS on a CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_train(name: str, work: Path, model: Path, corpus: Path, steps: int) -> dict:
    """One training run. `name` is trainer_precision[_lever]: ours_fp32, trl_bf16, ours_fp32_answer-only,
    trl_fp32_default (TRL with its default gradient checkpointing)."""
    import torch

    trainer_name, prec, *lever = name.split("_")
    lever = lever[0] if lever else ""
    precision = "bf16" if prec == "bf16" else "no"
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if trainer_name == "ours":
        from vlm_salience.config import load_config
        from vlm_salience.training.collator import VLMCollator
        from vlm_salience.training.config import TrainConfig
        from vlm_salience.training.loop import Trainer
        from vlm_salience.training.vlm_task import VLMTask

        VLMTask.answer_only_logits = lever == "answer-only"
        cfg = load_config(train_config(work, model, corpus, precision, steps, lever), TrainConfig)
        trainer = Trainer(cfg, cfg.adapters[0], progress=False)
        counted = {"tokens": 0, "seq": [], "images": 0, "collate_s": 0.0}
        real_call = VLMCollator.__call__

        def counting(self, encoded):
            return _count(real_call(self, encoded), counted)
        VLMCollator.__call__ = counting
        real_collate = VLMTask.collate

        def timed(self, indices, epoch):
            t0 = time.perf_counter()
            out = real_collate(self, indices, epoch)
            counted["collate_s"] += time.perf_counter() - t0
            return out
        VLMTask.collate = timed
        result = trainer.train()
        seconds = result["seconds"]
        hf_model = trainer._unwrapped()
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from PIL import Image
        from trl import SFTConfig, SFTTrainer

        from vlm_salience.config import load_config
        from vlm_salience.models.loading import ModelConfig, load_vlm
        from vlm_salience.prompting.answers import compose_answer
        from vlm_salience.training.config import LoraConfig as OurLora, TrainConfig
        from vlm_salience.training.data import TrainingData
        from vlm_salience.training.lora import target_modules

        cfg = load_config(train_config(work, model, corpus, precision, steps), TrainConfig)
        ds = TrainingData(cfg).dataset(cfg.adapters[0])
        rows = []
        for i, ex in enumerate(ds):
            answer = compose_answer(json.loads(ex["answer_fields"]), np.random.default_rng([0, 0, i]))
            rows.append({"images": [Image.open(ex["image"]).convert("RGB")], "prompt": json.loads(ex["messages"]),
                         "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
        loaded = load_vlm(ModelConfig(name="bench", path=str(model)))
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                          target_modules=target_modules(loaded.model, OurLora()))
        args = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=8, max_steps=steps,
                         learning_rate=2e-4, bf16=precision == "bf16", logging_steps=10_000, save_strategy="no",
                         report_to=[], max_length=None, dataloader_num_workers=0, warmup_steps=0,
                         remove_unused_columns=False, use_cpu=not cuda,
                         gradient_checkpointing=lever == "default")  # TRL's default is on; ours is off
        trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=loaded.processor, peft_config=lora)
        counted = {"tokens": 0, "seq": [], "images": 0, "collate_s": 0.0}
        real_collator = trainer.data_collator

        def counting(examples):
            return _count(real_collator(examples), counted)
        trainer.data_collator = counting
        out = trainer.train()
        seconds = out.metrics["train_runtime"]
        hf_model = trainer.model
    if cuda:
        torch.cuda.synchronize()
    tokens = sum(counted["per_batch"][:steps])  # the trained batches (batch 8, no accumulation: one per step)
    fpt = flops_per_token(hf_model, tokens, float(np.mean(counted["seq"])), counted["images"] / max(tokens, 1))
    return {"name": name, "steps": steps, "tokens": tokens, "collated_batches": len(counted["per_batch"]), "seconds": seconds, "tokens_per_s": tokens / seconds,
            "mean_padded_length": float(np.mean(counted["seq"])), "flops_per_token": fpt,
            "achieved_gflops": fpt * tokens / seconds / 1e9, "peak_memory_mb": peak_memory_mb(),
            "memory_kind": "cuda max_memory_allocated" if cuda else "max RSS", "threads": torch.get_num_threads(),
            "collate_share": counted["collate_s"] / seconds,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def measure_peak(precisions: list[str], seconds: float = 2.0) -> dict:
    """Matrix-multiply GFLOP/s of this device per precision (square matmuls, timed between synchronisations)."""
    import torch

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n = 8192 if cuda else 2048
    out = {}
    for name in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        a = torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu")
        a @ a
        sync()
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            for _ in range(10 if cuda else 1):  # enqueue a few between host checks on a GPU
                a @ a
                k += 1
            sync()
        out[name] = 2 * n**3 * k / (time.perf_counter() - t0) / 1e9
    return out


def measure_vision_cache(work: Path, model: Path, corpus: Path, reps: int) -> dict:
    """One training step (forward and backward, batch 8) with pixels against the same step with the frozen vision
    features from the cache, alternating; and the vision forward alone. The cache's gain in every epoch after the
    first (in the first it computes the features, under no_grad, once per image)."""
    import torch

    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.vision_cache import INDEX_KEY, VisionFeatureCache
    from vlm_salience.training.vlm_task import VLMTask

    class OneProcess:
        is_main_process = True

        def wait_for_everyone(self):
            pass

    cfg = load_config(train_config(work, model, corpus, "no", 1), TrainConfig)
    task = VLMTask(cfg, cfg.adapters[0])
    net, _ = task.setup(OneProcess())
    net.train()
    cuda = torch.cuda.is_available()
    if cuda:
        net.cuda()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    idx = list(range(8))
    batch = {k: v.to(net.device) for k, v in task.collate(idx, 0).items()}
    cache = VisionFeatureCache()
    cache.inputs(net, {**batch, INDEX_KEY: torch.tensor(idx)}, task.collator._cache)  # fill (epoch 1)

    def step(cached: bool) -> float:
        sync()
        t0 = time.perf_counter()
        inputs = cache.inputs(net, {**batch, INDEX_KEY: torch.tensor(idx)}, task.collator._cache) if cached else batch
        net(**inputs).loss.backward()
        net.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    def vision() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            net.get_image_features(pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
        sync()
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up
    times = {"pixels": [], "cached": [], "vision": []}
    for r in range(reps):
        for kind in (("pixels", "cached") if r % 2 == 0 else ("cached", "pixels")):
            times[kind].append(step(kind == "cached"))
        times["vision"].append(vision())
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"step_pixels_s": med["pixels"], "step_cached_s": med["cached"], "vision_forward_s": med["vision"],
            "ratio": med["pixels"] / med["cached"], "vision_share": med["vision"] / med["pixels"],
            "per_round": [a / b for a, b in zip(times["pixels"], times["cached"])], "hits": cache.hits,
            "peak_memory_mb": peak_memory_mb()}


def measure_routing(work: Path, model: Path, corpus: Path, items: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.training.config import LoraConfig as OurLora
    from vlm_salience.training.lora import target_modules

    sys.path.insert(0, str(HERE.parent))
    from bench_prompting import prompts

    loaded = load_vlm(ModelConfig(name="bench", path=str(model)))
    targets = target_modules(loaded.model, OurLora())
    torch.manual_seed(0)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                         init_lora_weights=False), adapter_name="face")
    peft_model.add_adapter("context", LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                 init_lora_weights=False))
    peft_model.eval()
    loaded.model = peft_model
    backend = HFBackend(loaded, batch_size=16)
    ps, spec = prompts(corpus, items)
    mixed = ["face" if i % 2 else "context" for i in range(len(ps))]
    backend.score(ps[:4], spec.slots(), adapters=mixed[:4])
    times = {"single": [], "mixed": []}
    for _ in range(3):  # interleaved, best of three: the machine's load drifts
        peft_model.set_adapter("face")
        t0 = time.perf_counter()
        backend.score(ps, spec.slots())
        times["single"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        backend.score(ps, spec.slots(), adapters=mixed)
        times["mixed"].append(time.perf_counter() - t0)
    single, mixed_t = min(times["single"]), min(times["mixed"])
    return {"items": len(ps), "single_adapter_seconds": single, "mixed_batch_seconds": mixed_t,
            "ratio": mixed_t / single, "target_ratio": 1.3, "peak_memory_mb": peak_memory_mb()}


def measure_memory() -> dict:
    """[5]: parameter bytes by group and dtype per mode at the 2B shapes (no weights allocated)."""
    from vlm_salience.resources import shipped
    from vlm_salience.training.memory import account, format_table

    shapes = Path(CUDA_MODEL) if Path(CUDA_MODEL).exists() else shipped(CUDA_MODEL)
    acc = account(shapes)
    acc["4bit, peft upcast (before)"] = account(shapes, modes=("4bit",), upcast=True)["4bit"]
    return {"accounting": acc, "table": format_table(acc),
            "totals_gib": {m: (a["total"] + a["lora_state"]) / 2**30 for m, a in acc.items()}}


def child_args(kind: str, args) -> list[str]:
    return ["--child", kind, "--work", str(args.work), "--steps", str(args.steps), "--items", str(args.items),
            "--model", args.model, "--precisions", ",".join(args.precisions)] + (["--full"] if args.full else [])


def load() -> str:
    try:
        return f"load {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load n/a"


def say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the whole synthetic corpus, more steps and rounds, and the "
                    "routing figure (slower)")
    ap.add_argument("--routing", action="store_true", help="measure routing [4] without --full too")
    ap.add_argument("--steps", type=int, help="training steps per run (default 3; --full 30)")
    ap.add_argument("--items", type=int, help="items of the routing measurement (default 32; --full 64)")
    ap.add_argument("--repeats", type=int, help="rounds of each training run, in alternating order (default 2; "
                    "--full 3)")
    ap.add_argument("--bf16", action="store_true", help="measure bf16 even where the device has no native bf16")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 only")
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL baseline (levers only)")
    ap.add_argument("--trl-default", action="store_true", help="also TRL at its own default (gradient checkpointing)")
    ap.add_argument("--levers", default="", help="whole-run levers to add, comma-separated: workers, compile, nf4, "
                    "8bit")
    ap.add_argument("--model", help=f"tiny-VLM YAML (default {CPU_MODEL} on a CPU, {CUDA_MODEL} on CUDA)")
    ap.add_argument("--work")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--precisions", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (30 if args.full else 3)
    args.items = args.items or (64 if args.full else 32)
    args.repeats = args.repeats or (3 if args.full else 2)
    tmp = tempfile.TemporaryDirectory()
    args.work = Path(args.work or tmp.name)
    if args.child:
        model, corpus = setup(args.work, args.model, args.full)
        if args.child == "peak":
            out = measure_peak(args.precisions.split(","))
        elif args.child == "vision":
            out = measure_vision_cache(args.work, model, corpus, 3 if not args.full else 7)
        elif args.child == "memory":
            out = measure_memory()
        elif args.child == "routing":
            out = measure_routing(args.work, model, corpus, args.items)
        else:
            out = measure_train(args.child, args.work, model, corpus, args.steps)
        print(json.dumps(out))
        return

    from vlm_salience.models.hardware import native_bf16

    cuda = on_cuda()
    device = "cuda" if cuda else "cpu"
    args.model = args.model or (CUDA_MODEL if cuda else CPU_MODEL)
    native = native_bf16(device)
    bf16 = not args.no_bf16 and (native or args.bf16)
    args.precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    trl = not args.no_trl
    if trl:
        try:
            import trl as _trl  # noqa: F401
        except ImportError:
            sys.exit("TRL is needed for the baseline: pip install '.[bench]' (or --no-trl)")
    t_start = time.perf_counter()
    say(f"bench_training: {device}, model {args.model}, {args.steps} steps x batch 8, {args.repeats} rounds; "
        f"precisions {', '.join(args.precisions)}"
        + ("" if bf16 else f" (bf16 skipped: {device} has no native bf16; --bf16 to measure it)")
        + f"; {load()}")
    setup(args.work, args.model, args.full)  # build once, outside every timed child
    say(f"  model and corpus ready ({time.perf_counter() - t_start:.0f} s)")

    def run(kind: str) -> dict:
        out = run_child(HERE, child_args(kind, args))
        if "tokens_per_s" in out:
            say(f"  {kind:<24} {out['tokens_per_s']:8.0f} tokens/s  {out['seconds']:6.1f} s  {out['tokens']} tokens"
                f"  peak {out['peak_memory_mb']:.0f} MB ({out['memory_kind']})  {load()}"
                + ("" if out.get("steal") is None else f", steal {out['steal']:.0%}"))
        return out

    try:
        memory = run("memory")
        say(f"[5] parameter memory of LoRA (r = 8) at {CUDA_MODEL}'s shapes, GiB by group and dtype (accounted on the "
            "meta device; activations not included):\n" + memory["table"])
        say("[5] totals: " + ", ".join(f"{m} {g:.2f} GiB" for m, g in memory["totals_gib"].items()))
    except RuntimeError as exc:
        memory = None
        say(f"[5] memory accounting failed: {str(exc)[-500:]}")
    peak = {k: v for k, v in run("peak").items() if k in args.precisions}
    say("matrix-multiply peak of this device: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
        + f"  {load()}")
    levers = DEFAULT_LEVERS + [x for x in args.levers.split(",") if x and x not in DEFAULT_LEVERS]
    unknown = set(levers) - {*DEFAULT_LEVERS, "workers", "compile", "nf4", "8bit"}
    if unknown:
        sys.exit(f"--levers: unknown {sorted(unknown)}; choose from workers, compile, nf4, 8bit")
    names = []
    for prec in args.precisions:
        names += ([f"trl_{prec}"] if trl else []) + ([f"trl_{prec}_default"] if trl and args.trl_default else [])
        names += [f"ours_{prec}"] + [f"ours_{prec}_{lever}" for lever in levers]
    runs = alternating(names, args.repeats, run)
    summary: dict[str, dict] = {}
    for prec in args.precisions:
        ours = median_run(runs[f"ours_{prec}"], "tokens_per_s")
        for name in levers:
            lever = paired_ratio(runs[f"ours_{prec}_{name}"], runs[f"ours_{prec}"], "tokens_per_s")
            summary[f"{name}_{prec}"] = lever
            on = median_run(runs[f"ours_{prec}_{name}"], "tokens_per_s")
            say(f"[3] {prec}: {name} on/off {describe(lever)}; {lever['a_median']:.0f} against "
                f"{lever['b_median']:.0f} tokens/s; peak {on['peak_memory_mb']:.0f} against "
                f"{ours['peak_memory_mb']:.0f} MB ({ours['memory_kind']})")
        say(f"[3] {prec}: collation takes {ours['collate_share']:.1%} of ours's training time (what DataLoader "
            "workers could take off the loop)")
        if trl and args.trl_default:
            d = paired_ratio(runs[f"ours_{prec}"], runs[f"trl_{prec}_default"], "tokens_per_s")
            dm = median_run(runs[f"trl_{prec}_default"], "tokens_per_s")
            summary[f"trl_default_{prec}"] = d
            say(f"[1] {prec}: against TRL at its default (gradient checkpointing on): ratio {describe(d)}; TRL "
                f"{d['b_median']:.0f} tokens/s, peak {dm['peak_memory_mb']:.0f} MB")
        if trl:
            p = paired_ratio(runs[f"ours_{prec}"], runs[f"trl_{prec}"], "tokens_per_s")
            base = median_run(runs[f"trl_{prec}"], "tokens_per_s")
            summary[prec] = {**p, "mfu_ours": ours["achieved_gflops"] / peak[prec],
                             "mfu_trl": base["achieved_gflops"] / peak[prec],
                             "peak_memory_mb_ours": ours["peak_memory_mb"],
                             "peak_memory_mb_trl": base["peak_memory_mb"]}
            say(f"[1] {prec}: vlm-salience train {p['a_median']:.0f} tokens/s (peak {ours['peak_memory_mb']:.0f} MB, "
                f"padded length {ours['mean_padded_length']:.0f}), TRL SFTTrainer {p['b_median']:.0f} tokens/s "
                f"(peak {base['peak_memory_mb']:.0f} MB, padded length {base['mean_padded_length']:.0f}): ratio "
                f"{describe(p)} (target >= 1.5x on a CPU, >= 3x on a GPU; gradient checkpointing off for both)")
            say(f"[2] {prec}: MFU vlm-salience {summary[prec]['mfu_ours']:.1%}, TRL {summary[prec]['mfu_trl']:.1%} "
                f"({ours['flops_per_token'] / 1e6:.0f} MFLOP per token)")
        else:
            say(f"[2] {prec}: MFU vlm-salience {ours['achieved_gflops'] / peak[prec]:.1%}")
    try:
        vc = run("vision")
    except RuntimeError as exc:  # a figure that fails must not cost the others
        vc = None
        say(f"[3] vision-cache: the measurement failed: {str(exc)[-500:]}")
    summary["vision_cache"] = vc
    if vc is not None:
        say(f"[3] vision-cache on/off (steady state, epochs after the first): one step with pixels "
            f"{vc['step_pixels_s']:.2f} s, with cached features {vc['step_cached_s']:.2f} s: {vc['ratio']:.2f}x (per "
            f"round {', '.join(f'{x:.2f}' for x in vc['per_round'])}); the vision forward is {vc['vision_share']:.1%} "
            f"of a step  {load()}")
    routing = None
    if args.full or args.routing:
        routing = run("routing")
        say(f"[4] routed mixed batch of {routing['items']} items: {routing['mixed_batch_seconds']:.2f} s, single "
            f"adapter {routing['single_adapter_seconds']:.2f} s: ratio {routing['ratio']:.2f}x (target <= 1.3x)  "
            f"{load()}")
    else:
        say("[4] routing: not measured at the default settings (--full or --routing)")
    say(f"done in {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "model": args.model, "peak": peak, "runs": runs,
                                               "summary": summary, "routing": routing,
                                               "memory": memory}, indent=2))


if __name__ == "__main__":
    main()

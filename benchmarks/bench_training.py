"""Fine-tuning speed targets (issue 5), each against its baseline in the same run.

1. Training tokens/s of `vlm-salience train` >= 1.0x TRL's SFTTrainer with the same model (a random Qwen2-VL,
   configs/models/bench_qwen2_vl.yaml), LoRA config (r=8 on the language model's linear layers), data (combined
   prompts of the synthetic Split-Steal corpus with their answers), batch size (8) and precision; in fp32 and bf16.
   Tokens are the real (unpadded) tokens of each trainer's batches; peak memory is each run's max RSS.
2. Model FLOPs utilisation of both, against the matrix-multiply peak of this machine measured in the same run.
3. Routed inference of a batch that mixes two LoRA experts (one pass, peft adapter_names) <= 1.3x the time of the
   same batch through a single adapter.

Each training run is repeated (--repeats, in alternating order) and the ratio is that of the medians: see
benchmarks/_harness.py for why a shared virtual machine needs that.

    python benchmarks/bench_training.py [--steps 30] [--repeats 2] [--json out.json]   (needs: pip install ".[bench]")
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import alternating, describe, median_run, paired_ratio, run_child

HERE = Path(__file__).resolve()


def setup(work: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(HERE.parent))
    from bench_prompting import setup as prompting_setup

    return prompting_setup(work)


def train_config(work: Path, model: Path, corpus: Path, precision: str, steps: int) -> Path:
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
        "out": str(work / f"out_{precision}"),
    }
    path = work / f"train_{precision}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def flops_per_token(model, tokens: int, seq_len: float, patches_per_token: float) -> float:
    """Model FLOPs of one trained token with LoRA: forward and the backward pass to the activations through the
    language model (no gradients of frozen weights), attention included; the frozen vision tower forward only."""
    cfg = model.config.text_config
    lm_linear = sum(p.numel() for n, p in model.named_parameters()
                    if p.ndim == 2 and "visual" not in n and "embed_tokens" not in n and "lora_" not in n)
    vision = sum(p.numel() for n, p in model.named_parameters() if "visual" in n)
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    forward = 2 * lm_linear + 4 * layers * seq_len * d
    return 2 * forward + 2 * vision * patches_per_token


def _count(batch, counted: dict):
    """Tally what a collator emits: tokens actually attended, sequence lengths, image patches (for FLOPs)."""
    counted["tokens"] += int(batch["attention_mask"].sum())
    counted["seq"].append(batch["attention_mask"].shape[1])
    counted["images"] += int(batch["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in batch else 0
    return batch


def measure_train(name: str, work: Path, model: Path, corpus: Path, steps: int) -> dict:
    import torch

    precision = "bf16" if name.endswith("bf16") else "no"
    if name.startswith("ours"):
        from vlm_salience.config import load_config
        from vlm_salience.training.config import TrainConfig
        from vlm_salience.training.collator import VLMCollator
        from vlm_salience.training.loop import Trainer

        cfg = load_config(train_config(work, model, corpus, precision, steps), TrainConfig)
        trainer = Trainer(cfg, cfg.adapters[0], progress=False)
        counted = {"tokens": 0, "seq": [], "images": 0}
        real_call = VLMCollator.__call__

        def counting(self, encoded):
            return _count(real_call(self, encoded), counted)
        VLMCollator.__call__ = counting
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
        from vlm_salience.training.config import LoraConfig as OurLora, TrainConfig
        from vlm_salience.training.data import TrainingData
        from vlm_salience.training.lora import target_modules

        cfg = load_config(train_config(work, model, corpus, precision, steps), TrainConfig)
        data = TrainingData(cfg)
        ds = data.dataset(cfg.adapters[0])
        from vlm_salience.prompting.answers import compose_answer

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
                         remove_unused_columns=False, use_cpu=True)
        trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=loaded.processor, peft_config=lora)
        counted = {"tokens": 0, "seq": [], "images": 0}
        real_collator = trainer.data_collator

        def counting(examples):
            return _count(real_collator(examples), counted)
        trainer.data_collator = counting
        out = trainer.train()
        seconds = out.metrics["train_runtime"]
        hf_model = trainer.model
    tokens = counted["tokens"]
    fpt = flops_per_token(hf_model, tokens, float(np.mean(counted["seq"])), counted["images"] / max(tokens, 1))
    return {"name": name, "steps": steps, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "mean_padded_length": float(np.mean(counted["seq"])), "flops_per_token": fpt,
            "achieved_gflops": fpt * tokens / seconds / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def measure_peak() -> dict:
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(2048, 2048, dtype=dtype)
        a @ a
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 2.0:
            a @ a
            n += 1
        out[name] = 2 * 2048 ** 3 * n / (time.perf_counter() - t0) / 1e9
    return out


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
            "ratio": mixed_t / single, "target_ratio": 1.3,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_args(kind: str, args) -> list[str]:
    return ["--child", kind, "--work", str(args.work), "--steps", str(args.steps), "--items", str(args.items)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of each training run, in alternating order")
    ap.add_argument("--work")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    args.work = Path(args.work or tmp.name)
    model, corpus = setup(args.work)
    if args.child:
        if args.child == "peak":
            out = measure_peak()
        elif args.child == "routing":
            out = measure_routing(args.work, model, corpus, args.items)
        else:
            out = measure_train(args.child, args.work, model, corpus, args.steps)
        print(json.dumps(out))
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is needed for the baseline: pip install '.[bench]'")

    def run(kind: str) -> dict:
        return run_child(HERE, child_args(kind, args))

    peak = run("peak")
    runs = alternating(["trl_fp32", "ours_fp32", "trl_bf16", "ours_bf16"], args.repeats, run)
    routing = alternating(["routing"], 1, run)["routing"][0]
    print(f"matrix-multiply peak of this machine: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    summary = {}
    for prec in ("fp32", "bf16"):
        p = paired_ratio(runs[f"ours_{prec}"], runs[f"trl_{prec}"], "tokens_per_s")
        ours, base = median_run(runs[f"ours_{prec}"], "tokens_per_s"), median_run(runs[f"trl_{prec}"], "tokens_per_s")
        for k in (ours, base):
            k["mfu"] = k["achieved_gflops"] / peak[prec]
        summary[prec] = {**p, "mfu_ours": ours["mfu"], "mfu_trl": base["mfu"],
                         "peak_rss_mb_ours": ours["peak_rss_mb"], "peak_rss_mb_trl": base["peak_rss_mb"]}
        print(f"[1] {prec}: vlm-salience train {p['a_median']:.0f} tokens/s (peak RSS {ours['peak_rss_mb']:.0f} MB, "
              f"padded length {ours['mean_padded_length']:.0f}), TRL SFTTrainer {p['b_median']:.0f} tokens/s (peak "
              f"RSS {base['peak_rss_mb']:.0f} MB, padded length {base['mean_padded_length']:.0f}): ratio "
              f"{describe(p)} (target >= 1.0x, stretch 1.3x)")
        print(f"[2] {prec}: MFU vlm-salience {ours['mfu']:.1%}, TRL {base['mfu']:.1%} "
              f"({ours['flops_per_token'] / 1e6:.0f} MFLOP per token)")
    print(f"[3] routed mixed batch of {routing['items']} items: {routing['mixed_batch_seconds']:.2f} s, single "
          f"adapter {routing['single_adapter_seconds']:.2f} s: ratio {routing['ratio']:.2f}x (target <= 1.3x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak": peak, "runs": runs, "summary": summary, "routing": routing},
                                              indent=2))

if __name__ == "__main__":
    main()

"""Prompting speed targets (issue 4), on a random Qwen2-VL of ~26M parameters (configs/models/bench_qwen2_vl.yaml)
with prompts of the `combined` template (face image + situation) on the synthetic Split-Steal corpus.

1. Label scoring >= 8x the items/s of per-item generate-and-parse (48-token answers, greedy), fp32.
2. Batched inference with a shared few-shot prefix computed once >= 3x the items/s of a plain per-item
   `model.generate` loop over the same prompts.
3. bf16 against fp32 for label scoring: items/s of both and the KLD between their predicted distributions.
Every measurement runs in its own process, so that its peak memory (max RSS) is its own.

Every measurement is repeated (--repeats, in alternating order) and ratios are those of the medians: see
benchmarks/_harness.py for why a shared virtual machine needs that.

    python benchmarks/bench_prompting.py [--items 96] [--generate-items 24] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import alternating, describe, median_run, paired_ratio, run_child

HERE = Path(__file__).resolve()


def setup(work: Path) -> tuple[Path, Path]:
    from vlm_salience.config import load_config
    from vlm_salience.data.synth import SynthConfig, write_corpus
    from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm
    from vlm_salience.resources import shipped

    model = work / "bench-qwen2-vl"
    if not model.exists():
        build_tiny_vlm(load_config(shipped("configs/models/bench_qwen2_vl.yaml"), TinyVLMConfig), model)
    corpus = work / "corpus"
    if not corpus.exists():
        write_corpus(load_config(shipped("configs/synth/split_steal.yaml"), SynthConfig), corpus, progress=False)
    return model, corpus / "data.yaml"


def prompts(corpus_yaml: Path, n: int, few_shot: int = 0):
    from vlm_salience.data import load_corpus
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template

    corpus = load_corpus(corpus_yaml)
    spec = AnswerSpec.from_corpus(corpus)
    template = load_template("combined")
    examples = []
    if few_shot:
        from vlm_salience.predictions import observed

        obs = observed(corpus)
        for i in range(few_shot):  # fixed few-shot cases, the same for every prompt
            it = corpus.items[-1 - i]
            payload = {"emotion_dist": dict(zip(corpus.labels, obs.emotion_dist[-1 - i])),
                       "valence": float(obs.valence[-1 - i])}
            examples.append({"situation": it.situation.text, "face": None, "answer": spec.example_answer(payload)})
    return [build_prompt(template, it, spec, examples=examples) for it in corpus.items[:n]], spec


def measure(name: str, model_dir: Path, corpus_yaml: Path, items: int, batch: int) -> dict:
    """One measurement (run in a child process)."""
    import torch

    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.prompting.answers import AnswerError, parse_answer
    from vlm_salience.prompting.hf_backend import HFBackend

    torch.manual_seed(0)
    dtype = "bfloat16" if name.endswith("bf16") else "float32"
    backend = HFBackend(load_vlm(ModelConfig(name="bench", path=str(model_dir), dtype=dtype)), batch_size=batch)
    few = 3 if name.startswith("fewshot") else 0
    ps, spec = prompts(corpus_yaml, items, few_shot=few)
    n_tokens = int(backend._processor_inputs(backend.texts(ps[:1]), ps[:1])["input_ids"].shape[1])
    slots = spec.slots()
    warm = ps[:2]
    out: dict = {"name": name, "items": len(ps), "prompt_tokens": n_tokens, "dtype": dtype, "batch_size": batch,
                 "params_m": sum(p.numel() for p in backend.model.parameters()) / 1e6}
    if name.startswith("score"):
        backend.score(warm, slots)
        t0 = time.perf_counter()
        scores = backend.score(ps, slots)
        out["seconds"] = time.perf_counter() - t0
        out["distributions"] = [{k: list(np.exp(v - np.logaddexp.reduce(v))) for k, v in s.items()} for s in scores]
    elif name.endswith("generate_per_item"):
        backend.generate_per_item(warm[0], 48, min_new_tokens=48)
        t0 = time.perf_counter()
        failures = 0
        for p in ps:
            text = backend.generate_per_item(p, 48, min_new_tokens=48)
            try:
                parse_answer(text, spec)
            except AnswerError:
                failures += 1
        out["seconds"] = time.perf_counter() - t0
        out["unparseable"] = failures
    elif name.endswith("generate_batched"):
        backend.generate(warm, 48, min_new_tokens=48)
        t0 = time.perf_counter()
        texts = backend.generate(ps, 48, min_new_tokens=48)
        out["seconds"] = time.perf_counter() - t0
        out["shared_prefix_tokens"] = len(backend.shared_prefix(backend.texts(ps)))
        out["texts"] = texts[:4]
    out["items_per_s"] = len(ps) / out["seconds"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def child_args(name: str, model: Path, corpus: Path, items: int, batch: int) -> list[str]:
    return ["--child", name, "--model", str(model), "--corpus", str(corpus), "--items", str(items),
            "--batch", str(batch)]


def kld(a: list[dict], b: list[dict]) -> float:
    vals = []
    for x, y in zip(a, b):
        for k in x:
            p, q = np.asarray(x[k]), np.clip(np.asarray(y[k]), 1e-12, None)
            vals.append(float((p * (np.log(np.clip(p, 1e-12, None)) - np.log(q))).sum()))
    return float(np.mean(vals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--generate-items", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every measurement, in alternating order")
    ap.add_argument("--work", help="folder for the model and corpus (default: a temporary one)")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, Path(args.model), Path(args.corpus), args.items, args.batch)))
        return
    tmp = tempfile.TemporaryDirectory()
    work = Path(args.work or tmp.name)
    model, corpus = setup(work)
    plan = {  # name -> (measurement, items, batch)
        "score_fp32": ("score_fp32", args.items, args.batch),
        "score_fp32_one_at_a_time": ("score_fp32", args.generate_items, 1),
        "generate_per_item": ("generate_per_item", args.generate_items, 1),
        "score_bf16": ("score_bf16", args.items, args.batch),
        "fewshot_generate_per_item": ("fewshot_generate_per_item", args.generate_items, 1),
        "fewshot_generate_batched": ("fewshot_generate_batched", args.generate_items * 2, args.batch),
    }
    runs = alternating(list(plan), args.repeats,
                       lambda n: run_child(HERE, child_args(plan[n][0], model, corpus, *plan[n][1:])))
    r = {k: median_run(v, "items_per_s") for k, v in runs.items()}
    g, s = r["generate_per_item"], r["score_fp32"]
    pairs = {
        "label_scoring_vs_generate": paired_ratio(runs["score_fp32"], runs["generate_per_item"], "items_per_s"),
        "one_at_a_time_scoring_vs_generate": paired_ratio(runs["score_fp32_one_at_a_time"],
                                                          runs["generate_per_item"], "items_per_s"),
        "fewshot_batched_vs_per_item_generate": paired_ratio(runs["fewshot_generate_batched"],
                                                             runs["fewshot_generate_per_item"], "items_per_s"),
        "bf16_vs_fp32_scoring": paired_ratio(runs["score_bf16"], runs["score_fp32"], "items_per_s"),
    }
    summary = {k: v["ratio"] for k, v in pairs.items()}
    summary["kld_fp32_bf16"] = kld(s["distributions"], r["score_bf16"]["distributions"][:len(s["distributions"])])
    print(f"model: random Qwen2-VL, {s['params_m']:.1f}M parameters; combined prompts of {s['prompt_tokens']} "
          f"tokens (image included); few-shot prompts {r['fewshot_generate_batched']['prompt_tokens']} tokens, of "
          f"which {r['fewshot_generate_batched']['shared_prefix_tokens']} shared")
    for k, v in r.items():
        print(f"  {k:28s} {v['items_per_s']:8.2f} items/s  ({v['items']} items, batch {v['batch_size']}, "
              f"{v['dtype']}, peak RSS {v['peak_rss_mb']:.0f} MB)")
    print(f"[1] label scoring / per-item generate-and-parse (48 tokens, fp32): "
          f"{describe(pairs['label_scoring_vs_generate'])} (target >= 8x); one item at a time: "
          f"{summary['one_at_a_time_scoring_vs_generate']:.1f}x; unparseable generated answers: "
          f"{g['unparseable']}/{g['items']} (random model)")
    print(f"[2] batched few-shot generation with the shared prefix computed once / per-item model.generate: "
          f"{describe(pairs['fewshot_batched_vs_per_item_generate'])} (target >= 3x)")
    print(f"[3] bf16 / fp32 label scoring: {describe(pairs['bf16_vs_fp32_scoring'])} items/s; KLD(fp32 || bf16) "
          f"between predicted distributions {summary['kld_fp32_bf16']:.2e}")
    if args.json:
        for v in (x for rs in runs.values() for x in rs):
            v.pop("distributions", None)
        Path(args.json).write_text(json.dumps({"runs": runs, "pairs": pairs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()

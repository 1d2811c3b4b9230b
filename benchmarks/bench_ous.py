"""OUS targets (issue 12), measured in one process, in alternating rounds (ABC CBA ...), on this CPU:

1. one batched encoder call for both streams against two separate calls: training-step throughput (forward,
   backward, optimizer step of OUS, vision tower trained), target >= 1.3x;
2. OUS training clips/s against the face-only baseline at the same encoder, frame count and batch, target >= 0.5x;
3. bf16 (torch.autocast on the CPU) against fp32 for the OUS step: the speed ratio (this CPU has no native bf16
   matmuls, so expect < 1), and how often the two precisions' predictions agree on the same weights.

    .venv/bin/python benchmarks/bench_ous.py [--encoder configs/models/tiny_clip.yaml] [--batch 8] [--frames 8]
        [--rounds 5] [--steps 4] [--threads 1]

Random uint8 frames at the encoder's size stand in for cached clips (the data path is the foundation's and is
benchmarked in bench_video_train.py). Printed: each ratio of medians with its per-round ratios and the CPU share
other guests stole.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import cpu_ticks, describe, steal_fraction  # noqa: E402

CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]


def build(encoder_yaml: Path, folder: Path):
    import torch

    from vlm_salience.config import load_config
    from vlm_salience.models.encoders import EncoderConfig, TinyEncoderConfig, build_tiny_encoder, load_encoder
    from vlm_salience.ous.config import OusModelConfig
    from vlm_salience.ous.model import OusModel
    from vlm_salience.video.baseline import BaselineModel, BaselineModelConfig

    path = build_tiny_encoder(load_config(encoder_yaml, TinyEncoderConfig), folder / "enc")
    enc = EncoderConfig(path=str(path))
    shared = {"context_tokens": 4, "temporal": {"layers": 1, "heads": 4, "mlp_dim": 64}, "vision": "train"}
    torch.manual_seed(0)
    ous = OusModel(load_encoder(enc), OusModelConfig(encoder=enc, fusion={"layers": 2, "heads": 4, "mlp_dim": 64},
                                                     **shared), CLASSES)
    torch.manual_seed(0)
    base = BaselineModel(load_encoder(enc), BaselineModelConfig(encoder=enc, **shared), CLASSES)
    return ous, base


def make_step(model, batch, kind: str, bf16: bool = False):
    import torch

    from vlm_salience.ous.losses import global_loss

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if kind == "baseline":
                out = model(batch["face"])
                loss = torch.nn.functional.cross_entropy(out["logits"].float(), batch["label"])
            else:
                out = model(batch["face"], batch["scene"])
                loss = global_loss(out, batch["label"], batch["polarity"], model.cfg.loss)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, n: int) -> dict:
    before, t0 = cpu_ticks(), time.perf_counter()
    for _ in range(n):
        step()
    wall = time.perf_counter() - t0
    return {"s_per_step": wall / n, "steal": steal_fraction(before, cpu_ticks())}


def paired(a: list[dict], b: list[dict], key: str, invert: bool = False) -> dict:
    """Ratio of medians of a over b (b over a with invert: throughput from seconds per step)."""
    va, vb = [x[key] for x in a], [x[key] for x in b]
    if invert:
        va, vb = vb, va
    steals = [x["steal"] for x in (*a, *b) if x.get("steal") is not None]
    return {"ratio": statistics.median(va) / statistics.median(vb), "per_round": [x / y for x, y in zip(va, vb)],
            "steal_max": max(steals) if steals else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", type=Path, default=ROOT / "configs/models/tiny_clip.yaml")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ous, base = build(args.encoder, Path(tmp))
    s = ous.encoder.image_size
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.frames, s, s, 3)
    batch = {"face": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
             "scene": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
             "label": torch.randint(0, 7, (args.batch,), generator=g),
             "polarity": torch.randint(0, 3, (args.batch,), generator=g)}

    def ous_step(batched: bool, bf16: bool = False):
        inner = make_step(ous, batch, "ous", bf16)

        def run():
            ous.batched_streams = batched
            inner()
        return run

    steps = {"batched": ous_step(True), "separate": ous_step(False), "baseline": make_step(base, batch, "baseline"),
             "bf16": ous_step(True, bf16=True)}
    for fn in steps.values():  # warm-up: kernels, allocator
        fn()
    names = list(steps)
    res: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            res[n].append(timed(steps[n], args.steps))

    one_call = paired(res["batched"], res["separate"], "s_per_step", invert=True)
    vs_base = paired(res["batched"], res["baseline"], "s_per_step", invert=True)
    bf16 = paired(res["bf16"], res["batched"], "s_per_step", invert=True)
    ous.eval()
    ous.batched_streams = True
    with torch.no_grad():
        p32 = ous(batch["face"], batch["scene"])["logits"].argmax(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p16 = ous(batch["face"], batch["scene"])["logits"].float().argmax(-1)
    agree = float((p32 == p16).float().mean())
    clips_s = {n: args.batch / statistics.median(x["s_per_step"] for x in res[n]) for n in names}
    print(f"OUS step, {args.batch} clips x {args.frames} frames x 2 streams, {s}px, vision trained, "
          f"{args.threads} thread(s)")
    print(f"clips/s (median): " + ", ".join(f"{n} {v:.1f}" for n, v in clips_s.items()))
    print(f"1. one batched encoder call vs two calls: {describe(one_call)}  (target >= 1.3x)")
    print(f"2. OUS clips/s vs face-only baseline:     {describe(vs_base)}  (target >= 0.5x)")
    print(f"3. bf16 autocast vs fp32 (OUS step):      {describe(bf16)}  (no native bf16 on this CPU: "
          f"expect < 1); predictions agree on {agree:.0%} of {args.batch} clips")
    if args.json:
        args.json.write_text(json.dumps({"clips_per_s": clips_s, "one_call_vs_two": one_call,
                                         "ous_vs_baseline": vs_base, "bf16_vs_fp32": bf16,
                                         "bf16_prediction_agreement": agree}, indent=2))


if __name__ == "__main__":
    main()

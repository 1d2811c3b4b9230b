"""GRACE benchmarks and science, one command each (figures quoted in the issue note come from here).

    python benchmarks/bench_grace.py sinkhorn   # batched log-domain Sinkhorn vs POT's ot.sinkhorn looped, equal iters
    python benchmarks/bench_grace.py sinkhorn --before REV   # ... and vs transport.py at git revision REV
    python benchmarks/bench_grace.py cate       # CATE: batched shared-prefix generation vs per-clip generate
    python benchmarks/bench_grace.py science    # distractors on/off x motion weighting, ablations, plan shares
    python benchmarks/bench_grace.py science --which vague   # refined vs coarse text where the coarse is vague

`science` writes two synthetic corpora (configs/grace/clips_distractors.yaml, clips_no_distractors.yaml), trains
each variant as `variants:` of configs/video/grace_synthetic.yaml (what `vlm-salience video train` runs) on the same
folds, and writes OUT/{on,off}/comparison/{metrics.json,report.md} (paired bootstrap intervals against full GRACE)
and OUT/on/shares.json (transport-plan mass on expression vs distractor regions).
`--which vague` adds configs/grace/clips_vague.yaml (each clip's face worded by one of several colloquial
paraphrases) and compares refined with coarse text there; OUT/science.json keeps every condition run so far.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def bench_sinkhorn(args) -> dict:
    import os

    import ot
    import torch

    from vlm_salience.grace.transport import sinkhorn_log

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b, n, m, iters, eps = args.clips, args.text_tokens, args.visual_tokens, args.iters, args.eps
    cost = torch.rand(b, n, m, generator=g) * 2
    a = torch.full((b, n), 1.0 / n)
    w = torch.rand(b, m, generator=g) + 0.05
    w = w / w.sum(1, keepdim=True)
    cn, an, wn = cost.double().numpy(), a.double().numpy(), w.double().numpy()
    c32, a32, w32 = cost.numpy(), a.numpy(), w.numpy()  # POT also on the fp32 arrays as they come

    def ours():
        return sinkhorn_log(cost, a, w, eps, iters).plan

    def pot(c=cn, x=an, y=wn):
        return [ot.sinkhorn(x[i], y[i], c[i], eps, numItermax=iters, stopThr=0.0) for i in range(b)]

    def pot32():
        return pot(c32, a32, w32)

    before = _transport_at(args.before) if args.before else None  # the same function at an older revision

    import warnings

    warnings.filterwarnings("ignore", message="Sinkhorn did not converge")
    ours(), pot(), pot32()  # warm-up
    # equal iterations: with stopThr=0 POT runs all numItermax (its log says which iteration it ended on)
    pot_last = ot.sinkhorn(an[0], wn[0], cn[0], eps, numItermax=iters, stopThr=0.0, log=True)[1]["niter"]
    if before is not None:
        before.sinkhorn_log(cost, a, w, eps, iters)
    t_ours, cpu_ours, t_pot, t_pot32, t_before = [], [], [], [], []
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):  # alternate, medians: this shared machine's speed swings between runs
        c0, t0 = time.process_time(), time.perf_counter()
        p = ours()
        t_ours.append(time.perf_counter() - t0)
        cpu_ours.append(time.process_time() - c0)  # ~ the wall time: one core, no BLAS threads behind it
        t0 = time.perf_counter()
        ref = pot()
        t_pot.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref32 = pot32()
        t_pot32.append(time.perf_counter() - t0)
        if before is not None:
            t0 = time.perf_counter()
            p_before = before.sinkhorn_log(cost, a, w, eps, iters).plan
            t_before.append(time.perf_counter() - t0)
    load.append(os.getloadavg()[0])
    diff = float(max(np.abs(p[i].numpy() - ref[i]).max() for i in range(b)))
    diff32 = float(max(np.abs(p[i].numpy() - ref32[i]).max() for i in range(b)))
    # small regularisation: the plain-domain form underflows, the log-domain ones stay finite
    from vlm_salience.grace.transport import sinkhorn_plain

    small = 1e-3  # fp32: exp(-C/eps) underflows below C = 0.087
    plain32 = sinkhorn_plain(cost[:1], a[:1], w[:1], small, iters)[0].numpy()
    tiny_eps = 1e-5  # fp64 (POT): exp(-C/eps) underflows below C = 0.0075
    plain = ot.sinkhorn(an[0], wn[0], cn[0], tiny_eps, numItermax=iters, stopThr=0.0)
    logpot_tiny = ot.sinkhorn(an[0], wn[0], cn[0], tiny_eps, method="sinkhorn_log", numItermax=iters, stopThr=0.0)
    ours_tiny = sinkhorn_log(cost[:1], a[:1], w[:1], tiny_eps, iters).plan[0].numpy()
    logpot = ot.sinkhorn(an[0], wn[0], cn[0], small, method="sinkhorn_log", numItermax=iters, stopThr=0.0)
    logours = sinkhorn_log(cost[:1], a[:1], w[:1], small, iters).plan[0].numpy()
    out = {"clips": b, "shape": [n, m], "iters": iters, "pot_iterations_run": pot_last + 1, "eps": eps,
           "threads": args.threads, "load_avg_1min_start_end": load, "rounds": args.rounds,
           "ours_s": float(np.median(t_ours)), "ours_cpu_s": float(np.median(cpu_ours)),
           "pot_loop_s": float(np.median(t_pot)), "pot_loop_fp32_s": float(np.median(t_pot32)),
           "speedup": float(np.median(t_pot) / np.median(t_ours)),
           "speedup_vs_pot_fp32": float(np.median(t_pot32) / np.median(t_ours)),
           "per_round_speedup": [float(x / y) for x, y in zip(t_pot, t_ours)],
           "per_round_speedup_vs_pot_fp32": [float(x / y) for x, y in zip(t_pot32, t_ours)],
           "max_abs_plan_diff_fp32_vs_pot_fp64": diff, "max_abs_plan_diff_vs_pot_fp32": diff32,
           "small_eps": {"eps": small, "plain_fp32_finite": bool(np.isfinite(plain32).all()),
                         "plain_fp32_mass": float(np.nansum(plain32)),
                         "pot_plain_fp64_at_1e-5_finite": bool(np.isfinite(plain).all()),
                         "pot_plain_fp64_at_1e-5_mass": float(np.nansum(plain)),
                         "pot_log_at_1e-5_finite": bool(np.isfinite(logpot_tiny).all()),
                         "ours_at_1e-5_finite": bool(np.isfinite(ours_tiny).all()),
                         "ours_vs_pot_log_at_1e-5_max_diff": float(np.abs(ours_tiny - logpot_tiny).max()),
                         "pot_log_finite": bool(np.isfinite(logpot).all()),
                         "ours_finite": bool(np.isfinite(logours).all()),
                         "ours_vs_pot_log_max_diff": float(np.abs(logours - logpot).max())}}
    if before is not None:
        out["before"] = {"revision": args.before, "before_s": float(np.median(t_before)),
                         "speedup_over_before": float(np.median(t_before) / np.median(t_ours)),
                         "per_round_speedup_over_before": [float(x / y) for x, y in zip(t_before, t_ours)],
                         "before_speedup_over_pot": float(np.median(t_pot) / np.median(t_before)),
                         "max_abs_plan_diff_vs_before": float((p - p_before).abs().max()),
                         "before_max_abs_plan_diff_vs_pot": float(max(np.abs(p_before[i].numpy() - ref[i]).max()
                                                                      for i in range(b)))}
    print(json.dumps(out, indent=2))
    return out


def _transport_at(revision: str):
    """vlm_salience/grace/transport.py as it was at a git revision, as a module (old vs new in one run)."""
    import importlib.util
    import subprocess
    import tempfile

    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:vlm_salience/grace/transport.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "transport_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("transport_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_cate(args) -> dict:
    import torch

    from vlm_salience.config import load_config
    from vlm_salience.grace.text import DescribeConfig, coarse_prompts
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.video.cache import PreparedClip

    torch.set_num_threads(args.threads)
    path = Path(args.out) / "tiny-qwen2-vl"
    if not path.exists():
        build_tiny_vlm(load_config(ROOT / "configs/models/tiny_qwen2_vl.yaml", TinyVLMConfig), path)
    backend = HFBackend(load_vlm(ModelConfig(name="tiny", path=str(path))), batch_size=args.batch)
    rng = np.random.default_rng(0)

    class Store:
        def get(self, cid):
            f = rng.integers(0, 255, (8, 56, 56, 3), dtype=np.uint8)
            return PreparedClip(cid, f, f, np.arange(8)[:, None], np.arange(8), np.zeros((8, 4), np.float32),
                                np.ones(8, bool), 0, 8, 8)

    cfg = DescribeConfig(frames=args.frames, max_new_tokens=args.new_tokens)
    prompts = coarse_prompts([f"c{i}" for i in range(args.n_clips)], Store(), cfg, load_template("grace_coarse"))
    backend.generate(prompts[:2], 2)
    rounds = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        batched = backend.generate(prompts, args.new_tokens, min_new_tokens=args.new_tokens)
        tb = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = [backend.generate_per_item(p, args.new_tokens, min_new_tokens=args.new_tokens) for p in prompts]
        ts = time.perf_counter() - t0
        rounds.append((tb, ts))
    tb, ts = np.median([r[0] for r in rounds]), np.median([r[1] for r in rounds])
    prefix = backend.shared_prefix(backend.texts(prompts))
    out = {"clips": args.n_clips, "frames_per_clip": args.frames, "new_tokens": args.new_tokens,
           "batch_size": args.batch, "shared_prefix_tokens": len(prefix), "batched_s": float(tb),
           "per_clip_s": float(ts), "speedup": float(ts / tb), "same_text": batched == single,
           "per_round_speedup": [float(s / b) for b, s in rounds]}
    print(json.dumps(out, indent=2))
    return out


# per condition: variant name -> its `set:` (dotted overrides of `model:`); "baseline" is the face-only kind
_V = {"grace": {}, "no_motion": {"motion.mode": "off"}, "coarse_text": {"text.use": "coarse"},
      "no_ot": {"ot.enabled": False}, "no_text": {"text.source": "none"},
      "no_text_no_motion": {"text.source": "none", "motion.mode": "off"}}
SCIENCE_VARIANTS = {
    "on": {k: _V[k] for k in ("grace", "no_motion", "coarse_text", "no_ot", "no_text", "no_text_no_motion")},
    "off": {k: _V[k] for k in ("grace", "no_motion", "coarse_text", "no_text", "no_text_no_motion")},
    # refined vs coarse where the coarse text is vague (varied colloquial wording, configs/grace/clips_vague.yaml)
    "vague": {k: _V[k] for k in ("grace", "coarse_text", "no_text")},
}
SCIENCE_CORPORA = {"on": "clips_distractors.yaml", "off": "clips_no_distractors.yaml", "vague": "clips_vague.yaml"}


def science(args) -> dict:
    import torch

    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.video.variants import train_variants

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    which = args.which.split(",")
    unknown = sorted(set(which) - set(SCIENCE_CORPORA))
    if unknown:
        raise SystemExit(f"--which: unknown condition(s) {unknown}; known: {sorted(SCIENCE_CORPORA)}")
    saved = out / "science.json"
    result = json.loads(saved.read_text()) if saved.is_file() else {}  # conditions run before are kept
    for cond in which:
        corpus = out / f"corpus_{cond}"
        yaml_name = SCIENCE_CORPORA[cond]
        if not (corpus / "generic" / "data.yaml").is_file():
            write_clip_corpus(load_config(ROOT / "configs/grace" / yaml_name, ClipSynthConfig), corpus,
                              progress=False)
        overrides = [f"data.config={corpus / 'generic' / 'data.yaml'}", f"data.cache={out / f'cache_{cond}'}",
                     f"data.folds=[{args.folds}]", f"optim.max_steps={args.steps}", "report.tsne=false",
                     f"model.encoder.path={out / 'tiny-clip-grace'}"]
        variants = SCIENCE_VARIANTS[cond]
        if args.variants:
            variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
        listed = [{"name": k, "set": s} for k, s in variants.items()]
        if cond == "on" and not args.no_baseline:
            listed.append({"name": "baseline", "kind": "baseline"})
        doc = train_variants(ROOT / "configs/video/grace_synthetic.yaml",
                             [*overrides, f"out={out / cond}", f"variants={json.dumps(listed)}", "compare_to=grace"],
                             resume=True, progress=False)
        result[cond] = {"methods": {k: v["all"]["uar"] for k, v in doc["variants"].items()},
                        "paired_uar": {f"{k} - grace": v["all"]["uar"] for k, v in doc["paired"].items()}}
        print((out / cond / "comparison" / "report.md").read_text())
    if "on" in which and not args.no_shares:
        from vlm_salience.grace.plots import region_shares

        shares = region_shares(out / "on", manifest=out / "corpus_on" / "manifest.csv",
                               variants=["grace", "no_motion"], plot_dir=out / "on")
        result["shares"] = shares
        print(json.dumps(shares, indent=2))
    (out / "science.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sinkhorn")
    s.add_argument("--clips", type=int, default=256)
    s.add_argument("--text-tokens", type=int, default=32)
    s.add_argument("--visual-tokens", type=int, default=128)
    s.add_argument("--iters", type=int, default=50)
    s.add_argument("--eps", type=float, default=0.05)
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--before", default=None, help="also time transport.py at this git revision (old vs new)")
    c = sub.add_parser("cate")
    c.add_argument("--n-clips", type=int, default=32)
    c.add_argument("--frames", type=int, default=4)
    c.add_argument("--new-tokens", type=int, default=16)
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--out", default=str(ROOT / "runs" / "bench_grace"))
    sc = sub.add_parser("science")
    sc.add_argument("--out", default=str(ROOT / "runs" / "grace_science"))
    sc.add_argument("--which", default="on,off")
    sc.add_argument("--variants", default="")
    sc.add_argument("--folds", default="set_1,set_2")
    sc.add_argument("--steps", type=int, default=100)
    sc.add_argument("--threads", type=int, default=1)
    sc.add_argument("--no-baseline", action="store_true")
    sc.add_argument("--no-shares", action="store_true")
    args = p.parse_args()
    {"sinkhorn": bench_sinkhorn, "cate": bench_cate, "science": science}[args.what](args)


if __name__ == "__main__":
    main()

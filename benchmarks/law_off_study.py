"""The cue-integration study on synthetic corpora with the salience law off (or on): per seed and weighted
method, the face-weight gap with its interval (for pools also the null gap and the excess over it), and the
metrics each salience method wins against its control and, for pools, against the product control.

    python benchmarks/law_off_study.py --seeds 0,1,2,3 [--synth split_steal_no_law] [--small]
        [--methods control,per_emotion,pool_control,pool_per_emotion,learned]

--methods restricts the study to these methods (names of configs/experiment/bci.yaml; bci is always kept as the
reference, and each method's control must be listed for its wins to be judged): the sized laws take minutes per
seed with the whole list.

A gap or a win on a law-off corpus is a false positive; at 95% intervals they should be rare (nominal rate).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vlm_salience.config import load_config
from vlm_salience.data import load_corpus
from vlm_salience.data.synth import SynthConfig, write_corpus
from vlm_salience.study import StudyConfig, run_study

REPO = Path(__file__).resolve().parent.parent
SMALL_SYNTH = ["participants=24", "rounds=6", "raters.face=12", "raters.context=6", "raters.combined=6"]
SMALL_STUDY = ["cue_models.context_model=ols", "bootstrap.n=300", "bootstrap.weights_n=40", "cv.k=4"]


def run(seed: int, synth: str, small: bool, work: Path, n_boot: int, weights_n: int,
        methods: list[str] | None = None) -> dict:
    sc = load_config(REPO / "configs" / "synth" / f"{synth}.yaml", SynthConfig,
                     [f"seed={seed}", "image_size=8", *(SMALL_SYNTH if small else [])])
    data = write_corpus(sc, work / f"{synth}_{seed}", progress=False)
    over = SMALL_STUDY if small else [f"bootstrap.n={n_boot}", f"bootstrap.weights_n={weights_n}"]
    if methods:
        over = [*over, method_override(methods)]
    cfg = load_config(REPO / "configs" / "experiment" / "bci_synthetic.yaml", StudyConfig, over)
    return summarise(run_study(load_corpus(data), cfg, progress=False))


def method_override(names: list[str]) -> str:
    """A `methods=[...]` override: bci and the named methods, as configs/experiment/bci.yaml defines them."""
    import yaml

    shipped = {m["name"]: m for m in yaml.safe_load((REPO / "configs" / "experiment" / "bci.yaml").read_text())
               ["methods"]}
    unknown = [n for n in names if n not in shipped]
    if unknown:
        raise SystemExit(f"--methods: {unknown} are not methods of configs/experiment/bci.yaml; choose from "
                         f"{sorted(shipped)}")
    picked = [shipped[n] for n in dict.fromkeys(["bci", *names])]
    return "methods=[" + ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in m.items()) + "}" for m in picked) + "]"


def summarise(res) -> dict:
    """Per weighted salience method: gap, null and excess (pools), gap evidence, metrics won."""
    out = {}
    for m in res.config.methods:
        if m.name not in res.weights or m.salience in ("control", "plain"):
            continue
        w, v = res.weights[m.name], res.comparisons[m.name]["verdict"]
        out[m.name] = {"gap": w["face_weight_gap"], "scale": w["gap_scale"], "null_gap": w.get("null_gap"),
                       "excess_gap": w.get("excess_gap"), "gap_evidence": w["gap_evidence"],
                       "won_vs_control": v.get("metrics_won_vs_control", []),
                       "won_vs_null": v.get("metrics_won_vs_null"), "salience_evidence": v["salience_evidence"],
                       "spread": w.get("share_spread"), "null_spread": w.get("null_spread"),
                       "excess_spread": w.get("excess_spread"),
                       "vs_control": {k: e for k, e in res.comparisons[m.name].get("vs_control", {}).items()
                                      if isinstance(e, dict)}}
    return out


def _diff(e: dict) -> str:
    s = f"{e['diff']:+.4f} [{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}]"
    return s + (f" null gain {e['null_gain']:+.4f}" if "null_gain" in e else "") + (" WIN" if e["a_better"] else "")


def _ci(d) -> str:
    return "n/a" if not d else f"{d['value']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--synth", default="split_steal_no_law")
    ap.add_argument("--small", action="store_true", help="the test-sized corpora and study")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--weights-n", type=int, default=100)
    ap.add_argument("--methods", default="", help="comma-separated methods of configs/experiment/bci.yaml "
                    "(default: those of configs/experiment/bci_synthetic.yaml)")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            res = run(seed, args.synth, args.small, Path(tmp), args.n_boot, args.weights_n, methods)
            for name, r in res.items():
                extra = (f" null {_ci(r['null_gap'])} excess {_ci(r['excess_gap'])}" if r["null_gap"] else "")
                null = "" if r["won_vs_null"] is None else f"; vs product control: {r['won_vs_null'] or '-'}"
                print(f"seed {seed} {name:18s} gap ({r['scale']}) {_ci(r['gap'])}{extra} evidence "
                      f"{'YES' if r['gap_evidence'] else 'no'}; wins vs control: {r['won_vs_control'] or '-'}"
                      f"{null}", flush=True)
                if r["spread"]:
                    print(f"    face-share spread {_ci(r['spread'])} null {_ci(r['null_spread'])} excess "
                          f"{_ci(r['excess_spread'])}", flush=True)
                print("    vs control: " + "; ".join(f"{k} {_diff(e)}" for k, e in r["vs_control"].items()
                                                     if k != "rating_kld"), flush=True)


if __name__ == "__main__":
    main()

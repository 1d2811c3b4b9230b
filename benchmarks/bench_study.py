"""The default cue-integration study (`vlm-salience bci`), serial against parallel (and against an older copy of the
package), with equality checks of every number.

Target (issue 32): the default study on exp. 4 (Ong et al. 2015, 99 cells x 8 emotions) within 60 s on a quiet
2-core machine, the same point estimates and, for the same seed, the same intervals; `--quick` within 15 s.

Each measurement runs in a fresh process (`_harness.run_child`), the compared runs alternate (ABBA...), and every
run dumps its numbers (metrics, fitted weights with their intervals and nulls, comparisons, predictions) so that the
parent checks them for exact equality: parallel against serial always, and against `--before DIR` (a folder that
holds an older `vlm_salience`, e.g. `git archive HEAD vlm_salience | tar -x -C DIR`) where given.

    python benchmarks/bench_study.py [--data configs/data/affcog_utterances.yaml] [--rounds 1] [--jobs -1]
        [--quick] [--set bootstrap.weights_n=50 ...] [--before DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import alternating, describe, paired_ratio, run_child  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """One study in this process: its wall time (the study alone, not the imports) as the last stdout line, its
    numbers to `--dump`."""
    if args.package:  # an older copy of the package, before this one
        sys.path.insert(0, args.package)
    from vlm_salience.config import load_config
    from vlm_salience.data import load_corpus
    import vlm_salience.study as study

    path = REPO / "configs" / "experiment" / "bci.yaml"
    if args.package:  # without the keys an older StudyConfig does not know
        import yaml

        data = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("n_jobs", "quick")}
        path = Path(tempfile.mkdtemp(prefix="bench_study_")) / "bci.yaml"
        path.write_text(yaml.safe_dump(data))
    cfg = load_config(path, study.StudyConfig, list(args.set))
    if args.quick:
        cfg = study.quick_config(cfg)
    corpus = load_corpus(args.data)
    kw = {} if args.package else {"n_jobs": args.jobs}
    t0 = time.perf_counter()
    res = study.run_study(corpus, cfg, progress=False, **kw)
    wall = time.perf_counter() - t0
    with open(args.dump, "wb") as fh:
        pickle.dump({"metrics": res.metrics, "weights": res.weights, "comparisons": res.comparisons,
                     "predictions": {k: v.emotion_dist for k, v in res.predictions.items()}}, fh)
    print(json.dumps({"study_s": wall, "items": len(corpus.items), "module": study.__file__}))


def differences(a: dict, b: dict) -> str | None:
    """None where every number of the two runs is the same (NaN equal to NaN), else the first difference."""
    try:
        np.testing.assert_equal(a, b)
    except AssertionError as e:
        return str(e).strip().splitlines()[0][:300]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "configs" / "data" / "affcog_utterances.yaml"))
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of the compared runs")
    ap.add_argument("--jobs", type=int, default=-1, help="processes of the parallel run (joblib n_jobs)")
    ap.add_argument("--quick", action="store_true", help="time the --quick preview instead")
    ap.add_argument("--set", action="append", default=[], help="study override, e.g. bootstrap.weights_n=50")
    ap.add_argument("--before", help="a folder holding an older vlm_salience package: also timed and compared")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    ap.add_argument("--package", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_study_"))
    runs = {"serial": ["--jobs", "1"], f"parallel (n_jobs={args.jobs})": ["--jobs", str(args.jobs)]}
    if args.before:
        runs["before"] = ["--package", str(Path(args.before).resolve())]
    dumps: dict[str, Path] = {}
    count = {"n": 0}

    def run(name: str) -> dict:
        count["n"] += 1
        dump = tmp / f"{count['n']}.pkl"
        extra = ["--quick"] if args.quick else []
        if args.quick and name == "before":  # an older package has no quick mode: the same counts as overrides
            from vlm_salience.study import QUICK
            extra = [a for k, v in QUICK.items() for a in ("--set", f"{k}={v}")]
        out = run_child(Path(__file__), ["--child", "--data", args.data, "--dump", str(dump), *extra,
                                         *[a for s in args.set for a in ("--set", s)], *runs[name]])
        out["load_1min"] = os.getloadavg()[0]
        dumps.setdefault(name, dump)
        print(f"  {name}: study {out['study_s']:.1f} s (process {out['child_wall_s']:.1f} s, load "
              f"{out['load_1min']:.1f}, steal {out['steal'] or 0:.0%})", flush=True)
        return out

    names = list(runs)
    print(f"{'--quick ' if args.quick else ''}study on {args.data} ({os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}); {args.rounds} round(s) of {', '.join(names)}", flush=True)
    results = alternating(names, args.rounds, run)
    numbers = {n: pickle.loads(p.read_bytes()) for n, p in dumps.items()}
    par = names[1]
    checks = {f"{par} == serial": differences(numbers[par], numbers["serial"])}
    if args.before:
        checks["serial == before"] = differences(numbers["serial"], numbers["before"])
    summary = {"data": args.data, "quick": args.quick, "cores": os.cpu_count(), "overrides": args.set,
               "times": {n: [r["study_s"] for r in rs] for n, rs in results.items()},
               "load_1min": {n: [r["load_1min"] for r in rs] for n, rs in results.items()},
               "equal": {k: v is None for k, v in checks.items()}, "first_difference": checks}
    print()
    for n, rs in results.items():
        ts = [r["study_s"] for r in rs]
        print(f"{n}: median {np.median(ts):.1f} s over {len(ts)} run(s)")
    p = paired_ratio(results["serial"], results[par], "study_s")
    summary["serial_over_parallel"] = p
    print(f"serial / parallel: {describe(p)}")
    if args.before:
        q = paired_ratio(results["before"], results[par], "study_s")
        summary["before_over_parallel"] = q
        print(f"before / parallel: {describe(q)}")
    for k, v in checks.items():
        print(f"{k}: {'identical, every number' if v is None else 'DIFFERENT: ' + v}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    if any(v is not None for v in checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

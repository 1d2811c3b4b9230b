"""The default cue-integration study (`vlm-salience bci`), serial against parallel (and against an older copy of the
package), with equality checks of every number.

Target (issue 32): the default study on exp. 4 (Ong et al. 2015, 99 cells x 8 emotions) within 60 s on a quiet
2-core machine, the same point estimates and, for the same seed, the same intervals; `--quick` within 15 s.

Each measurement runs in a fresh process (`_harness.run_child`), the compared runs alternate (ABBA...), and every
run dumps its numbers (metrics, fitted weights with their intervals and nulls, comparisons, predictions) so that the
parent checks them for exact equality: parallel against serial always. Against an older package (`--before DIR`, a
folder that holds an older `vlm_salience`, or `--before-rev REV`, which takes the package at that git revision
with `git archive` into a temporary folder) the fits stop at the optimiser's tolerance on another path, so the
check there is how far the numbers are apart: the largest difference, and how many differ when rounded to the
printed digits (3 decimals), and whether any verdict differs.

`--scale N` also times the study on a synthetic rating corpus (`data/synth_ratings.py`, the demo's generator:
24 participants x 4 rounds, 96 items, like exp. 4's 99) and on one N times larger (N x 24 participants), each
generated once into a temporary folder, alternating, and prints the time ratio against N (issue 32: 10x the
corpus within 10x the time).

    python benchmarks/bench_study.py [--data configs/data/affcog_utterances.yaml] [--rounds 1] [--jobs -1]
        [--quick] [--set bootstrap.weights_n=50 ...] [--before DIR | --before-rev 9c2e4bf] [--scale 10]
        [--json out.json]
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
    import inspect

    kw = {"n_jobs": args.jobs} if "n_jobs" in inspect.signature(study.run_study).parameters else {}
    t0, c0 = time.perf_counter(), time.process_time()
    res = study.run_study(corpus, cfg, progress=False, **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with open(args.dump, "wb") as fh:
        pickle.dump({"metrics": res.metrics, "weights": res.weights, "comparisons": res.comparisons,
                     "predictions": {k: v.emotion_dist for k, v in res.predictions.items()}}, fh)
    # cpu_s: this process's CPU time, the whole study's only where it ran serially (--jobs 1): a measure that the
    # other guests' load disturbs less than the wall time
    print(json.dumps({"study_s": wall, "cpu_s": cpu, "items": len(corpus.items), "module": study.__file__}))


def differences(a: dict, b: dict) -> str | None:
    """None where every number of the two runs is the same (NaN equal to NaN), else the first difference."""
    try:
        np.testing.assert_equal(a, b)
    except AssertionError as e:
        return str(e).strip().splitlines()[0][:300]
    return None


def _leaves(d, pre: str = ""):
    """(path, float array) for every number of a dumped run."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, f"{pre}/{k}")
    elif isinstance(d, (list, tuple)):
        try:
            yield pre, np.asarray(d, dtype=float)
        except (TypeError, ValueError):
            for i, v in enumerate(d):
                yield from _leaves(v, f"{pre}[{i}]")
    elif isinstance(d, (bool, np.bool_, int, float, np.integer, np.floating, np.ndarray)):
        yield pre, np.asarray(d, dtype=float)


def closeness(a: dict, b: dict, decimals: int = 3) -> dict:
    """How far two runs' numbers are apart: the largest absolute difference (and where), how many numbers differ
    once rounded to `decimals`, and the verdicts (a_better, beats_*, *_evidence) that differ."""
    la, lb = dict(_leaves(a)), dict(_leaves(b))
    worst, where, rounded, verdicts, shape = 0.0, "", [], [], []
    for k in la.keys() & lb.keys():
        x, y = la[k], lb[k]
        if x.shape != y.shape or not np.array_equal(np.isfinite(x), np.isfinite(y)):
            shape.append(k)
            continue
        m = np.isfinite(x)
        d = float(np.abs(x[m] - y[m]).max()) if m.any() else 0.0
        if d > worst:
            worst, where = d, k
        if np.any(np.round(x[m], decimals) != np.round(y[m], decimals)):
            rounded.append(k)
        if d > 0 and any(w in k.rsplit("/", 1)[-1] for w in ("a_better", "beats_", "evidence")):
            verdicts.append(k)
    return {"numbers": len(la), "missing": sorted(la.keys() ^ lb.keys())[:5], "max_abs_diff": worst,
            "max_at": where, f"differ_at_{decimals}_decimals": len(rounded), "which": sorted(rounded)[:8],
            "verdicts_differ": sorted(verdicts), "shape_or_nan_differ": sorted(shape)[:5]}


def _describe_closeness(c: dict) -> str:
    n3 = c["differ_at_3_decimals"]
    return (f"{c['numbers']} numbers, largest difference {c['max_abs_diff']:.1e} ({c['max_at']}), {n3} differ at "
            f"3 decimals{' (' + ', '.join(c['which']) + ')' if n3 else ''}, verdicts differing: "
            f"{c['verdicts_differ'] or 'none'}" + (f", NaN/shape differences: {c['shape_or_nan_differ']}"
                                                  if c["shape_or_nan_differ"] else "")
            + (f", missing: {c['missing']}" if c["missing"] else ""))


def _package_at(rev: str) -> Path:
    """The vlm_salience package at git revision `rev`, unpacked into a temporary folder (git archive)."""
    import subprocess
    import tarfile

    out = Path(tempfile.mkdtemp(prefix=f"bench_study_{rev}_"))
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev, "vlm_salience"], capture_output=True, check=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(tar.stdout)) as tf:
        tf.extractall(out, filter="data")
    return out


def _synthetic(scale: int, folder: Path) -> Path:
    """The demo's synthetic rating corpus with `scale` x its participants (small face images: the study reads
    ratings, not pixels); generated once per folder."""
    from vlm_salience.config import load_config
    from vlm_salience.data.synth_ratings import RatingSynthConfig, write_rating_corpus

    out = folder / f"synth_x{scale}"
    if not (out / "data.yaml").is_file():
        cfg = load_config(REPO / "configs" / "synth" / "split_steal_ratings.yaml", RatingSynthConfig, [])
        cfg = cfg.model_copy(update={"participants": cfg.participants * scale, "image_size": 32,
                                     "name": f"synthetic_ratings_x{scale}"})
        write_rating_corpus(cfg, out, progress=False)
    return out / "data.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "configs" / "data" / "affcog_utterances.yaml"))
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of the compared runs")
    ap.add_argument("--jobs", type=int, default=-1, help="processes of the parallel run (joblib n_jobs)")
    ap.add_argument("--quick", action="store_true", help="time the --quick preview instead")
    ap.add_argument("--set", action="append", default=[], help="study override, e.g. bootstrap.weights_n=50")
    ap.add_argument("--before", help="a folder holding an older vlm_salience package: also timed and compared")
    ap.add_argument("--before-rev", help="a git revision (e.g. 9c2e4bf) whose package is timed and compared")
    ap.add_argument("--scale", type=int, default=0,
                    help="also time the study on a synthetic corpus and on one SCALE times larger")
    ap.add_argument("--scale-only", action="store_true",
                    help="with --scale: only the synthetic corpora (no exp. 4 runs, no before)")
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
    if args.scale_only:
        runs, args.before, args.before_rev = {}, None, None
    if args.before_rev:
        args.before = str(_package_at(args.before_rev))
    if args.before:  # the older package's parallel run, where it has one (same n_jobs)
        runs["before"] = ["--package", str(Path(args.before).resolve()), "--jobs", str(args.jobs)]
    dumps: dict[str, Path] = {}
    count = {"n": 0}

    def run(name: str) -> dict:
        count["n"] += 1
        dump = tmp / f"{count['n']}.pkl"
        extra = ["--quick"] if args.quick else []
        if args.quick and name == "before":  # an older package has no quick mode: the same counts as overrides
            from vlm_salience.study import QUICK
            extra = [a for k, v in QUICK.items() for a in ("--set", f"{k}={v}")]
        data = scaled[name] if name in scaled else args.data
        out = run_child(Path(__file__), ["--child", "--data", data, "--dump", str(dump), *extra,
                                         *[a for s in args.set for a in ("--set", s)], *runs[name]])
        out["load_1min"] = os.getloadavg()[0]
        dumps.setdefault(name, dump)
        print(f"  {name}: study {out['study_s']:.1f} s, CPU {out['cpu_s']:.1f} s in the main process ({out['items']} "
              f"items; process {out['child_wall_s']:.1f} s, load {out['load_1min']:.1f}, "
              f"steal {out['steal'] or 0:.0%})", flush=True)
        return out

    scaled: dict[str, str] = {}
    if args.scale:
        for k in (1, args.scale):
            name = f"synthetic x{k} (n_jobs={args.jobs})"
            scaled[name] = str(_synthetic(k, tmp))
            runs[name] = ["--jobs", str(args.jobs)]
    names = list(runs)
    print(f"{'--quick ' if args.quick else ''}study on {args.data} ({os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}); {args.rounds} round(s) of {', '.join(names)}", flush=True)
    results = alternating(names, args.rounds, run)
    numbers = {n: pickle.loads(p.read_bytes()) for n, p in dumps.items()}
    par = names[1] if not args.scale_only else None
    checks = {f"{par} == serial": differences(numbers[par], numbers["serial"])} if par else {}
    summary = {"data": args.data, "quick": args.quick, "cores": os.cpu_count(), "overrides": args.set,
               "times": {n: [r["study_s"] for r in rs] for n, rs in results.items()},
               "cpu_main_process": {n: [r["cpu_s"] for r in rs] for n, rs in results.items()},
               "load_1min": {n: [r["load_1min"] for r in rs] for n, rs in results.items()},
               "equal": {k: v is None for k, v in checks.items()}, "first_difference": checks}
    if args.before:
        summary["serial_vs_before"] = closeness(numbers["serial"], numbers["before"])
    print()
    for n, rs in results.items():
        ts = [r["study_s"] for r in rs]
        print(f"{n}: median {np.median(ts):.1f} s over {len(ts)} run(s)")
    if par:
        p = paired_ratio(results["serial"], results[par], "study_s")
        summary["serial_over_parallel"] = p
        print(f"serial / parallel: {describe(p)}")
    if args.before:
        q = paired_ratio(results["before"], results[par], "study_s")
        summary["before_over_parallel"] = q
        print(f"before / parallel (both n_jobs={args.jobs}): {describe(q)}")
    if args.scale:
        one, big = (f"synthetic x{k} (n_jobs={args.jobs})" for k in (1, args.scale))
        r = paired_ratio(results[big], results[one], "study_s")
        items = results[big][0]["items"] / results[one][0]["items"]
        summary["scale"] = {"factor": args.scale, "items_ratio": items, "time_ratio": r}
        print(f"synthetic x{args.scale} / x1 ({items:.0f}x the items): {describe(r)}; target: at most "
              f"{args.scale}x")
    for k, v in checks.items():
        print(f"{k}: {'identical, every number' if v is None else 'DIFFERENT: ' + v}")
    if args.before:
        print(f"serial vs before: {_describe_closeness(summary['serial_vs_before'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    if any(v is not None for v in checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

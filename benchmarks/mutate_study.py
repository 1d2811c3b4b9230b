"""Plant the evaluation bugs of issue 15 one at a time in a copy of the repository and run the study's tests:
each planted bug must make a test fail ("caught").

    python benchmarks/mutate_study.py [--repo PATH] [--only NAME,...]

The copy lives in a temporary folder (the checkout is never modified, so other work in it is undisturbed);
its sibling `shared` links to the real data beside the repository, so the tests that read it run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# fast files first: the run stops at the first failure
TESTS = ["tests/test_metrics.py", "tests/test_bci.py", "tests/test_salience.py", "tests/test_study.py",
         "tests/test_expressivity.py", "tests/test_cue_models.py", "tests/test_synth.py"]

# name -> (file, [(old, new), ...]): the first pair whose old text the file holds is applied
MUTATIONS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "bootstrap never resamples": ("vlm_salience/metrics.py", [
        ("    return np.vstack([np.ones((1, n)), draws])", "    return np.ones((1 + n_boot, n))")]),
    "folds train on every item": ("vlm_salience/study.py", [
        ("        train = np.setdiff1d(all_idx, test)", "        train = all_idx")]),
    "study hands no groups to its bootstrap": ("vlm_salience/study.py", [
        ("    groups, crossed, result.resampling = bootstrap_factors(corpus, cfg)",
         "    groups, crossed, result.resampling = bootstrap_factors(corpus, cfg)\n    groups = crossed = None"),
        ("    groups = corpus.groups(cfg.cv.group) if cfg.bootstrap.by_group else None", "    groups = None")]),
    "expressivity normalised on all items": ("vlm_salience/study.py", [
        ("        x = Normaliser.fit(raw[train], cfg.expressivity.normalise)(raw)",
         "        x = Normaliser.fit(raw, cfg.expressivity.normalise)(raw)")]),
    "face and context weights swapped at prediction": ("vlm_salience/bci.py", [
        ("    return {b.name: combine(b, rule, wf, wc) for b in cues.blocks}",
         "    return {b.name: combine(b, rule, wc, wf) for b in cues.blocks}")]),
    "KLD reversed in scoring": ("vlm_salience/metrics.py", [
        ("    out[\"kld\"] = w @ kl_per_item(obs.emotion_dist, pred.emotion_dist) / tot",
         "    out[\"kld\"] = w @ kl_per_item(pred.emotion_dist, obs.emotion_dist) / tot")]),
    "/P(e) dropped from BCI": ("vlm_salience/bci.py", [
        ("    np.multiply(l0, 1.0 - wf - wc, out=tmp)\n    logp += tmp\n", "")]),
}


def _copy(repo: Path, dest: Path) -> Path:
    root = dest / "main"
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".pytest_cache", "*.egg-info")
    for part in ("vlm_salience", "tests", "configs", "prompts", "benchmarks"):
        if (repo / part).exists():
            shutil.copytree(repo / part, root / part, ignore=ignore)
    for f in ("pyproject.toml",):
        shutil.copy2(repo / f, root / f)
    shared = repo.parent / "shared"
    if shared.exists():
        os.symlink(shared, dest / "shared")
    return root


def run_tests(root: Path) -> tuple[bool, str]:
    """(caught, first failing test): stops at the first failure."""
    env = {**os.environ, "PYTHONPATH": str(root), "VLM_SALIENCE_SHARED_DATA": str(root.parent / "shared" / "data")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
                          cwd=root, env=env, capture_output=True, text=True)
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
    return proc.returncode != 0, (failed[0][7:] if failed else proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=REPO, help="the repository whose code and tests to mutate")
    ap.add_argument("--only", default="", help="comma-separated mutation names")
    args = ap.parse_args()
    names = [n for n in MUTATIONS if not args.only or n in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = _copy(args.repo.resolve(), Path(tmp))
        caught = 0
        for name in names:
            rel, pairs = MUTATIONS[name]
            path = root / rel
            original = path.read_text()
            pair = next(((a, b) for a, b in pairs if a in original), None)
            if pair is None:
                print(f"{name}: cannot plant (code not found in {rel})", flush=True)
                continue
            path.write_text(original.replace(pair[0], pair[1], 1))
            t = time.time()
            try:
                hit, where = run_tests(root)
            finally:
                path.write_text(original)
            caught += hit
            print(f"{'CAUGHT' if hit else 'missed'}  {name}  ({time.time() - t:.0f}s; {where})", flush=True)
        print(f"caught {caught}/{len(names)}")


if __name__ == "__main__":
    main()

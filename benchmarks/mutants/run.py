"""One mutation runner for every area: plant one realistic bug at a time in a temporary copy of the repository, run
the tests that should catch it there, and report caught / survived with the first failing test.

    .venv/bin/python benchmarks/mutants/run.py                      # every area
    .venv/bin/python benchmarks/mutants/run.py --area video         # one area (repeatable)
    .venv/bin/python benchmarks/mutants/run.py --list               # the mutants, and whether each still applies
    .venv/bin/python benchmarks/mutants/run.py --only "cache key"   # names containing this (repeatable)
    .venv/bin/python benchmarks/mutants/run.py --area video --json out.json   # also write the results (- : stdout)
    .venv/bin/python benchmarks/mutants/run.py --area video --without tests/test_video_guards.py  # the score
                                                                    # before a test file existed

The mutants of an area are listed in benchmarks/mutants/<area>.yaml, each with

    name:        a short description (unique in its area)
    file:        the source file, relative to the repository root
    original:    the exact source text replaced (one or more whole lines, or an exact part of one)
    replacement: what it becomes
    tests:       the test files to run (with -x: the run stops at the first failure)
    k:           optional pytest -k expression
    why:         what the bug would do to a result (why a careful reviewer fears it)
    timeout:     optional seconds (default: --timeout)

A mutant whose `original` is not found exactly once in its file is reported `stale` (the source moved: update the
mutant) and never counted. The checkout is never modified: vlm_salience/, tests/, configs/, prompts/,
benchmarks/ and pyproject.toml are copied into a temporary folder (its sibling `shared` links to the real data
beside the repository), PYTHONPATH and VLM_SALIENCE_HOME point there, each mutant is planted there, and the file
is restored and checked byte-identical before the next. Before the mutants of a test selection run, the selection
runs once unmutated (its `baseline`); where that fails (a broken test, another agent's half-edit), its mutants are
reported `baseline-fails` and not counted (--no-baseline skips this check).

Statuses: caught (a test failed or errored), survived (every selected test passed), timeout, no-tests (the
selection is empty), stale, baseline-fails. The score is caught / (caught + survived + timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
COPIED = ("vlm_salience", "tests", "configs", "prompts", "benchmarks")
COPIED_FILES = ("pyproject.toml",)
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "runs", "*.faiss")
FIELDS = {"name", "file", "original", "replacement", "tests", "k", "why", "timeout"}


@dataclass
class Mutant:
    area: str
    name: str
    file: str
    original: str
    replacement: str
    tests: list[str]
    k: str | None = None
    why: str = ""
    timeout: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def selection(self) -> tuple[tuple[str, ...], str | None]:
        return tuple(self.tests), self.k


def areas() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def load_area(area: str) -> list[Mutant]:
    """The mutants of benchmarks/mutants/<area>.yaml, checked for the fields each needs."""
    path = HERE / f"{area}.yaml"
    if not path.is_file():
        raise SystemExit(f"{path}: no such area (areas: {', '.join(areas())})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out, seen = [], set()
    for i, m in enumerate(data.get("mutants") or []):
        where = f"{path.name}, mutant {i + 1} ({m.get('name', '?')!r})"
        unknown = set(m) - FIELDS
        missing = {"name", "file", "original", "replacement", "tests"} - set(m)
        if unknown or missing:
            raise SystemExit(f"{where}: unknown field(s) {sorted(unknown)}, missing {sorted(missing)}")
        if m["name"] in seen:
            raise SystemExit(f"{where}: duplicate name")
        if m["original"] == m["replacement"]:
            raise SystemExit(f"{where}: the replacement equals the original")
        seen.add(m["name"])
        tests = [m["tests"]] if isinstance(m["tests"], str) else list(m["tests"])
        out.append(Mutant(area=area, name=m["name"], file=m["file"], original=m["original"],
                          replacement=m["replacement"], tests=tests, k=m.get("k"), why=m.get("why", ""),
                          timeout=m.get("timeout")))
    return out


def copy_repo(dest: Path, repo: Path = REPO) -> Path:
    """The parts of the repository the tests need, in dest/main (dest/shared links to the real data)."""
    root = dest / "main"
    for part in COPIED:
        if (repo / part).is_dir():
            shutil.copytree(repo / part, root / part, ignore=IGNORE, symlinks=True)
    for f in COPIED_FILES:
        if (repo / f).is_file():
            shutil.copy2(repo / f, root / f)
    shared = repo.parent / "shared"
    if shared.is_dir():
        (dest / "shared").symlink_to(shared)
    return root


def occurrences(root: Path, m: Mutant) -> int:
    path = root / m.file
    return path.read_text(encoding="utf-8").count(m.original) if path.is_file() else -1


def pytest(root: Path, tests: list[str], k: str | None, timeout: int) -> tuple[int, str, float]:
    """(return code, output tail, seconds) of pytest -x on `tests` in the copy; 124 when it ran past timeout."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-rfE", "--no-header", "-p", "no:cacheprovider", *tests]
    if k:
        cmd += ["-k", k]
    env = {**os.environ, "PYTHONPATH": str(root), "VLM_SALIENCE_HOME": str(root), "PYTHONDONTWRITEBYTECODE": "1",
           "VLM_SALIENCE_SHARED_DATA": str(root.parent / "shared" / "data"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the pytest process and any worker it started
        out, _ = proc.communicate()
        rc = 124
    return rc, out or "", time.time() - t0


def first_failure(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    if lines:
        return lines[0][:300]
    tail = [ln for ln in out.splitlines() if ln.strip()]
    return tail[-1][:300] if tail else ""


def status_of(rc: int) -> str:
    # 0: every test passed; 1: a test failed; 2: interrupted (a collection error: the mutant broke an import);
    # 3: internal error; 4: usage error (a bad test path: a mistake in the YAML, not a catch); 5: nothing selected
    return {0: "survived", 1: "caught", 2: "caught", 3: "caught", 5: "no-tests", 124: "timeout"}.get(rc, "error")


def run_mutant(root: Path, m: Mutant, timeout: int) -> dict[str, Any]:
    path = root / m.file
    if not path.is_file():
        return {"status": "stale", "detail": f"{m.file} does not exist"}
    before = path.read_bytes()
    text = before.decode("utf-8")
    n = text.count(m.original)
    if n != 1:
        return {"status": "stale", "detail": f"original text found {n} times in {m.file} (expected once)"}
    try:
        path.write_text(text.replace(m.original, m.replacement, 1), encoding="utf-8")
        rc, out, secs = pytest(root, m.tests, m.k, m.timeout or timeout)
    finally:
        path.write_bytes(before)
    if path.read_bytes() != before:
        raise SystemExit(f"{path}: not restored byte-identical after mutant {m.name!r}; stopping")
    st = status_of(rc)
    res = {"status": st, "rc": rc, "seconds": round(secs, 1)}
    if st == "caught":
        res["by"] = first_failure(out)
    elif st in ("error", "no-tests", "timeout"):
        res["detail"] = first_failure(out)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--area", action="append", help=f"an area ({', '.join(areas())}); repeatable; default: all")
    ap.add_argument("--only", action="append", help="run mutants whose name contains this (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutants and whether each applies; run nothing")
    ap.add_argument("--json", help="write the results as JSON to this file ('-': stdout, instead of the lines)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run (default 900)")
    ap.add_argument("--without", action="append", default=[],
                    help="leave this test file out of every mutant's tests (the score before it existed)")
    ap.add_argument("--no-baseline", action="store_true", help="do not run each selection unmutated first")
    ap.add_argument("--repo", type=Path, default=REPO, help="the repository to copy (default: this checkout)")
    args = ap.parse_args(argv)

    chosen = [m for a in (args.area or areas()) for m in load_area(a)
              if not args.only or any(o.lower() in m.name.lower() for o in args.only)]
    if args.without:
        for m in chosen:
            m.tests = [t for t in m.tests if t not in args.without]
        chosen = [m for m in chosen if m.tests]
    quiet = args.json == "-"

    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    if args.list:
        rows = []
        for m in chosen:
            n = occurrences(args.repo, m)
            ok = "ok   " if n == 1 else f"STALE ({'no file' if n < 0 else f'found {n}x'})"
            rows.append({"area": m.area, "name": m.name, "file": m.file, "applies": n == 1, "tests": m.tests,
                         "k": m.k, "why": m.why})
            say(f"{ok} [{m.area}] {m.name}  ({m.file}; {' '.join(m.tests)}{' -k ' + repr(m.k) if m.k else ''})")
        say(f"{sum(r['applies'] for r in rows)}/{len(rows)} mutants apply")
        if args.json:
            _write_json(args.json, {"mutants": rows})
        return 0 if all(r["applies"] for r in rows) else 1

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        root = copy_repo(Path(tmp), args.repo.resolve())
        baseline: dict[tuple, dict[str, Any]] = {}
        for m in chosen:
            res: dict[str, Any] = {"area": m.area, "name": m.name, "file": m.file, "tests": m.tests, "k": m.k}
            if occurrences(root, m) == 1 and not args.no_baseline and m.selection not in baseline:
                rc, out, secs = pytest(root, m.tests, m.k, m.timeout or args.timeout)
                baseline[m.selection] = {"rc": rc, "seconds": round(secs, 1), "detail": first_failure(out)}
                say(f"  baseline {' '.join(m.tests)}{' -k ' + repr(m.k) if m.k else ''}: "
                    f"{'passes' if rc == 0 else 'FAILS (rc %d): %s' % (rc, first_failure(out))} ({secs:.0f} s)")
            base = baseline.get(m.selection)
            if base is not None and base["rc"] != 0:
                res.update(status="baseline-fails", detail=base["detail"])
            else:
                res.update(run_mutant(root, m, args.timeout))
            results.append(res)
            extra = res.get("by") or res.get("detail") or ""
            say(f"{res['status'].upper():15} [{m.area}] {m.name}  ({res.get('seconds', 0):.0f} s) {extra}")
    judged = [r for r in results if r["status"] in ("caught", "survived", "timeout")]
    caught = sum(r["status"] == "caught" for r in judged)
    counts = {s: sum(r["status"] == s for r in results) for s in sorted({r["status"] for r in results})}
    per_area = {}
    for a in dict.fromkeys(r["area"] for r in results):
        rs = [r for r in judged if r["area"] == a]
        per_area[a] = {"caught": sum(r["status"] == "caught" for r in rs), "judged": len(rs),
                       "total": sum(r["area"] == a for r in results)}
    for a, c in per_area.items():
        say(f"{a}: caught {c['caught']}/{c['judged']} ({c['total']} mutants)")
    say(f"caught {caught}/{len(judged)}; " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.json:
        _write_json(args.json, {"caught": caught, "judged": len(judged), "counts": counts, "areas": per_area,
                                "without": args.without, "results": results})
    return 0 if caught == len(judged) and not counts.get("stale") else 1


def _write_json(dest: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2)
    if dest == "-":
        print(text)
    else:
        Path(dest).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())

"""The mutation runner (benchmarks/mutants/run.py): every area's list loads, and on a tiny repository a mutant is
caught or survives, a moved source line is stale (never counted), and the planted file is restored."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "mutants_run", Path(__file__).resolve().parents[1] / "benchmarks" / "mutants" / "run.py")
runner = importlib.util.module_from_spec(_spec)
sys.modules["mutants_run"] = runner  # dataclasses look their module up by name
_spec.loader.exec_module(runner)


def test_every_area_loads_with_unique_names_and_existing_test_files():
    areas = runner.areas()
    assert {"study", "retrieval_prompting", "training", "video"} <= set(areas)
    repo = Path(__file__).resolve().parents[1]
    for area in areas:
        mutants = runner.load_area(area)
        assert mutants, area
        for m in mutants:
            assert m.why, f"{area}: {m.name} says not why it matters"
            for t in m.tests:
                assert (repo / t.split("::")[0]).is_file(), f"{area}: {m.name} names a missing test file {t}"
    assert len(runner.load_area("video")) >= 15


@pytest.fixture()
def tiny_repo(tmp_path):
    repo = tmp_path / "repo" / "main"
    (repo / "vlm_salience").mkdir(parents=True)
    (repo / "vlm_salience" / "__init__.py").write_text("")
    (repo / "vlm_salience" / "adder.py").write_text("def add(a, b):\n    return a + b\n\n\ndef half(x):\n"
                                                   "    return x / 2\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_adder.py").write_text("from vlm_salience.adder import add\n\n\ndef test_add():\n"
                                                  "    assert add(2, 3) == 5\n")
    (repo / "pyproject.toml").write_text("")
    return repo


def _mutant(original: str, replacement: str) -> runner.Mutant:
    return runner.Mutant(area="t", name="m", file="vlm_salience/adder.py", original=original,
                         replacement=replacement, tests=["tests/test_adder.py"])


def test_caught_survived_stale_and_restored(tiny_repo, tmp_path):
    root = runner.copy_repo(tmp_path / "copy", tiny_repo)
    before = (root / "vlm_salience" / "adder.py").read_bytes()
    caught = runner.run_mutant(root, _mutant("    return a + b\n", "    return a - b\n"), timeout=120)
    assert caught["status"] == "caught" and "test_add" in caught["by"]
    survived = runner.run_mutant(root, _mutant("    return x / 2\n", "    return x / 3\n"), timeout=120)
    assert survived["status"] == "survived"
    assert runner.run_mutant(root, _mutant("return a * b", "return 0"), timeout=120)["status"] == "stale"
    assert runner.run_mutant(root, _mutant("    return", "    return 0 and"), timeout=120)["status"] == "stale"
    assert (root / "vlm_salience" / "adder.py").read_bytes() == before
    assert (tiny_repo / "vlm_salience" / "adder.py").read_bytes() == before  # the checkout itself is never touched

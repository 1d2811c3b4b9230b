"""Imports flow downward (../shared/DESIGN.md): each layer, imported alone, pulls in nothing above it.

One subprocess holds only the standard library and a few third-party packages every layer needs (numpy, pandas,
yaml, pydantic: imported once, to keep the test fast). It forks a child per module, the child imports that module
alone and sends back its `sys.modules`, so each check sees exactly what one import pulls in. A second check reads
the package's source: no module imports another module's private (`_name`) helper.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_salience"

PROBE = r"""
import json, os, sys
import numpy, pandas, pydantic, yaml  # shared by every layer; none of them is the package or torch
out = {}
for target in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(target)
            res = {"modules": sorted(sys.modules)}
        except BaseException as e:  # reported, not raised: the parent must still answer for the others
            res = {"error": f"{type(e).__name__}: {e}"}
        with os.fdopen(w, "w") as f:
            json.dump(res, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out[target] = json.load(f)
    os.waitpid(pid, 0)
json.dump(out, sys.stdout)
"""

CORE = ["vlm_salience.bci", "vlm_salience.salience", "vlm_salience.expressivity", "vlm_salience.metrics",
        "vlm_salience.stats"]
LEAVES = ["vlm_salience.stats", "vlm_salience.formatting", "vlm_salience.law_kinds",
          "vlm_salience.ranks"]  # import nothing of the package
VIDEO = ["vlm_salience.video", "vlm_salience.video.report", "vlm_salience.video.train"]
DATA = ["vlm_salience.data.synth"]
PROMPTING_REPORT = "vlm_salience.prompting.report"
ENGINE = "vlm_salience.engine"
HAS_ENGINE = (PACKAGE / "engine" / "__init__.py").is_file()


@pytest.fixture(scope="module")
def pulled() -> dict[str, set[str]]:
    """module -> the modules in sys.modules after importing it alone in a fresh interpreter."""
    targets = sorted(set(CORE + LEAVES + VIDEO + DATA + [PROMPTING_REPORT] + ([ENGINE] if HAS_ENGINE else [])))
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("needs os.fork to import each layer alone cheaply")
    res = subprocess.run([sys.executable, "-c", PROBE, *targets], capture_output=True, text=True, timeout=600,
                         cwd=PACKAGE.parent)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    errors = {t: v["error"] for t, v in doc.items() if "error" in v}
    assert not errors, f"modules that fail to import alone: {errors}"
    return {t: set(v["modules"]) for t, v in doc.items()}


def _ours(mods: set[str]) -> set[str]:
    return {m for m in mods if m == "vlm_salience" or m.startswith("vlm_salience.")}


def _loaded(mods: set[str], layers: set[str]) -> list[str]:
    """The package's modules in `mods` that belong to one of `layers` (first name under vlm_salience)."""
    return sorted(m for m in _ours(mods) if m.count(".") and m.split(".")[1] in layers)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_helpers_import_nothing_of_the_package(pulled, leaf):
    assert _ours(pulled[leaf]) == {"vlm_salience", leaf}


@pytest.mark.parametrize("core", CORE)
def test_core_modules_never_load_torch_or_transformers(pulled, core):
    heavy = {m.split(".")[0] for m in pulled[core]} & {"torch", "transformers"}
    assert not heavy, f"importing {core} loads {sorted(heavy)}"


@pytest.mark.parametrize("video", VIDEO)
def test_video_layer_does_not_load_the_study(pulled, video):
    above = _loaded(pulled[video], {"study", "study_report", "report", "demo"})
    assert not above, f"importing {video} loads {above}"


@pytest.mark.parametrize("data", DATA)
def test_data_layer_does_not_load_the_study(pulled, data):
    above = _loaded(pulled[data], {"study", "study_report", "reliability", "report", "cue_models"})
    assert not above, f"importing {data} loads {above}"


@pytest.mark.skipif(not HAS_ENGINE, reason="vlm_salience/engine/ does not exist yet (issue 25 item 4 moves it there)")
def test_engine_does_not_load_the_vlm_stack(pulled):
    above = _loaded(pulled[ENGINE], {"prompting", "study", "study_report", "report", "training"})
    assert not above, f"importing {ENGINE} loads {above}"


def test_prompting_report_does_not_load_the_study(pulled):
    """The prompting report writes an experiment's own metrics: it needs neither the study nor its report."""
    above = _loaded(pulled[PROMPTING_REPORT], {"study", "study_report", "cli", "demo"})
    assert not above, f"importing {PROMPTING_REPORT} loads {above}"


def _private_imports(path: Path) -> list[str]:
    """`from vlm_salience.x import _name` in one file (aliasing a public name to a private one is fine)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlm_salience"):
            found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.module}.{a.name}"
                      for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_helper():
    found = [f for p in sorted(PACKAGE.rglob("*.py")) for f in _private_imports(p)]
    assert not found, "private names imported across modules (make them public where shared):\n" + "\n".join(found)

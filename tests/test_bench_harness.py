"""The benchmark harness: alternating order, ratios of medians, stolen CPU share, child processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _harness as h  # noqa: E402


def test_alternating_reverses_every_other_round():
    order: list[str] = []
    runs = h.alternating(["a", "b", "c"], 3, lambda n: order.append(n) or {"n": n, "i": len(order)})
    assert order == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert [r["i"] for r in runs["c"]] == [3, 4, 9]


def test_paired_ratio_is_ratio_of_medians_with_rounds():
    a = [{"x": 10.0, "steal": 0.1}, {"x": 30.0, "steal": 0.3}, {"x": 20.0, "steal": 0.0}]
    b = [{"x": 5.0, "steal": 0.0}, {"x": 10.0, "steal": 0.2}, {"x": 5.0, "steal": None}]
    p = h.paired_ratio(a, b, "x")
    assert p["ratio"] == pytest.approx(20.0 / 5.0)
    assert p["per_round"] == pytest.approx([2.0, 3.0, 4.0])
    assert p["steal_max"] == pytest.approx(0.3)
    assert h.median_run(a, "x")["x"] == 20.0
    assert "median of 3 rounds" in h.describe(p) and "30%" in h.describe(p)


def test_steal_fraction():
    before = {"busy": 100, "idle": 50, "steal": 10}
    after = {"busy": 160, "idle": 70, "steal": 30}
    assert h.steal_fraction(before, after) == pytest.approx(20 / 100)
    assert h.steal_fraction({}, after) is None


def test_run_child_reads_last_json_line_and_reports_failure(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import sys, json\nprint('noise')\nif sys.argv[1] == 'fail':\n"
                      "    sys.exit('went wrong')\nprint(json.dumps({'v': int(sys.argv[1])}))\n")
    out = h.run_child(script, ["7"])
    assert out["v"] == 7 and out["child_wall_s"] > 0
    with pytest.raises(RuntimeError, match="went wrong"):
        h.run_child(script, ["fail"])

"""One way to print a figure with its interval and one way to make a document JSON-safe, for every report; and the
bits the study's and the prompting report share (metric labels, a markdown table, the terminal table, pyplot).

Imports nothing of the package (rich and matplotlib only inside the functions that draw), so any layer (the study, video, OUS, GRACE, the demo, the CLI) can use it without
pulling the others in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_ci(value: float | None, lo: float | None = None, hi: float | None = None, digits: int = 3) -> str:
    """"value [lo, hi]" with `digits` decimals; "n/a" when there is no finite value, and the value alone when
    the interval is missing or not finite (a bootstrap with too few draws)."""
    if not _finite(value):
        return "n/a"
    if not (_finite(lo) and _finite(hi)):
        return f"{float(value):.{digits}f}"
    return f"{float(value):.{digits}f} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def fmt_metric(v: Mapping[str, Any] | None, digits: int = 3) -> str:
    """`fmt_ci` of a metric entry as metrics.py writes it (`{"value": x, "ci95": [lo, hi]}`); None gives "n/a"."""
    if not v:
        return "n/a"
    lo, hi = (list(v.get("ci95") or []) + [None, None])[:2]
    return fmt_ci(v.get("value"), lo, hi, digits)


def json_safe(obj: Any) -> Any:
    """A copy fit for `json.dumps`: numpy scalars and arrays to Python, NaN and infinities to null, keys to str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return obj


METRIC_LABELS = {"r": "r", "rmse": "RMSE", "kld": "KLD", "rating_kld": "rating KLD", "valence_mse": "valence MSE",
                 "valence_r": "valence r"}


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of equal keys as a markdown table (the keys are the header); "" for no rows."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def console(width: int):
    """A console that wraps at `width` when the output is not a terminal (logs, CI), so tables stay readable."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else width)


def print_rows(title: str, rows: list[dict[str, str]], notes: list[str], *, width: int) -> None:
    """Rows as a rich table on the terminal, then each note."""
    from rich.table import Table

    con = console(width)
    table = Table(title=title)
    for i, col in enumerate(rows[0]):
        table.add_column(col, no_wrap=i == 0, overflow="fold")
    for r in rows:
        table.add_row(*r.values())
    con.print(table)
    for note in notes:
        con.print(f"[yellow]note[/yellow]: {note}")


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

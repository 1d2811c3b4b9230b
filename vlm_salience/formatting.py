"""One way to print a figure with its interval and one way to make a document JSON-safe, for every report.

Imports nothing of the package, so any layer (the study, video, OUS, GRACE, the demo, the CLI) can use it without
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

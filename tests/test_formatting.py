"""One number format and one JSON cleaner for every report (vlm_salience.formatting)."""

from __future__ import annotations

import json
import math

import numpy as np

from vlm_salience.formatting import fmt_ci, fmt_metric, json_safe


def test_fmt_ci_prints_value_and_interval_as_the_reports_always_did():
    assert fmt_ci(0.51234, 0.4, 0.6) == "0.512 [0.400, 0.600]"
    assert fmt_ci(0.01234, 0.001, 0.02, digits=4) == "0.0123 [0.0010, 0.0200]"
    assert fmt_metric({"value": np.float64(0.5), "ci95": [0.25, 0.75]}) == "0.500 [0.250, 0.750]"
    # no interval (too few resamples): the value alone; no value: n/a
    assert fmt_metric({"value": 0.5, "ci95": [float("nan"), float("nan")]}) == "0.500"
    assert fmt_metric({"value": 0.5, "ci95": [None, None]}) == "0.500"
    assert fmt_metric({"value": 0.5}) == "0.500"
    assert fmt_metric({"value": float("nan"), "ci95": [0.1, 0.2]}) == "n/a"
    assert fmt_metric(None) == fmt_metric({}) == fmt_ci(None) == "n/a"


def test_json_safe_turns_numpy_and_non_finite_numbers_into_json():
    doc = {1: np.float32(0.5), "nan": float("nan"), "inf": np.float64(math.inf), "n": np.int64(3),
           "arr": np.array([[1, 2]]), "t": (np.float64(1.5), "x")}
    out = json_safe(doc)
    assert out == {"1": 0.5, "nan": None, "inf": None, "n": 3, "arr": [[1, 2]], "t": [1.5, "x"]}
    assert type(out["n"]) is int and type(out["1"]) is float
    json.dumps(out, allow_nan=False)

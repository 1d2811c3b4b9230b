"""Metrics and bootstrap tests."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_salience import metrics
from vlm_salience.predictions import Predictions


def _pred(name, dist, valence, ratings=None, error=None):
    n = len(dist)
    return Predictions(method=name, item_ids=np.array([f"i{i}" for i in range(n)], dtype=object),
                       labels=tuple(f"e{k}" for k in range(dist.shape[1])), emotion_dist=dist, valence=valence,
                       ratings=ratings, error=error)


def test_basic_metrics():
    a, b = np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 6, 8])
    assert metrics.pearson(a, b) == pytest.approx(1.0)
    assert metrics.rmse(a, b) == pytest.approx(np.sqrt(np.mean((a - b) ** 2)))
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert metrics.kl_per_item(p, p) == pytest.approx([0, 0], abs=1e-5)  # up to the floor on predictions
    assert metrics.kl_per_item(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))[0] == pytest.approx(np.log(2))


def test_uar_and_war():
    y = np.array(["a", "a", "a", "a", "b"])
    yhat = np.array(["a", "a", "a", "a", "a"])
    assert metrics.war(y, yhat) == pytest.approx(0.8)
    assert metrics.uar(y, yhat) == pytest.approx(0.5)  # the minority class is never recalled


def _noisy(rng, obs, scale):
    d = np.clip(obs.emotion_dist + rng.normal(0, scale, obs.emotion_dist.shape), 1e-3, None)
    return d / d.sum(1, keepdims=True), obs.valence + rng.normal(0, scale * 10, len(obs))


def test_score_intervals_and_paired_bootstrap():
    rng = np.random.default_rng(0)
    d = rng.dirichlet(np.ones(4), size=200)
    obs = _pred("observed", d, rng.normal(size=200))
    good = _pred("good", *_noisy(rng, obs, 0.02))
    bad = _pred("bad", *_noisy(rng, obs, 0.08))
    s = metrics.score(good, obs, n_boot=300)
    for name in metrics.METRICS:
        lo, hi = s[name]["ci95"]
        assert lo <= s[name]["value"] <= hi
    assert set(s["per_emotion"]) == {"e0", "e1", "e2", "e3"}
    cmp = metrics.paired_bootstrap(good, bad, obs, n_boot=300)
    assert all(cmp[m]["a_better"] for m in metrics.METRICS)
    same = metrics.paired_bootstrap(good, good, obs, n_boot=300)
    assert not any(same[m]["a_better"] for m in metrics.METRICS)
    # grouped resampling runs and gives intervals at least as wide as the point
    g = np.repeat(np.arange(20), 10)
    sg = metrics.score(good, obs, n_boot=300, groups=g)
    assert sg["r"]["ci95"][0] <= sg["r"]["value"] <= sg["r"]["ci95"][1]


def test_failed_items_are_left_out_and_coverage_reported():
    rng = np.random.default_rng(1)
    d = rng.dirichlet(np.ones(3), size=10)
    obs = _pred("observed", d, np.zeros(10))
    err = np.array([""] * 8 + ["timeout", "unparseable"], dtype=object)
    pred = _pred("vlm", d.copy(), np.zeros(10), error=err)
    pred.emotion_dist[8:] = np.nan  # whatever a failed item holds must not leak into scores
    s = metrics.score(pred, obs, n_boot=50)
    assert s["n_items"] == 8 and s["coverage"] == pytest.approx(0.8)
    assert s["kld"]["value"] == pytest.approx(0.0, abs=1e-5)


def test_resample_weights_keep_groups_together():
    w = metrics.resample_weights(6, 50, seed=0, groups=np.array(["a", "a", "b", "b", "c", "c"]))
    assert np.all(w[0] == 1)
    assert np.all(w[1:, 0] == w[1:, 1]) and np.all(w[1:].sum(1) == 6)

"""Bayesian cue integration: the formula, its tempered form, the pool, and weight recovery by fitting."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_salience import bci
from vlm_salience.cue_models import Block, CueTable
from vlm_salience.salience import SalienceLaw


def _dists(rng, shape):
    g = rng.gamma(1.0, size=shape) + 0.05
    return g / g.sum(axis=-1, keepdims=True)


def test_plain_product_is_the_bayesian_formula():
    rng = np.random.default_rng(0)
    f, c, p0 = (_dists(rng, (5, 3, 9)) for _ in range(3))
    got = bci.tempered_product(f, c, p0, np.ones(5), np.ones(5))
    want = f * c / p0
    want /= want.sum(axis=-1, keepdims=True)
    assert np.allclose(got, want)
    # zero weight on a cue removes it: only the other cue's evidence and the prior remain
    only_face = bci.tempered_product(f, c, p0, np.ones(5), np.zeros(5))
    assert np.allclose(only_face, f)


def test_log_tempered_matches_probabilities_and_is_chunk_invariant(monkeypatch):
    rng = np.random.default_rng(1)
    f, c, p0 = (_dists(rng, (10_000, 2, 7)) for _ in range(3))
    wf, wc = rng.uniform(0, 2, 10_000), rng.uniform(0, 2, 10_000)
    p = bci.tempered_product(f, c, p0, wf, wc)
    assert np.allclose(np.exp(bci.log_tempered(np.log(f), np.log(c), np.log(p0), wf, wc)), p)
    monkeypatch.setattr(bci, "CHUNK", 7)
    assert np.allclose(bci.tempered_product(f[:50], c[:50], p0[:50], wf[:50], wc[:50]), p[:50])


def test_linear_pool():
    f = np.array([[[1.0, 0.0]]])
    c = np.array([[[0.0, 1.0]]])
    assert bci.linear_pool(f, c, np.array([0.25])).tolist() == [[[0.25, 0.75]]]


def _simulated_cues(law: SalienceLaw, n=600, raters=40, seed=0):
    """Targets drawn from a known tempered product: fitting must find the law again."""
    rng = np.random.default_rng(seed)
    f, c, p0 = (_dists(rng, (n, 2, 6)) for _ in range(3))
    x = rng.random(n)
    truth = bci.tempered_product(f, c, p0, *law.weights(x))
    counts = np.stack([rng.multinomial(raters, truth[i, d]) for i in range(n) for d in range(2)]).reshape(
        n, 2, 6).astype(float)
    return CueTable(item_ids=np.arange(n).astype(str).astype(object),
                    blocks=[Block("emotions", np.arange(6.0), f, c, p0, counts)]), x


def test_fit_recovers_a_planted_hard_law():
    planted = SalienceLaw.hard(subtle=(0.3, 1.5), expressive=(1.8, 0.4))
    cues, x = _simulated_cues(planted)
    fitted = bci.fit_law(cues, "product", "hard", x)
    assert np.exp(fitted.params) == pytest.approx(np.exp(planted.params), rel=0.2)
    assert bci.nll(cues, "product", fitted, x) < bci.nll(cues, "product", bci.fit_law(cues, "product", "control", x), x)


def test_fit_recovers_a_planted_logistic_slope_and_control_finds_none():
    planted = SalienceLaw.logistic(total=2.0, slope=6.0)
    cues, x = _simulated_cues(planted, seed=3)
    fitted = bci.fit_law(cues, "product", "logistic", x)
    assert fitted.params[2] == pytest.approx(6.0, abs=1.5)
    flat = SalienceLaw.control(1.2, 0.7)
    cues, x = _simulated_cues(flat, seed=4)
    fitted = bci.fit_law(cues, "product", "logistic", x)
    assert abs(fitted.params[2]) < 1.5
    wf, wc = fitted.weights(np.array([0.5]))
    assert (wf[0], wc[0]) == pytest.approx((1.2, 0.7), rel=0.15)


def test_fit_needs_targets():
    rng = np.random.default_rng(0)
    f = _dists(rng, (3, 1, 4))
    cues = CueTable(item_ids=np.array(["a", "b", "c"], dtype=object), blocks=[Block("emotions", np.arange(4.0), f, f, f)])
    with pytest.raises(ValueError, match="combined-condition"):
        bci.fit_law(cues, "product", "control", np.zeros(3))

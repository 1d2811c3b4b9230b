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


def _by_hand(f, c, p0, wf, wc):
    """The tempered product written out independently of bci: P ∝ P(e|f)^wf · P(e|c)^wc · P(e)^(1 - wf - wc)."""
    wf, wc = np.asarray(wf, float)[:, None, None], np.asarray(wc, float)[:, None, None]
    u = np.power(f, wf) * np.power(c, wc) * np.power(p0, 1.0 - wf - wc)
    return u / u.sum(axis=-1, keepdims=True)


def test_tempered_product_matches_the_formula_by_hand():
    rng = np.random.default_rng(2)
    f, c, p0 = (_dists(rng, (20, 2, 5)) for _ in range(3))
    wf, wc = rng.uniform(0.1, 2.5, 20), rng.uniform(0.1, 2.5, 20)
    assert np.allclose(bci.tempered_product(f, c, p0, wf, wc), _by_hand(f, c, p0, wf, wc))


def test_prediction_gives_the_face_its_own_weight():
    """A law that trusts the face (w_face 2, w_context 0.5) must not be applied the other way round."""
    rng = np.random.default_rng(3)
    f, c, p0 = (_dists(rng, (8, 1, 6)) for _ in range(3))
    cues = CueTable(item_ids=np.arange(8).astype(str).astype(object),
                    blocks=[Block("emotions", np.arange(6.0), f, c, p0)])
    law = SalienceLaw.control(2.0, 0.5)
    blocks, w = bci.predict(cues, "product", law, np.zeros(8))
    assert np.allclose(w, [[2.0, 0.5]] * 8)
    assert np.allclose(blocks["emotions"], _by_hand(f, c, p0, np.full(8, 2.0), np.full(8, 0.5)))
    assert not np.allclose(blocks["emotions"], _by_hand(f, c, p0, np.full(8, 0.5), np.full(8, 2.0)))
    pool, _ = bci.predict(cues, "pool", SalienceLaw.control(3.0, 1.0), np.zeros(8))
    assert np.allclose(pool["emotions"], 0.75 * f + 0.25 * c)


def _simulated_cues(law: SalienceLaw, n=600, raters=40, seed=0, rule="product"):
    """Targets drawn from a known combination written out by hand: fitting must find the law again."""
    rng = np.random.default_rng(seed)
    f, c, p0 = (_dists(rng, (n, 2, 6)) for _ in range(3))
    x = rng.random(n)
    wf, wc = law.weights(x)
    if rule == "product":
        truth = _by_hand(f, c, p0, wf, wc)
    else:
        s = (wf / (wf + wc))[:, None, None]
        truth = s * f + (1 - s) * c
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


def test_pool_is_fitted_in_face_share_alone():
    planted = SalienceLaw.hard(subtle=(1.0, 4.0), expressive=(4.0, 1.0))  # shares 0.2 and 0.8
    cues, x = _simulated_cues(planted, seed=5, rule="pool")
    fitted = bci.fit_law(cues, "pool", "hard", x)
    wf, wc = fitted.weights(x)
    assert np.allclose(wf + wc, 1.0)  # the total weight does nothing in a pool: fixed at 1, not left at a start
    hi = x > 0.5
    assert wf[~hi].mean() == pytest.approx(0.2, abs=0.04) and wf[hi].mean() == pytest.approx(0.8, abs=0.04)
    assert fitted.face_weight_gap(x) == pytest.approx(0.6, abs=0.06)  # a gap in face share
    control = bci.fit_law(cues, "pool", "control", x)
    assert np.allclose(np.sum(control.weights(x), axis=0), 1.0) and control.face_weight_gap(x) == 0.0
    flat, xf = _simulated_cues(SalienceLaw.control(3.0, 2.0), seed=6, rule="pool")  # share 0.6, no law
    logistic = bci.fit_law(flat, "pool", "logistic", xf)
    assert logistic.face_share(xf).mean() == pytest.approx(0.6, abs=0.03)
    assert abs(logistic.face_weight_gap(xf)) < 0.05


@pytest.mark.parametrize("objective", ["kld", "rmse"])
def test_other_objectives_recover_planted_weights(objective):
    planted = SalienceLaw.hard(subtle=(0.4, 1.5), expressive=(1.6, 0.5))
    cues, x = _simulated_cues(planted, seed=7, raters=200)
    fitted = bci.fit_law(cues, "product", "hard", x, objective=objective)
    assert np.exp(fitted.params) == pytest.approx(np.exp(planted.params), rel=0.25)
    assert bci.loss(cues, "product", fitted, x, objective) < bci.loss(cues, "product", SalienceLaw.plain(), x,
                                                                         objective)
    with pytest.raises(ValueError, match="unknown fit objective"):
        bci.loss(cues, "product", fitted, x, "accuracy")

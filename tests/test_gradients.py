"""The fits' analytic gradients (vlm_salience.gradients) against finite differences of bci.loss, on random inputs:
every law kind, both rules with weights (product, pool), every objective (likelihood, KLD, RMSE), on rating,
choice and valence blocks. The objective itself must be bci.loss's to rounding (1e-12 relative)."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_salience import bci, gradients
from vlm_salience.cue_models import Block, CueTable
from vlm_salience.salience import SalienceLaw

KINDS = ["control", "hard", "logistic", "reliability", "per_emotion", "learned"]
E, S, N = 4, 6, 30


def _dists(rng, shape):
    g = rng.gamma(0.8, size=shape) + 0.02
    return g / g.sum(axis=-1, keepdims=True)


def _counts(rng, shape):
    t = rng.poisson(3.0, size=shape).astype(float)
    t[:3] = 0.0  # cells with no judgements: the cell objectives skip them
    return t


def _table(rng, layout: str) -> CueTable:
    """ratings: emotions as rating dimensions (n, E, S) beside a valence block; choice: one choice over E labels
    beside valence; emotions: ratings alone (a per-emotion law then fits jointly)."""
    if layout == "choice":
        emo = Block("emotions", np.arange(float(E)), *(_dists(rng, (N, 1, E)) for _ in range(3)),
                    _counts(rng, (N, 1, E)), categorical=True)
    else:
        emo = Block("emotions", np.arange(1.0, S + 1.0), *(_dists(rng, (N, E, S)) for _ in range(3)),
                    _counts(rng, (N, E, S)))
    blocks = [emo]
    if layout != "emotions":
        blocks.append(Block("valence", np.linspace(-1.0, 1.0, S), *(_dists(rng, (N, 1, S)) for _ in range(3)),
                            _counts(rng, (N, 1, S))))
    return CueTable(item_ids=np.arange(N), blocks=blocks)


def _law(rng, kind: str, cues: CueTable):
    """A random law of `kind` and its covariates."""
    x = rng.uniform(0.0, 1.0, N)
    scale: tuple[float, ...] = ()
    if kind == "reliability":
        cov = np.column_stack([x, rng.normal(0.0, 1.0, N)])
    elif kind == "learned":
        cov = np.column_stack([x, rng.normal(0.0, 1.0, N), rng.uniform(0.5, 2.0, N)])
        scale = (*cov.mean(axis=0), *cov.std(axis=0))
    else:
        cov = x
    size = bci.law_size(cues, kind, cov)
    theta = rng.normal(0.0, 0.6, SalienceLaw.n_params(kind, size))
    return SalienceLaw.from_vector(kind, theta, 0.5, scale), cov


def _numeric_grad(f, theta, h=1e-6):
    g = np.zeros_like(theta)
    for j in range(len(theta)):
        up, dn = theta.copy(), theta.copy()
        up[j] += h
        dn[j] -= h
        g[j] = (f(up) - f(dn)) / (2 * h)
    return g


@pytest.mark.parametrize("layout", ["ratings", "choice", "emotions"])
@pytest.mark.parametrize("objective", bci.OBJECTIVES)
@pytest.mark.parametrize("rule", ["product", "pool"])
@pytest.mark.parametrize("kind", KINDS)
def test_analytic_gradient_matches_finite_differences(kind, rule, objective, layout):
    rng = np.random.default_rng(hash((kind, rule, objective, layout)) % 2 ** 32)
    cues = _table(rng, layout)
    prep = gradients.prepare(cues, objective, [bci.emotion_axis(b) for b in cues.blocks])
    for _ in range(2):
        law, cov = _law(rng, kind, cues)
        value, grad = gradients.loss_and_grad(prep, rule, law, cov)
        want = bci.loss(cues, rule, law, cov, objective)
        assert value == pytest.approx(want, rel=1e-12, abs=0), "the objective must be bci.loss's"

        def f(theta, law=law, cov=cov):
            return bci.loss(cues, rule, SalienceLaw.from_vector(kind, theta, law.threshold, law.scale), cov,
                            objective)
        num = _numeric_grad(f, np.asarray(law.params))
        assert np.abs(num).max() > 1e-6  # the loss does move with the parameters
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8 * max(1.0, np.abs(num).max()))


@pytest.mark.parametrize("kind", ["control", "hard", "logistic", "reliability", "per_emotion", "learned"])
def test_pool_parameter_map_jacobian(kind, monkeypatch):
    """The pool's fitted vector (face-share logits) -> the law's vector: its Jacobian by finite differences."""
    rng = np.random.default_rng(3)
    n = bci._pool_n(kind, 3)
    phi = rng.normal(0.0, 1.0, n)
    jac = bci._pool_theta_jacobian(kind, phi)
    num = np.column_stack([(bci._pool_theta(kind, phi + h) - bci._pool_theta(kind, phi - h)) / 2e-6
                           for h in np.eye(n) * 1e-6])
    np.testing.assert_allclose(jac, num, rtol=1e-6, atol=1e-9)
    monkeypatch.setattr(bci, "POOL_JACOBIAN_KINDS", ())  # a kind without formulas: differenced
    np.testing.assert_allclose(bci._pool_theta_jacobian(kind, phi), jac, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_a_kind_without_a_formula_falls_back_to_differencing_the_weight_map(kind, monkeypatch):
    """A law kind the Jacobian table does not know (one added later) still gets its gradient, from central
    differences of its cheap weight map; it agrees with the formulas."""
    rng = np.random.default_rng(4)
    cues = _table(rng, "ratings")
    law, cov = _law(rng, kind, cues)
    exact = gradients.weights_jacobian(law, cov)
    monkeypatch.setattr(gradients, "ANALYTIC_KINDS", ())
    approx = gradients.weights_jacobian(law, cov)
    for a, b in zip(exact, approx):
        np.testing.assert_allclose(np.broadcast_to(a, b.shape), b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("objective", bci.OBJECTIVES)
def test_fits_reach_the_optimum_of_the_numeric_fit(objective):
    """The analytic-gradient fit and a numerically differenced fit of the same objective agree at optimiser
    tolerance (the objective at the analytic fit is no worse)."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(5)
    cues = _table(rng, "ratings")
    x = rng.uniform(0.0, 1.0, N)
    law = bci.fit_law(cues, "product", "logistic", x, objective=objective)

    def f(theta):
        return (bci.loss(cues, "product", SalienceLaw.from_vector("logistic", theta), x, objective)
                + 1e-4 * float(np.sum((theta - SalienceLaw.initial("logistic")) ** 2)))
    best = min((minimize(f, s0, method="L-BFGS-B", bounds=SalienceLaw.bounds("logistic"))
                for s0 in (SalienceLaw.initial("logistic") + np.array([0, 0, d]) for d in (0.0, -6.0, 6.0))),
               key=lambda r: r.fun)
    assert f(np.asarray(law.params)) <= best.fun + 1e-7


@pytest.mark.parametrize("rule", ["product", "pool"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_warm_start_is_the_init_and_reaches_the_cold_fit(kind, rule):
    """A refit's start (`bci.warm_start`) is its init law's own vector (a pool's share logits map back onto the
    law), and a fit started there reaches the optimum the cold fit reaches."""
    rng = np.random.default_rng(6)
    cues = _table(rng, "emotions")
    _, cov = _law(rng, kind, cues)
    cold = bci.fit_law(cues, rule, kind, cov, prior_sd=1.0)
    size = bci.law_size(cues, kind, cov)
    bounds = (SalienceLaw.bounds(kind, size) if rule == "product" else
              [(-8.0, 8.0)] * bci._pool_n(kind, size) if kind in ("control", "hard", "per_emotion") else
              SalienceLaw.bounds(kind, size)[1:])
    phi = bci.warm_start(rule, kind, cold, bounds)
    theta = phi if rule == "product" else bci._pool_theta(kind, phi)
    np.testing.assert_allclose(theta, cold.params, atol=1e-12)
    assert bci.warm_start(rule, kind, None, bounds) is None
    assert bci.warm_start(rule, kind, SalienceLaw.plain(), bounds) is None  # another kind's fit: a cold start
    nudged = SalienceLaw.from_vector(kind, np.asarray(cold.params) + 0.05 * (np.arange(len(cold.params)) % 2),
                                     cold.threshold, cold.scale)
    warm = bci.fit_law(cues, rule, kind, cov, prior_sd=1.0, init=nudged)
    np.testing.assert_allclose(warm.params, cold.params, atol=2e-4)

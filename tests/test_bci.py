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


# -- per-emotion weights (issue 16): (items, emotions) through the one code path ---------------------------------

def test_per_emotion_weights_go_on_the_emotion_axis_by_hand(monkeypatch):
    rng = np.random.default_rng(5)
    n, E, S = 30, 4, 6
    f, c, p0 = (_dists(rng, (n, E, S)) for _ in range(3))
    wf, wc = rng.uniform(0.2, 2.0, (n, E)), rng.uniform(0.2, 2.0, (n, E))
    got = bci.tempered_product(f, c, p0, wf, wc, emotion_axis=1)  # ratings: emotion e is dimension e
    for e in range(E):
        assert np.allclose(got[:, e:e + 1], _by_hand(f[:, e:e + 1], c[:, e:e + 1], p0[:, e:e + 1], wf[:, e], wc[:, e]))
    monkeypatch.setattr(bci, "CHUNK", 7)
    assert np.allclose(bci.tempered_product(f, c, p0, wf, wc, emotion_axis=1), got)
    # a choice: emotion k is support point k, P(k) ∝ f_k^wf_k c_k^wc_k p0_k^(1 - wf_k - wc_k)
    fc, cc, pc = (_dists(rng, (n, 1, E)) for _ in range(3))
    u = fc[:, 0] ** wf * cc[:, 0] ** wc * pc[:, 0] ** (1 - wf - wc)
    assert np.allclose(bci.tempered_product(fc, cc, pc, wf, wc, emotion_axis=2)[:, 0], u / u.sum(1, keepdims=True))
    # a block without emotions (valence) gets the geometric mean pair over emotions
    g_f, g_c = np.exp(np.log(wf).mean(1)), np.exp(np.log(wc).mean(1))
    assert np.allclose(bci.tempered_product(fc, cc, pc, wf, wc), _by_hand(fc, cc, pc, g_f, g_c))
    with pytest.raises(ValueError, match="per-emotion weights for 4 emotions"):
        bci.tempered_product(f[:, :, :3], c[:, :, :3], p0[:, :, :3], wf, wc, emotion_axis=2)


def test_per_emotion_pool_renormalises_over_a_choice():
    f, c = np.array([[[0.8, 0.2]]]), np.array([[[0.2, 0.8]]])
    share = np.array([[1.0, 0.0]])  # label 0 from the face, label 1 from the context
    got = bci.linear_pool(f, c, share, emotion_axis=2)
    assert np.allclose(got, [[[0.5, 0.5]]])  # (0.8, 0.8) renormalised
    rated = bci.linear_pool(np.array([[[1.0, 0.0], [1.0, 0.0]]]), np.array([[[0.0, 1.0], [0.0, 1.0]]]),
                            np.array([[0.25, 0.75]]), emotion_axis=1)
    assert np.allclose(rated, [[[0.25, 0.75], [0.75, 0.25]]])


def _emotion_table(rng, n=300, E=5, S=7, m=60):
    f, c = _dists(rng, (n, E, S)), _dists(rng, (n, E, S))
    p0 = np.full((n, E, S), 1.0 / S)
    return f, c, p0


def test_fit_recovers_planted_per_emotion_weights():
    """Targets from the formula by hand; the fit (weak prior) recovers every emotion's pair within 15%."""
    rng = np.random.default_rng(6)
    f, c, p0 = _emotion_table(rng)
    wf_e, wc_e = np.array([2.0, 0.5, 1.0, 1.5, 0.7]), np.array([0.5, 1.8, 1.0, 0.6, 1.2])
    n = len(f)
    p = np.concatenate([_by_hand(f[:, e:e + 1], c[:, e:e + 1], p0[:, e:e + 1], np.full(n, wf_e[e]),
                                 np.full(n, wc_e[e])) for e in range(5)], axis=1)
    targets = np.stack([[rng.multinomial(60, q) for q in row] for row in p]).astype(float)
    cues = CueTable(item_ids=np.arange(n), blocks=[Block("emotions", np.arange(1.0, 8.0), f, c, p0, targets)])
    law = bci.fit_law(cues, "product", "per_emotion", np.full(n, 0.5), prior_sd=2.0)
    wf, wc = law.emotion_pairs()
    assert wf == pytest.approx(wf_e, rel=0.15) and wc == pytest.approx(wc_e, rel=0.15)
    control = bci.fit_law(cues, "product", "control", np.full(n, 0.5))
    assert bci.nll(cues, "product", law, np.full(n, 0.5)) < bci.nll(cues, "product", control, np.full(n, 0.5))
    # a tight prior shrinks every emotion onto the global pair: the control's fit
    tight = bci.fit_law(cues, "product", "per_emotion", np.full(n, 0.5), prior_sd=1e-3).emotion_pairs()
    assert np.ptp(tight[0]) < 0.02 and np.ptp(tight[1]) < 0.02
    assert tight[0].mean() == pytest.approx(control.describe()["w_face"], rel=0.03)


def _two_block_table(rng, n=400, E=5, S=7, m=40):
    """A choice block of E emotions and a valence block whose targets follow different constant pairs (emotions
    (1.6, 0.6), valence (0.3, 1.4)): no law, but blocks that one control pair must compromise between."""
    fe, ce, pe = (_dists(rng, (n, 1, E)) for _ in range(3))
    fv, cv, pv = (_dists(rng, (n, 1, S)) for _ in range(3))
    te = bci.tempered_product(fe, ce, pe, np.full(n, 1.6), np.full(n, 0.6))
    tv = bci.tempered_product(fv, cv, pv, np.full(n, 0.3), np.full(n, 1.4))
    draw = lambda p: np.stack([[rng.multinomial(m, q) for q in row] for row in p]).astype(float)  # noqa: E731
    return CueTable(item_ids=np.arange(n), blocks=[
        Block("emotions", np.arange(float(E)), fe, ce, pe, draw(te), categorical=True),
        Block("valence", np.arange(1.0, S + 1.0), fv, cv, pv, draw(tv))])


@pytest.mark.parametrize("rule", ["product", "pool"])
def test_per_emotion_law_is_nested_in_its_control_and_predicts_valence_as_it_does(rule):
    """Fitted jointly, a per-emotion law's global pair (all that valence reads) was free to serve valence while
    its deviations served the emotions, escaping the control's compromise between the blocks: with no law it beat
    the control on valence (pool_per_emotion, law-off corpus). Nested, its global pair is the control's fit, so
    valence is predicted exactly as the control predicts it, and only the emotions differ."""
    rng = np.random.default_rng(7)
    cues = _two_block_table(rng)
    x = np.full(len(cues.item_ids), 0.5)
    control = bci.fit_law(cues, rule, "control", x)
    law = bci.fit_law(cues, rule, "per_emotion", x, prior_sd=2.0)
    assert law.params[:2] == pytest.approx(control.params, abs=1e-12)
    got, want = bci.predict(cues, rule, law, x)[0], bci.predict(cues, rule, control, x)[0]
    assert np.allclose(got["valence"], want["valence"], atol=1e-12, rtol=0)
    assert np.abs(got["emotions"] - want["emotions"]).max() > 1e-3  # the emotions' deviations did fit
    b = cues.block("valence")
    if rule == "pool":  # the pool's valence reads the global pair's share, not the emotions' mean share
        s = control.face_share(x[:1])[0]
        assert np.allclose(got["valence"], s * b.face + (1 - s) * b.context)
    with pytest.raises(ValueError, match="need the block's emotion axis"):
        bci.linear_pool(b.face, b.context, np.full((len(x), 5), 0.5))


def test_nested_per_emotion_fit_is_the_map_of_all_blocks_given_the_control_pair():
    """Fitting the deviations on the emotion blocks alone is the MAP of the whole objective (valence does not move
    with them), provided the prior is scaled by what the emotion blocks average over; scaled by every block's
    judgements it would weigh half as much and shrink less."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(8)
    cues = _two_block_table(rng)
    x, sd = np.full(len(cues.item_ids), 0.5), 0.05
    for rule in ("product", "pool"):
        law = bci.fit_law(cues, rule, "per_emotion", x, prior_sd=sd)
        head = np.asarray(bci.fit_law(cues, rule, "control", x).params)
        E = 5
        prior = 1.0 / (2 * sd ** 2 * bci._n_obs(cues, "likelihood"))

        def full(dev, rule=rule, head=head):
            tail = np.concatenate([dev, np.zeros(E)]) if rule == "pool" else dev
            trial = SalienceLaw.from_vector("per_emotion", np.concatenate([head, tail]))
            return bci.nll(cues, rule, trial, x) + prior * float(np.sum(dev ** 2))
        n_dev = E if rule == "pool" else 2 * E
        ref = minimize(full, np.zeros(n_dev), method="L-BFGS-B").x
        tail = np.concatenate([ref, np.zeros(E)]) if rule == "pool" else ref
        want = SalienceLaw.from_vector("per_emotion", np.concatenate([head, tail])).face_share(x[:1])[0]
        got = law.face_share(x[:1])[0]
        assert np.ptp(want) > 0.02  # the prior leaves the emotions apart, so its strength shows
        assert got == pytest.approx(want, abs=2e-3), (rule, got, want)


def test_per_emotion_fit_stays_joint_where_every_block_carries_emotions():
    """With no valence block there is nothing to escape to: the global pair is fitted with the deviations, and
    fits better than centring the emotions on the control's pair (the product is not linear in the weights)."""
    rng = np.random.default_rng(6)
    f, c, p0 = _emotion_table(rng)
    n = len(f)
    wf_e, wc_e = np.array([2.5, 1.2, 1.0, 1.8, 0.9]), np.array([0.4, 1.6, 1.0, 0.5, 1.1])
    p = np.concatenate([_by_hand(f[:, e:e + 1], c[:, e:e + 1], p0[:, e:e + 1], np.full(n, wf_e[e]),
                                 np.full(n, wc_e[e])) for e in range(5)], axis=1)
    targets = np.stack([[rng.multinomial(60, q) for q in row] for row in p]).astype(float)
    cues = CueTable(item_ids=np.arange(n), blocks=[Block("emotions", np.arange(1.0, 8.0), f, c, p0, targets)])
    x = np.full(n, 0.5)
    joint = bci.fit_law(cues, "product", "per_emotion", x, prior_sd=2.0)
    nested = bci._fit_per_emotion(cues, "product", x, threshold=0.5, ridge=1e-4, objective="likelihood",
                                  prior_sd=2.0)
    control = bci.fit_law(cues, "product", "control", x)
    assert not np.allclose(joint.params[:2], control.params, atol=1e-3)
    assert bci.nll(cues, "product", joint, x) < bci.nll(cues, "product", nested, x) - 1e-4

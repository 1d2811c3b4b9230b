"""Salience laws: the one mapping from expressivity to cue weights."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_salience.salience import LAW_KINDS, SalienceLaw

X = np.linspace(0, 1, 11)


def test_plain_is_bci_and_control_is_constant():
    wf, wc = SalienceLaw.plain().weights(X)
    assert np.all(wf == 1) and np.all(wc == 1)
    wf, wc = SalienceLaw.control(0.5, 2.0).weights(X)
    assert np.allclose(wf, 0.5) and np.allclose(wc, 2.0)


def test_hard_switches_at_the_threshold():
    law = SalienceLaw.hard(subtle=(0.3, 1.7), expressive=(1.6, 0.4), threshold=0.5)
    wf, wc = law.weights(np.array([0.2, 0.5, 0.50001, 0.9]))
    assert wf.tolist() == pytest.approx([0.3, 0.3, 1.6, 1.6])
    assert wc.tolist() == pytest.approx([1.7, 1.7, 0.4, 0.4])
    assert law.is_expressive(np.array([0.5, 0.51])).tolist() == [False, True]


def test_logistic_is_monotone_with_constant_total_and_nests_the_control():
    law = SalienceLaw.logistic(total=2.0, slope=8.0)
    wf, wc = law.weights(X)
    assert np.all(np.diff(wf) > 0) and np.all(np.diff(wc) < 0)
    assert np.allclose(wf + wc, 2.0)
    assert wf[5] == pytest.approx(1.0)  # share 1/2 at the threshold with alpha = 0
    flat = SalienceLaw.logistic(total=3.0, slope=0.0, alpha=np.log(2.0))
    wf, wc = flat.weights(X)
    assert np.allclose(wf, 2.0) and np.allclose(wc, 1.0)


def test_face_share_and_gap():
    law = SalienceLaw.hard(subtle=(1.0, 3.0), expressive=(3.0, 1.0))
    assert law.face_share(np.array([0.1, 0.9])).tolist() == pytest.approx([0.25, 0.75])
    assert law.face_weight_gap(np.array([0.1, 0.2, 0.8])) == pytest.approx(2.0)
    assert np.isnan(law.face_weight_gap(np.array([0.1, 0.2])))  # no expressive item: undefined


@pytest.mark.parametrize("kind", LAW_KINDS)
def test_vector_round_trip_and_bounds(kind):
    theta = SalienceLaw.initial(kind)
    assert len(theta) == SalienceLaw.n_params(kind) == len(SalienceLaw.bounds(kind))
    law = SalienceLaw.from_vector(kind, theta)
    wf, wc = law.weights(X)
    assert np.allclose(wf, 1.0) and np.allclose(wc, 1.0)  # every fit starts at plain BCI
    assert law.describe()["kind"] == kind


def test_wrong_parameter_count_is_rejected():
    with pytest.raises(ValueError, match="takes 2 parameters"):
        SalienceLaw("control", (0.0,))
    with pytest.raises(ValueError, match="unknown salience law"):
        SalienceLaw("sigmoid", ())


def test_per_emotion_and_learned_laws_by_hand_and_from_plain_bci():
    law = SalienceLaw.per_emotion([2.0, 0.5], [0.5, 2.0])
    wf, wc = law.weights(np.array([0.1, 0.9, 0.5]))
    assert wf.shape == (3, 2) and np.allclose(wf, [[2.0, 0.5]] * 3) and np.allclose(wc, [[0.5, 2.0]] * 3)
    assert law.describe()["w_face"] == pytest.approx(1.0)  # the global pair is the geometric mean
    assert law.share_spread(np.array([0.1, 0.9])) == pytest.approx(0.3)  # shares 0.8 and 0.2
    g = SalienceLaw.learned(total=2.0, intercept=0.0, coef=[1.0, -1.0], mean=[0.5, 0.0], sd=[0.25, 2.0])
    cov = np.array([[0.75, 0.0], [0.5, 2.0]])  # standardised: (1, 0) and (0, 1)
    wf, wc = g.weights(cov)
    s = 1 / (1 + np.exp(-np.array([1.0, -1.0])))
    assert wf == pytest.approx(2 * s) and wc == pytest.approx(2 * (1 - s))
    for kind, size in (("per_emotion", 3), ("learned", 2)):
        theta = SalienceLaw.initial(kind, size)
        assert len(theta) == SalienceLaw.n_params(kind, size) == len(SalienceLaw.bounds(kind, size))
        scale = (0.0, 0.0, 1.0, 1.0) if kind == "learned" else ()
        wf, wc = SalienceLaw.from_vector(kind, theta, scale=scale).weights(np.zeros((4, 2)))
        assert np.allclose(wf, 1.0) and np.allclose(wc, 1.0)  # every fit starts at plain BCI
    with pytest.raises(ValueError, match="2 \\+ 2 x n_emotions"):
        SalienceLaw("per_emotion", (0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="2 \\+ k parameters"):
        SalienceLaw("learned", (0.0, 0.0, 1.0), scale=(0.0, 0.0, 1.0, 1.0))

"""Calibrating routed experts on the validation split: planted scale differences recovered, no harm where there is
none, and the fit touches the validation items only. Prediction arrays directly (no LoRA training: fast)."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_salience.calibration import fit_expert, fit_temperature, mix_valence, select_rows, temper
from vlm_salience.metrics import kl_per_item, pearson
from vlm_salience.predictions import Predictions
from vlm_salience.training.config import CalibrationConfig, RoutingConfig
from vlm_salience.training.routing import calibrate_hard, fit_calibrations

LABELS = ("happy", "sad", "angry")


def _pred(name, ids, valence, dist) -> Predictions:
    return Predictions(method=name, item_ids=np.asarray(ids, dtype=object), labels=LABELS,
                       emotion_dist=np.asarray(dist, float), valence=np.asarray(valence, float),
                       error=np.array([""] * len(ids), dtype=object))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _world(face_scale=(2.0, 3.0), ctx_scale=(0.5, -1.0), face_t=3.0, ctx_t=0.5, n=400, seed=0):
    """Observed valence v and labels softmax(z); the face expert says a*v + b with labels softmax(face_t z), the
    context expert likewise. Items 0..n/2-1 are validation, the rest test; half the faces are expressive."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"i{k}" for k in range(n)], dtype=object)
    v = rng.normal(size=n)
    z = rng.normal(size=(n, 3))
    obs = _pred("observed", ids, v, _softmax(z))
    face = _pred("adapter/face", ids, face_scale[0] * v + face_scale[1] + rng.normal(0, 0.1, n), _softmax(z * face_t))
    ctx = _pred("adapter/context", ids, ctx_scale[0] * v + ctx_scale[1] + rng.normal(0, 0.05, n), _softmax(z * ctx_t))
    to_face = rng.random(n) < 0.5
    val, test = np.arange(n // 2), np.arange(n // 2, n)
    return obs, face, ctx, to_face, val, test


def _routed(cal: CalibrationConfig, obs, face, ctx, to_face, val, test):
    cals = fit_calibrations(cal, {"face": face.take(val), "context": ctx.take(val)}, obs, obs.item_ids[val],
                            to_face[val])
    hard = select_rows(face.take(test), ctx.take(test), to_face[test], "routed/hard")
    return hard, calibrate_hard(hard, to_face[test], cals["face"], cals["context"]), cals


def _scores(pred: Predictions, obs: Predictions) -> tuple[float, float]:
    o = obs.align(pred.item_ids)
    return pearson(pred.valence, o.valence), float(kl_per_item(o.emotion_dist, pred.emotion_dist).mean())


def test_temperature_recovers_a_planted_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 4))
    truth = _softmax(z)
    for t in (0.25, 1.0, 3.0):
        assert fit_temperature(_softmax(z * t), truth) == pytest.approx(t, rel=1e-2)  # softmax(t z)^(1/t)
    assert np.allclose(temper(_softmax(z * 3.0), 3.0), truth, atol=1e-6)


@pytest.mark.parametrize("valence", ["isotonic", "linear"])
def test_calibration_recovers_the_order_hard_routing_loses_between_two_scales(valence):
    obs, face, ctx, to_face, val, test = _world()
    hard, hard_cal, cals = _routed(CalibrationConfig(valence=valence), obs, face, ctx, to_face, val, test)
    r_face, _ = _scores(face.take(test), obs)
    r_ctx, _ = _scores(ctx.take(test), obs)
    r_hard, kld_hard = _scores(hard, obs)
    r_cal, kld_cal = _scores(hard_cal, obs)
    assert r_face > 0.99 and r_ctx > 0.99  # each expert alone keeps the order ...
    assert r_hard < 0.6  # ... their mixture does not: offsets +3 and -1 put two scales in one column
    assert r_cal > 0.98  # calibrated on validation, one scale again
    assert np.mean((hard_cal.valence - obs.take(test).valence) ** 2) < 0.05  # noise var ~0.01, steps
    # the labels: the face expert was over-confident (T 3), the context one under-confident (T 0.5)
    assert cals["face"].temperature == pytest.approx(3.0, rel=2e-2)
    assert cals["context"].temperature == pytest.approx(0.5, rel=2e-2)
    assert kld_hard > 0.1 and kld_cal < 1e-3
    if valence == "linear":  # v = (y - 3) / 2 and v = (y + 1) / 0.5
        s = cals["face"].summary()
        assert s["slope"] == pytest.approx(0.5, abs=0.01) and s["intercept"] == pytest.approx(-1.5, abs=0.03)
        s = cals["context"].summary()
        assert s["slope"] == pytest.approx(2.0, abs=0.05) and s["intercept"] == pytest.approx(2.0, abs=0.05)
    else:
        assert cals["face"].summary()["isotonic_knots"] > 10
    before, after = cals["face"].validation["before"], cals["face"].validation["after"]
    assert after["valence_mse"] < before["valence_mse"] / 100 and after["kld"] < before["kld"]


@pytest.mark.parametrize("valence", ["isotonic", "linear"])
def test_calibration_does_not_hurt_where_the_experts_share_one_scale(valence):
    obs, face, ctx, to_face, val, test = _world(face_scale=(1.0, 0.0), ctx_scale=(1.0, 0.0), face_t=1.0, ctx_t=1.0)
    rng = np.random.default_rng(5)  # noisier experts, so that there is something to lose
    face.valence = face.valence + rng.normal(0, 0.5, len(face))
    ctx.valence = ctx.valence + rng.normal(0, 0.5, len(ctx))
    hard, hard_cal, cals = _routed(CalibrationConfig(valence=valence), obs, face, ctx, to_face, val, test)
    r_hard, kld_hard = _scores(hard, obs)
    r_cal, kld_cal = _scores(hard_cal, obs)
    assert 0.8 < r_hard < 0.95
    assert r_cal > r_hard - 0.02  # no gain was planted; calibration costs at most a little r
    assert kld_cal < kld_hard + 0.005
    for c in cals.values():
        assert c.temperature == pytest.approx(1.0, abs=0.02)


def test_the_fit_uses_the_validation_items_and_nothing_else():
    obs, face, ctx, to_face, val, test = _world()
    cfg = CalibrationConfig()
    vids = obs.item_ids[val]
    _, cal_test, cals = _routed(cfg, obs, face, ctx, to_face, val, test)
    for c in cals.values():
        assert list(c.fit_item_ids) == list(vids)
    # test answers handed to the fit (the planted bug) are refused ...
    with pytest.raises(ValueError, match="not on the validation items"):
        fit_calibrations(cfg, {"face": face.take(test), "context": ctx.take(test)}, obs, vids, to_face[val])
    # ... and what the test items observed cannot move the fit: turn their valence and labels upside down
    flipped = obs.take(np.arange(len(obs)))
    flipped.valence = flipped.valence.copy()
    flipped.valence[test] = -10 * flipped.valence[test]
    flipped.emotion_dist = flipped.emotion_dist.copy()
    flipped.emotion_dist[test] = flipped.emotion_dist[test][:, ::-1]
    _, cal_flip, cals_flip = _routed(cfg, flipped, face, ctx, to_face, val, test)
    for role in cals:
        assert cals_flip[role].temperature == cals[role].temperature
        assert cals_flip[role].validation == cals[role].validation
    assert np.array_equal(cal_flip.valence, cal_test.valence)
    assert np.array_equal(cal_flip.emotion_dist, cal_test.emotion_dist)


def test_fit_on_routed_fits_each_expert_on_the_faces_it_gets():
    obs, face, ctx, to_face, val, test = _world()
    cals = fit_calibrations(CalibrationConfig(fit_on="routed"), {"face": face.take(val), "context": ctx.take(val)},
                            obs, obs.item_ids[val], to_face[val])
    assert list(cals["face"].fit_item_ids) == list(obs.item_ids[val][to_face[val]])
    assert list(cals["context"].fit_item_ids) == list(obs.item_ids[val][~to_face[val]])


def test_failed_items_are_left_out_of_the_fit_and_stay_failed():
    obs, face, ctx, to_face, val, test = _world()
    face.error = face.error.copy()
    face.error[[0, 1]] = "timeout"
    face.emotion_dist = face.emotion_dist.copy()
    face.emotion_dist[[0, 1]] = np.nan
    face.valence = face.valence.copy()
    face.valence[[0, 1]] = np.nan
    cal = fit_expert(face.take(val), obs, expert="face")
    assert len(cal.fit_item_ids) == len(val) - 2 and "i0" not in set(cal.fit_item_ids)
    out = cal.apply(face.take(val))
    assert np.isnan(out.valence[:2]).all() and np.isnan(out.emotion_dist[:2]).all() and out.error[0] == "timeout"


def test_mixed_valence_is_the_weighted_mean_and_the_switch_turns_off():
    w = np.array([[1.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
    assert np.allclose(mix_valence([1.0, 1.0, 1.0], [3.0, 3.0, 3.0], w), [2.0, 1.5, 3.0])
    off = RoutingConfig(calibration="none").calibration
    assert not off.enabled and CalibrationConfig().enabled


def test_the_report_section_shows_each_experts_fit():
    from vlm_salience.calibration import calibration_markdown

    obs, face, ctx, to_face, val, test = _world()
    _, _, cals = _routed(CalibrationConfig(), obs, face, ctx, to_face, val, test)
    extra = {"calibration": {"valence": "isotonic", "labels": "temperature", "fit_on": "all",
                             "validation_items": len(val), "experts": {k: c.summary() for k, c in cals.items()}}}
    text = "\n".join(calibration_markdown(extra))
    assert f"{cals['face'].temperature:.3f}" in text and f"{cals['context'].temperature:.3f}" in text
    assert "| face | 200 |" in text and calibration_markdown({}) == []

"""Metrics and bootstrap tests."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_salience import metrics, stats
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
    label_metrics = [m for m in metrics.METRICS if m != "rating_kld"]  # a choice corpus has no rating scale
    for name in label_metrics:
        lo, hi = s[name]["ci95"]
        assert lo < s[name]["value"] < hi and hi - lo > 1e-3, name  # an interval that collapsed fails here
    assert s["rating_kld"]["value"] is None or np.isnan(s["rating_kld"]["value"])
    assert set(s["per_emotion"]) == {"e0", "e1", "e2", "e3"}
    cmp = metrics.paired_bootstrap(good, bad, obs, n_boot=300)
    assert all(cmp[m]["a_better"] for m in label_metrics)
    assert all(cmp[m]["ci95"][1] - cmp[m]["ci95"][0] > 0 for m in label_metrics)
    same = metrics.paired_bootstrap(good, good, obs, n_boot=300)
    assert not any(same[m]["a_better"] for m in metrics.METRICS)


def test_grouped_intervals_are_wider_where_items_of_a_group_share_their_error():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(20), 10)
    d = rng.dirichlet(np.ones(4), size=200)
    obs = _pred("observed", d, rng.normal(size=200))
    shift = rng.normal(0, 1.0, 20)[g]  # a per-group error: the items of a group are not independent
    pred = _pred("p", d, obs.valence + shift + rng.normal(0, 0.1, 200))
    s_items = metrics.score(pred, obs, n_boot=400)
    s_groups = metrics.score(pred, obs, n_boot=400, groups=g)
    width = {k: v["valence_mse"]["ci95"][1] - v["valence_mse"]["ci95"][0] for k, v in
             (("items", s_items), ("groups", s_groups))}
    assert width["groups"] > 2 * width["items"] > 0


def test_kld_direction_on_hand_computed_values():
    # KL(obs || pred) for obs (0.8, 0.2), pred (0.5, 0.5): 0.8 ln 1.6 + 0.2 ln 0.4 = 0.19274;
    # the reverse, KL(pred || obs), is 0.5 ln 0.625 + 0.5 ln 2.5 = 0.22314
    obs = _pred("observed", np.array([[0.8, 0.2], [0.8, 0.2]]), np.zeros(2))
    pred = _pred("p", np.array([[0.5, 0.5], [0.5, 0.5]]), np.zeros(2))
    assert metrics.score(pred, obs, n_boot=10)["kld"]["value"] == pytest.approx(0.19274, abs=1e-4)
    # rating KLD: per emotion over the scale, averaged over emotions (emotion 2's is 0)
    obs.rating_dist = np.array([[[0.8, 0.2], [0.5, 0.5]]] * 2)
    pred.rating_dist = np.array([[[0.5, 0.5], [0.5, 0.5]]] * 2)
    assert metrics.score(pred, obs, n_boot=10)["rating_kld"]["value"] == pytest.approx(0.19274 / 2, abs=1e-4)


def test_two_way_cluster_bootstrap_resamples_both_factors():
    rows, cols = np.repeat(np.arange(10), 10), np.tile(np.arange(10), 10)
    w = metrics.resample_weights(100, 200, seed=0, groups=rows, crossed=cols)
    # an item's weight is (times its row was drawn) x (times its column was drawn)
    a = w[1:].reshape(200, 10, 10)
    # (a rank-one table per resample: total x a = outer(row sums, column sums))
    total = a.sum(axis=(1, 2))[:, None, None]
    assert np.allclose(a * total, a.sum(axis=2)[:, :, None] * a.sum(axis=1)[:, None, :])
    assert np.allclose(total, 100, rtol=0.9)  # the expected total is n; any one draw varies
    one_way = metrics.resample_weights(100, 200, seed=0, groups=rows)[1:].reshape(200, 10, 10)
    assert np.all(one_way == one_way[:, :, :1])  # one-way: every column of a drawn row counts alike
    assert not np.all(a == a[:, :, :1])  # two-way: columns are drawn too
    # items sharing a column are dependent: the two-way interval of a column effect is wider
    rng = np.random.default_rng(0)
    d = rng.dirichlet(np.ones(3), size=100)
    obs = _pred("observed", d, rng.normal(size=100))
    pred = _pred("p", d, obs.valence + rng.normal(0, 1.0, 10)[cols] + rng.normal(0, 0.1, 100))
    one = metrics.score(pred, obs, n_boot=400, groups=rows)["valence_mse"]["ci95"]
    two = metrics.score(pred, obs, n_boot=400, groups=rows, crossed=cols)["valence_mse"]["ci95"]
    assert two[1] - two[0] > 2 * (one[1] - one[0])


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


# -- classification metrics for video ------------------------------------------------------------------------

# On paper: true 0,0,0,1,1,2 / predicted 0,0,1,1,0,2.
# confusion rows (true) -> [2,1,0], [1,1,0], [0,0,1]; recalls 2/3, 1/2, 1; UAR 13/18; WAR 4/6.
Y = np.array([0, 0, 0, 1, 1, 2])
YHAT = np.array([0, 0, 1, 1, 0, 2])


def test_hand_computed_values():
    assert metrics.confusion_matrix(Y, YHAT, 3).tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert metrics.per_class_recall(Y, YHAT, 3) == pytest.approx([2 / 3, 1 / 2, 1.0])
    s = metrics.score_classification(Y, YHAT, n_classes=4, n_boot=50)  # class 3 never occurs
    assert s["uar"]["value"] == pytest.approx(13 / 18)  # the absent class is not counted as recall 0
    assert s["war"]["value"] == pytest.approx(4 / 6)
    assert np.isnan(s["per_class_recall"]["value"][3]) and s["classes_absent"] == [3]
    assert s["per_class_recall"]["support"] == [3, 2, 1, 0] and s["n"] == 6
    assert s["uar"]["value"] == pytest.approx(metrics.uar(Y, YHAT))


def test_weighted_resample_by_hand():
    # a resample drawing clip 0 twice, clip 3 twice, clip 4 and clip 5 once (clips 1, 2 not drawn):
    # class 0: 2 clips both right -> 1; class 1: 3 clips, 2 right -> 2/3; class 2: 1 -> 1.
    w = np.array([[1, 1, 1, 1, 1, 1], [2, 0, 0, 2, 1, 1]], dtype=float)
    rows = stats.classification_rows(Y, YHAT, 3, w)
    assert rows["recall"][1] == pytest.approx([1.0, 2 / 3, 1.0])
    assert rows["uar"][1] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert rows["war"][1] == pytest.approx(5 / 6)
    # a resample without class 2: UAR over the two classes it holds, recall of class 2 undefined
    w2 = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 2, 0]], dtype=float)
    r2 = stats.classification_rows(Y, YHAT, 3, w2)
    assert np.isnan(r2["recall"][1, 2]) and r2["uar"][1] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_interval_does_not_collapse_and_groups_widen_it():
    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(20), 10)
    y = rng.integers(0, 4, len(subject))
    good_subject = rng.random(20) < 0.5  # whole subjects right or at chance: clips of a subject are not independent
    yhat = np.where(good_subject[subject], y, rng.integers(0, 4, len(subject)))
    s = metrics.score_classification(y, yhat, n_classes=4, n_boot=400)
    for m in ("uar", "war"):
        lo, hi = s[m]["ci95"]
        assert lo < s[m]["value"] < hi and hi - lo > 0.05
    lo_c, hi_c = s["per_class_recall"]["ci95"][0]
    assert hi_c - lo_c > 0.05
    sg = metrics.score_classification(y, yhat, n_classes=4, n_boot=400, groups=subject)
    assert sg["resampled"] == "groups"
    assert (sg["war"]["ci95"][1] - sg["war"]["ci95"][0]) > 1.5 * (s["war"]["ci95"][1] - s["war"]["ci95"][0])


def test_rare_class_missing_from_resamples_is_reported():
    y = np.array([0] * 30 + [1] * 30 + [2])
    s = metrics.score_classification(y, y.copy(), n_classes=3, n_boot=300)
    assert 0.2 < s["resamples_missing_a_class"] < 0.5  # (60/61)^61 ~ 0.37 of resamples miss class 2
    assert s["uar"]["ci95"] == pytest.approx([1.0, 1.0])  # perfect on every class a resample holds


def test_paired_classification():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)

    def classifier(acc, seed):
        r = np.random.default_rng(seed)
        return np.where(r.random(len(y)) < acc, y, r.integers(0, 5, len(y)))

    cmp = metrics.paired_bootstrap_classification(classifier(0.8, 2), classifier(0.5, 3), y, n_classes=5,
                                                  n_boot=400)
    assert cmp["uar"]["a_better"] and cmp["war"]["a_better"] and cmp["war"]["diff"] > 0.2
    # no planted difference: equally good classifiers, many tries; a winner no more often than the nominal 5%
    wins = 0
    for s in range(20):
        c = metrics.paired_bootstrap_classification(classifier(0.6, 10 + s), classifier(0.6, 50 + s), y,
                                                    n_classes=5, n_boot=300, seed=s)
        wins += c["uar"]["a_better"] or c["war"]["a_better"]
        wins += metrics.paired_bootstrap_classification(classifier(0.6, 50 + s), classifier(0.6, 10 + s), y,
                                                        n_classes=5, n_boot=300, seed=s)["war"]["a_better"]
        assert c["war"]["ci95"][0] < c["war"]["diff"] < c["war"]["ci95"][1]
    assert wins <= 4


def test_fold_summary_and_bad_input():
    folds = [{"uar": {"value": 0.5}, "war": 0.6}, {"uar": {"value": 0.7}, "war": 0.8}]
    f = metrics.fold_summary(folds)
    assert f["uar"]["mean"] == pytest.approx(0.6) and f["uar"]["sd"] == pytest.approx(np.sqrt(0.02))
    assert f["war"]["per_fold"] == [0.6, 0.8] and f["war"]["n_folds"] == 2
    with pytest.raises(ValueError, match="class indices"):
        metrics.score_classification(np.array(["a", "b"]), np.array(["a", "a"]), n_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)

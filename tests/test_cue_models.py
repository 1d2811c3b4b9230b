"""Cue models: KDE face model, regression context model, prior over possible outcomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from vlm_salience.cue_models import CueModelConfig, Design, binned_gaussian, build_cues, grouped_kde
from vlm_salience.data import load_corpus


def test_grouped_kde_matches_a_hand_computed_kde():
    support = np.arange(1, 10, dtype=float)
    a = np.array([2.0, 3.0, 3.0, 8.0])
    b = np.array([5.0, 5.0, 5.0])
    dens = grouped_kde(np.concatenate([a, b])[:, None], np.array([0, 0, 0, 0, 1, 1, 1]), 2, support)
    assert dens.shape == (2, 1, 9) and np.allclose(dens.sum(axis=-1), 1.0)
    sd, iqr = a.std(ddof=1), np.subtract(*np.percentile(a, [75, 25]))
    bw = 0.9 * min(sd, iqr / 1.34) * len(a) ** -0.2  # R's bw.nrd0
    want = norm.pdf((support[:, None] - a[None, :]) / bw).sum(axis=1)
    assert np.allclose(dens[0, 0], want / want.sum())
    assert dens[1, 0].argmax() == 4  # identical ratings: a narrow bump at 5


def test_binned_gaussian_sums_to_one_and_puts_tails_in_the_end_bins():
    p = binned_gaussian(np.array([1.0, 20.0]), np.array([1.0, 1.0]), np.arange(1, 10, dtype=float))
    assert np.allclose(p.sum(axis=-1), 1)
    assert p[1, -1] == pytest.approx(1.0)
    assert p[0, 0] == pytest.approx(norm.cdf(0.5) / 1.0, rel=1e-6)


def test_design_codes_categories_and_interactions():
    frame = pd.DataFrame({"outcome": ["CC", "CD", "DD", "CC"], "pot": [1.0, 2.0, 3.0, 4.0]})
    d = Design.fit(frame, ("outcome", "pot"), ("outcome",), (("outcome", "pot"),))
    X = d.matrix(frame)
    # intercept, pot, 2 outcome dummies, 2 dummy x pot products
    assert X.shape == (4, 6)
    assert X[1, 2] == 1 and X[1, 4] == pytest.approx(X[1, 1])
    with pytest.raises(Exception, match="level"):
        d.matrix(pd.DataFrame({"outcome": ["XX"], "pot": [1.0]}))


def test_affcog_cues_and_prior_average_the_wheel_outcomes(affcog_config):
    c = load_corpus(affcog_config)
    cues = build_cues(c, CueModelConfig(context_model="ols"))
    b = cues.block("emotions")
    assert b.face.shape == (99, 8, 9) and np.allclose(b.prior.sum(-1), 1)
    # The prior is the probability-weighted mix of the context model at the wheel's three payoffs, so its mean
    # happiness lies between the best and the worst payoff's.
    happy = c.labels.index("happy")
    mean = (b.prior[:, happy] * b.support).sum(-1)
    ctx_mean = (b.context[:, happy] * b.support).sum(-1)
    wins = np.array([it.situation.features["win"] for it in c.items])
    assert np.corrcoef(ctx_mean, wins)[0, 1] > 0.5
    assert np.corrcoef(mean, ctx_mean)[0, 1] < 0.9  # the prior does not know the outcome
    assert b.targets.sum() == 498 * 8


def test_choice_corpus_blocks(small_synth_corpus):
    c = load_corpus(small_synth_corpus)
    for model in ("mixed", "ols", "empirical"):
        cues = build_cues(c, CueModelConfig(context_model=model))
        emo, val = cues.block("emotions"), cues.block("valence")
        assert emo.face.shape == (32, 1, 8) and val.face.shape == (32, 1, 7)
        assert np.allclose(emo.context.sum(-1), 1) and np.allclose(val.prior.sum(-1), 1)
        assert emo.targets.sum() == pytest.approx(32 * 4)


def test_mixed_model_recovers_the_ols_mean_when_rater_variance_is_zero(small_synth_corpus):
    """statsmodels can return nonsense at a singular rater variance; the guard must catch it."""
    c = load_corpus(small_synth_corpus)
    mixed = build_cues(c, CueModelConfig(context_model="mixed")).block("valence")
    ols = build_cues(c, CueModelConfig(context_model="ols")).block("valence")
    mean = lambda b: (b.context[:, 0] * b.support).sum(-1)  # noqa: E731
    assert np.abs(mean(mixed) - mean(ols)).max() < 0.3


def test_resimulated_faces_carry_sampling_error_of_the_right_size():
    """A null model's face cues: estimated again from as many simulated raters as each face had; items sharing a
    face share the re-estimate, and the error shrinks as the number of raters grows."""
    from vlm_salience.cue_models import Block, CueModelConfig, CueTable, resimulate_faces

    rng = np.random.default_rng(0)
    faces = rng.dirichlet(np.ones(5), size=6)[:, None, :]  # 6 faces, a choice over 5 labels
    face_index = np.repeat(np.arange(6), 3)  # 18 items, 3 per face

    def table(raters):
        f = faces[face_index]
        return CueTable(item_ids=np.arange(18).astype(str).astype(object),
                        blocks=[Block("emotions", np.arange(5.0), f, f, f, categorical=True)],
                        face_index=face_index, face_raters=np.full(18, raters),
                        config=CueModelConfig(choice_smoothing=0.0, floor=1e-9))

    few = resimulate_faces(table(10), np.random.default_rng(1)).blocks[0].face
    many = resimulate_faces(table(10_000), np.random.default_rng(1)).blocks[0].face
    assert np.allclose(few.sum(-1), 1) and np.allclose(few[0], few[1]) and not np.allclose(few[0], few[3])
    err_few, err_many = np.abs(few - faces[face_index]).mean(), np.abs(many - faces[face_index]).mean()
    # a frequency from n raters errs by about sqrt(p(1-p)/n): ~0.1 for 10 raters, ~0.003 for 10,000
    assert 0.04 < err_few < 0.15 and err_many < 0.01


def test_resampling_face_raters_redraws_each_faces_own_judgements():
    from vlm_salience.cue_models import Block, CueModelConfig, CueTable, resample_face_raters

    # face 0: four raters who all chose label 0; face 1: raters split between labels 1 and 2
    rows = np.eye(3)[[0, 0, 0, 0, 1, 2, 1, 2]]
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    f = np.full((4, 1, 3), 1 / 3)
    cues = CueTable(item_ids=np.array(list("abcd"), dtype=object),
                    blocks=[Block("emotions", np.arange(3.0), f, f, f, categorical=True)],
                    face_index=np.array([0, 1, 0, 1]), face_raters=np.array([4, 4, 4, 4]),
                    config=CueModelConfig(choice_smoothing=0.0, floor=1e-9), face_rows={"emotions": (rows, groups)})
    draws = [resample_face_raters(cues, np.random.default_rng(s)).blocks[0].face for s in range(30)]
    assert all(np.allclose(d[0, 0], [1, 0, 0]) and np.allclose(d[0], d[2]) for d in draws)  # nothing to redraw
    p1 = np.array([d[1, 0, 1] for d in draws])  # face 1's share of label 1 varies around 1/2, label 0 never
    assert 0.3 < p1.mean() < 0.7 and p1.std() > 0.1 and all(d[1, 0, 0] < 1e-6 for d in draws)


def test_bandwidths_follow_r_definitions():
    """R's bw.nrd0 = 0.9 min(sd, IQR/1.34) n^-1/5 and bw.nrd = 1.06 min(sd, IQR/1.34) n^-1/5, IQR from R's type-7
    quantiles, computed here by hand; 'scott' is R's nrd (not scipy's sd-only Scott rule)."""
    from vlm_salience.cue_models import _bandwidth

    x = np.arange(1.0, 11.0)  # type-7 quartiles 3.25 and 7.75: IQR/1.34 = 3.358 > sd = 3.0277, so sd counts
    sd = np.sqrt(np.sum((x - 5.5) ** 2) / 9)
    assert _bandwidth(x, "nrd0", 1.0) == pytest.approx(0.9 * sd * 10 ** -0.2, rel=1e-12)
    assert _bandwidth(x, "nrd", 1.0) == pytest.approx(1.06 * sd * 10 ** -0.2, rel=1e-12)
    assert _bandwidth(x, "scott", 1.0) == _bandwidth(x, "nrd", 1.0)
    y = np.array([1.0, 1.0, 2.0, 9.0])  # type-7 quartiles 1.0 and 2 + 0.25 * 7 = 3.75: IQR/1.34 = 2.052 < sd 3.86
    assert _bandwidth(y, "nrd", 1.0) == pytest.approx(1.06 * (2.75 / 1.34) * 4 ** -0.2, rel=1e-12)
    assert _bandwidth(y, "nrd0", 1.0) == pytest.approx(0.9 * (2.75 / 1.34) * 4 ** -0.2, rel=1e-12)
    assert _bandwidth(np.full(5, 3.0), "nrd0", 1.0) == pytest.approx(0.9 * 5 ** -0.2)  # all equal: one step


@pytest.mark.parametrize("rule", ["nrd0", "nrd", 0.7])
def test_bandwidths_of_all_groups_at_once_are_each_groups_bandwidth(rule):
    """The vectorised bandwidths (every face and dimension at once, for the study's many re-estimated face cues)
    are `_bandwidth` of each group: ties, equal ratings, one-row and empty groups included."""
    from vlm_salience.cue_models import _bandwidth, _bandwidths

    rng = np.random.default_rng(0)
    sizes = [0, 1, 2, 3, 4, 5, 7, 12, 30, 3]
    groups = np.concatenate([np.full(k, g) for g, k in enumerate(sizes)])
    perm = rng.permutation(len(groups))
    groups = groups[perm]
    values = rng.integers(1, 10, size=(len(groups), 3)).astype(float)  # ratings: many ties
    values[groups == 9] = 4.0  # a group whose ratings are all equal
    values[:, 2] += rng.normal(0.0, 1.0, len(groups))  # and a dimension without ties
    got = _bandwidths(values, groups, len(sizes), rule, 1.0)
    for g, k in enumerate(sizes):
        for d in range(3):
            if k == 0:
                assert np.isnan(got[g, d])
            else:
                want = _bandwidth(values[groups == g, d], rule, 1.0)
                assert got[g, d] == pytest.approx(want, rel=1e-12, abs=0), (g, d, k)

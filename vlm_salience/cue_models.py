"""The three distributions Bayesian cue integration multiplies: P(e|face), P(e|context) and the prior P(e).

Each response dimension is a distribution over a discrete support, estimated per item:
- ratings corpora: one dimension per emotion over the rating scale (e.g. 8 emotions x 9 points);
- choice corpora: one categorical dimension over the emotion labels;
- a rated valence: one dimension over the valence scale.

Face model: a kernel density estimate of the face's face-only ratings (additively smoothed frequencies for choices).
Context model: a regression of each dimension on the declared context features, with a random intercept per rater
(statsmodels MixedLM) or OLS, Gaussian residuals integrated over the scale's bins; a multinomial logit for choices;
or the empirical per-situation distribution. Prior: the context model averaged over the situation's possible
outcomes where the corpus declares them, else over the observed situations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtr

from vlm_salience.config import StrictModel
from vlm_salience.data.corpus import Corpus
from vlm_salience.errors import DataError


class CueModelConfig(StrictModel):
    context_model: Literal["mixed", "ols", "empirical"] = "mixed"
    rater_variance: bool = False  # add the random-intercept variance to the context model's predictive spread
    # R's bandwidth rules, exactly: nrd0 (R's default, bw.nrd0) and nrd (bw.nrd, Scott's rule with R's robust
    # spread); `scott` is kept as a name for nrd. Or a number in scale units.
    kde_bandwidth: Literal["nrd0", "nrd", "scott"] | float = "nrd0"
    choice_smoothing: float = 0.5  # additive (Dirichlet) smoothing of choice frequencies
    floor: float = 1e-6  # probability floor before logs: keeps the product finite where a cue says "never"


@dataclass
class Block:
    """Distributions for one group of response dimensions, all over one support."""

    name: str  # "emotions" or "valence"
    support: np.ndarray  # (S,)
    face: np.ndarray  # (n, D, S)
    context: np.ndarray
    prior: np.ndarray
    targets: np.ndarray | None = None  # (n, D, S) combined-condition counts, where the corpus has them
    categorical: bool = False  # the support is labels (a choice), not points of a scale
    _logs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def logs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log face, log context, log prior, computed once: fitting evaluates the product many times."""
        if self._logs is None:
            self._logs = (np.log(self.face), np.log(self.context), np.log(self.prior))
        return self._logs


@dataclass
class CueTable:
    """Cue distributions for the items of a corpus, in corpus order."""

    item_ids: np.ndarray
    blocks: list[Block]
    notes: list[str] = field(default_factory=list)
    face_index: np.ndarray | None = None  # (n,) which face each item shows (items may share one)
    face_raters: np.ndarray | None = None  # (n,) how many face-only judgements that face's cue was estimated from
    config: CueModelConfig | None = None  # how the face cues were estimated (to estimate them again)
    # per block: the face-only judgements the face cues were estimated from, (rows (N, D or K), face of each row)
    face_rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def take(self, idx: np.ndarray) -> CueTable:
        def cut(a):
            return None if a is None else a[idx]
        return CueTable(
            item_ids=self.item_ids[idx],
            blocks=[replace(b, face=b.face[idx], context=b.context[idx], prior=b.prior[idx],
                            targets=None if b.targets is None else b.targets[idx],
                            _logs=None if b._logs is None else tuple(a[idx] for a in b._logs))
                    for b in self.blocks],
            notes=self.notes, face_index=cut(self.face_index), face_raters=cut(self.face_raters),
            config=self.config, face_rows=self.face_rows,
        )

    def block(self, name: str) -> Block | None:
        return next((b for b in self.blocks if b.name == name), None)


# ---------------------------------------------------------------------------------------------------------------
# Building blocks, vectorised over groups.

def _bandwidth(values: np.ndarray, rule: str | float, step: float) -> float:
    """R's bw.nrd0 (0.9) and bw.nrd (1.06) times min(sd, IQR/1.34) times n^(-1/5), quantiles as R's type 7
    (numpy's default). Where R would return a zero width we do not: an IQR of 0 falls back to the sd (as nrd0 does
    in R), and ratings that are all equal get a kernel one scale step wide."""
    if not isinstance(rule, str):
        return float(rule)
    n = len(values)
    sd = values.std(ddof=1) if n > 1 else 0.0
    q75, q25 = np.percentile(values, [75, 25]) if n > 1 else (0.0, 0.0)
    lo = min(sd, (q75 - q25) / 1.34) if (q75 - q25) > 0 else sd
    if lo <= 0:
        lo = step  # all ratings equal: a kernel one scale step wide
    factor = 0.9 if rule == "nrd0" else 1.06  # nrd / scott
    return factor * lo * n ** -0.2


def _bandwidths(values: np.ndarray, groups: np.ndarray, n_groups: int, rule: str | float, step: float
                ) -> np.ndarray:
    """(G, D) `_bandwidth` of every group and dimension at once (NaN for a group with no rows).

    Why: the study re-estimates every face cue on each resample and no-law corpus, and one `np.percentile` call
    per face and dimension was a tenth of the default study's time. Here each dimension is sorted once by group
    and value, and the type-7 quartiles are read at their positions, interpolated as numpy's linear method does
    (tests/test_cue_models.py checks it against `_bandwidth`)."""
    N, D = values.shape
    if not isinstance(rule, str):
        bw = np.full((n_groups, D), float(rule))
        bw[np.bincount(groups, minlength=n_groups) == 0] = np.nan
        return bw
    counts = np.bincount(groups, minlength=n_groups)
    n = counts.astype(float)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mean = np.stack([np.bincount(groups, values[:, d], minlength=n_groups) for d in range(D)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean /= n[:, None]
        dev2 = np.stack([np.bincount(groups, (values[:, d] - mean[groups, d]) ** 2, minlength=n_groups)
                         for d in range(D)], axis=1)
        sd = np.where(counts[:, None] > 1, np.sqrt(dev2 / (n[:, None] - 1.0)), 0.0)
    quart = {}
    for p in (0.75, 0.25):
        pos = p * np.maximum(counts - 1, 0)
        lo = np.floor(pos).astype(int)
        t = (pos - lo)[:, None]
        i0 = np.minimum(starts + lo, N - 1)
        i1 = np.minimum(starts + np.minimum(lo + 1, np.maximum(counts - 1, 0)), N - 1)
        q = np.empty((n_groups, D))
        for d in range(D):
            v = values[np.lexsort((values[:, d], groups)), d]
            a, b = v[i0], v[i1]
            diff = b - a
            q[:, d] = np.where(t[:, 0] >= 0.5, b - diff * (1 - t[:, 0]), a + diff * t[:, 0])  # numpy's _lerp
        quart[p] = q
    iqr = np.where(counts[:, None] > 1, quart[0.75] - quart[0.25], 0.0)
    lo = np.where(iqr > 0, np.minimum(sd, iqr / 1.34), sd)
    lo = np.where(lo <= 0, step, lo)
    factor = 0.9 if rule == "nrd0" else 1.06
    with np.errstate(divide="ignore"):
        bw = factor * lo * n[:, None] ** -0.2
    bw[counts == 0] = np.nan
    return bw


def grouped_kde(values: np.ndarray, groups: np.ndarray, n_groups: int, support: np.ndarray,
                rule: str | float = "nrd0") -> np.ndarray:
    """(G, D, S) Gaussian KDE of each group's values per dimension, evaluated on the support and normalised.

    values: (N, D); groups: (N,) integer group per row. A group with no rows is an error for the caller.
    """
    values = np.asarray(values, dtype=float)
    N, D = values.shape
    step = float(support[1] - support[0]) if len(support) > 1 else 1.0
    bw = _bandwidths(values, groups, n_groups, rule, step)
    h = bw[groups]  # (N, D)
    dens = np.exp(-0.5 * ((support[None, None, :] - values[:, :, None]) / h[:, :, None]) ** 2) / h[:, :, None]
    out = np.zeros((n_groups, D, len(support)))
    np.add.at(out, groups, dens)
    total = out.sum(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / total


def binned_gaussian(mu: np.ndarray, sd: np.ndarray | float, support: np.ndarray) -> np.ndarray:
    """P(rating = s) for s on the support: a Gaussian integrated over each point's bin (ends open)."""
    mu = np.asarray(mu, dtype=float)
    edges = np.concatenate([[-np.inf], (support[1:] + support[:-1]) / 2.0, [np.inf]])
    cdf = ndtr((edges - mu[..., None]) / np.asarray(sd, dtype=float)[..., None])
    p = np.diff(cdf, axis=-1)
    return p / p.sum(axis=-1, keepdims=True)


def counts_on_support(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    """One-hot (N, S) of each value's nearest support point."""
    idx = np.abs(values[:, None] - support[None, :]).argmin(axis=1)
    out = np.zeros((len(values), len(support)))
    out[np.arange(len(values)), idx] = 1.0
    return out


# ---------------------------------------------------------------------------------------------------------------
# Context design matrices.

@dataclass
class Design:
    """Design matrix of the context features: standardised numbers, treatment-coded categories, and products of
    two features (e.g. outcome x log pot: the stakes amplify each outcome differently)."""

    numeric: list[str]
    categorical: dict[str, list[str]]  # feature -> levels (the first is the reference)
    mean: np.ndarray
    scale: np.ndarray
    interactions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: tuple[str, ...], categorical: tuple[str, ...],
            interactions: tuple[tuple[str, str], ...] = ()) -> Design:
        numeric = [f for f in features if f not in categorical]
        cats = {f: sorted(frame[f].astype(str).unique()) for f in features if f in categorical}
        x = frame[numeric].to_numpy(dtype=float) if numeric else np.zeros((len(frame), 0))
        sd = x.std(axis=0) if len(x) else np.ones(x.shape[1])
        return cls(numeric, cats, x.mean(axis=0) if len(x) else np.zeros(x.shape[1]), np.where(sd > 0, sd, 1.0),
                   tuple(interactions))

    def _columns(self, frame: pd.DataFrame, feature: str) -> list[np.ndarray]:
        if feature in self.categorical:
            levels = self.categorical[feature]
            vals = frame[feature].astype(str).to_numpy()
            unknown = sorted(set(vals) - set(levels))
            if unknown:
                raise DataError(f"context feature '{feature}' has level(s) {unknown} that no context-only "
                                f"judgement has (known: {levels}).", column=feature,
                                fix="add context-only ratings for them or use context_model: empirical.")
            return [(vals == lev).astype(float) for lev in levels[1:]]
        j = self.numeric.index(feature)
        return [(frame[feature].to_numpy(dtype=float) - self.mean[j]) / self.scale[j]]

    def matrix(self, frame: pd.DataFrame, *, intercept: bool = True) -> np.ndarray:
        cols = [np.ones(len(frame))] if intercept else []
        for f in [*self.numeric, *self.categorical]:
            cols.extend(self._columns(frame, f))
        for a, b in self.interactions:
            cols.extend(ca * cb for ca in self._columns(frame, a) for cb in self._columns(frame, b))
        return np.column_stack(cols) if cols else np.zeros((len(frame), 0))


# ---------------------------------------------------------------------------------------------------------------

def build_cues(corpus: Corpus, cfg: CueModelConfig | None = None) -> CueTable:
    """Face, context and prior distributions (and combined-condition targets) for every item of the corpus."""
    cfg = cfg or CueModelConfig()
    notes: list[str] = []
    items = corpus.items
    face_ids = np.array([it.face.id for it in items], dtype=object)
    face_index = {f: i for i, f in enumerate(dict.fromkeys(face_ids))}
    missing = sorted(set(face_index) - set(corpus.face_only.key))
    if missing:
        raise DataError(f"face(s) {missing[:5]} have no face-only judgements (an empty condition).",
                        file=corpus.face_only.source)
    fj = corpus.face_only
    keep = np.isin(fj.key, np.array(list(face_index), dtype=object))
    f_groups = np.array([face_index[k] for k in fj.key[keep]])
    item_face = np.array([face_index[f] for f in face_ids])

    context = _ContextModel(corpus, cfg, notes)
    blocks = []
    if corpus.response == "ratings":
        support = corpus.scale.points
        face = grouped_kde(fj.emotions[keep], f_groups, len(face_index), support, cfg.kde_bandwidth)[item_face]
        ctx, prior = context.ratings(corpus.context_only.emotions, support)
        blocks.append(Block("emotions", support, face, ctx, prior, _targets(corpus, "emotions", support)))
    else:
        K = len(corpus.labels)
        counts = np.zeros((len(face_index), K))
        np.add.at(counts, f_groups, fj.emotions[keep] / fj.emotions[keep].sum(axis=1, keepdims=True))
        face = (counts + cfg.choice_smoothing) / (counts + cfg.choice_smoothing).sum(axis=1, keepdims=True)
        ctx, prior = context.choice()
        support = np.arange(K, dtype=float)
        blocks.append(Block("emotions", support, face[item_face][:, None, :], ctx, prior,
                            _targets(corpus, "emotions", support), categorical=True))
    if corpus.rated_valence:
        vs = corpus.valence_scale.points
        vface = grouped_kde(fj.valence[keep][:, None], f_groups, len(face_index), vs, cfg.kde_bandwidth)[item_face]
        vctx, vprior = context.ratings(corpus.context_only.valence[:, None], vs)
        blocks.append(Block("valence", vs, vface, vctx, vprior, _targets(corpus, "valence", vs)))
    for b in blocks:
        for part in ("face", "context", "prior"):
            arr = np.clip(getattr(b, part), cfg.floor, None)
            setattr(b, part, arr / arr.sum(axis=-1, keepdims=True))
        b.logs()
    rows = {"emotions": (fj.emotions[keep] if corpus.response == "ratings"
                         else fj.emotions[keep] / fj.emotions[keep].sum(axis=1, keepdims=True), f_groups)}
    if corpus.rated_valence:
        rows["valence"] = (fj.valence[keep][:, None], f_groups)
    return CueTable(item_ids=corpus.item_ids, blocks=blocks, notes=notes, face_index=item_face,
                    face_raters=np.bincount(f_groups, minlength=len(face_index))[item_face], config=cfg,
                    face_rows=rows)


def _estimate_faces(b: Block, values: np.ndarray, groups: np.ndarray, n_faces: int, cfg: CueModelConfig
                    ) -> np.ndarray:
    """(G, D, S) face cues from face-only rows, the way build_cues estimates them."""
    if b.categorical:
        counts = np.zeros((n_faces, values.shape[1]))
        np.add.at(counts, groups, values)
        a = cfg.choice_smoothing
        est = ((counts + a) / (counts + a).sum(axis=1, keepdims=True))[:, None, :]
    else:
        est = grouped_kde(values, groups, n_faces, b.support, cfg.kde_bandwidth)
    est = np.clip(est, cfg.floor, None)
    return est / est.sum(axis=-1, keepdims=True)


def resample_face_raters(cues: CueTable, rng: np.random.Generator) -> CueTable:
    """The same items with every face cue estimated again from its own face-only judgements drawn with
    replacement: a bootstrap that carries the face cues' estimation error (resampling items or participants
    alone keeps each face's estimate fixed, and its error with it)."""
    if not cues.face_rows or cues.face_index is None or cues.config is None:
        raise ValueError("these cues do not record their face-only judgements; build them with build_cues")
    blocks = []
    for b in cues.blocks:
        values, groups = cues.face_rows[b.name]
        n_faces = int(groups.max()) + 1
        order = np.argsort(groups, kind="stable")
        sizes = np.bincount(groups, minlength=n_faces)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        g_sorted = groups[order]
        pick = order[starts[g_sorted] + (rng.random(len(order)) * sizes[g_sorted]).astype(int)]
        est = _estimate_faces(b, values[pick], g_sorted, n_faces, cues.config)
        nb = replace(b, face=est[cues.face_index], _logs=None)
        nb.logs()
        blocks.append(nb)
    return replace(cues, blocks=blocks)


def resimulate_faces(cues: CueTable, rng: np.random.Generator) -> CueTable:
    """The same items with every face cue estimated again, the same way, from simulated face-only raters (as many
    as the face had, each drawing from the estimated face cue): the face-cue sampling error a null model must
    carry. That error is larger, relative to the evidence, for a subtle face than for an expressive one, so a fit
    on estimated cues leans on subtle faces less even where observers weigh every face alike."""
    if cues.face_index is None or cues.face_raters is None or cues.config is None:
        raise ValueError("these cues do not record their faces' rater counts; build them with build_cues")
    cfg = cues.config
    uniq, first, inv = np.unique(cues.face_index, return_index=True, return_inverse=True)
    n_f = cues.face_raters[first].astype(int)
    G = len(uniq)
    blocks = []
    for b in cues.blocks:
        F = b.face[first]  # (G, D, S)
        if b.categorical:
            counts = np.stack([rng.multinomial(n, F[g, 0]) for g, n in enumerate(n_f)]).astype(float)
            a = cfg.choice_smoothing
            est = ((counts + a) / (counts + a).sum(axis=1, keepdims=True))[:, None, :]
        else:
            groups = np.repeat(np.arange(G), n_f)
            values = np.empty((len(groups), F.shape[1]))
            for d in range(F.shape[1]):
                cdf = F[groups, d].cumsum(axis=-1)
                values[:, d] = b.support[(cdf > rng.random((len(groups), 1)) * cdf[:, -1:]).argmax(axis=-1)]
            est = grouped_kde(values, groups, G, b.support, cfg.kde_bandwidth)
        est = np.clip(est, cfg.floor, None)
        est = est / est.sum(axis=-1, keepdims=True)
        nb = replace(b, face=est[inv], _logs=None)
        nb.logs()
        blocks.append(nb)
    return replace(cues, blocks=blocks)


def _targets(corpus: Corpus, block: str, support: np.ndarray) -> np.ndarray | None:
    """(n, D, S) counts of combined-condition judgements per item; None without a combined condition."""
    j = corpus.combined
    if j is None:
        return None
    index = {iid: i for i, iid in enumerate(corpus.item_ids)}
    keep = np.array([k in index for k in j.key])
    rows = np.array([index[k] for k in j.key[keep]], dtype=int)
    n = len(corpus.items)
    if block == "valence":
        out = np.zeros((n, 1, len(support)))
        np.add.at(out[:, 0, :], rows, counts_on_support(j.valence[keep], support))
        return out
    if corpus.response == "choice":
        out = np.zeros((n, 1, len(support)))
        w = j.emotions[keep]
        np.add.at(out[:, 0, :], rows, w / w.sum(axis=1, keepdims=True))
        return out
    K = len(corpus.labels)
    out = np.zeros((n, K, len(support)))
    for k in range(K):
        np.add.at(out[:, k, :], rows, counts_on_support(j.emotions[keep][:, k], support))
    return out


class _ContextModel:
    """Fits the context model once per dimension and predicts items and the prior's situations."""

    def __init__(self, corpus: Corpus, cfg: CueModelConfig, notes: list[str]) -> None:
        self.corpus, self.cfg, self.notes = corpus, cfg, notes
        cj = corpus.context_only
        unknown = sorted(set(cj.key) - set(corpus.situations))
        if unknown:
            raise DataError(f"context-only judgements for unknown situation(s) {unknown[:5]}.", file=cj.source)
        self.rows = pd.DataFrame([corpus.situations[k].features for k in cj.key])
        self.item_frame = pd.DataFrame([it.situation.features for it in corpus.items])
        self.has_outcomes = all(it.situation.outcomes for it in corpus.items)
        if self.has_outcomes:
            self.outcome_frame = pd.DataFrame(
                [f for it in corpus.items for _, f in it.situation.outcomes])
            self.outcome_probs = [np.array([p for p, _ in it.situation.outcomes]) for it in corpus.items]
        obs = pd.concat([self.rows, self.item_frame], ignore_index=True)
        self.observed = obs.drop_duplicates().reset_index(drop=True)
        self.design = Design.fit(self.rows, corpus.context_features, corpus.categorical_features,
                                 corpus.context_interactions)

    # -- prior over the situation's possible outcomes (declared) or all observed situations -------------------
    def _prior(self, predict) -> np.ndarray:
        if self.has_outcomes:
            p = predict(self.outcome_frame)  # (sum n_o, D, S)
            out, start = [], 0
            for probs in self.outcome_probs:
                out.append(np.tensordot(probs, p[start:start + len(probs)], axes=1))
                start += len(probs)
            return np.stack(out)
        return np.repeat(predict(self.observed).mean(axis=0, keepdims=True), len(self.corpus.items), axis=0)

    def ratings(self, y: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Context and prior distributions (n, D, S) for rating dimensions y: (N, D) of context-only rows."""
        if self.cfg.context_model == "empirical":
            return self._empirical_ratings(y, support)
        X = self.design.matrix(self.rows)
        D = y.shape[1]
        betas, sds = [], []
        for d in range(D):
            beta, sd = self._regress(y[:, d], X)
            betas.append(beta)
            sds.append(sd)
        betas, sds = np.array(betas), np.array(sds)

        def predict(frame: pd.DataFrame) -> np.ndarray:
            mu = self.design.matrix(frame) @ betas.T  # (m, D)
            return binned_gaussian(mu, np.broadcast_to(sds, mu.shape), support)

        return predict(self.item_frame), self._prior(predict)

    def _regress(self, y: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, float]:
        import statsmodels.api as sm

        if self.cfg.context_model == "ols":
            fit = sm.OLS(y, X).fit()
            return np.asarray(fit.params), float(np.sqrt(fit.scale))
        # statsmodels' gradient optimisers can stop at a singular rater variance (the boundary) and return
        # meaningless fixed effects with an infinite likelihood; accept a fit only if it converged to a finite
        # likelihood, try a derivative-free optimiser next, and fall back to OLS (the same model at zero variance).
        for method in ("lbfgs", "powell"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fit = sm.MixedLM(y, X, groups=self.corpus.context_only.rater).fit(reml=True, method=[method])
                except (np.linalg.LinAlgError, ValueError):
                    continue
            if fit.converged and np.isfinite(fit.llf) and np.all(np.isfinite(fit.fe_params)):
                var = float(fit.scale) + (float(np.asarray(fit.cov_re)[0, 0]) if self.cfg.rater_variance else 0.0)
                return np.asarray(fit.fe_params), float(np.sqrt(var))
        note = "a mixed model failed to converge; OLS (the same model with no rater variance) was used instead"
        if note not in self.notes:
            self.notes.append(note)
        fit = sm.OLS(y, X).fit()
        return np.asarray(fit.params), float(np.sqrt(fit.scale))

    def _empirical_ratings(self, y: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cj = self.corpus.context_only
        sit_ids = list(dict.fromkeys(cj.key))
        index = {s: i for i, s in enumerate(sit_ids)}
        dens = grouped_kde(y, np.array([index[k] for k in cj.key]), len(sit_ids), support, self.cfg.kde_bandwidth)
        missing = [it.situation.id for it in self.corpus.items if it.situation.id not in index]
        if missing:
            raise DataError(f"situation(s) {missing[:5]} have no context-only judgements, which the empirical "
                            "context model needs.", file=cj.source, fix="use context_model: mixed or ols.")
        ctx = dens[[index[it.situation.id] for it in self.corpus.items]]
        prior = np.repeat(dens.mean(axis=0, keepdims=True), len(self.corpus.items), axis=0)
        return ctx, prior

    def choice(self) -> tuple[np.ndarray, np.ndarray]:
        """Context and prior distributions (n, 1, K) over labels: multinomial logit or empirical frequencies."""
        cj = self.corpus.context_only
        K = len(self.corpus.labels)
        w = cj.emotions / cj.emotions.sum(axis=1, keepdims=True)
        if self.cfg.context_model == "empirical":
            sit_ids = list(dict.fromkeys(cj.key))
            index = {s: i for i, s in enumerate(sit_ids)}
            counts = np.zeros((len(sit_ids), K))
            np.add.at(counts, np.array([index[k] for k in cj.key]), w)
            a = self.cfg.choice_smoothing
            dist = (counts + a) / (counts + a).sum(axis=1, keepdims=True)
            ctx = dist[[index[it.situation.id] for it in self.corpus.items]][:, None, :]
            prior = np.repeat(dist.mean(axis=0)[None, None, :], len(self.corpus.items), axis=0)
            return ctx, prior
        from sklearn.linear_model import LogisticRegression

        X = self.design.matrix(self.rows, intercept=False)
        rows, labels = np.nonzero(w > 0)
        if len(np.unique(labels)) < 2:
            raise DataError("context-only choices use a single label; a choice model needs at least two.",
                            file=cj.source)
        clf = LogisticRegression(C=100.0, max_iter=2000)
        Xr = X[rows] if X.shape[1] else np.zeros((len(rows), 1))
        clf.fit(Xr, labels, sample_weight=w[rows, labels])

        def predict(frame: pd.DataFrame) -> np.ndarray:
            Xf = self.design.matrix(frame, intercept=False)
            Xf = Xf if Xf.shape[1] else np.zeros((len(frame), 1))
            proba = np.full((len(frame), K), 0.0)
            proba[:, clf.classes_] = clf.predict_proba(Xf)
            return proba[:, None, :]

        return predict(self.item_frame), self._prior(predict)

"""The cue-integration study: cross-validated fits of every method, scored against combined judgements.

Honest evaluation: expressivity normalisation and salience weights are fitted on training folds only (folds over
faces, or over participants, so that no face is both fitted and scored); test items are predicted out of fold.
Every method is scored with bootstrap intervals and compared with plain BCI and with its control (one global
weight pair) by a paired bootstrap. Fitted weights are refitted on resamples for their intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from vlm_salience import bci
from vlm_salience.config import StrictModel
from vlm_salience.cue_models import CueModelConfig, CueTable, build_cues
from vlm_salience.data.corpus import Corpus
from vlm_salience.expressivity import Normaliser, raw_scores
from vlm_salience.metrics import paired_bootstrap, score
from vlm_salience.predictions import Predictions, from_blocks, observed
from vlm_salience.salience import DEFAULT_THRESHOLD, LawKind, SalienceLaw


class MethodConfig(StrictModel):
    name: str
    rule: bci.Rule
    salience: LawKind = "plain"


class ExpressivityConfig(StrictModel):
    estimator: str = "face_peak"
    normalise: Literal["minmax", "rank", "none"] = "minmax"
    threshold: float = DEFAULT_THRESHOLD


class CVConfig(StrictModel):
    scheme: Literal["leave_one_group_out", "group_kfold"] = "leave_one_group_out"
    group: str = "face"
    k: int = Field(5, ge=2)
    seed: int = 0


class BootstrapConfig(StrictModel):
    n: int = Field(2000, ge=0)  # resamples for metric intervals and paired tests
    weights_n: int = Field(200, ge=0)  # refits for intervals of the fitted weights
    seed: int = 0
    by_group: bool = True  # resample whole CV groups (faces / participants), not single items


class StudyConfig(StrictModel):
    cue_models: CueModelConfig = Field(default_factory=CueModelConfig)
    expressivity: ExpressivityConfig = Field(default_factory=ExpressivityConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    target: Literal["mean", "kde"] = "mean"
    primary_metric: Literal["r", "rmse", "kld", "valence_mse", "valence_r"] = "kld"
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    reference: str = "bci"  # the method every other is compared with
    methods: list[MethodConfig]

    @model_validator(mode="after")
    def _names(self) -> StudyConfig:
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method names must be unique, got {names}")
        if self.reference not in names:
            raise ValueError(f"reference '{self.reference}' is not among the methods {names}")
        return self

    def control_of(self, method: MethodConfig) -> str | None:
        """The control a salience method must beat: the same rule with one global weight pair."""
        if method.salience in ("plain", "control") or method.rule in ("face", "context"):
            return None
        return next((m.name for m in self.methods if m.rule == method.rule and m.salience == "control"), None)


@dataclass
class StudyResult:
    corpus: Corpus
    config: StudyConfig
    predictions: dict[str, Predictions]
    observed: Predictions | None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    expressivity: np.ndarray | None = None  # full-data normalised expressivity per item
    notes: list[str] = field(default_factory=list)


def make_folds(corpus: Corpus, cv: CVConfig) -> list[np.ndarray]:
    """Test-item index arrays; every item is tested exactly once, and a group never straddles folds."""
    groups = corpus.groups(cv.group)
    uniq = np.array(list(dict.fromkeys(groups)), dtype=object)
    if len(uniq) < 2:
        raise ValueError(f"cross-validation over '{cv.group}' needs at least 2 groups, got {len(uniq)}")
    if cv.scheme == "leave_one_group_out":
        parts = [[g] for g in uniq]
    else:
        rng = np.random.default_rng(cv.seed)
        shuffled = uniq[rng.permutation(len(uniq))]
        parts = [list(p) for p in np.array_split(shuffled, min(cv.k, len(uniq)))]
    return [np.flatnonzero(np.isin(groups, np.array(p, dtype=object))) for p in parts]


def _predict(corpus: Corpus, cues: CueTable, m: MethodConfig, law: SalienceLaw, x: np.ndarray,
             idx: np.ndarray) -> Predictions:
    blocks, w = bci.predict(cues.take(idx), m.rule, law, x[idx])
    weights = w if m.rule in ("product", "pool") else None
    return from_blocks(corpus, m.name, corpus.item_ids[idx], blocks, weights, x[idx])


def run_study(corpus: Corpus, cfg: StudyConfig, *, progress: bool = True) -> StudyResult:
    cues = build_cues(corpus, cfg.cue_models)
    raw = raw_scores(corpus, cfg.expressivity.estimator)
    thr = cfg.expressivity.threshold
    x_all = Normaliser.fit(raw, cfg.expressivity.normalise)(raw)
    all_idx = np.arange(len(corpus.items))
    result = StudyResult(corpus=corpus, config=cfg, predictions={}, observed=None, expressivity=x_all,
                         notes=list(cues.notes))
    if not corpus.has_targets:
        for m in cfg.methods:
            if m.salience == "plain" or m.rule in ("face", "context"):
                result.predictions[m.name] = _predict(corpus, cues, m, SalienceLaw.plain(thr), x_all, all_idx)
        skipped = [m.name for m in cfg.methods if m.name not in result.predictions]
        result.notes.append(f"corpus '{corpus.name}' has no combined-condition judgements: predictions only, no "
                            f"scores" + (f"; methods that need fitted weights were skipped: {skipped}"
                                         if skipped else ""))
        return result

    obs = observed(corpus, cfg.target)
    result.observed = obs
    folds = make_folds(corpus, cfg.cv)
    parts: dict[str, list[Predictions]] = {m.name: [] for m in cfg.methods}
    fold_laws: dict[str, list[dict]] = {m.name: [] for m in cfg.methods}
    for test in tqdm(folds, desc=f"cross-validating ({len(folds)} folds)", disable=not progress, unit="fold"):
        train = np.setdiff1d(all_idx, test)
        x = Normaliser.fit(raw[train], cfg.expressivity.normalise)(raw)
        train_cues = cues.take(train)
        for m in cfg.methods:
            law = bci.fit_law(train_cues, m.rule, m.salience, x[train], threshold=thr)
            parts[m.name].append(_predict(corpus, cues, m, law, x, test))
            fold_laws[m.name].append(law.describe())
    groups = corpus.groups(cfg.cv.group) if cfg.bootstrap.by_group else None
    bs = cfg.bootstrap
    for m in cfg.methods:
        pred = Predictions.concat(parts[m.name]).align(corpus.item_ids)
        result.predictions[m.name] = pred
        result.metrics[m.name] = score(pred, obs, n_boot=bs.n, seed=bs.seed, groups=groups)
    for m in cfg.methods:
        comp: dict[str, Any] = {}
        if m.name != cfg.reference:
            comp["vs_" + cfg.reference] = paired_bootstrap(result.predictions[m.name],
                                                           result.predictions[cfg.reference], obs,
                                                           n_boot=bs.n, seed=bs.seed, groups=groups)
        control = cfg.control_of(m)
        if control:
            comp["vs_control"] = {"control": control, **paired_bootstrap(
                result.predictions[m.name], result.predictions[control], obs, n_boot=bs.n, seed=bs.seed,
                groups=groups)}
        comp["verdict"] = _verdict(comp, cfg.primary_metric, cfg.reference)
        result.comparisons[m.name] = comp
    result.weights = _fitted_weights(corpus, cues, cfg, x_all, fold_laws, progress)
    return result


def _verdict(comp: dict[str, Any], primary: str, reference: str) -> dict[str, Any]:
    """Which comparisons a method wins: on the primary metric, and the list of every metric it wins."""
    out: dict[str, Any] = {"primary_metric": primary}
    for key in ("vs_" + reference, "vs_control"):
        if key in comp:
            won = [name for name, v in comp[key].items() if isinstance(v, dict) and v.get("a_better")]
            out[key.replace("vs_", "beats_")] = primary in won
            out[key.replace("vs_", "metrics_won_vs_")] = won
    return out


def holdout_baselines(corpus: Corpus, cfg: StudyConfig, cues: CueTable, train: np.ndarray, test: np.ndarray,
                      x: np.ndarray) -> tuple[dict[str, Predictions], dict[str, SalienceLaw]]:
    """Every method of the study fitted on training items and predicted on test items (for comparison tables
    beside prompting and fine-tuning), and the fitted laws by "rule/salience" (for VLM-level fusion)."""
    preds, laws = {}, {}
    thr = cfg.expressivity.threshold
    for m in cfg.methods:
        law = bci.fit_law(cues.take(train), m.rule, m.salience, x[train], threshold=thr)
        laws[f"{m.rule}/{m.salience}"] = law
        preds[m.name] = _predict(corpus, cues, m, law, x, test)
    return preds, laws


def _fitted_weights(corpus: Corpus, cues: CueTable, cfg: StudyConfig, x: np.ndarray,
                    fold_laws: dict[str, list[dict]], progress: bool) -> dict[str, dict[str, Any]]:
    """Full-data fit per weighted method, with bootstrap intervals (refits on resampled groups) of the face-weight
    gap between expressive and subtle faces, the quantity the salience hypothesis predicts to be positive."""
    thr = cfg.expressivity.threshold
    out: dict[str, dict[str, Any]] = {}
    fitted = [m for m in cfg.methods if m.rule in ("product", "pool") and m.salience != "plain"]
    groups = corpus.groups(cfg.cv.group)
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(cfg.bootstrap.seed)
    draws = [np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
             for _ in range(cfg.bootstrap.weights_n)]
    for m in tqdm(fitted, desc="bootstrapping fitted weights", disable=not progress or not fitted, unit="method"):
        law = bci.fit_law(cues, m.rule, m.salience, x, threshold=thr)
        gaps, shares = [], []
        for idx in draws:
            b_law = bci.fit_law(cues.take(idx), m.rule, m.salience, x[idx], threshold=thr)
            gaps.append(b_law.face_weight_gap(x[idx]))
            shares.append(_share_gap(b_law, x[idx]))
        entry = law.describe()
        entry["face_weight_gap"] = _with_ci(law.face_weight_gap(x), gaps)
        entry["face_share_gap"] = _with_ci(_share_gap(law, x), shares)
        entry["folds"] = fold_laws[m.name]
        out[m.name] = entry
    return out


def _share_gap(law: SalienceLaw, x: np.ndarray) -> float:
    s = law.face_share(x)
    hi = law.is_expressive(x)
    return float(s[hi].mean() - s[~hi].mean()) if hi.any() and (~hi).any() else float("nan")


def _with_ci(value: float, boot: list[float]) -> dict[str, Any]:
    b = np.asarray(boot, dtype=float)
    b = b[np.isfinite(b)]
    lo, hi = (np.percentile(b, [2.5, 97.5]) if len(b) else (np.nan, np.nan))
    return {"value": float(value), "ci95": [float(lo), float(hi)], "n_boot": int(len(b))}

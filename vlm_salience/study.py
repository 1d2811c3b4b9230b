"""The cue-integration study: cross-validated fits of every method, scored against combined judgements.

Honest evaluation: expressivity normalisation and salience weights are fitted on training folds only (folds over
faces, or over participants, so that no face is both fitted and scored); test items are predicted out of fold.
Every method is scored with bootstrap intervals and compared with plain BCI and with its control (one global
weight pair) by a paired bootstrap. The bootstrap resamples whole CV groups, and where the design crosses them
with situations (utterances x wheels: every situation seen with several faces and every face with several
situations) both factors (a two-way cluster bootstrap). Fitted weights are refitted on the same resamples for
their intervals. Every law of a run is fitted by one objective (likelihood, KLD or RMSE).

A face-weight gap appears even where observers weigh every face alike: a pool's best face share moves with
expressivity under a constant-weight product (a subtle face carries little evidence, so the product leans on the
context), and face cues estimated from a few face-only raters carry a sampling error that is larger, relative to
the evidence, for subtle faces. So every gap is compared with the gap the same fit finds on no-law data
(`null_gap`: the product control's predictions as targets, face cues re-estimated from simulated raters); only the
excess is evidence of a salience law.

Laws of issue 16 beside the expressivity laws: `reliability` (its evidence: the exponent gamma beyond the null's),
`per_emotion` and `learned` (their evidence: the spread of the face share over emotions or items beyond the spread
the same fit finds on no-law data whose combined judgements are drawn again, since a fit to noisy targets finds
per-emotion and per-item differences with no law at all). Their priors are `laws` in the config. Their wins over
the control are also judged beyond the gain the same fits make out of fold on no-law corpora (`_null_gains`): with
face cues estimated from a few raters, a gate predicts better with no law at all (a false valence win on the
law-off corpus). Beside a valence block, a per-emotion law is nested in its control (its global pair is the
control's fit, `bci.fit_law`), so it predicts valence exactly as the control does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import numpy as np
from joblib import Parallel, cpu_count, delayed
from pydantic import Field, model_validator
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from vlm_salience import bci
from vlm_salience.config import StrictModel
from vlm_salience.cue_models import CueModelConfig, CueTable, build_cues, resample_face_raters, resimulate_faces
from vlm_salience.data.corpus import Corpus
from vlm_salience.expressivity import Normaliser, raw_scores
from vlm_salience.metrics import HIGHER_IS_BETTER, paired_bootstrap, resample_weights, resampling_label, score
from vlm_salience.predictions import Predictions, from_blocks, observed
from vlm_salience.law_kinds import LAWS, check_covers, kinds, law_spec
from vlm_salience.reliability import GATE_FEATURES, empirical_face_cues, law_covariates, log_reliability_ratio
from vlm_salience.salience import DEFAULT_THRESHOLD, LawKind, SalienceLaw

# how the study judges each kind, from the table (law_kinds.py): by an exponent beyond the null's, or by the
# spread of the face share beyond the null's (the sized laws), else by the face-weight gap
EXPONENT_KINDS: tuple[LawKind, ...] = kinds(evidence="exponent")
SPREAD_KINDS: tuple[LawKind, ...] = kinds(evidence="spread")


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
    # auto: also resample situations where the design crosses them with the CV groups (two-way cluster bootstrap)
    crossed: Literal["auto", "off"] = "auto"


class LawSettings(StrictModel):
    """Priors of the sized laws (each fit is the MAP; see `bci.fit_law`): one field per prior the law table
    (law_kinds.py) names, its default the table's."""

    # sd of each emotion's log-weight deviation from the global pair: 0.5 lets an emotion's weight move by a factor
    # e^{+-1} at two sd; smaller shrinks harder toward the control
    per_emotion_sd: float = Field(law_spec("per_emotion").prior_sd, gt=0)
    # sd of the learned gate's coefficients on standardised features
    gate_sd: float = Field(law_spec("learned").prior_sd, gt=0)
    # no-law corpora on which each sized law's out-of-fold gain over its control is measured again: a win over the
    # control counts only beyond that gain (0: off, and the sized laws' wins are not corrected)
    null_wins: int = Field(4, ge=0)

    def prior_sd(self, kind: LawKind) -> float:
        """The sd of the kind's prior, the field its table entry names (`prior`); a law without sized parameters
        has no prior (1.0, unused by the fit)."""
        prior = law_spec(kind).prior
        return float(getattr(self, prior)) if prior else 1.0


# every prior the table names is a setting here, and every prior setting belongs to a kind of the table
check_covers("study.LawSettings (the sized laws' prior sds)",
             [f for f in LawSettings.model_fields if f.endswith("_sd")],
             expected=[s.prior for s in LAWS.values() if s.prior])


class StudyConfig(StrictModel):
    laws: LawSettings = Field(default_factory=LawSettings)
    cue_models: CueModelConfig = Field(default_factory=CueModelConfig)
    expressivity: ExpressivityConfig = Field(default_factory=ExpressivityConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    target: Literal["mean", "kde"] = "mean"
    fit_objective: bci.Objective = "likelihood"  # what every law of the run is fitted by
    primary_metric: Literal["r", "rmse", "kld", "rating_kld", "valence_mse", "valence_r"] = "kld"
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    reference: str = "bci"  # the method every other is compared with
    methods: list[MethodConfig]
    # processes for the independent refits (folds, no-law corpora, bootstrap draws): joblib's n_jobs, -1 all cores,
    # 1 in this process. Every random draw is made in the main process in a fixed order, so the numbers do not
    # depend on it
    n_jobs: int = -1
    # a preview for iteration (`bci --quick`): fewer resamples and refits (`quick_config`), said in the report's
    # first line and in metrics.json; never the default
    quick: bool = False

    @model_validator(mode="after")
    def _names(self) -> StudyConfig:
        if self.n_jobs == 0:
            raise ValueError("n_jobs must be -1 (all cores), a positive number of processes, or -k (all but k-1); "
                             "got 0")
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

    def null_of(self, method: MethodConfig) -> str | None:
        """The no-law model a pool's salience must also beat: the product control. A pool with a share that
        moves with expressivity beats a constant pool even where observers integrate by a constant-weight
        product (reliability, not salience), so beating the pool control is no evidence on its own."""
        if method.rule != "pool" or method.salience in ("plain", "control"):
            return None
        return next((m.name for m in self.methods if m.rule == "product" and m.salience == "control"), None)


# what `--quick` keeps at most: enough resamples to see the picture, not to report it
QUICK = {"bootstrap.n": 200, "bootstrap.weights_n": 20, "laws.null_wins": 1}


def quick_config(cfg: StudyConfig) -> StudyConfig:
    """The preview of a study (`quick: true`, `bci --quick`): the resample and refit counts of QUICK where the
    config asks for more; everything that gives a point estimate is unchanged. Idempotent."""
    bs = cfg.bootstrap.model_copy(update={"n": min(cfg.bootstrap.n, QUICK["bootstrap.n"]),
                                          "weights_n": min(cfg.bootstrap.weights_n, QUICK["bootstrap.weights_n"])})
    laws = cfg.laws.model_copy(update={"null_wins": min(cfg.laws.null_wins, QUICK["laws.null_wins"])})
    return cfg.model_copy(update={"quick": True, "bootstrap": bs, "laws": laws})


def quick_note(cfg: StudyConfig) -> str:
    """The words a preview's report opens with."""
    return (f"QUICK PREVIEW (--quick): {cfg.bootstrap.n} bootstrap resamples, {cfg.bootstrap.weights_n} weight "
            f"refits and {cfg.laws.null_wins} no-law corpora (at most {QUICK['bootstrap.n']}, "
            f"{QUICK['bootstrap.weights_n']} and {QUICK['laws.null_wins']}): the point estimates are the full "
            "study's, the intervals and the verdicts are rough. Not for reporting; run without --quick.")


T = TypeVar("T")


def n_workers(n_jobs: int) -> int:
    """joblib's reading of n_jobs on this machine: -1 all cores, -k all but k - 1, k > 0 itself."""
    return max(1, cpu_count() + 1 + n_jobs) if n_jobs < 0 else n_jobs


def _stage(items: Iterable[T], total: int, desc: str, unit: str, progress: bool) -> Iterator[T]:
    """Progress of one stage. On a terminal a tqdm bar; in a log (no terminal) one line as the stage starts, one
    every 30 s while it runs and one when it ends, instead of a flood of carriage returns."""
    if not progress:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit=unit)
        return
    t0 = last = time.perf_counter()
    print(f"{desc}: {total} {unit}s", file=sys.stderr, flush=True)
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= 30 and i < total:
            print(f"{desc}: {i}/{total} ({now - t0:.0f} s)", file=sys.stderr, flush=True)
            last = now
    print(f"{desc}: done, {total} {unit}s in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def _one_blas_thread(fn: Callable[..., T], task: tuple) -> T:
    """fn(*task) with BLAS on one thread. The fits are many tiny L-BFGS-B problems, and OpenBLAS's threads, woken
    for each of their small vector operations, cost more than the arithmetic: measured on this 2-core machine,
    control, hard and logistic fits on exp. 4 took 0.67 s with 2 BLAS threads and 0.20 s with 1, the same
    parameters to the last bit."""
    with threadpool_limits(limits=1, user_api="blas"):
        return fn(*task)


def run_tasks(fn: Callable[..., T], tasks: Sequence[tuple], n_jobs: int, *, desc: str = "", unit: str = "task",
              progress: bool = False) -> list[T]:
    """fn(*task) for every task, results in task order: through joblib's process pool (loky), or in this process
    where n_jobs is 1 or there is a single task. The tasks must not draw random numbers (callers draw everything
    first, in a fixed order), so a parallel run equals a serial one to the last bit."""
    if n_workers(n_jobs) == 1 or len(tasks) <= 1:
        results: Iterable[T] = (_one_blas_thread(fn, t) for t in tasks)
    else:
        results = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(_one_blas_thread)(fn, t) for t in tasks)
    return list(_stage(results, len(tasks), desc, unit, progress and bool(desc)))


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
    resampling: str = ""  # how the bootstrap resampled, in words
    reliability: np.ndarray | None = None  # per item log(r_face / r_context) of its cues (fixed, nothing fitted)


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


def bootstrap_factors(corpus: Corpus, cfg: StudyConfig) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """The factors the bootstrap resamples: (CV groups or None, crossed situations or None, description)."""
    if not cfg.bootstrap.by_group:
        return None, None, resampling_label(None)
    groups = corpus.groups(cfg.cv.group)
    if cfg.bootstrap.crossed == "off":
        return groups, None, resampling_label(cfg.cv.group)
    sit = np.array([it.situation.id for it in corpus.items], dtype=object)
    if is_crossed(groups, sit):
        return groups, sit, resampling_label(cfg.cv.group, "situation")
    return groups, None, resampling_label(cfg.cv.group)


def is_crossed(a: np.ndarray, b: np.ndarray) -> bool:
    """Two factors are crossed when, on average, each level of one occurs with at least two levels of the other
    (utterances x wheels); a factor nested in the other (a trial's situation in its participant) is not."""
    pairs = {(str(u), str(v)) for u, v in zip(a, b)}
    if len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return False
    per_a = len(pairs) / len({p[0] for p in pairs})
    per_b = len(pairs) / len({p[1] for p in pairs})
    return per_a >= 2 and per_b >= 2


def _law_x(m: MethodConfig, cues: CueTable, x: np.ndarray) -> np.ndarray:
    """A law's covariates for these items: expressivity, and for reliability laws (expressivity, log reliability
    ratio), for a learned gate also the context entropy, computed from these very cues (so resampled face cues
    carry their own reliability)."""
    return law_covariates(m.salience, cues, x)


def _fit(cues: CueTable, m: MethodConfig, x: np.ndarray, cfg: StudyConfig, init: SalienceLaw | None = None
         ) -> SalienceLaw:
    """The method's law fitted on these (training) cues: the run's objective and the law's prior; a refit starts
    from `init` (its point fit), the same optimum in fewer iterations (`bci.fit_law`)."""
    return bci.fit_law(cues, m.rule, m.salience, x, threshold=cfg.expressivity.threshold,
                       objective=cfg.fit_objective, prior_sd=cfg.laws.prior_sd(m.salience), init=init)


def _predict(corpus: Corpus, cues: CueTable, m: MethodConfig, law: SalienceLaw, x: np.ndarray,
             idx: np.ndarray) -> Predictions:
    sub = cues.take(idx)
    blocks, w = bci.predict(sub, m.rule, law, _law_x(m, sub, x[idx]))
    weights = w if m.rule in ("product", "pool") else None
    return from_blocks(corpus, m.name, corpus.item_ids[idx], blocks, weights, x[idx])


def _fit_all(cues: CueTable, methods: list[MethodConfig], x: np.ndarray, cfg: StudyConfig,
             inits: Sequence[SalienceLaw | None] | None = None) -> list[SalienceLaw]:
    """Every method's law fitted on the same (training) cues, each from its `inits` entry where given (a warm
    start), the covariates built once per kind of law: one task of the parallel loops."""
    inits = inits or [None] * len(methods)
    xs = _shared_law_x(methods, cues, x)
    return [_fit(cues, m, xs[m.salience], cfg, init) for m, init in zip(methods, inits)]


def _shared_law_x(methods: Sequence[MethodConfig], cues: CueTable, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each kind of law's covariates on these cues (`_law_x`), built once and shared by the laws (a product's and a
    pool's) of that kind."""
    out: dict[str, np.ndarray] = {}
    for m in methods:
        if m.salience not in out:
            out[m.salience] = _law_x(m, cues, x)
    return out


def run_study(corpus: Corpus, cfg: StudyConfig, *, progress: bool = True, n_jobs: int | None = None
              ) -> StudyResult:
    """The whole study (module docstring). `n_jobs` overrides the config's (joblib: -1 all cores, 1 serial); the
    numbers are the same for any value. A config with `quick: true` runs as its preview (`quick_config`)."""
    if cfg.quick:
        cfg = quick_config(cfg)
    jobs = cfg.n_jobs if n_jobs is None else n_jobs
    cues = build_cues(corpus, cfg.cue_models)
    raw = raw_scores(corpus, cfg.expressivity.estimator)
    thr = cfg.expressivity.threshold
    x_all = Normaliser.fit(raw, cfg.expressivity.normalise)(raw)
    all_idx = np.arange(len(corpus.items))
    result = StudyResult(corpus=corpus, config=cfg, predictions={}, observed=None, expressivity=x_all,
                         notes=([quick_note(cfg)] if cfg.quick else []) + list(cues.notes),
                         reliability=log_reliability_ratio(cues))
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
    trains = [np.setdiff1d(all_idx, test) for test in folds]
    xs = [Normaliser.fit(raw[train], cfg.expressivity.normalise)(raw) for train in trains]
    laws_by_fold = run_tasks(_fit_all, [(cues.take(train), cfg.methods, x[train], cfg) for train, x in
                                        zip(trains, xs)], jobs, desc=f"cross-validating ({len(folds)} folds)",
                             unit="fold", progress=progress)
    for test, x, laws in zip(folds, xs, laws_by_fold):
        for m, law in zip(cfg.methods, laws):
            parts[m.name].append(_predict(corpus, cues, m, law, x, test))
            fold_laws[m.name].append(law.describe())
    groups, crossed, result.resampling = bootstrap_factors(corpus, cfg)
    bs = cfg.bootstrap
    null_gains = _null_gains(corpus, cues, cfg, raw, folds, progress, jobs,
                             [dict(zip((m.name for m in cfg.methods), laws)) for laws in laws_by_fold])
    for m in cfg.methods:
        pred = Predictions.concat(parts[m.name]).align(corpus.item_ids)
        result.predictions[m.name] = pred
        result.metrics[m.name] = score(pred, obs, n_boot=bs.n, seed=bs.seed, groups=groups, crossed=crossed)
    for m in cfg.methods:
        comp: dict[str, Any] = {}
        if m.name != cfg.reference:
            comp["vs_" + cfg.reference] = paired_bootstrap(result.predictions[m.name],
                                                           result.predictions[cfg.reference], obs,
                                                           n_boot=bs.n, seed=bs.seed, groups=groups, crossed=crossed)
        control = cfg.control_of(m)
        if control:
            comp["vs_control"] = {"control": control, **paired_bootstrap(
                result.predictions[m.name], result.predictions[control], obs, n_boot=bs.n, seed=bs.seed,
                groups=groups, crossed=crossed)}
            if m.name in null_gains:
                _beyond_null_gain(comp["vs_control"], null_gains[m.name])
        null = cfg.null_of(m)
        if null:
            comp["vs_null"] = {"null": null, **paired_bootstrap(
                result.predictions[m.name], result.predictions[null], obs, n_boot=bs.n, seed=bs.seed,
                groups=groups, crossed=crossed)}
        comp["verdict"] = _verdict(comp, cfg.primary_metric, cfg.reference)
        result.comparisons[m.name] = comp
    result.weights = _fitted_weights(corpus, cues, cfg, x_all, fold_laws, progress, groups, crossed, jobs)
    for name, comp in result.comparisons.items():
        v = comp["verdict"]
        if "beats_control" in v:  # evidence of salience: better than the no-law models, and a gap beyond the null
            v["salience_evidence"] = bool(v["beats_control"] and v.get("beats_null", True)
                                          and result.weights.get(name, {}).get("gap_evidence", False))
    return result


def _null_gains(corpus: Corpus, cues: CueTable, cfg: StudyConfig, raw: np.ndarray, folds: list[np.ndarray],
                progress: bool, n_jobs: int = 1, fold_fits: list[dict[str, SalienceLaw]] | None = None
                ) -> dict[str, dict[str, list[float]]]:
    """Per sized method (per_emotion, learned; product and pool) and metric: its out-of-fold gain over its control
    (law minus control) on each of `laws.null_wins` no-law corpora, cross-validated on the same folds (each fit
    starts from the same fold's fit to the real corpus, `fold_fits`, where given).

    Why: face cues estimated from a few face-only raters carry a sampling error that varies from face to face
    (larger for subtle faces), so an item-level gate over expressivity and reliability learns to lean less on a
    noisy face estimate, and predicts better out of fold than one constant pair with no law at all (a false win on
    valence MSE and r on the law-off corpus). (A per-emotion law fitted jointly had a second way: its global pair
    served valence while its deviations served the emotions. Beside a valence block it is now nested in its
    control, `bci.fit_law`, and predicts valence exactly as the control does; its emotions are still judged here.)
    The no-law corpora carry the same artefacts: targets drawn from one constant pair per block, face cues
    estimated again from raters simulated from the raw face-only histograms (`_draw_null`; from the smoothed
    estimates the null misses the sampling-error structure: the learned gate's null gain on valence MSE was +0.0003
    against -0.011 observed, law-off seed 0, where the raw histograms give -0.004)."""
    sized = [m for m in cfg.methods if m.salience in SPREAD_KINDS and cfg.control_of(m)]
    if not sized or cfg.laws.null_wins == 0:
        return {}
    by_name = {m.name: m for m in cfg.methods}
    fitted = sized + [by_name[n] for n in dict.fromkeys(cfg.control_of(m) for m in sized)]
    thr, obj = cfg.expressivity.threshold, cfg.fit_objective
    x_all = Normaliser.fit(raw, cfg.expressivity.normalise)(raw)
    base = empirical_face_cues(cues) if cues.face_rows else cues
    rng = np.random.default_rng(cfg.bootstrap.seed + 4)
    all_idx = np.arange(len(corpus.items))
    gains: dict[str, dict[str, list[float]]] = {m.name: {} for m in sized}
    expected = _control_blocks(base, x_all, thr, obj, per_block=True)
    # every no-law corpus is drawn first, in order (the fits draw nothing), then all corpora x folds are fitted at once
    corpora = [_draw_null(base, expected, rng, sample_targets=True) for _ in range(cfg.laws.null_wins)]
    trains = [np.setdiff1d(all_idx, test) for test in folds]
    xs = [Normaliser.fit(raw[train], cfg.expressivity.normalise)(raw) for train in trains]
    inits = [[ff.get(m.name) for m in fitted] for ff in fold_fits] if fold_fits else [None] * len(folds)
    laws = run_tasks(_fit_all, [(nc.take(train), fitted, x[train], cfg, init) for nc in corpora
                                for train, x, init in zip(trains, xs, inits)], n_jobs,
                     desc=f"no-law corpora (sized laws' gains: {len(corpora)} x {len(folds)} folds)", unit="fit",
                     progress=progress)
    for k, nc in enumerate(corpora):
        obs = _observed_targets(corpus, nc)
        parts: dict[str, list[Predictions]] = {m.name: [] for m in fitted}
        for f, (test, x) in enumerate(zip(folds, xs)):
            for m, law in zip(fitted, laws[k * len(folds) + f]):
                parts[m.name].append(_predict(corpus, nc, m, law, x, test))
        preds = {name: Predictions.concat(v).align(corpus.item_ids) for name, v in parts.items()}
        for m in sized:
            diff = paired_bootstrap(preds[m.name], preds[cfg.control_of(m)], obs, n_boot=0)
            for metric, d in diff.items():
                gains[m.name].setdefault(metric, []).append(d["diff"])
    return gains


def _observed_targets(corpus: Corpus, cues: CueTable) -> Predictions:
    """The combined judgements a CueTable carries (its blocks' targets), as observed Predictions."""
    blocks = {}
    for b in cues.blocks:
        tot = b.targets.sum(axis=-1, keepdims=True)
        blocks[b.name] = b.targets / np.where(tot > 0, tot, 1.0)
    return from_blocks(corpus, "observed", corpus.item_ids, blocks)


def _beyond_null_gain(vs: dict[str, Any], gains: dict[str, list[float]]) -> None:
    """A win over the control counts only beyond the mean gain the same fit makes on no-law corpora: the paired
    interval is shifted by that gain (`excess_ci95`); the uncorrected verdict stays as `a_better_raw`."""
    for metric, higher in HIGHER_IS_BETTER.items():
        e = vs.get(metric)
        g = np.asarray(gains.get(metric, []), dtype=float)
        g = g[np.isfinite(g)]
        if not isinstance(e, dict) or not len(g):
            continue
        null = float(g.mean())
        lo, hi = (c - null for c in e["ci95"])
        e.update(null_gain=null, null_gains=g.tolist(), excess=e["diff"] - null, excess_ci95=[lo, hi],
                 a_better_raw=e["a_better"],
                 a_better=bool(e["a_better"] and (lo > 0 if higher else hi < 0)))


def _verdict(comp: dict[str, Any], primary: str, reference: str) -> dict[str, Any]:
    """Which comparisons a method wins: on the primary metric, and the list of every metric it wins."""
    out: dict[str, Any] = {"primary_metric": primary}
    for key in ("vs_" + reference, "vs_control", "vs_null"):
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
    for m in cfg.methods:
        train_cues = cues.take(train)
        law = _fit(train_cues, m, _law_x(m, train_cues, x[train]), cfg)
        laws[f"{m.rule}/{m.salience}"] = law
        preds[m.name] = _predict(corpus, cues, m, law, x, test)
    return preds, laws


def _null_expectations(cues: CueTable, x: np.ndarray, thr: float, objective: bci.Objective, with_null: bool,
                       with_rel: bool) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None]:
    """One resample's no-law expectations (`_control_blocks`): for the gap null (these cues) and for a
    reliability law's null (the raw face-only histograms). Deterministic: the draws from them are made after, in
    the main process, in the resamples' order. A task of the parallel loop."""
    null = _control_blocks(cues, x, thr, objective) if with_null else None
    rel = _control_blocks(_rel_base(cues), x, thr, objective) if with_rel else None
    return null, rel


def _rel_base(cues: CueTable) -> CueTable:
    """What a reliability law's null is drawn from: the raw face-only histograms (see
    reliability.empirical_face_cues)."""
    return empirical_face_cues(cues) if cues.face_rows else cues


_Refit = tuple[float, float, float, float, float | None, float | None, float | None]


def _refit_draw(fitted: list[MethodConfig], cfg: StudyConfig, boot: CueTable, xb_all: np.ndarray, x: np.ndarray,
                null: CueTable | None, rel_null: CueTable | None, spread_null: CueTable | None,
                point: Sequence[SalienceLaw] | None = None) -> dict[str, _Refit]:
    """Every fitted method refitted on one bootstrap resample (`boot`, expressivity `xb_all`) and on its no-law
    corpus: per method (gap, share gap, gamma, spread, null gap, null gamma, null spread), the null ones None for
    a control. The resample's cues and each kind's covariates are built once and shared by every law; every refit
    starts from the method's full-data fit (`point`). A task of the parallel loop."""
    out: dict[str, _Refit] = {}
    xbs = _shared_law_x(fitted, boot, xb_all)
    xns: dict[str, np.ndarray] = {}
    for i, m in enumerate(fitted):
        init = point[i] if point is not None else None
        xb = xbs[m.salience]
        b_law = _fit(boot, m, xb, cfg, init)
        rel = m.salience in EXPONENT_KINDS
        ex = law_spec(m.salience).exponent
        row = (b_law.face_weight_gap(xb), _share_gap(b_law, xb), b_law.params[ex] if rel else np.nan,
               b_law.share_spread(xb))
        nulls: tuple[float | None, float | None, float | None] = (None, None, None)
        if m.salience != "control":
            spread = m.salience in SPREAD_KINDS
            nc = rel_null if rel else spread_null if spread else null
            if m.salience not in xns:  # a product's and a pool's law of one kind share their null corpus
                xns[m.salience] = _law_x(m, nc, x if spread else xb_all)
            xn = xns[m.salience]
            n_law = _fit(nc, m, xn, cfg, init)
            nulls = (n_law.face_weight_gap(xn), n_law.params[ex] if rel else np.nan, n_law.share_spread(xn))
        out[m.name] = (*row, *nulls)
    return out


def _fitted_weights(corpus: Corpus, cues: CueTable, cfg: StudyConfig, x: np.ndarray,
                    fold_laws: dict[str, list[dict]], progress: bool, groups: np.ndarray | None = None,
                    crossed: np.ndarray | None = None, n_jobs: int = 1) -> dict[str, dict[str, Any]]:
    """Full-data fit per weighted method, with bootstrap intervals (refits on the resamples the scores use) of
    the face-weight gap between expressive and subtle faces, the quantity the salience hypothesis predicts to be
    positive. A product's gap is in weights; a pool's in face share (the only thing that moves a pool).

    Each resample redraws the items (or groups) and every face's face-only judgements, so the intervals carry
    the face cues' estimation error too. Beside it, on each resample, the gap the same fit finds with no law
    (`null_gap`): targets from the product control (constant weights) and face cues estimated again from
    simulated face-only raters. Without a law a
    gap still appears, from the pool's form (a subtle face carries little evidence, so the product leans on the
    context) and from the face cues' sampling error (larger, relative to the evidence, for subtle faces); only the
    excess over the null (`excess_gap`, paired per resample) is evidence."""
    thr, obj = cfg.expressivity.threshold, cfg.fit_objective
    out: dict[str, dict[str, Any]] = {}
    fitted = [m for m in cfg.methods if m.rule in ("product", "pool") and m.salience != "plain"]
    n = len(corpus.items)
    counts = resample_weights(n, cfg.bootstrap.weights_n, cfg.bootstrap.seed, groups, crossed)[1:].astype(int)
    draws = [np.repeat(np.arange(n), c) for c in counts]
    rng = np.random.default_rng(cfg.bootstrap.seed + 1)
    # each resample also redraws every face's face-only judgements, so the intervals carry the face cues' error
    boot_cues = [_with_resampled_faces(cues, rng).take(idx) for idx in draws]
    with_null = any(m.salience != "control" for m in fitted)
    with_rel = any(m.salience in EXPONENT_KINDS for m in fitted)
    # the no-law expectations of every resample are fitted in parallel (deterministic); the draws from them are
    # made here, in the resamples' order, each kind of null from its own stream
    expectations = (run_tasks(_null_expectations, [(c, x[idx], thr, obj, with_null, with_rel)
                                                   for c, idx in zip(boot_cues, draws)], n_jobs,
                              desc="null resamples (no law)", unit="resample", progress=progress)
                    if with_null else [])
    null_cues = [_draw_null(c, e[0], rng) for c, e in zip(boot_cues, expectations)]
    # a reliability law's null starts from the raw face-only histograms (see reliability.empirical_face_cues)
    rel_rng = np.random.default_rng(cfg.bootstrap.seed + 2)
    rel_null_cues = ([_draw_null(_rel_base(c), e[1], rel_rng) for c, e in zip(boot_cues, expectations)]
                     if with_rel else [])
    # sized laws (per_emotion, learned): a parametric null of their spread. Each null corpus is the full data with
    # no law by construction (targets drawn from one constant pair per block, face cues estimated again from
    # raters simulated from the estimated face cues), so its face cues err once, as the real ones do, against
    # targets as noisy as the real ones. A null paired with the bootstrap resamples is not: a resample's face cues
    # come from resampled raters, a second sampling error its null lacked, which alone spread the shares beyond
    # the null's on law-off data (per_emotion, seed 0 of the small law-off corpus: excess 0.072 [0.019, 0.137]).
    # Not the raw histograms (as the gain and reliability nulls): floored, they zero every label no face rater
    # chose, the product then makes the null's targets sharper than real ones, and a per-emotion pool fitted to
    # those spreads less than on real law-off data (false evidence: excess 0.045 [0.021, 0.061], same seed).
    spread_rng = np.random.default_rng(cfg.bootstrap.seed + 3)
    spread_null_cues = []
    if any(m.salience in SPREAD_KINDS for m in fitted):
        expected = _control_blocks(cues, x, thr, obj, per_block=True)
        spread_null_cues = [_draw_null(cues, expected, spread_rng, sample_targets=True) for _ in draws]
    point = run_tasks(_fit_all, [(cues, [m], x, cfg) for m in fitted], n_jobs)  # the full-data fits, one per law
    point_laws = [law for (law,) in point]
    refits = run_tasks(_refit_draw, [(fitted, cfg, boot_cues[k], x[idx], x,
                                      null_cues[k] if null_cues else None,
                                      rel_null_cues[k] if rel_null_cues else None,
                                      spread_null_cues[k] if spread_null_cues else None, point_laws)
                                     for k, idx in enumerate(draws)], n_jobs,
                       desc=f"bootstrapping fitted weights ({len(fitted)} laws, with their nulls)", unit="resample",
                       progress=progress and bool(fitted))
    for m, (law,) in zip(fitted, point):
        x_m = _law_x(m, cues, x)
        rows = [r[m.name] for r in refits]
        gaps, shares, gammas, spreads = ([r[i] for r in rows] for i in range(4))
        has_null = m.salience != "control"
        nulls, null_gammas, null_spreads = ([r[i] for r in rows] if has_null else [] for i in range(4, 7))
        entry = law.describe()
        entry["gap_scale"] = "face share" if m.rule == "pool" else "w_face"
        gap = law.face_weight_gap(x_m)
        entry["face_weight_gap"] = _with_ci(gap, gaps)
        entry["face_share_gap"] = _with_ci(_share_gap(law, x_m), shares)
        if nulls:
            null = float(np.nanmean(nulls))
            entry["null_gap"] = _with_ci(null, nulls)
            entry["excess_gap"] = _with_ci(gap - null, np.subtract(gaps, nulls).tolist())
            lo = entry["excess_gap"]["ci95"][0]
            entry["gap_evidence"] = bool(np.isfinite(lo) and lo > 0)
        else:
            entry["gap_evidence"] = False
        if m.salience in EXPONENT_KINDS:
            # a reliability law's own evidence is its exponent beyond the exponent a no-law fit finds (face cues
            # smoothed from a few raters look less reliable than they are, which alone pulls gamma above 0)
            gamma = law.params[law_spec(m.salience).exponent]
            entry["gamma_fit"] = _with_ci(gamma, gammas)
            if null_gammas:
                entry["null_gamma"] = _with_ci(float(np.nanmean(null_gammas)), null_gammas)
                entry["excess_gamma"] = _with_ci(gamma - entry["null_gamma"]["value"],
                                                 np.subtract(gammas, null_gammas).tolist())
                lo = entry["excess_gamma"]["ci95"][0]
                entry["gap_evidence"] = bool(np.isfinite(lo) and lo > 0)
        if m.salience in SPREAD_KINDS:
            # per-emotion and gated laws: their own evidence is how much the face share varies (over emotions,
            # over items) beyond what the same fit finds on no-law corpora (the parametric null above): the full
            # data's spread against the null's distribution, excess = spread - null with the null's quantiles as
            # its interval (evidence: the spread exceeds the null's 97.5th percentile; p = share of nulls >= it)
            spread = law.share_spread(x_m)
            entry["share_spread"] = _with_ci(spread, spreads)
            if null_spreads:
                entry["null_spread"] = _with_ci(float(np.nanmean(null_spreads)), null_spreads)
                ns = np.asarray(null_spreads, dtype=float)
                ns = ns[np.isfinite(ns)]
                entry["excess_spread"] = _with_ci(spread - float(ns.mean()), (spread - ns).tolist())
                entry["excess_spread"]["p"] = float((1 + (ns >= spread).sum()) / (1 + len(ns)))
                lo = entry["excess_spread"]["ci95"][0]
                entry["gap_evidence"] = bool(np.isfinite(lo) and lo > 0)
            if law_spec(m.salience).size == "emotions":
                entry["by_emotion"]["labels"] = list(corpus.labels)
        if law_spec(m.salience).covariates != "expressivity":
            wf, wc = law.weights(x_m)  # per item (a report cannot recompute them from expressivity alone)
            entry["items"] = {"log_reliability_ratio": x_m[:, 1].tolist(), "w_face": wf.tolist(),
                              "w_context": wc.tolist()}
            if law_spec(m.salience).covariates == "gate":
                entry["features"] = list(GATE_FEATURES)
        entry["folds"] = fold_laws[m.name]
        out[m.name] = entry
    return out


def _with_resampled_faces(cues: CueTable, rng: np.random.Generator) -> CueTable:
    return resample_face_raters(cues, rng) if cues.face_rows else cues


def _control_blocks(cues: CueTable, x: np.ndarray, thr: float, objective: bci.Objective, *,
                    per_block: bool = False) -> dict[str, np.ndarray]:
    """What the product control (one constant weight pair) predicts per block: a no-law corpus's expected
    judgements. With `per_block` each block (emotions, valence) gets its own constant pair: still no law, but the
    estimated cues of different blocks often fit different pairs (the one control compromises between them), which
    a law with more parameters can exploit. Deterministic: fit once per set of cues, draw from it many times."""
    if not per_block:
        law = bci.fit_law(cues, "product", "control", x, threshold=thr, objective=objective)
        return bci.predict(cues, "product", law, x)[0]
    blocks = {}
    for b in cues.blocks:
        one = replace(cues, blocks=[b])
        law = bci.fit_law(one, "product", "control", x, threshold=thr, objective=objective)
        blocks.update(bci.predict(one, "product", law, x)[0])
    return blocks


def _draw_null(cues: CueTable, expected: dict[str, np.ndarray], rng: np.random.Generator, *,
               sample_targets: bool = False) -> CueTable:
    """A no-law corpus: targets are the `expected` distributions at each cell's number of judgements, and the face
    cues are estimated again from simulated face-only raters, so that they carry the sampling error the real ones
    carry. With `sample_targets` the combined judgements are drawn (multinomial per cell) rather than expected, so
    that they carry their sampling error too (what a per-emotion or gated law fits where no law is)."""

    def targets(b):
        n = b.targets.sum(axis=-1)
        if not sample_targets:
            return expected[b.name] * n[..., None]
        p = expected[b.name] / expected[b.name].sum(axis=-1, keepdims=True)
        return rng.multinomial(np.rint(n).astype(np.int64), p).astype(float)
    null = replace(cues, blocks=[replace(b, targets=targets(b)) for b in cues.blocks])
    return resimulate_faces(null, rng)


def _share_gap(law: SalienceLaw, x: np.ndarray) -> float:
    s = law.face_share(x)
    hi = law.is_expressive(x)
    return float(s[hi].mean() - s[~hi].mean()) if hi.any() and (~hi).any() else float("nan")


def _with_ci(value: float, boot: list[float]) -> dict[str, Any]:
    b = np.asarray(boot, dtype=float)
    b = b[np.isfinite(b)]
    lo, hi = (np.percentile(b, [2.5, 97.5]) if len(b) else (np.nan, np.nan))
    return {"value": float(value), "ci95": [float(lo), float(hi)], "n_boot": int(len(b))}

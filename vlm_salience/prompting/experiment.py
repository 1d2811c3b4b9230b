"""Prompting experiments as configs: a grid of models x strategies over a held-out split of a corpus.

Flow: split items by group (participants never straddle train and test) -> expressivity from judgements
(normalised on training items) -> BCI baselines and salience laws fitted on training items -> a retrieval index of
training cases where a strategy uses few-shot examples -> each model runs each strategy on the test items, every
answer cached -> VLM-BCI fuses a model's face-only and context-only distributions with the same salience law ->
everything is scored against the combined judgements of the test items with the same metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from vlm_salience import bci
from vlm_salience.config import RelPath, StrictModel, load_config
from vlm_salience.cue_models import build_cues
from vlm_salience.data.corpus import Corpus
from vlm_salience.errors import ConfigError
from vlm_salience.law_kinds import kinds as law_kinds_where, law_spec
from vlm_salience.metrics import pearson, score
from vlm_salience.models.loading import ModelConfig
from vlm_salience.predictions import Predictions, observed, ratings_to_distribution
from vlm_salience.prompting.answers import AnswerError, AnswerSpec, parse_answer
from vlm_salience.prompting.cache import close_answer_cache, open_answer_cache, prompt_answer_key
from vlm_salience.prompting.clips import ClipSettings
from vlm_salience.prompting.images import ItemError
from vlm_salience.prompting.inputs import Prompt, build_prompt
from vlm_salience.prompting.openai_backend import APIModelConfig, LogprobsUnavailable
from vlm_salience.prompting.templates import load_template
from vlm_salience.ranks import Ranks
from vlm_salience.ranks import current as current_ranks
from vlm_salience.salience import LawKind, SalienceLaw
from vlm_salience.splits import prepare_corpus_splits, split_groups


class HFModelEntry(ModelConfig):
    backend: Literal["hf"] = "hf"
    build: RelPath | None = None  # a tiny-model YAML: build the model at `path` first if it is missing
    batch_size: int = Field(8, ge=1)


ModelEntry = Annotated[Union[HFModelEntry, APIModelConfig], Field(discriminator="backend")]


class SplitConfig(StrictModel):
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    group: str = "participant"
    seed: int = 0
    max_test_items: int | None = None


class StrategyConfig(StrictModel):
    name: str
    template: str | None = None  # one prompt template for every item
    salience_templates: list[str] | None = None  # [subtle, expressive], chosen per item by expressivity
    read: Literal["score", "generate"] = "score"
    max_new_tokens: int = Field(64, ge=1)
    examples: Literal["none", "retrieved", "fixed"] = "none"
    k: int = Field(3, ge=1)
    fuse: list[str] | None = None  # [face strategy, context strategy]: VLM-level cue integration
    rule: Literal["product", "pool"] = "product"
    salience: LawKind = "plain"

    @model_validator(mode="after")
    def _one_kind(self) -> StrategyConfig:
        kinds = [self.template is not None, self.salience_templates is not None, self.fuse is not None]
        if sum(kinds) != 1:
            raise ValueError("a strategy has exactly one of template, salience_templates or fuse")
        if self.salience_templates is not None and len(self.salience_templates) != 2:
            raise ValueError("salience_templates is [template for subtle faces, template for expressive faces]")
        if self.fuse is not None and len(self.fuse) != 2:
            raise ValueError("fuse is [face strategy, context strategy]")
        if law_spec(self.salience).covariates != "expressivity":
            # fusion and template choice read each item's expressivity alone; a reliability or learned law also
            # reads the human face-only judgements' reliability, which the model's answers do not carry
            raise ValueError(f"strategy {self.name!r}: salience {self.salience!r} reads more than expressivity, "
                             "and VLM-level fusion has only expressivity per item; use one of "
                             f"{', '.join(law_kinds_where(covariates='expressivity'))}")
        return self


class VLMExpressivityConfig(StrictModel):
    strategy: str = "face_only"  # the strategy whose face-only answers give the automatic expressivity
    score: Literal["auto", "not_neutral", "peak"] = "auto"  # auto: not_neutral where the labels have a neutral


class ExperimentConfig(StrictModel):
    name: str
    data: RelPath
    data_overrides: list[str] = Field(default_factory=list)
    split: SplitConfig = Field(default_factory=SplitConfig)
    study: RelPath  # the BCI study config: baselines, cue models, expressivity, laws for VLM-BCI
    models: list[ModelEntry]
    strategies: list[StrategyConfig]
    expressivity_source: Literal["judgements", "vlm"] = "judgements"
    vlm_expressivity: VLMExpressivityConfig = Field(default_factory=VLMExpressivityConfig)
    retrieval: RelPath | None = None  # retrieval YAML, for strategies with examples
    retrieval_overrides: list[str] = Field(default_factory=list)
    out: RelPath
    cache: RelPath | None = None  # default: <out>/cache.sqlite
    bootstrap: int = Field(1000, ge=0)
    chunk: int = Field(32, ge=1)  # items per backend call between cache commits
    clip: ClipSettings = Field(default_factory=ClipSettings)  # faces that are clips: frames, video or images

    @model_validator(mode="after")
    def _references(self) -> ExperimentConfig:
        names = [s.name for s in self.strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"strategy names must be unique: {names}")
        for s in self.strategies:
            for ref in s.fuse or []:
                src = next((t for t in self.strategies if t.name == ref), None)
                if src is None or src.fuse is not None:
                    raise ValueError(f"strategy {s.name} fuses '{ref}', which is not a template strategy")
                if src.read != "score":
                    raise ValueError(f"strategy {s.name} fuses '{ref}': fusion needs read: score distributions")
        if self.expressivity_source == "vlm" and self.vlm_expressivity.strategy not in names:
            raise ValueError(f"expressivity_source vlm needs strategy '{self.vlm_expressivity.strategy}'")
        if self.clip.stream == "both":  # the masked scene exists only in a video corpus's frame cache
            from vlm_salience.prompting.clips import BOTH_NEEDS_CACHE

            raise ValueError("clip.stream both: an image corpus (Split-Steal face videos) has no frame_cache; "
                             + BOTH_NEEDS_CACHE)
        return self


@dataclass
class ExperimentResult:
    """Predictions of several methods on the same held-out items, and what the report needs to describe them."""

    corpus: Corpus
    title: str
    split: dict[str, Any]
    models: list[dict[str, Any]]  # name, and whether it is a tiny random stand-in
    config: dict[str, Any]  # the run's config, as JSON
    test_ids: np.ndarray
    predictions: dict[str, Predictions] = field(default_factory=dict)  # "<model>/<strategy>" or "bci/<method>"
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    expressivity: dict[str, Any] = field(default_factory=dict)
    observed: Predictions | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a learned gate's weights


# ---------------------------------------------------------------------------------------------------------------

def split_items(corpus: Corpus, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train and test item indices (vlm_salience.splits: the rule fine-tuning uses too)."""
    s = split_groups(corpus, test_fraction=cfg.test_fraction, group=cfg.group, seed=cfg.seed,
                     max_test_items=cfg.max_test_items)
    return s.train, s.test


def make_backend(entry, *, progress: bool = True, ranks: Ranks | None = None):
    """The backend of a model entry; under `accelerate launch` (`ranks`) a Hugging Face model loads on this rank's
    own GPU (ranks.device_map) and only rank 0 builds a missing tiny model (the others wait for it)."""
    if isinstance(entry, APIModelConfig):
        from vlm_salience.prompting.openai_backend import OpenAIBackend

        return OpenAIBackend(entry)
    from vlm_salience.models.loading import load_vlm
    from vlm_salience.prompting.hf_backend import HFBackend

    ranks = ranks or Ranks()
    if entry.build is not None and ranks.is_main and not Path(entry.path).exists():
        from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm

        build_tiny_vlm(load_config(entry.build, TinyVLMConfig), entry.path)
    if entry.build is not None:
        ranks.barrier()
    entry = entry.model_copy(update={"device_map": ranks.device_map(entry.device_map)})
    return HFBackend(load_vlm(entry), batch_size=entry.batch_size)


def _softmax(logp: np.ndarray) -> np.ndarray:
    z = np.asarray(logp, float) - np.max(logp)
    e = np.exp(z)
    return e / e.sum()


def answers_to_predictions(corpus: Corpus, spec: AnswerSpec, name: str, item_ids: np.ndarray,
                           answers: list[Any]) -> Predictions:
    """Scored slots or generated texts -> Predictions; failed items keep NaNs and their error message."""
    n, K = len(item_ids), len(spec.labels)
    dist = np.full((n, K), np.nan)
    valence = np.full(n, np.nan)
    ratings = np.full((n, K), np.nan) if spec.response == "ratings" else None
    rating_dist = np.full((n, K, len(spec.scale.points)), np.nan) if spec.response == "ratings" else None
    vdist = np.full((n, len(spec.valence_scale.points)), np.nan) if spec.valence_scale is not None else None
    error = np.array([""] * n, dtype=object)
    for i, a in enumerate(answers):
        if "error" in a:
            error[i] = a["error"]
            continue
        if "slots" in a:
            slots = a["slots"]
            if spec.response == "choice":
                dist[i] = _softmax(slots["emotion"])
                if vdist is not None:
                    vdist[i] = _softmax(slots["valence"])
                    valence[i] = vdist[i] @ spec.valence_scale.points
            else:
                for k, lab in enumerate(spec.labels):
                    rating_dist[i, k] = _softmax(slots[f"rating:{lab}"])
                ratings[i] = rating_dist[i] @ spec.scale.points
                dist[i] = ratings_to_distribution(ratings[i], spec.scale)
            continue
        try:
            parsed = parse_answer(a["text"], spec)
        except AnswerError as exc:
            error[i] = f"unparseable answer: {exc}"
            continue
        dist[i] = parsed.emotion_dist
        if parsed.ratings is not None:
            ratings[i] = parsed.ratings
        if parsed.valence is not None:
            valence[i] = parsed.valence
    if spec.response == "ratings" and corpus.valence_weights is not None:
        valence = ratings @ corpus.valence_weights
    elif spec.valence_scale is None and corpus.valence_weights is not None:
        valence = dist @ corpus.valence_weights
    return Predictions(method=name, item_ids=np.asarray(item_ids, dtype=object), labels=spec.labels,
                       emotion_dist=dist, valence=valence, ratings=ratings, rating_dist=rating_dist,
                       valence_dist=vdist, error=error)


def vlm_expressivity(pred: Predictions, spec: AnswerSpec, kind: str) -> np.ndarray:
    """An automatic expressivity per item from face-only answers: 1 - P(neutral), or the peak probability."""
    if kind == "auto":
        kind = "not_neutral" if spec.neutral_label is not None else "peak"
    if kind == "not_neutral":
        if spec.neutral_label is None:
            raise ConfigError("vlm_expressivity.score not_neutral needs a corpus with a neutral label; use peak")
        return 1.0 - pred.emotion_dist[:, spec.labels.index(spec.neutral_label)]
    return np.nanmax(pred.emotion_dist, axis=1)


# ---------------------------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, cfg: ExperimentConfig, *, progress: bool = True, ranks: Ranks | None = None) -> None:
        self.cfg, self.progress = cfg, progress
        self.ranks = ranks or current_ranks()  # under accelerate launch: each rank asks the model its share
        prepared = prepare_corpus_splits(cfg.data, cfg.study, cfg.split, overrides=cfg.data_overrides)
        self.corpus = prepared.corpus
        self.spec = AnswerSpec.from_corpus(self.corpus)
        self.study = prepared.study
        self.train, self.test = prepared.splits.train, prepared.splits.test
        self.test_ids = self.corpus.item_ids[self.test]
        self.cache = open_answer_cache(cfg.cache or Path(cfg.out) / "cache.sqlite", self.ranks)
        self.result = ExperimentResult(
            corpus=self.corpus, title=cfg.name, split=cfg.split.model_dump(), config=cfg.model_dump(mode="json"),
            models=[{"name": m.name, "tiny": getattr(m, "build", None) is not None} for m in cfg.models],
            test_ids=self.test_ids)
        self._index = None
        self._fixed_examples = None
        self.x_judgements = prepared.expressivity
        if prepared.expressivity is None:
            self.result.notes.append(f"no judgement-based expressivity ({prepared.expressivity_error})")
        self.threshold = prepared.threshold

    # -- baselines and laws on training items ----------------------------------------------------------------
    def baselines(self) -> dict[str, SalienceLaw]:
        """BCI methods fitted on training items and predicted on test items; returns the fitted laws."""
        laws: dict[str, SalienceLaw] = {}
        if not self.corpus.has_targets or self.x_judgements is None:
            self.result.notes.append("no BCI baselines: the corpus lacks combined judgements or face-only ones")
            return laws
        from vlm_salience.study import holdout_baselines

        self.cues = build_cues(self.corpus, self.study.cue_models)
        preds, laws = holdout_baselines(self.corpus, self.study, self.cues, self.train, self.test, self.x_judgements)
        for name, pred in preds.items():
            self.result.predictions[f"bci/{name}"] = pred
        return laws

    def law_for(self, laws: dict[str, SalienceLaw], rule: str, kind: str) -> SalienceLaw:
        if kind == "plain":
            return SalienceLaw.plain(self.threshold)
        key = f"{rule}/{kind}"
        if key not in laws:
            if not self.corpus.has_targets or self.x_judgements is None:
                raise ConfigError(f"a {kind} law needs combined judgements to be fitted on training items")
            cues = getattr(self, "cues", None) or build_cues(self.corpus, self.study.cue_models)
            laws[key] = bci.fit_law(cues.take(self.train), rule, kind, self.x_judgements[self.train],
                                    threshold=self.threshold)
        return laws[key]

    # -- few-shot examples ------------------------------------------------------------------------------------
    def examples_for(self, strategy: StrategyConfig, item_index: int) -> list[dict]:
        if strategy.examples == "none":
            return []
        index = self._retrieval_index()
        if strategy.examples == "fixed":
            if self._fixed_examples is None:  # the k training cases closest to the corpus's average case
                centre = np.asarray(index.index.reconstruct_n(0, len(index))).mean(axis=0, keepdims=True)
                centre /= np.linalg.norm(centre)
                self._fixed_examples = [self._example(h) for h in index.search(centre, k=strategy.k)[0]]
            return self._fixed_examples[:strategy.k]
        case = self._cases[item_index]
        hits = index.search(case.text, k=strategy.k, exclude=index.guard_for(case))[0]
        return [self._example(h) for h in hits]

    def _example(self, hit) -> dict:
        p = hit.payload
        return {"situation": p["situation"], "face": p.get("face_text"),
                "answer": self.spec.example_answer(p["observed"])}

    def _retrieval_index(self):
        if self._index is None:
            from vlm_salience.resources import shipped
            from vlm_salience.retrieval.cases import cases_from_corpus
            from vlm_salience.retrieval.index import CaseIndex, IndexConfig

            if not self.corpus.has_targets:
                raise ConfigError("few-shot examples show observer ratings: the corpus needs combined judgements")
            icfg = load_config(self.cfg.retrieval or shipped("configs/retrieval/default.yaml"), IndexConfig,
                               self.cfg.retrieval_overrides)
            self._cases = cases_from_corpus(self.corpus, self.x_judgements)
            train_cases = [self._cases[i] for i in self.train]  # test items are never in the index
            self._index = CaseIndex.build(train_cases, icfg, progress=False,
                                          corpus={"name": self.corpus.name, "fingerprint": self.corpus.fingerprint})
        return self._index

    # -- running a strategy -------------------------------------------------------------------------------------
    def expressivity(self) -> np.ndarray:
        if self.cfg.expressivity_source == "vlm":
            return self._x_vlm
        if self.x_judgements is None:
            raise ConfigError("no judgement-based expressivity; set expressivity_source: vlm")
        return self.x_judgements

    def run_template_strategy(self, backend, strategy: StrategyConfig) -> Predictions:
        """Every test item's answer, from the cache or the model. Under a launch each rank builds and asks its
        contiguous share of the items (its answers cached in its shard) and the shares are gathered in item order,
        so every rank goes on with every answer, as one process would."""
        share = self.ranks.share(len(self.test))
        mine = self.test[share.start:share.stop]
        prompts: list[Prompt | None] = []
        errors: dict[int, str] = {}
        templates = [load_template(t) for t in (strategy.salience_templates or [strategy.template])]
        x = self.expressivity()[mine] if strategy.salience_templates else None
        law = SalienceLaw.plain(self.threshold)
        clip_mode = self.cfg.clip.resolved_mode(getattr(backend, "family", None))
        for j, i in enumerate(mine):
            template = templates[int(law.is_expressive(x[j]))] if x is not None else templates[0]
            try:
                examples = self.examples_for(strategy, i)
                prompts.append(build_prompt(template, self.corpus.items[i], self.spec, examples=examples,
                                            expressivity=None if x is None else float(x[j]),
                                            clip=self.cfg.clip, clip_mode=clip_mode))
            except ItemError as exc:
                prompts.append(None)
                errors[j] = str(exc)
        fp, slots = backend.fingerprint(), self.spec.slots()
        digests = {t.name: t.digest for t in templates}
        keys = [prompt_answer_key(fp, digests[p.template], p, strategy.read, max_new_tokens=strategy.max_new_tokens,
                                  slots=slots) if p is not None else None for p in prompts]
        cached = self.cache.get_many([k for k in keys if k])
        todo = [j for j, k in enumerate(keys) if k and k not in cached]
        bar = tqdm(total=len(mine), desc=f"{backend.name}/{strategy.name}", unit="item",
                   disable=not (self.progress and self.ranks.is_main), initial=len(mine) - len(todo))
        t0, done = time.perf_counter(), 0
        read = strategy.read
        notes: list[str] = []
        for s in range(0, len(todo), self.cfg.chunk):
            idx = todo[s:s + self.cfg.chunk]
            batch = [prompts[j] for j in idx]
            answers = self._ask(backend, batch, read, strategy, bar)
            if read == "score" and answers is None:
                read = "generate"
                notes.append(f"{backend.name}/{strategy.name}: no log-probabilities from the server; "
                             "answers were read by generate-and-parse")
                answers = self._ask(backend, batch, read, strategy, bar)
            self.cache.put_many({keys[j]: a for j, a in zip(idx, answers)})
            cached.update({keys[j]: a for j, a in zip(idx, answers)})
            done += len(idx)
        bar.close()
        seconds = time.perf_counter() - t0
        answers = self.ranks.gather([{"error": errors[j]} if j in errors else cached[keys[j]]
                                     for j in range(len(prompts))])
        asked = self.ranks.gather_each({"done": done, "seconds": seconds, "notes": notes})
        self.result.notes += list(dict.fromkeys(n for a in asked for n in a["notes"]))
        done = sum(a["done"] for a in asked)
        if done:  # items per second of the whole launch: the processes ran side by side
            self.result.throughput[f"{backend.name}/{strategy.name}"] = done / max(a["seconds"] for a in asked)
        return answers_to_predictions(self.corpus, self.spec, strategy.name, self.test_ids, answers)

    def _ask(self, backend, prompts: list[Prompt], read: str, strategy: StrategyConfig, bar) -> list[dict] | None:
        def tick(n):
            bar.update(n)
        try:
            if read == "score":
                got = backend.score(prompts, self.spec.slots(), on_batch=tick)
                return [{"error": str(g)} if isinstance(g, Exception) else
                        {"slots": {k: v.tolist() for k, v in g.items()}} for g in got]
            texts = backend.generate(prompts, strategy.max_new_tokens, on_batch=tick)
            return [{"error": str(t)} if isinstance(t, Exception) else {"text": t} for t in texts]
        except LogprobsUnavailable:
            return None

    def run_fusion(self, strategy: StrategyConfig, face: Predictions, context: Predictions,
                   laws: dict[str, SalienceLaw]) -> Predictions:
        """VLM-BCI: the model's face-only and context-only distributions fused with a salience law."""
        from vlm_salience.prompting.fusion import fuse

        law = self.law_for(laws, strategy.rule, strategy.salience)
        return fuse(self.corpus, strategy.name, face, context, strategy.rule, law, self.expressivity()[self.test])

    # -- the grid -------------------------------------------------------------------------------------------
    def run(self) -> ExperimentResult:
        # under a launch the other ranks only ask the model: BCI, the laws and fusion are rank 0's
        laws = self.baselines() if self.ranks.is_main else {}
        order = sorted(self.cfg.strategies, key=lambda s: (s.fuse is not None, s.salience_templates is not None))
        if self.cfg.expressivity_source == "vlm":
            first = next(s for s in order if s.name == self.cfg.vlm_expressivity.strategy)
            order.remove(first)
            order.insert(0, first)
        for entry in self.cfg.models:
            backend = make_backend(entry, progress=self.progress, ranks=self.ranks)
            done: dict[str, Predictions] = {}
            for strategy in order:
                if strategy.fuse:
                    if not self.ranks.is_main:
                        continue
                    pred = self.run_fusion(strategy, done[strategy.fuse[0]], done[strategy.fuse[1]], laws)
                else:
                    pred = self.run_template_strategy(backend, strategy)
                done[strategy.name] = pred
                self.result.predictions[f"{backend.name}/{strategy.name}"] = pred
                if strategy.name == self.cfg.vlm_expressivity.strategy:
                    self._record_vlm_expressivity(backend.name, pred)
            if hasattr(backend, "close"):
                backend.close()
        if self.ranks.is_main:  # the others hold the same predictions; one process scores and reports
            self._score()
        return self.result

    def _record_vlm_expressivity(self, model: str, pred: Predictions) -> None:
        from vlm_salience.expressivity import register

        x_test = vlm_expressivity(pred, self.spec, self.cfg.vlm_expressivity.score)
        full = np.full(len(self.corpus.items), np.nan)
        full[self.test] = x_test
        self._x_vlm = np.nan_to_num(full, nan=0.5)
        scores = dict(zip(self.test_ids, x_test))
        register(f"vlm:{model}")(lambda corpus, s=scores: np.array([s.get(i, np.nan) for i in corpus.item_ids]))
        entry: dict[str, Any] = {"estimator": f"vlm:{model}", "score": self.cfg.vlm_expressivity.score,
                                 "mean": float(np.nanmean(x_test))}
        if self.x_judgements is not None:
            xj = self.x_judgements[self.test]
            from scipy.stats import spearmanr

            ok = np.isfinite(x_test)
            entry["agreement_with_judgements"] = {
                "estimator": self.study.expressivity.estimator, "pearson_r": pearson(x_test[ok], xj[ok]),
                "spearman_r": float(spearmanr(x_test[ok], xj[ok]).statistic) if ok.sum() > 2 else float("nan"),
                "items": int(ok.sum())}
        self.result.expressivity[model] = entry
        self.result.predictions[f"{model}/{self.cfg.vlm_expressivity.strategy}"].expressivity = x_test

    def _score(self) -> None:
        res = self.result
        if not self.corpus.has_targets:
            res.notes.append("the corpus has no combined judgements: predictions only, no scores")
        else:
            obs = observed(self.corpus).align(self.test_ids)
            res.observed = obs
            groups = self.corpus.groups(self.cfg.split.group)[self.test]
            for name, pred in res.predictions.items():
                res.metrics[name] = score(pred, obs, n_boot=self.cfg.bootstrap, groups=groups)
        for name, pred in res.predictions.items():
            if name.startswith("bci/"):
                continue
            errs = pred.error[pred.error != ""]
            kinds: dict[str, int] = {}
            for e in errs:
                kind = "unparseable answer" if e.startswith("unparseable") else e.split(":")[0][:60]
                kinds[kind] = kinds.get(kind, 0) + 1
            res.failures[name] = {"items": int(len(pred)), "failed": int(len(errs)),
                                  "unparseable": int(sum(e.startswith("unparseable") for e in errs)),
                                  "by_kind": kinds, "examples": [str(e) for e in errs[:3]]}


def run_experiment(cfg: ExperimentConfig, *, progress: bool = True) -> ExperimentResult:
    """Run the grid. Under `accelerate launch` every rank asks the model its share of the items, and only rank
    0's result is whole (BCI baselines, fusion, scores): write the outputs there (ranks.is_main_process)."""
    runner = Runner(cfg, progress=progress)
    try:
        result = runner.run()
    except BaseException:
        runner.cache.close()  # a launch that fails stops every rank; its shards stay for the next run to merge
        raise
    close_answer_cache(runner.cache, runner.ranks)
    return result

"""Routing between a face-focused and a context-focused LoRA expert by the salience of each item.

- hard: expressive faces (above the threshold) go to the face expert, the others to the context expert; a batch
  that mixes both runs in one forward pass with peft's per-sample `adapter_names`;
- soft: both experts answer and their distributions are pooled by the face share of the salience law BCI fits on
  the training items (`vlm_salience.salience`, the same weights BCI uses);
- learned: a small logistic gate on expressivity and cheap context features, fitted on the validation split by
  the likelihood of the combined judgements under the gated mixture.
The same gates over clip-level class distributions (`fit_share_gate`, `gate_share`, `calibrate_threshold`) route the
face and context experts of a video corpus (training/clip_routing.py).
Each is also run on calibrated experts (`routed/<kind>+calibrated`, `routing.calibration`): the two experts answer on
different valence scales and with different confidence, so each one's valence is mapped (isotonic or linear) and its
label distributions tempered, fitted on the validation split only (vlm_salience/calibration.py); the fit, and paired
bootstraps of calibrated against uncalibrated routing, are in `extra["calibration"]`.
Results are scored beside the BCI baselines, zero-shot prompting and every single adapter on the same test items.
Answers are cached (`ExpertScorer`); under `accelerate launch` each rank scores its share of the items and rank 0
alone fits and scores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from vlm_salience.cue_models import build_cues
from vlm_salience.errors import ConfigError
from vlm_salience.prompting.answers import AnswerSpec
from vlm_salience.prompting.cache import prompt_answer_key
from vlm_salience.prompting.experiment import ExperimentResult, answers_to_predictions
from vlm_salience.prompting.fusion import answer_blocks, fuse, mixture
from vlm_salience.prompting.inputs import build_prompt
from vlm_salience.prompting.templates import load_template
from vlm_salience.study import holdout_baselines
from vlm_salience.calibration import ExpertCalibration, fit_expert, mix_valence, select_rows
from vlm_salience.predictions import Predictions
from vlm_salience.training.config import CalibrationConfig, TrainConfig
from vlm_salience.training.data import TrainingData
from vlm_salience.training.vlm_task import adapter_path, base_fingerprint


def load_with_adapters(cfg: TrainConfig, names: list[str], *, ranks=None):
    """The base model with the named adapters loaded side by side (each checked against the base); under
    `accelerate launch` (`ranks`) on this rank's own GPU."""
    import json

    from peft import PeftModel

    from vlm_salience.models.loading import LoadedVLM, ModelConfig, load_vlm

    mc = ModelConfig(**{k: v for k, v in cfg.model.model_dump().items() if k in ModelConfig.model_fields})
    if ranks is not None:
        mc = mc.model_copy(update={"device_map": ranks.device_map(mc.device_map)})
    base = load_vlm(mc)
    fp = base_fingerprint(cfg.model.path)
    model = None
    for name in names:
        path = adapter_path(cfg, name)
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"adapter '{name}' not found at {path}; train it first (vlm-salience train)")
        meta = json.loads((path / "training.json").read_text()) if (path / "training.json").is_file() else {}
        if meta.get("base_fingerprint") not in (None, fp):
            raise ConfigError(f"adapter '{name}' was trained on another base model than {cfg.model.path}")
        if model is None:
            model = PeftModel.from_pretrained(base.model, str(path), adapter_name=name, is_trainable=False)
        else:
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    model.eval()
    return LoadedVLM(model=model, processor=base.processor, family=base.family, config=base.config)


def adapter_fingerprint(folder: str | Path) -> str:
    """An adapter's identity for answer-cache keys: its config and weights, by content (LoRA weights are small;
    a retrained adapter is a new model even where its files keep their sizes)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("adapter_*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


class ExpertScorer:
    """Label scoring for `route`: every answer cached (<out>/routing/answers.sqlite, keyed like `prompt run`'s with
    the base model and the adapter that answered), and under `accelerate launch` each rank scores its contiguous
    share of the items, the answers gathered in item order on every rank (vlm_salience/ranks.py). A killed run
    asks again only what no rank had cached."""

    def __init__(self, backend, cache, ranks, spec: AnswerSpec, corpus, clip: dict, model_keys: dict,
                 chunk: int) -> None:
        self.backend, self.cache, self.ranks, self.spec, self.corpus = backend, cache, ranks, spec, corpus
        self.clip, self.model_keys, self.chunk = clip, model_keys, chunk
        self.asked: dict[str, int] = {}

    def __call__(self, templates: list[str], idx: np.ndarray, name: str, who: list[str | None], *,
                 mixed: bool = False) -> tuple[Predictions, float]:
        """Predictions of items `idx` (templates[j] and adapter who[j] for item j; None: the base alone; `mixed`:
        one peft pass over a batch that mixes adapters, cached apart from the single-adapter answers). Returns
        them and the seconds the model took (the slowest rank's)."""
        share = self.ranks.share(len(idx))
        mine = list(range(share.start, share.stop))
        slots = self.spec.slots()
        loaded = {t: load_template(t) for t in dict.fromkeys(templates)}
        prompts = [build_prompt(loaded[templates[j]], self.corpus.items[idx[j]], self.spec, **self.clip)
                   for j in mine]
        keys = [prompt_answer_key(self.model_keys[who[j]] + ("|mixed" if mixed else ""), loaded[templates[j]].digest,
                                  p, "score", slots=slots) for j, p in zip(mine, prompts)]
        got = self.cache.get_many(keys)
        todo = [k for k, key in enumerate(keys) if key not in got]
        t0 = time.perf_counter()
        for s in range(0, len(todo), self.chunk):
            part = todo[s:s + self.chunk]
            res = self.backend.score([prompts[k] for k in part], slots,
                                     adapters=[who[mine[k]] for k in part] if mixed else None)
            new = {keys[k]: {"error": str(g)} if isinstance(g, Exception) else
                   {"slots": {n: v.tolist() for n, v in g.items()}} for k, g in zip(part, res)}
            self.cache.put_many(new)
            got.update(new)
        timing = self.ranks.gather_each({"asked": len(todo), "seconds": time.perf_counter() - t0})
        self.asked[name] = sum(t["asked"] for t in timing)
        answers = self.ranks.gather([got[key] for key in keys])
        pred = answers_to_predictions(self.corpus, self.spec, name, self.corpus.item_ids[idx], answers)
        return pred, max(t["seconds"] for t in timing)


def _fit(blocks, targets, features, ok, ridge):
    """Logistic gate weights w: share = sigmoid(features @ w), maximising the likelihood of the targets."""
    def nll(w):
        s = 1.0 / (1.0 + np.exp(-(features @ w)))
        total, n = 0.0, 0.0
        for b, t in zip(blocks, targets):
            mix = s[:, None, None] * b.face + (1 - s[:, None, None]) * b.context
            total -= float((t[ok] * np.log(np.clip(mix[ok], 1e-12, None))).sum())
            n += float(t[ok].sum())
        return total / max(n, 1.0) + ridge * float(w[1:] @ w[1:])
    res = minimize(nll, np.zeros(features.shape[1]), method="L-BFGS-B")
    return res.x


# -- the same gates over clip-level class distributions (video corpora: training/clip_routing.py) ---------------

def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_share_gate(face: np.ndarray, context: np.ndarray, labels: np.ndarray, features: np.ndarray,
                   ridge: float = 1e-2) -> np.ndarray:
    """The logistic gate `_fit` fits for items, over clips: face share = sigmoid(features @ w), maximising the
    likelihood of the true labels under the mixture of the two experts' (n, K) class distributions."""
    from types import SimpleNamespace

    labels = np.asarray(labels, np.int64)
    onehot = np.eye(face.shape[1])[labels][:, None, :]
    block = SimpleNamespace(face=np.asarray(face, float)[:, None, :], context=np.asarray(context, float)[:, None, :])
    return _fit([block], [onehot], np.asarray(features, float), np.ones(len(labels), bool), ridge)


def gate_share(features: np.ndarray, w: np.ndarray) -> np.ndarray:
    return _sigmoid(np.asarray(features, float) @ w)


def _uar(y: np.ndarray, yhat: np.ndarray, n_classes: int) -> float:
    recalls = [float((yhat[y == k] == k).mean()) for k in range(n_classes) if (y == k).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def calibrate_threshold(face: np.ndarray, context: np.ndarray, labels: np.ndarray, x: np.ndarray) -> float:
    """Hard routing's expressivity threshold (x >= threshold: the face expert), chosen on validation clips: the
    midpoint between consecutive validation values (or beyond either end: one expert for all) whose routing has
    the highest validation UAR; ties go to the threshold nearest the median expressivity."""
    x = np.asarray(x, float)
    labels = np.asarray(labels, np.int64)
    v = np.unique(x)
    candidates = np.concatenate([[v[0] - 1.0], (v[1:] + v[:-1]) / 2, [v[-1] + 1.0]]) if len(v) else np.array([0.5])
    k = face.shape[1]
    best, best_t = -1.0, float(np.median(x)) if len(x) else 0.5
    for t in sorted(candidates, key=lambda c: abs(c - np.median(x))):
        pred = np.where(x >= t, face.argmax(1), context.argmax(1))
        u = _uar(labels, pred, k)
        if u > best + 1e-12:
            best, best_t = u, float(t)
    return best_t


def gate_features(data: TrainingData, idx: np.ndarray, names: list[str], scaler=None):
    """Bias, expressivity and the named context features (categories one-hot over the corpus's levels),
    standardised with the statistics of the items the gate is fitted on."""
    corpus = data.corpus
    frame = pd.DataFrame([corpus.items[i].situation.features for i in idx])
    cols = [np.ones(len(idx)), data.expressivity[idx] - 0.5]
    for f in names:
        if f not in frame:
            raise ConfigError(f"routing.gate_features names '{f}', which is not a context feature")
        if pd.api.types.is_numeric_dtype(frame[f]):
            cols.append(frame[f].to_numpy(dtype=float))
        else:
            levels = sorted({str(s.features[f]) for s in corpus.situations.values()})
            cols += [(frame[f].astype(str) == level).to_numpy(dtype=float) for level in levels[1:]]
    X = np.column_stack(cols)
    if scaler is None:
        mu, sd = X.mean(0), X.std(0)
        mu[:2], sd[:2] = 0.0, 1.0
        scaler = (mu, np.where(sd > 0, sd, 1.0))
    return (X - scaler[0]) / scaler[1], scaler


def route(cfg: TrainConfig, *, progress: bool = True) -> ExperimentResult | None:
    """Zero-shot, every adapter, and the experts routed hard, soft and learned, on the test items beside BCI.

    The model answers first (cached; under `accelerate launch` split by rank, ExpertScorer); then rank 0 alone
    fits the laws, the gate and the calibrations on the training and validation items and scores the test items.
    Under a launch the other ranks return None."""
    from vlm_salience.prompting.cache import close_answer_cache, open_answer_cache
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.ranks import current

    ranks = current()
    data = TrainingData(cfg)
    r = cfg.routing
    specs = {a.name: a for a in cfg.adapters}
    for name in (r.face, r.context, *r.single):
        if name not in specs:
            raise ConfigError(f"routing names adapter '{name}', which the config does not train")
    corpus, spec = data.corpus, data.spec
    test, val = data.splits.test, data.splits.validation
    ids = corpus.item_ids[test]
    x = data.expressivity
    names = list(dict.fromkeys([r.face, r.context, *r.single]))
    loaded = load_with_adapters(cfg, names, ranks=ranks)
    backend = HFBackend(loaded, batch_size=cfg.optim.batch_size)
    model = loaded.model
    clip = {"clip": cfg.data.clip, "clip_mode": cfg.data.clip.resolved_mode(loaded.family, training=True)}  # as in training
    base = backend.fingerprint()
    model_keys = {None: f"{base}|no adapter",
                  **{n: f"{base}|adapter {n}:{adapter_fingerprint(adapter_path(cfg, n))}" for n in names}}
    cache = open_answer_cache(Path(cfg.out) / "routing" / "answers.sqlite", ranks)
    scorer = ExpertScorer(backend, cache, ranks, spec, corpus, clip, model_keys, chunk=4 * cfg.optim.batch_size)
    expressive = data.split_law.is_expressive(x[test])
    hard_names = [r.face if e else r.context for e in expressive]
    expert_preds, timing, zero_shot, validation = {}, {}, None, None
    try:
        if r.zero_shot:
            with model.disable_adapter():
                zero_shot, _ = scorer([r.template] * len(test), test, f"zero-shot/{r.template}", [None] * len(test))
        for name in dict.fromkeys([*r.single, r.face, r.context]):
            model.set_adapter(name)
            expert_preds[name], timing[name] = scorer([specs[name].template] * len(test), test, f"adapter/{name}",
                                                      [name] * len(test))
        # hard: one pass over a batch that mixes both experts
        hard, hard_seconds = scorer([specs[n].template for n in hard_names], test, "routed/hard", hard_names,
                                    mixed=True)
        if len(val):  # the experts on the validation items, for the learned gate and the calibrations
            validation = {}
            for role, n in (("face", r.face), ("context", r.context)):
                model.set_adapter(n)
                validation[role], _ = scorer([specs[n].template] * len(val), val, f"val/{role}", [n] * len(val))
    except BaseException:
        cache.close()  # a launch that fails stops every rank; its shards stay for the next run to merge
        raise
    close_answer_cache(cache, ranks)
    if not ranks.is_main:
        return None
    result = ExperimentResult(
        corpus=corpus, title=f"{cfg.name}: fine-tuned adapters and salience routing", split=cfg.split.model_dump(),
        models=[{"name": cfg.model.name, "tiny": cfg.model.build is not None}], config=cfg.model_dump(mode="json"),
        test_ids=ids)
    # BCI baselines on the same test items, and the laws soft routing uses.
    cues = build_cues(corpus, data.study.cue_models)
    preds, laws = holdout_baselines(corpus, data.study, cues, data.splits.train, test, x)
    for name, p in preds.items():
        result.predictions[f"bci/{name}"] = p
    if zero_shot is not None:
        result.predictions[f"zero-shot/{r.template}"] = zero_shot
    for name, pred in expert_preds.items():
        result.predictions[f"adapter/{name}"] = pred
    hard.weights = np.column_stack([[float(n == r.face) for n in hard_names], [float(n == r.context)
                                                                               for n in hard_names]])
    hard.expressivity = x[test]
    result.predictions["routed/hard"] = hard
    if scorer.asked["routed/hard"]:  # answers all from the cache: nothing was timed
        result.throughput["routed/hard (mixed batch)"] = scorer.asked["routed/hard"] / hard_seconds
    if scorer.asked[f"adapter/{r.face}"]:
        result.throughput[f"adapter/{r.face} (single adapter)"] = scorer.asked[f"adapter/{r.face}"] / timing[r.face]
    # soft: the salience law's face share pools the two experts
    from vlm_salience import bci

    law = laws.get(f"pool/{r.salience}") or bci.fit_law(cues.take(data.splits.train), "pool", r.salience,
                                                         x[data.splits.train], threshold=data.threshold)
    result.predictions["routed/soft"] = fuse(corpus, "routed/soft", expert_preds[r.face], expert_preds[r.context],
                                             "pool", law, x[test])
    # learned: a gate fitted on the validation split; calibration: each expert's answers mapped on it
    cal_cfg = r.calibration
    if validation is not None:
        vids = corpus.item_ids[val]
        vf, vc = validation["face"], validation["context"]
        Xv, scaler = gate_features(data, val, r.gate_features)
        Xt, _ = gate_features(data, test, r.gate_features, scaler)
        targets = [b.targets for b in cues.take(val).blocks]
        blocks, ok = answer_blocks(vf, vc, corpus.response)
        w = _fit(blocks, targets, Xv, ok, ridge=1e-2)
        share = 1.0 / (1.0 + np.exp(-(Xt @ w)))
        result.predictions["routed/learned"] = mixture(corpus, "routed/learned", expert_preds[r.face],
                                                       expert_preds[r.context], share, x[test])
        result.extra["gate"] = {"weights": w.tolist(), "features": ["bias", "expressivity", *r.gate_features],
                                "validation_items": int(len(val))}
        if cal_cfg.enabled:
            to_face_val = data.split_law.is_expressive(x[val])
            cals = fit_calibrations(cal_cfg, {"face": vf, "context": vc}, data.observed, vids, to_face_val,
                                    scale=corpus.scale if corpus.response == "ratings" else None,
                                    names={"face": r.face, "context": r.context})
            calibrated_routes(result, corpus, cals, cal_cfg, face=expert_preds[r.face],
                              context=expert_preds[r.context], hard=result.predictions["routed/hard"],
                              to_face=expressive, soft_law=law, x_test=x[test])
            # the gate refitted on the calibrated validation answers
            cvf, cvc = (cals[k].apply(p) for k, p in (("face", vf), ("context", vc)))
            cblocks, cok = answer_blocks(cvf, cvc, corpus.response)
            wc = _fit(cblocks, targets, Xv, cok, ridge=1e-2)
            cshare = 1.0 / (1.0 + np.exp(-(Xt @ wc)))
            cf, cc = (result.predictions[f"adapter/{n}+calibrated"] for n in (r.face, r.context))
            pred = mixture(corpus, "routed/learned+calibrated", cf, cc, cshare, x[test])
            if cals["face"].valence_model is not None:
                pred.valence = mix_valence(cf.valence, cc.valence, pred.weights)
            result.predictions["routed/learned+calibrated"] = pred
            result.extra["gate"]["calibrated_weights"] = wc.tolist()
    else:
        result.notes.append("no validation split (split.validation_fraction = 0): no learned gate and no "
                            "expert calibration")
    _score_all(result, data, test)
    return result


def fit_calibrations(cal: CalibrationConfig, validation: dict[str, Predictions], observed: Predictions,
                     validation_ids: np.ndarray, to_face: np.ndarray, *, scale=None,
                     names: dict[str, str] | None = None) -> dict[str, ExpertCalibration]:
    """Each expert's calibration, fitted on its answers on the validation items and nothing else: the answers
    must cover exactly `validation_ids` (in order), so test answers passed here by mistake are refused.
    `fit_on: routed` fits the face expert on the validation faces hard routing would send it (`to_face`) and the
    context expert on the others."""
    validation_ids = np.asarray(validation_ids, dtype=object)
    to_face = np.asarray(to_face, bool)
    out: dict[str, ExpertCalibration] = {}
    for role in ("face", "context"):
        pred = validation[role]
        if len(pred) != len(validation_ids) or not np.array_equal(pred.item_ids, validation_ids):
            raise ValueError(f"calibration of the {role} expert: its answers are not on the validation items")
        if cal.fit_on == "routed":
            keep = np.flatnonzero(to_face if role == "face" else ~to_face)
            if len(keep) >= 2:
                pred = pred.take(keep)
        c = fit_expert(pred, observed, valence=cal.valence, labels=cal.labels,
                       expert=(names or {}).get(role, role), scale=scale)
        out[role] = c
    return out


def calibrate_hard(hard: Predictions, to_face: np.ndarray, face: ExpertCalibration, context: ExpertCalibration,
                   name: str = "routed/hard+calibrated") -> Predictions:
    """Hard routing's answers with each item's answer mapped by the calibration of the expert that gave it."""
    out = select_rows(face.apply(hard), context.apply(hard), to_face, name)
    out.expressivity = hard.expressivity
    return out


def calibrated_routes(result: ExperimentResult, corpus, cals: dict[str, ExpertCalibration], cal: CalibrationConfig,
                      *, face: Predictions, context: Predictions, hard: Predictions, to_face: np.ndarray,
                      soft_law, x_test: np.ndarray) -> None:
    """Calibrated experts, hard and soft routing between them, beside the uncalibrated ones; the fit in extra."""
    cf = cals["face"].apply(face, name=f"{face.method}+calibrated")
    cc = cals["context"].apply(context, name=f"{context.method}+calibrated")
    result.predictions[cf.method], result.predictions[cc.method] = cf, cc
    result.predictions["routed/hard+calibrated"] = calibrate_hard(hard, to_face, cals["face"], cals["context"])
    soft = fuse(corpus, "routed/soft+calibrated", cf, cc, "pool", soft_law, x_test)
    if cals["face"].valence_model is not None:
        soft.valence = mix_valence(cf.valence, cc.valence, soft.weights)
    result.predictions["routed/soft+calibrated"] = soft
    result.extra["calibration"] = {
        "valence": cal.valence, "labels": cal.labels, "fit_on": cal.fit_on,
        "validation_items": int(len(cals["face"].fit_item_ids if cal.fit_on == "all" else
                                    np.union1d(cals["face"].fit_item_ids.astype(str),
                                               cals["context"].fit_item_ids.astype(str)))),
        "experts": {role: {**c.summary(), "fit_item_ids": [str(i) for i in c.fit_item_ids]}
                    for role, c in cals.items()}}


def _score_all(result: ExperimentResult, data: TrainingData, test: np.ndarray) -> None:
    """Scores, and paired bootstraps of every routed mixture against the better of the two experts alone (by KLD:
    what routing must not lose to) and against every other single adapter (e.g. one trained on all items)."""
    from vlm_salience.metrics import paired_bootstrap, score

    obs = data.observed.align(result.test_ids)
    result.observed = obs
    groups = data.corpus.groups(data.cfg.split.group)[test]
    for name, pred in result.predictions.items():
        result.metrics[name] = score(pred, obs, n_boot=500, groups=groups)
        if not name.startswith("bci/"):
            errs = pred.error[pred.error != ""] if pred.error is not None else []
            result.failures[name] = {"items": len(pred), "failed": int(len(errs)), "unparseable": 0,
                                     "by_kind": {}, "examples": [str(e) for e in list(errs)[:3]]}
    r = data.cfg.routing
    experts = [f"adapter/{r.face}", f"adapter/{r.context}"]
    best = min(experts, key=lambda n: result.metrics[n]["kld"]["value"])
    routed = [n for n in result.predictions if n.startswith("routed/")]
    result.extra["routing_vs_best_single"] = {"best_single": best, "comparisons": {
        name: paired_bootstrap(result.predictions[name], result.predictions[best], obs, n_boot=1000, groups=groups)
        for name in routed}}
    if "calibration" in result.extra:
        result.extra["calibration"]["calibrated_vs_uncalibrated"] = {
            name: paired_bootstrap(result.predictions[name], result.predictions[name[:-len("+calibrated")]], obs,
                                   n_boot=1000, groups=groups)
            for name in result.predictions if name.endswith("+calibrated")
            and name[:-len("+calibrated")] in result.predictions}
    others = [f"adapter/{n}" for n in r.single if f"adapter/{n}" not in experts]
    result.extra["routing_vs_other_adapters"] = {other: {
        name: paired_bootstrap(result.predictions[name], result.predictions[other], obs, n_boot=1000, groups=groups)
        for name in routed} for other in others}


def export_merged(adapter_dir: str | Path, out: str | Path, *, base: str | None = None) -> Path:
    """Merge an adapter into its base and save a standalone checkpoint (safetensors + processor) for serving."""
    import json

    from peft import PeftModel

    from vlm_salience.atomic import replaced_dir
    from vlm_salience.models.loading import ModelConfig, load_vlm

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir} holds no adapter (adapter_config.json is missing)")
    base = base or json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    loaded = load_vlm(ModelConfig(name="base", path=str(base)))
    merged = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    with replaced_dir(out) as stage:
        merged.save_pretrained(stage, safe_serialization=True)
        loaded.processor.save_pretrained(stage)
    return Path(out)

"""Salience-routed experts on a video corpus: a face expert (the face-crop stream) and a context expert (the scene
stream with the face masked), routed per clip by its expressivity, beside each expert alone and a control.

Per fold of the corpus (the video models' folds): validation clips are carved from the training fold (stratified by
class, seeded), the experts are fitted on the rest of the training fold, and every routing choice is calibrated on
the validation clips; the test fold is only predicted. Frames come from the `video prepare` frame cache (the
evaluation rows of `video.cache.sample`, `prompting/clips.CachedFrames`).

- expressivity: the FER2013 classifier's 1 - P(neutral) pooled over the clip's cached face crops, as OUS's gate
  reads it (`ous/fer_gate.FerExpressivity`, cached beside the frame cache), or a corpus column (`source: column`;
  the synthetic salience-law clips write their planted apex intensity as `expressivity`);
- hard: the face expert where expressivity >= a threshold chosen on validation (routing.calibrate_threshold);
- soft: the salience law, a face share logistic in expressivity, fitted on validation by the mixture's likelihood;
- learned: a logistic gate on expressivity and both experts' confidences, fitted the same way;
- control: hard routing with the expressivities shuffled across the test clips (the same share of clips to each
  expert, no clip's own salience): what routing gains from salience, not from mixing two experts.
The gates are routing.py's (`fit_share_gate`, `gate_share`, `calibrate_threshold`: the image routing's likelihood
fit over clip-level distributions).

Experts (`kind`):
- pixels: a multinomial logistic regression on the stream's frames (each frame pooled to grid x grid x RGB; mean
  sd and last-minus-first over the sampled frames), standardised, fitted on the training clips: deterministic and fast, the
  stand-in that lets tests check the routing on tiny budgets;
- vlm: a VLM scoring the corpus's classes over the stream's frames (a model entry as in `prompt run`; an adapter is
  a `path` to a merged checkpoint, the same for every fold), zero-shot on every clip;
- lora: per fold, a LoRA adapter of `model` trained on that fold's fit clips of the expert's stream only (never its
  validation or test clips) through the clip training path (`training/clip_lora_experts.py`), then label-scoring
  the validation and test clips like `vlm`; adapters under <out>/lora/folds/<fold>/adapters/<expert>, reused by a
  rerun whose training settings and clips are unchanged.
Each method is written as a video run folder (predictions.csv, metrics.json, report.md) so `video compare` puts it
beside OUS, GRACE and the baseline; `routing.json` and `report.md` hold the table and every routed method's paired
difference against the better expert alone (chosen on the test clips: the strictest reference) and the control.
Under `accelerate launch` each rank reads and scores its share of the clips (vlm_salience/ranks.py) and rank 0 alone
fits, calibrates on validation and writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from vlm_salience.config import RelPath, StrictModel
from vlm_salience.errors import ConfigError


class ExpertSpec(StrictModel):
    name: str
    stream: Literal["face", "scene"]
    kind: Literal["pixels", "vlm", "lora"] = "pixels"
    grid: int = Field(8, ge=1)  # pixels: each frame pooled to grid x grid
    C: float = Field(1.0, gt=0)  # pixels: inverse L2 strength of the logistic regression
    # vlm: a model entry of `prompt run` ({backend: hf, name, path, ...}); lora: the base model the adapters train on
    # (a training YAML's `model:` {name, path, build, dtype}; `build` resolves against this YAML's folder)
    model: dict[str, Any] | None = None
    template: str = "clip_emotion"  # vlm, lora
    mode: Literal["auto", "video", "images"] = "auto"  # vlm, lora: native video or frames as images
    frames: int | None = Field(None, ge=1)  # vlm, lora: frames per clip; None: the routing's `frames`
    # lora: a clip training YAML's training keys (lora, optim, eval, checkpoint, precision, batching, data.max_length,
    # data.clip.min_pixels ...); the corpus, folds, validation carving, seed, stream and output come from the routing
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _build_path(cls, v, info: ValidationInfo):
        """lora: a relative `build` (tiny-model YAML) resolves against the routing YAML's folder, like its paths."""
        if v is not None and info.data.get("kind") == "lora" and isinstance(v.get("build"), str):
            from pydantic import TypeAdapter

            v = {**v, "build": str(TypeAdapter(RelPath).validate_python(v["build"], context=info.context))}
        return v

    @model_validator(mode="after")
    def _lora(self) -> ExpertSpec:
        if self.kind == "lora":
            from vlm_salience.training.clip_lora_experts import check_train_keys

            if self.model is None:
                raise ValueError(f"expert '{self.name}': kind lora needs `model`, the base its adapters train on "
                                 "({name, path, build?, dtype})")
            check_train_keys(self.name, self.train)
        elif self.train:
            raise ValueError(f"expert '{self.name}': `train` is for kind lora (kind here: {self.kind})")
        if self.kind == "pixels" and self.frames is not None:
            raise ValueError(f"expert '{self.name}': `frames` is for kind vlm or lora; a pixels expert reads the "
                             "routing's `frames` (set it there)")
        return self


class ExpressivitySpec(StrictModel):
    source: Literal["fer", "column"] = "fer"
    column: str = "expressivity"  # source column: the clip's column (generic CSV extra column)
    classifier: RelPath | None = None  # source fer: an expression-classifier YAML; None: the packaged FER2013
    pooling: Literal["mean", "max"] = "mean"


class ClipRoutingReport(StrictModel):
    n_boot: int = Field(1000, ge=0)
    seed: int = 0
    figures: bool = True  # a confusion plot per method


class ClipRoutingConfig(StrictModel):
    """`vlm-salience route` with a clip-routing YAML (configs/experiment/route_clips_synthetic.yaml)."""

    name: str
    data: RelPath  # a video data YAML
    data_overrides: list[str] = Field(default_factory=list)
    frame_cache: RelPath  # the `video prepare` folder of this corpus
    folds: list[str] | None = None
    frames: int = Field(8, ge=1)  # sampled frames per clip (the cache's segment middles)
    validation_fraction: float = Field(0.25, gt=0.0, lt=1.0)  # of each training fold, per class
    seed: int = 0
    face: ExpertSpec
    context: ExpertSpec
    expressivity: ExpressivitySpec = Field(default_factory=ExpressivitySpec)
    out: RelPath
    report: ClipRoutingReport = Field(default_factory=ClipRoutingReport)

    @model_validator(mode="after")
    def _names(self) -> ClipRoutingConfig:
        if self.face.name == self.context.name:  # method folders, adapters and checkpoints are named after them
            raise ValueError(f"face and context experts share the name '{self.face.name}'; name them apart")
        return self


def is_clip_routing(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> bool:
    """True when a route YAML names a video data YAML as its `data` (so `route` takes this path)."""
    from vlm_salience.prompting.video_experiment import is_video_experiment

    return is_video_experiment(path, overrides)


# -- experts --------------------------------------------------------------------------------------------------------

class ClipFrames:
    """Evaluation frames of a clip's stream from the frame cache, read once per (clip, stream)."""

    def __init__(self, cache: Path, corpus, frames: int) -> None:
        from vlm_salience.prompting.clips import CachedFrames

        self.reader, self.corpus, self.frames = CachedFrames(cache), corpus, frames
        self._memo: dict[tuple[str, str], list[Any]] = {}

    def with_frames(self, frames: int | None) -> ClipFrames:
        """This reader at another number of frames (an expert's own `frames`), sharing nothing but the cache."""
        if frames is None or frames == self.frames:
            return self
        other = ClipFrames.__new__(ClipFrames)
        other.reader, other.corpus, other.frames, other._memo = self.reader, self.corpus, frames, {}
        return other

    def get(self, clip_id: str, stream: str) -> list[Any]:
        from vlm_salience.prompting.clips import ClipSettings

        key = (clip_id, stream)
        if key not in self._memo:
            self._memo[key] = self.reader.frames(clip_id, ClipSettings(frames=self.frames, stream=stream),
                                                 source=self.corpus.clip(clip_id).source)
        return self._memo[key]


class PixelExpert:
    """Logistic regression on pooled frames of one stream: deterministic (lbfgs, no sampling)."""

    def __init__(self, spec: ExpertSpec, n_classes: int) -> None:
        self.spec, self.n_classes = spec, n_classes

    def features(self, frames: list[Any]) -> np.ndarray:
        g = self.spec.grid
        small = np.stack([np.asarray(f.convert("RGB").resize((g, g), resample=2), np.float32) / 255.0
                          for f in frames])  # (T, g, g, 3), box-ish (bilinear) pooling
        # mean, sd and last - first frame: the change over the clip cancels what stays (a face's style, a scene's
        # layout) and keeps what an expression's onset -> apex moves
        return np.concatenate([small.mean(0).ravel(), small.std(0).ravel(), (small[-1] - small[0]).ravel()])

    def fit(self, X: np.ndarray, y: np.ndarray) -> PixelExpert:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler().fit(X)
        self.clf = LogisticRegression(C=self.spec.C, max_iter=2000).fit(self.scaler.transform(X), y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        p = np.zeros((len(X), self.n_classes))
        p[:, self.clf.classes_] = self.clf.predict_proba(self.scaler.transform(X))
        return p


def _pixel_expert(spec: ExpertSpec, frames: ClipFrames, corpus, fit_ids, predict_ids, ranks
                  ) -> dict[str, np.ndarray]:
    """Each rank pools the frames of its share of the clips; rank 0 fits on the gathered features and predicts
    (the other ranks return nothing)."""
    expert = PixelExpert(spec, len(corpus.classes))
    clips = list(dict.fromkeys([*fit_ids, *predict_ids]))
    share = ranks.share(len(clips))
    pooled = ranks.gather([expert.features(frames.get(c, spec.stream)) for c in clips[share.start:share.stop]])
    if not ranks.is_main:
        return {}
    feats = dict(zip(clips, pooled))
    expert.fit(np.stack([feats[c] for c in fit_ids]), np.array([corpus.clip(c).label for c in fit_ids]))
    return dict(zip(predict_ids, expert.predict(np.stack([feats[c] for c in predict_ids]))))


def _vlm_expert(spec: ExpertSpec, frames: ClipFrames, corpus, ids: list[str], cache_path: Path, ranks
                ) -> dict[str, np.ndarray]:
    """Zero-shot label scoring over the stream's frames (the answer cache keyed as in `prompt run`); under
    `accelerate launch` each rank reads and scores its share of the clips and every rank gets every answer."""
    from pydantic import TypeAdapter

    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.experiment import ModelEntry, make_backend

    if spec.model is None:
        raise ConfigError(f"expert '{spec.name}': kind vlm needs a `model` entry ({{backend: hf, name, path}})")
    entry = TypeAdapter(ModelEntry).validate_python(spec.model)
    backend = make_backend(entry, progress=False, ranks=ranks)
    frames = frames.with_frames(spec.frames)
    settings = ClipSettings(frames=frames.frames, stream=spec.stream, mode=spec.mode)
    try:
        from vlm_salience.training.clip_scoring import score_stream

        return score_stream(spec, frames, corpus, ids, cache_path, ranks, backend=backend,
                            model_key=backend.fingerprint(), settings=settings,
                            chunk=4 * getattr(entry, "batch_size", 8))
    finally:
        if hasattr(backend, "close"):
            backend.close()


def expert_probs(spec: ExpertSpec, frames: ClipFrames, corpus, fit_ids, predict_ids, cache_path: Path, *,
                 ranks=None, routing: ClipRoutingConfig | None = None, fold: str | None = None,
                 record: dict[str, Any] | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """An expert's class distribution per clip of `predict_ids`. Under `accelerate launch` (`ranks`: this
    process's vlm_salience.ranks.Ranks) each rank reads (and, for a VLM, scores) its share of the clips; a pixel
    expert is fitted on rank 0 only, so the other ranks get an empty dict for it. A LoRA expert needs the routing
    config and the fold (its adapter is trained on `fit_ids` of that fold); `record` receives what it trained and
    loaded (clip_lora_experts.lora_expert_probs)."""
    from vlm_salience.ranks import current

    ranks = ranks or current()
    if spec.kind == "pixels":
        return _pixel_expert(spec, frames, corpus, fit_ids, predict_ids, ranks)
    if spec.kind == "lora":
        from vlm_salience.training.clip_lora_experts import lora_expert_probs

        if routing is None or fold is None:
            raise ConfigError(f"expert '{spec.name}': kind lora trains per fold; pass the routing config and fold")
        probs, info = lora_expert_probs(routing, spec, corpus, frames, fold, list(fit_ids), list(predict_ids),
                                        ranks=ranks, progress=progress)
        if record is not None:
            record.update(info)
        return probs
    return _vlm_expert(spec, frames, corpus, list(predict_ids), cache_path, ranks)


def clip_expressivity(cfg: ClipRoutingConfig, corpus, ids: list[str]) -> np.ndarray:
    """Per clip expressivity in [0, 1]: FER 1 - P(neutral) pooled over the cached face crops, or a column."""
    if cfg.expressivity.source == "column":
        col = cfg.expressivity.column
        out = []
        for cid in ids:
            raw = corpus.clip(cid).meta.get(col, "")
            try:
                out.append(float(raw))
            except ValueError:
                raise ConfigError(f"expressivity.column '{col}': clip '{cid}' has {raw!r}, not a number; the "
                                  f"corpus's extra columns are {sorted(corpus.clip(cid).meta)}. Fix: name a numeric "
                                  "column, or use expressivity.source: fer") from None
        return np.array(out, float)
    from types import SimpleNamespace

    from vlm_salience.ous.fer_gate import FerExpressivity, default_cache_dir
    from vlm_salience.video.cache import ClipCache

    cache = ClipCache(cfg.frame_cache)
    store = SimpleNamespace(cache=cache, get=lambda cid: SimpleNamespace(arrays={"face": cache.load(cid).face}))
    fer = FerExpressivity(store, default_cache_dir(cfg.frame_cache), pooling=cfg.expressivity.pooling,
                          classifier_config=cfg.expressivity.classifier)
    return fer.values(ids)


# -- the routing run ------------------------------------------------------------------------------------------------

def _confidence(p: np.ndarray) -> np.ndarray:
    return p.max(axis=1)


def route_clips(cfg: ClipRoutingConfig, *, progress: bool = True) -> dict[str, Any] | None:
    """Fit the experts per fold, calibrate the gates on validation, predict the test clips; write every method
    as a video run folder and the routing summary. Returns the summary.

    Under `accelerate launch` every rank reads and scores its share of each fold's clips (expert_probs); rank 0
    alone fits the pixel experts, the threshold and the gates on the validation clips, predicts the test clips and
    writes everything; the other ranks return None."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.video_experiment import ClipPredictions, write_prompt_video_run
    from vlm_salience.ranks import current
    from vlm_salience.data.video.records import carve_validation
    from vlm_salience.training.routing import calibrate_threshold, fit_share_gate, gate_share
    from vlm_salience.video.report import compare_runs, comparison_markdown

    ranks = current()
    corpus = load_video_corpus(cfg.data, overrides=cfg.data_overrides)
    folds = corpus.chosen_folds(cfg.folds, f"{cfg.name}: folds")
    frames = ClipFrames(cfg.frame_cache, corpus, cfg.frames)
    out = Path(cfg.out)
    names = {"face": f"expert/{cfg.face.name}", "context": f"expert/{cfg.context.name}"}
    methods = [names["face"], names["context"], "routed/hard", "routed/soft", "routed/learned", "control/shuffled"]
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    calibration: dict[str, Any] = {}
    for spec in (cfg.face, cfg.context):
        if spec.kind == "lora":  # a training setting the clip training config refuses fails here, before any work
            from vlm_salience.training.clip_lora_experts import expert_training_config

            expert_training_config(cfg, spec)
    for fold in folds:
        test = list(corpus.folds[fold]["test"])
        leak = set(test) & set(corpus.folds[fold]["train"])
        if leak:
            raise ConfigError(f"fold {fold}: clips {sorted(leak)[:5]} are in both its train and test lists")
        fit_ids, val = carve_validation(corpus, list(corpus.folds[fold]["train"]), cfg.validation_fraction, cfg.seed)
        pv, trained = {}, {}
        for role, spec in (("face", cfg.face), ("context", cfg.context)):
            trained[role] = {}
            pv[role] = expert_probs(spec, frames, corpus, fit_ids, [*val, *test], out / "answers.sqlite",
                                    ranks=ranks, routing=cfg, fold=fold, record=trained[role], progress=progress)
        if not ranks.is_main:  # fitting, calibration and the report: once, on rank 0
            continue
        yv = np.array([corpus.clip(c).label for c in val])
        yt = np.array([corpus.clip(c).label for c in test])
        fv, cv = (np.stack([pv[r][c] for c in val]) for r in ("face", "context"))
        ft, ct = (np.stack([pv[r][c] for c in test]) for r in ("face", "context"))
        xv, xt = clip_expressivity(cfg, corpus, val), clip_expressivity(cfg, corpus, test)
        threshold = calibrate_threshold(fv, cv, yv, xv)
        hard = np.where((xt >= threshold)[:, None], ft, ct)
        law_v, law_t = (np.column_stack([np.ones(len(x)), x - 0.5]) for x in (xv, xt))
        w_soft = fit_share_gate(fv, cv, yv, law_v)
        share = gate_share(law_t, w_soft)[:, None]
        soft = share * ft + (1 - share) * ct
        learn_v, learn_t = (np.column_stack([np.ones(len(x)), x - 0.5, _confidence(f) - 0.5, _confidence(c) - 0.5])
                            for x, f, c in ((xv, fv, cv), (xt, ft, ct)))
        w_learn = fit_share_gate(fv, cv, yv, learn_v)
        lshare = gate_share(learn_t, w_learn)[:, None]
        learned = lshare * ft + (1 - lshare) * ct
        shuffled = np.random.default_rng([cfg.seed, 29, len(test)]).permutation(xt)
        control = np.where((shuffled >= threshold)[:, None], ft, ct)
        for m, p in zip(methods, (ft, ct, hard, soft, learned, control)):
            per_method[m][fold] = ClipPredictions(clip_ids=test, labels=yt, probs=p)
        calibration[fold] = {"fit_clips": len(fit_ids), "validation_clips": len(val), "test_clips": len(test),
                             "hard_threshold": threshold, "to_face_share_test": float((xt >= threshold).mean()),
                             "soft_law": {"bias": float(w_soft[0]), "expressivity": float(w_soft[1])},
                             "learned_gate": dict(zip(["bias", "expressivity", "face_confidence",
                                                       "context_confidence"], map(float, w_learn)))}
        if any(trained.values()):  # LoRA experts: the adapter each scored with, and the clips it was trained on
            calibration[fold]["adapters"] = {r: t for r, t in trained.items() if t}
    if not ranks.is_main:
        return None
    folders = {}
    for m in methods:
        folder = out / m.replace("/", "__")
        write_prompt_video_run(cfg, corpus, per_method[m], folder, method=m,
                               notes=[f"salience routing on clips ({cfg.face.kind} face expert on the face stream, "
                                      f"{cfg.context.kind} context expert on the masked scene stream; expressivity "
                                      f"from {cfg.expressivity.source}); see ../report.md"],
                               figures=cfg.report.figures)
        folders[m] = folder
    n_boot, seed = cfg.report.n_boot, cfg.report.seed
    experts = compare_runs({m: folders[m] for m in methods[:2]}, n_boot=n_boot, seed=seed)
    best = max(methods[:2], key=lambda m: (experts["runs"][m]["pooled"]["uar"]["value"],
                                           experts["runs"][m]["pooled"]["war"]["value"]))
    table = compare_runs({m: folders[m] for m in [best, *[m for m in methods if m != best]]}, reference=best,
                         n_boot=n_boot, seed=seed)
    vs_control = compare_runs({m: folders[m] for m in ["control/shuffled", "routed/hard", "routed/soft",
                                                       "routed/learned"]}, n_boot=n_boot, seed=seed)
    summary = {"name": cfg.name, "corpus": corpus.name, "folds": folds, "best_single": best,
               "table": table, "vs_control": {m: vs_control["runs"][m]["vs_reference"]
                                              for m in vs_control["runs"] if m != "control/shuffled"},
               "routed_beats_best_single": {m: bool(table["runs"][m]["vs_reference"]["uar"]["a_better"])
                                            for m in methods if m.startswith("routed/")},
               "calibration": calibration, "config": cfg.model_dump(mode="json")}
    from vlm_salience.atomic import write_text
    from vlm_salience.formatting import json_safe

    write_text(out / "routing.json", json.dumps(json_safe(summary), indent=2))
    write_text(out / "report.md", routing_markdown(summary, comparison_markdown(table)))
    return summary


def routing_markdown(summary: dict[str, Any], table_md: str) -> str:
    """The routing report: the comparison table (reference: the better expert alone) and what the gates learned."""
    lines = [f"# {summary['name']}: salience-routed experts on clips ({summary['corpus']})", "",
             f"Reference: the better expert alone on these test clips, `{summary['best_single']}`. A routed method "
             "beats it where its paired UAR interval lies above zero.", "", table_md, "",
             "| routed | beats the better expert (UAR) | against the shuffled control: UAR diff [95% CI] |",
             "|---|---|---|"]
    for m, won in summary["routed_beats_best_single"].items():
        c = summary["vs_control"][m]["uar"]
        lines.append(f"| {m} | {'yes' if won else 'no'} | {c['diff']:+.3f} [{c['ci95'][0]:+.3f}, "
                     f"{c['ci95'][1]:+.3f}] |")
    lines += ["", "Per fold (validation carved from the training fold; the test fold is only predicted):", ""]
    for fold, c in summary["calibration"].items():
        lines.append(f"- fold {fold}: {c['fit_clips']} fit / {c['validation_clips']} validation / "
                     f"{c['test_clips']} test clips; hard threshold {c['hard_threshold']:.3f} "
                     f"({c['to_face_share_test']:.0%} of test clips to the face expert); soft law "
                     f"{c['soft_law']}; learned gate {c['learned_gate']}")
        for role, a in c.get("adapters", {}).items():
            lines.append(f"  - {role} LoRA adapter `{a['adapter']}` ({a['stream']} stream, trained on {a['trained_on']} "
                         f"fit clips, {a['steps']} steps{', reused' if a['reused'] else ''}; validation UAR "
                         + (f"{a['validation_uar']:.3f})" if a["validation_uar"] is not None else "n/a)"))
    return "\n".join(lines) + "\n"


def run_clip_routing_command(config: str | Path, overrides: list[str], *, quiet: bool = False) -> int:
    """`vlm-salience route CLIP_ROUTING.yaml`: run, print the table, say where the outputs are."""
    from vlm_salience.config import load_config
    from vlm_salience.video.report import comparison_markdown

    cfg = load_config(config, ClipRoutingConfig, overrides)
    summary = route_clips(cfg, progress=not quiet)
    if summary is None:  # under accelerate launch: rank 0 wrote the outputs
        return 0
    print(comparison_markdown(summary["table"]))
    won = [m for m, w in summary["routed_beats_best_single"].items() if w]
    print(f"better expert alone: {summary['best_single']}; routed methods beating it (paired UAR interval above 0): "
          f"{won or 'none'}")
    print(f"wrote {cfg.out}/routing.json, report.md and one video run folder per method (vlm-salience video "
          "compare reads them)")
    return 0

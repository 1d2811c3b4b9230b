"""`vlm-salience train` with a video data YAML: LoRA on clips (DFEW, FERV39k, MAFW, generic CSV, the synthetic clips),
one adapter per fold of the video models' folds, its test fold predicted by label scoring into a video run folder.

The training data layer is the one image corpora use (`training/data.py` rows, `training/collator.py`,
`training/vlm_task.py` run by the engine); what differs is where the rows and frames come from:
- per fold, validation clips are carved from the training fold (`data/video/records.carve_validation`: per class,
  seeded); the adapter trains on the rest; the test fold is never a training or validation row, only predicted;
- a row is one clip (LLaMA-Factory's `videos` column of its source) and its target the class name
  (`{"emotion": "<class>"}`, the answer label scoring reads over every class);
- its frames: with `data.frame_cache` (a `video prepare` folder of this corpus) the rows the video models' cache
  sampler picks (`prompting/clips.CachedFrames`: a random cached candidate per segment in training, the segment
  middles in evaluation), else the clip decoded and sampled by the TSN sampler (`prompting/clips.sample_frames`);
  either way training draws afresh per epoch, seeded by (seed, epoch, clip), and evaluation reads the middles.
  `clip.stream: both` (the face crops and the masked scene of the same drawn rows) needs `data.frame_cache`.
With `clip.frames: 1` and a frame cache the model sees only the middle segment: the "middle frame alone" arm of
benchmarks/bench_clip_frames.py.

Each adapter's test predictions, pooled over the folds, are written as a video run folder (predictions.csv,
metrics.json, report.md), so `vlm-salience video compare` puts it beside the baseline, OUS, GRACE and a zero-shot
`prompt run` on the same test clips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from vlm_salience.config import RelPath
from vlm_salience.errors import ConfigError
from vlm_salience.prompting.video_experiment import VideoReportSettings
from vlm_salience.training.config import AdapterSpec, DataConfig, TrainConfig
from vlm_salience.training.vlm_task import VLMTask

CLIP_TEMPLATE = "clip_emotion"


class ClipDataConfig(DataConfig):
    """`data:` of a clip training YAML: a video data YAML and how its clips are read."""

    data_overrides: list[str] = Field(default_factory=list)  # dotted overrides of the video data YAML
    # a `video prepare` folder of this corpus: frames read from it (the video models' rows); None: decode clips
    frame_cache: RelPath | None = None
    folds: list[str] | None = None  # default: every fold of the corpus
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # of each training fold, per class
    max_length: int = Field(512, ge=16)


class ClipTrainConfig(TrainConfig):
    """LoRA on clips: `data.config` is a video data YAML (configs/train/clips_synthetic.yaml)."""

    data: ClipDataConfig
    study: RelPath | None = None  # no BCI study: the corpus's classes are the targets
    report: VideoReportSettings = Field(default_factory=VideoReportSettings)

    @model_validator(mode="before")
    @classmethod
    def _clip_template(cls, raw):
        """Adapters default to the clip template (the image corpora's default, `combined`, needs situation text)."""
        if isinstance(raw, dict) and isinstance(raw.get("adapters"), list):
            raw = {**raw, "adapters": [{"template": CLIP_TEMPLATE, **a} if isinstance(a, dict) else a
                                       for a in raw["adapters"]]}
        return raw

    @model_validator(mode="after")
    def _clip_adapters(self) -> ClipTrainConfig:
        for a in self.adapters:
            if a.subset != "all" or a.examples != "none":
                raise ValueError(f"adapter '{a.name}': subset '{a.subset}' and examples '{a.examples}' are for "
                                 "Split-Steal item corpora (judgement-based expressivity, retrieved cases); on a "
                                 "video corpus an adapter trains on every training clip: subset all, examples none")
        if self.data.rationale:
            raise ValueError("data.rationale: a clip has no item fields to write a rationale from; set it false")
        return self


def is_clip_training(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> bool:
    """True when a training YAML's `data.config` is a video data YAML (so `train` takes this path)."""
    from vlm_salience.config import apply_overrides, read_yaml
    from vlm_salience.data.video import is_video_data_config

    path = Path(path)
    raw = apply_overrides(read_yaml(path), list(overrides))
    data = raw.get("data")
    target = data.get("config") if isinstance(data, dict) else None
    if not isinstance(target, str):
        return False
    full = Path(target) if Path(target).is_absolute() else path.resolve().parent / target
    return full.is_file() and is_video_data_config(full)


class ClipTrainingData:
    """One fold of a video corpus as instruction data: the `TrainingData` interface `VLMTask` reads (dataset rows,
    the parts' ids), plus the clip frames (`clip_reader` for the collator, `frames` for evaluation)."""

    def __init__(self, cfg: ClipTrainConfig, fold: str, corpus=None) -> None:
        from vlm_salience.data.video import load_video_corpus
        from vlm_salience.data.video.records import carve_validation
        from vlm_salience.prompting.answers import AnswerSpec
        from vlm_salience.prompting.clips import CachedFrames
        self.cfg, self.fold = cfg, fold
        self.corpus = corpus or load_video_corpus(cfg.data.config, overrides=cfg.data.data_overrides)
        if fold not in self.corpus.folds:
            raise ConfigError(f"{cfg.name}: fold '{fold}' is not a fold of corpus '{self.corpus.name}' "
                              f"(folds: {sorted(self.corpus.folds)})")
        train, test = (list(self.corpus.folds[fold].get(p, [])) for p in ("train", "test"))
        leak = set(train) & set(test)
        if leak:
            raise ConfigError(f"fold {fold}: clips {sorted(leak)[:5]} are in both its train and test lists")
        fit, val = carve_validation(self.corpus, train, cfg.data.validation_fraction, cfg.seed)
        self.parts = {"train": fit, "validation": val, "test": test}
        self.spec = AnswerSpec("choice", tuple(self.corpus.classes), None, None)
        self.reader = CachedFrames(cfg.data.frame_cache) if cfg.data.frame_cache is not None else None

    def items_for(self, adapter: AdapterSpec, part: str = "train") -> list[str]:
        return list(self.parts[part])

    def item(self, clip_id: str):
        from vlm_salience.prompting.video_experiment import clip_items

        return clip_items(self.corpus, [clip_id], self.cfg.data.clip.stream, cached=self.reader is not None)[0]

    def frames(self, clip_id: str, *, train: bool, rng: np.random.Generator | None = None) -> list[Any]:
        """The clip's sampled PIL frames (cache rows or decoded): training draws, evaluation segment middles."""
        from vlm_salience.prompting.clips import sample_frames

        settings = self.cfg.data.clip
        if self.reader is not None:
            return self.reader.frames(clip_id, settings, source=self.corpus.clip(clip_id).source, train=train,
                                      rng=rng)
        return sample_frames(self.item(clip_id).face.media, settings, train=train, rng=rng)

    def clip_reader(self, example: dict[str, Any], rng: np.random.Generator) -> list[Any]:
        """The collator's training frames of a row (VLMCollator(clip_reader=...))."""
        return self.frames(str(example["item_id"]), train=True, rng=rng)

    def prompt(self, template, clip_id: str, clip_mode: str, frames: list[Any]):
        from vlm_salience.prompting.inputs import build_prompt

        return build_prompt(template, self.item(clip_id), self.spec, clip=self.cfg.data.clip, clip_mode=clip_mode,
                            frames=frames)

    def dataset(self, adapter: AdapterSpec, part: str = "train", examples_index=None, *, clip_mode: str = "images"):
        """Rows of the training data layer (`TrainingData.dataset`'s columns) for the fold's training or validation
        clips; the test fold has none (it is never trained on)."""
        from datasets import Dataset
        from PIL import Image

        from vlm_salience.prompting.templates import load_template

        if part == "test":
            raise ConfigError(f"fold {self.fold}: the test clips are only predicted, never instruction data")
        template = load_template(adapter.template)
        clip = self.cfg.data.clip  # the text does not depend on the pixels: stand-ins, N per stream
        blank = [Image.new("RGB", (1, 1))] * (clip.frames * len(clip.streams))
        rows = []
        for cid in self.parts[part]:
            from vlm_salience.prompting.images import ItemError

            try:
                p = self.prompt(template, cid, clip_mode, blank)
            except ItemError as exc:
                raise ConfigError(f"adapter '{adapter.name}': {exc}") from None
            rows.append({"item_id": cid, "messages": json.dumps(p.messages), "image": "",
                         "videos": [str(m) for m in self.item(cid).face.media], "clip_mode": clip_mode,
                         "answer_fields": json.dumps({"emotion": self.corpus.classes[self.corpus.clip(cid).label]}),
                         "rationale": "", "expressivity": 0.0})
        if not rows:
            raise ConfigError(f"adapter '{adapter.name}': fold {self.fold} has no {part} clips")
        return Dataset.from_list(rows)


def score_clips(backend, data: ClipTrainingData, template, clip_ids: list[str], clip_mode: str,
                ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Label scoring of clips (evaluation frames: segment middles): clip -> class probabilities, and the clips
    that failed (unreadable clip, no cached frames, a model error) -> why."""
    from vlm_salience.errors import DataError
    from vlm_salience.prompting.images import ItemError

    prompts, ok, failed = [], [], {}
    for cid in clip_ids:
        try:
            prompts.append(data.prompt(template, cid, clip_mode, data.frames(cid, train=False)))
            ok.append(cid)
        except (ItemError, DataError) as exc:
            failed[cid] = str(exc)
    probs: dict[str, np.ndarray] = {}
    for cid, r in zip(ok, backend.score(prompts, data.spec.slots()) if prompts else []):
        if isinstance(r, Exception):
            failed[cid] = str(r)
            continue
        logp = np.asarray(r["emotion"], float)
        p = np.exp(logp - logp.max())
        probs[cid] = p / p.sum()
    return probs, failed


class ClipVLMTask(VLMTask):
    """The VLM LoRA task on one fold's clips: its evaluation is UAR/WAR over the validation clips."""

    def evaluate(self, model) -> dict[str, float]:
        from vlm_salience.metrics import score_classification
        from vlm_salience.models.loading import LoadedVLM
        from vlm_salience.prompting.hf_backend import HFBackend
        from vlm_salience.prompting.templates import load_template

        d = self.data
        ids = d.items_for(self.adapter, "validation")[:self.cfg.eval.max_items]
        if not ids:
            return {}
        vlm = LoadedVLM(model=model, processor=self.loaded.processor, family=self.loaded.family,
                        config=self.loaded.config)
        probs, _ = score_clips(HFBackend(vlm, batch_size=self.cfg.optim.batch_size), d,
                               load_template(self.adapter.template), ids, self.clip_mode)
        if not probs:
            return {}
        y = np.array([d.corpus.clip(c).label for c in probs])
        yhat = np.array([int(np.argmax(p)) for p in probs.values()])
        s = score_classification(y, yhat, n_classes=len(d.corpus.classes), n_boot=0)
        return {"eval/uar": float(s["uar"]["value"]), "eval/war": float(s["war"]["value"])}

    def fingerprint(self) -> dict[str, str]:
        """The fold and its training clips by id: a checkpoint resumes only on the clips it was trained on (lists
        edited to the same counts would otherwise resume a model that saw what are now test clips)."""
        import hashlib

        clips = hashlib.sha256(json.dumps(list(self.data.parts["train"])).encode()).hexdigest()[:16]
        return {**super().fingerprint(), "fold": str(self.data.fold), "train_clips": clips}


def fold_config(cfg: ClipTrainConfig, fold: str) -> ClipTrainConfig:
    """The config of one fold's run: its own output folder (checkpoints, adapters) under <out>/folds/<fold>."""
    return cfg.model_copy(update={"out": Path(cfg.out) / "folds" / str(fold)})


def train_clips(cfg: ClipTrainConfig, *, resume: bool = False, progress: bool = True,
                only: list[str] | None = None) -> dict[str, Any]:
    """Train every adapter on every chosen fold (the engine runs `ClipVLMTask`), predict each fold's test clips with
    it, and write one video run folder per adapter (<out>/<adapter>/). Returns per adapter: the training results
    per fold and the run's pooled UAR/WAR."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.engine.engine import Engine
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.prompting.video_experiment import ClipPredictions, write_prompt_video_run
    from vlm_salience.training.routing import load_with_adapters

    corpus = load_video_corpus(cfg.data.config, overrides=cfg.data.data_overrides)
    folds = corpus.chosen_folds(cfg.data.folds, "data.folds")
    adapters = [a for a in cfg.adapters if not only or a.name in only]
    per_adapter: dict[str, dict[str, Any]] = {a.name: {"training": {}, "per_fold": {}, "failed": {}}
                                              for a in adapters}
    for fold in folds:
        data = ClipTrainingData(cfg, fold, corpus)
        fcfg = fold_config(cfg, fold)
        for spec in adapters:
            task = ClipVLMTask(fcfg, spec, data)
            result = Engine(fcfg, task, resume=resume, progress=progress).run()
            if "stopped_at" in result:  # SIGTERM: checkpointed; `train --resume` continues
                return {"stopped": {"fold": fold, "adapter": spec.name, **result}}
            if not result.get("main_process", True):
                continue
            per_adapter[spec.name]["training"][fold] = {k: result.get(k) for k in (
                "steps", "tokens_per_s", "final_eval", "seconds") if k in result}
            loaded = load_with_adapters(fcfg, [spec.name])
            probs, failed = score_clips(HFBackend(loaded, batch_size=cfg.optim.batch_size), data,
                                        load_template(spec.template), data.parts["test"],
                                        task.clip_mode)
            ids = list(probs)
            per_adapter[spec.name]["per_fold"][fold] = ClipPredictions(
                clip_ids=ids, labels=np.array([corpus.clip(c).label for c in ids], dtype=np.int64),
                probs=np.array([probs[c] for c in ids]).reshape(len(ids), len(corpus.classes)))
            per_adapter[spec.name]["failed"].update(failed)
            per_adapter[spec.name]["clip_mode"] = task.clip_mode
            per_adapter[spec.name]["fit_validation"] = (len(data.parts["train"]), len(data.parts["validation"]))
    summary: dict[str, Any] = {"name": cfg.name, "corpus": corpus.name, "folds": folds, "adapters": {}}
    for spec in adapters:
        a = per_adapter[spec.name]
        if not a["per_fold"]:
            continue
        from vlm_salience.prompting.clips import clip_wording

        c = cfg.data.clip
        where = f"read from the frame cache {cfg.data.frame_cache}" if cfg.data.frame_cache else "decoded"
        given, stream = clip_wording(c, a["clip_mode"])
        notes = [f"LoRA adapter '{spec.name}' of {cfg.model.name} trained per fold on the training fold's clips less "
                 f"a validation share carved from it ({cfg.data.validation_fraction:.0%} per class); the test fold is "
                 f"only predicted. Clips as {given}"
                 f" ({c.frames} TSN segments of the {stream} clip, {where}; training: a random frame per segment "
                 "each epoch, test: the segment middles)"]
        if cfg.model.build is not None:
            notes.append("the base model is a tiny random stand-in: its figures exercise the pipeline")
        if a["failed"]:
            notes.append(f"{len(a['failed'])} clip(s) failed and are not scored (first: {next(iter(a['failed'].values()))})")
        run = write_prompt_video_run(cfg, corpus, a["per_fold"], Path(cfg.out) / spec.name,
                                     method=f"{cfg.model.name}/lora:{spec.name}", notes=notes)
        summary["adapters"][spec.name] = {**run, "training": a["training"]}
    from vlm_salience.atomic import write_text
    from vlm_salience.formatting import json_safe

    write_text(Path(cfg.out) / "clip_training.json", json.dumps(json_safe(summary), indent=2))
    return summary


def run_clip_training_command(config: str | Path, overrides: list[str], *, resume: bool = False,
                              quiet: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    """`vlm-salience train CLIP_TRAINING.yaml`: train, predict the test folds, say where the runs are."""
    from vlm_salience.config import load_config
    from vlm_salience.formatting import fmt_metric

    cfg = load_config(config, ClipTrainConfig, overrides)
    summary = train_clips(cfg, resume=resume, progress=not quiet, only=only)
    if "stopped" in summary:
        s = summary["stopped"]
        print(f"{s['adapter']} (fold {s['fold']}): stopped at step {s['stopped_at']} (SIGTERM); continue with --resume")
        return summary
    for name, a in summary["adapters"].items():
        for fold, t in a["training"].items():
            ev = t.get("final_eval") or {}
            print(f"{name} fold {fold}: {t.get('steps')} steps, validation UAR {ev.get('eval/uar', float('nan')):.3f}")
        print(f"{name}: test UAR {fmt_metric(a['uar'])}, WAR {fmt_metric(a['war'])} over {a['n']} clips -> {a['out']} "
              "(vlm-salience video compare puts it beside other runs on these clips)")
    return summary

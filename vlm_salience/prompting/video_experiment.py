"""Zero-shot VLM prompting on a video corpus (DFEW, FERV39k, MAFW, generic CSV, the synthetic clips): label scoring
over the corpus's classes on each fold's test clips, scored with the video models' UAR/WAR code.

`vlm-salience prompt run` dispatches here when the experiment's `data` is a video data YAML. Each model x strategy
is written as one video run folder (`OUT/<model>__<strategy>/predictions.csv, metrics.json, report.md`) in the
layout of `video train` runs, so `vlm-salience video compare` can put it beside the baseline, OUS and GRACE on the
same test clips. A clip is sampled by the video models' TSN sampler (evaluation: segment middles) from the face
clip (`clip.stream: face`, the corpus's face crops) or the whole clip (`scene`; from a frame cache, the masked
scene), or both from a frame cache (`both`: the face crops, then the masked scene of the same rows). Nothing is
trained here: only test clips are read, and no label reaches a prompt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from vlm_salience.config import RelPath, StrictModel
from vlm_salience.errors import ConfigError
from vlm_salience.prompting.clips import CachedFrames, ClipSettings, clip_wording
from vlm_salience.prompting.experiment import ModelEntry


class VideoStrategy(StrictModel):
    name: str
    template: str = "clip_emotion"
    read: Literal["score", "generate"] = "score"
    max_new_tokens: int = Field(32, ge=1)


class VideoReportSettings(StrictModel):
    n_boot: int = Field(1000, ge=0)
    seed: int = 0


class VideoPromptConfig(StrictModel):
    """A prompting experiment over a video corpus (configs/experiment/prompt_video_*.yaml)."""

    name: str
    data: RelPath  # a video data YAML (format: dfew | ferv39k | mafw | video_csv)
    data_overrides: list[str] = Field(default_factory=list)
    folds: list[str] | None = None  # default: every fold; each fold's test clips are predicted
    max_test_clips: int | None = Field(None, ge=1)  # per fold, for smoke runs (the fold list's first clips)
    models: list[ModelEntry]
    strategies: list[VideoStrategy] = Field(default_factory=lambda: [VideoStrategy(name="zero_shot")])
    clip: ClipSettings = Field(default_factory=ClipSettings)
    # a `video prepare` folder of this corpus: frames are read from it (clip.stream face: the cached face crops;
    # scene: the frame with the face masked; both: the two, of the same rows) instead of decoding every clip per
    # prompt. None: decode the clips (face or scene only).
    frame_cache: RelPath | None = None
    out: RelPath
    cache: RelPath | None = None  # default: <out>/cache.sqlite
    chunk: int = Field(16, ge=1)
    report: VideoReportSettings = Field(default_factory=VideoReportSettings)

    @model_validator(mode="after")
    def _both_needs_frame_cache(self) -> VideoPromptConfig:
        if self.clip.stream == "both" and self.frame_cache is None:
            from vlm_salience.prompting.clips import BOTH_NEEDS_CACHE

            raise ValueError("clip.stream both without frame_cache: " + BOTH_NEEDS_CACHE)
        return self


def is_video_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> bool:
    """True when an experiment YAML's `data` is a video data YAML (so `prompt run` takes this path)."""
    from vlm_salience.config import apply_overrides, read_yaml
    from vlm_salience.data.video import is_video_data_config

    path = Path(path)
    raw = apply_overrides(read_yaml(path), list(overrides))
    data = raw.get("data")
    if not isinstance(data, str):
        return False
    target = Path(data) if Path(data).is_absolute() else path.resolve().parent / data
    return target.is_file() and is_video_data_config(target)


@dataclass
class ClipPredictions:
    """The fields `video/report.predictions_frame` reads."""

    clip_ids: list[str]
    labels: np.ndarray
    probs: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def clip_items(corpus, clip_ids: list[str], stream: str, *, cached: bool = False):
    """Items (the prompting unit) for clips: the face is the clip's face crops or its whole frames (`cached`: the
    frames come from the frame cache, whose face stream exists without a face-crop clip)."""
    from vlm_salience.data.corpus import Face, Item, Situation

    out = []
    for cid in clip_ids:
        c = corpus.clip(cid)
        source = c.face_source if stream == "face" and not cached else c.source
        if source is None:
            raise ConfigError(f"clip.stream face: clip '{cid}' of corpus '{corpus.name}' has no face-crop clip "
                              "(face_dir / the CSV's face column); set clip.stream: scene")
        kind = "frames" if Path(source).is_dir() else "video"
        out.append(Item(id=cid, face=Face(id=cid, media=(Path(source),), media_kind=kind),
                        situation=Situation(id=cid, features={}, text="")))
    return out


def run_video_prompting(cfg: VideoPromptConfig, *, progress: bool = True) -> dict[str, Any]:
    """Predict every chosen fold's test clips with every model x strategy; write one video run folder each.

    Under `accelerate launch` each rank builds and asks its contiguous share of each fold's test clips (answers in
    its shard of the cache), the answers are gathered in clip order, and rank 0 writes the run folders (the same
    files one process writes); the other ranks return no runs."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.cache import close_answer_cache, open_answer_cache, prompt_answer_key
    from vlm_salience.prompting.experiment import make_backend
    from vlm_salience.prompting.images import ItemError
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.ranks import current

    ranks = current()
    corpus = load_video_corpus(cfg.data, overrides=cfg.data_overrides)
    folds = corpus.chosen_folds(cfg.folds, f"{cfg.name}: folds")
    spec = AnswerSpec("choice", tuple(corpus.classes), None, None)
    tests = {f: corpus.folds[f].get("test", [])[:cfg.max_test_clips] for f in folds}
    frames_from = CachedFrames(cfg.frame_cache) if cfg.frame_cache is not None else None
    cache = open_answer_cache(cfg.cache or Path(cfg.out) / "cache.sqlite", ranks)
    runs: dict[str, Any] = {}
    try:
        for entry in cfg.models:
            backend = make_backend(entry, progress=progress, ranks=ranks)
            mode = cfg.clip.resolved_mode(getattr(backend, "family", None))
            fingerprint = backend.fingerprint()
            for strategy in cfg.strategies:
                template = load_template(strategy.template)
                per_fold: dict[str, Any] = {}
                failed: dict[str, str] = {}
                t0, asked = time.perf_counter(), 0
                for fold in folds:
                    share = ranks.share(len(tests[fold]))
                    ids = tests[fold][share.start:share.stop]
                    prompts, keys, errors = [], [], {}
                    for item in clip_items(corpus, ids, cfg.clip.stream, cached=frames_from is not None):
                        try:
                            p = build_prompt(template, item, spec, clip=cfg.clip, clip_mode=mode,
                                             frames=cached_clip_frames(frames_from, corpus, item.id, cfg.clip))
                        except ItemError as exc:
                            errors[len(prompts)] = str(exc)
                            p = None
                        prompts.append(p)
                        keys.append(None if p is None else prompt_answer_key(
                            fingerprint, template.digest, p, strategy.read,
                            max_new_tokens=strategy.max_new_tokens, slots=spec.slots()))
                    got = cache.get_many([k for k in keys if k])
                    todo = [j for j, k in enumerate(keys) if k and k not in got]
                    bar = tqdm(total=len(todo), desc=f"{backend.name}/{strategy.name}/{fold}",
                               disable=not (progress and ranks.is_main))
                    for s in range(0, len(todo), cfg.chunk):
                        idx = todo[s:s + cfg.chunk]
                        batch = [prompts[j] for j in idx]
                        if strategy.read == "score":
                            res = backend.score(batch, spec.slots(), on_batch=bar.update)
                            answers = [{"error": str(r)} if isinstance(r, Exception) else
                                       {"slots": {k: v.tolist() for k, v in r.items()}} for r in res]
                        else:
                            res = backend.generate(batch, strategy.max_new_tokens, on_batch=bar.update)
                            answers = [{"error": str(r)} if isinstance(r, Exception) else {"text": r} for r in res]
                        new = {keys[j]: a for j, a in zip(idx, answers)}
                        cache.put_many(new)
                        got.update(new)
                        asked += len(idx)
                    bar.close()
                    # this rank's answers (a clip that could not be prompted: its error) -> every clip's, in order
                    answers = ranks.gather([{"error": errors[j]} if j in errors else got.get(k)
                                            for j, k in enumerate(keys)])
                    per_fold[fold] = _to_predictions(corpus, spec, tests[fold], answers, failed)
                timing = ranks.gather_each({"asked": asked, "seconds": time.perf_counter() - t0})
                if not ranks.is_main:
                    continue
                name = f"{backend.name}__{strategy.name}"
                runs[name] = write_prompt_video_run(
                    cfg, corpus, per_fold, Path(cfg.out) / name, method=f"{backend.name}/{strategy.name}",
                    notes=_notes(backend, mode, cfg, failed, sum(t["asked"] for t in timing),
                                 max(t["seconds"] for t in timing), getattr(entry, "build", None) is not None))
            if hasattr(backend, "close"):
                backend.close()
    except BaseException:
        cache.close()  # a launch that fails stops every rank; its shards stay for the next run to merge
        raise
    close_answer_cache(cache, ranks)
    return {"runs": runs, "folds": folds, "test_clips": {f: len(v) for f, v in tests.items()},
            "processes": ranks.world}


def cached_clip_frames(frames_from, corpus, clip_id: str, clip: ClipSettings) -> list[Any] | None:
    """The clip's evaluation frames from the frame cache (None without one: the clip is decoded); a clip the cache
    lacks or cannot give is an ItemError for that clip."""
    from vlm_salience.errors import DataError
    from vlm_salience.prompting.images import ItemError

    if frames_from is None:
        return None
    try:
        return frames_from.frames(clip_id, clip, source=corpus.clip(clip_id).source)
    except DataError as exc:
        raise ItemError(f"clip {clip_id}: no cached frames ({exc})") from None


def _to_predictions(corpus, spec, ids, answers, failed) -> ClipPredictions:
    """Scored or parsed answers (one per clip, in order; an error or None for a failed clip) -> class
    probabilities; failed clips are left out here and counted in notes."""
    from vlm_salience.prompting.answers import AnswerError, parse_answer

    keep, probs = [], []
    for cid, a in zip(ids, answers):
        if a is None or "error" in a:
            failed.setdefault(cid, (a or {}).get("error", "no answer"))
            continue
        if "slots" in a:
            logp = np.asarray(a["slots"]["emotion"], float)
            p = np.exp(logp - logp.max())
            probs.append(p / p.sum())
        else:
            try:
                probs.append(parse_answer(a["text"], spec).emotion_dist)
            except AnswerError as exc:
                failed[cid] = f"unparseable answer: {exc}"
                continue
        keep.append(cid)
    labels = np.array([corpus.clip(c).label for c in keep], dtype=np.int64)
    return ClipPredictions(clip_ids=keep, labels=labels,
                            probs=np.array(probs).reshape(len(keep), len(corpus.classes)))


def _notes(backend, mode, cfg, failed, asked, seconds, tiny) -> list[str]:
    where = (f"read from the frame cache {cfg.frame_cache}" if cfg.frame_cache is not None else
             "decoded from the clips")
    given, stream = clip_wording(cfg.clip, mode)
    notes = [f"clips given as {given} "
             f"({cfg.clip.frames} TSN segment middles of the {stream} clip, {where}; model family "
             f"{getattr(backend, 'family', 'server')})"]
    if tiny:
        notes.append("the model is a tiny random stand-in: its predictions are noise")
    if failed:
        notes.append(f"{len(failed)} clip(s) failed and are not scored (first: {next(iter(failed.values()))})")
    if asked:
        notes.append(f"{asked} clips asked in {seconds:.1f} s ({asked / max(seconds, 1e-9):.2f} clips/s)")
    return notes


def write_prompt_video_run(cfg: VideoPromptConfig, corpus, per_fold: dict[str, Any], out: Path, *, method: str,
                           notes: list[str], figures: bool = True) -> dict[str, Any]:
    """predictions.csv, metrics.json, report.md and the confusion plot, in the layout of a `video train` run."""
    from vlm_salience import __version__
    from vlm_salience.atomic import staged_dir
    from vlm_salience.formatting import json_safe
    from vlm_salience.video.report import (ambiguity, plot_confusion, predictions_frame, report_markdown,
                                           scores_from_predictions)

    classes = list(corpus.classes)
    amb = ambiguity(corpus)
    df = predictions_frame({f: {"test": p} for f, p in per_fold.items()}, classes, amb)
    if df.empty:
        raise ConfigError(f"{method}: no clip was predicted (every clip failed); see the notes: {notes}")
    scores = scores_from_predictions(df, classes, n_boot=cfg.report.n_boot, seed=cfg.report.seed, ambiguous=amb)
    doc = json_safe({"package_version": __version__, "run": f"{cfg.name}/{out.name}",
                  "corpus": {"name": corpus.name, "classes": classes, "fingerprint": corpus.fingerprint,
                             "n_clips": len(corpus), "n_test_clips": int(len(df)), "n_ambiguous": len(amb)},
                  "config": cfg.model_dump(mode="json"), "methods": {method: scores}, "notes": notes})
    with staged_dir(out) as stage:
        shown: list[str] = []
        if figures and plot_confusion(scores["pooled"]["confusion"], classes, stage / "confusion.png",
                          f"{method}: confusion (pooled over folds, row-normalised)"):
            shown.append("confusion.png")
        df.to_csv(stage / "predictions.csv", index=False)
        (stage / "metrics.json").write_text(json.dumps(doc, indent=2))
        (stage / "report.md").write_text(report_markdown(doc, shown))
    return {"out": str(out), "uar": scores["pooled"]["uar"], "war": scores["pooled"]["war"],
            "n": int(len(df)), "notes": notes}

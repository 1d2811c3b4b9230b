"""CATE, coarse-to-fine affective text: one description per clip, refined into emotion-aware fine-grained phrases.

1. Coarse: a VLM (any backend of `prompting/`: a Hugging Face VLM, or an OpenAI-compatible server) looks at a few
   frames sampled from the clip's cached face stream (`prompts/grace_coarse.j2`) and describes what the face does,
   label-free. For the synthetic clips the corpus's own reference description (from its known attributes) is the
   other source (`source: reference`).
2. Fine: a second prompt (`prompts/grace_refine.j2`) rewrites the coarse text as phrases in action-unit terms with
   intensity and time course, or, for runs without a VLM, the rule-based refiner (`refine_rules`) over a lexicon
   file (configs/grace/lexicon.yaml): lexicon cues found in the coarse text, plus intensity and time-course phrases
   measured on the clip's frames (`motion_profile`), which the coarse text may not say.

Answers are cached (prompting's AnswerCache: keyed by model, template, rendered prompt with image bytes, and the
budget), so an interrupted `describe` resumes; the result is a table (descriptions.csv: clip_id, coarse, refined,
status) that the GRACE task reads as a column of the dataset. Empty or unparseable descriptions are counted and
fall back as configured (`resolve_texts`), never dropped silently.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from vlm_salience.config import RelPath, StrictModel

HERE = Path(__file__).resolve().parent


class Cue(StrictModel):
    match: list[str]
    phrase: str


class Band(StrictModel):
    below: float
    phrase: str


class Lexicon(StrictModel):
    """configs/grace/lexicon.yaml: cue phrases, intensity and time-course bands, the fallback prompt."""

    cues: list[Cue]
    intensity: list[Band] = Field(default_factory=list)
    time_course: list[Band] = Field(default_factory=list)
    separator: str = "; "
    prompt_fallback: str = "a face in a video"


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    from vlm_salience.config import load_config
    from vlm_salience.resources import home

    return load_config(Path(path) if path else home() / "configs" / "grace" / "lexicon.yaml", Lexicon)


# ---------------------------------------------------------------------------------------------------------------
# Rule-based refinement


@dataclass
class MotionProfile:
    """What the frames say about the face's change: its peak size and when it reaches half of it."""

    peak: float  # max over frames of the mean squared grey difference from the first frame
    half_time: float  # fraction of the clip at which the change first reaches half its peak


def motion_profile(frames: np.ndarray) -> MotionProfile:
    """uint8 frames (T, H, W, 3) of one clip's face stream."""
    g = frames.astype(np.float32).mean(axis=-1) / 255.0
    curve = ((g - g[:1]) ** 2).mean(axis=(1, 2))
    peak = float(curve.max()) if len(curve) else 0.0
    if peak <= 0 or len(curve) < 2:
        return MotionProfile(peak, 0.0)
    first = int(np.argmax(curve >= 0.5 * peak))
    return MotionProfile(peak, first / (len(curve) - 1))


def _band(bands: list[Band], x: float) -> str | None:
    return next((b.phrase for b in bands if x < b.below), None)


def _cue_pattern(phrase: str) -> re.Pattern:
    return re.compile(r"\b" + r"\s+".join(map(re.escape, phrase.lower().split())) + r"\b")


def refine_rules(coarse: str | None, lexicon: Lexicon, profile: MotionProfile | None = None) -> str | None:
    """Fine-grained phrases for a coarse text: the lexicon's cues in order of first mention (each once), then the
    measured intensity and time course. None when no cue matches (unparseable: the caller falls back)."""
    text = (coarse or "").lower()
    found: list[tuple[int, str]] = []
    for cue in lexicon.cues:
        hits = [m.start() for p in cue.match for m in _cue_pattern(p).finditer(text)]
        if hits and cue.phrase not in [f for _, f in found]:
            found.append((min(hits), cue.phrase))
    if not found:
        return None
    phrases = [p for _, p in sorted(found)]
    if profile is not None:
        phrases += [p for p in (_band(lexicon.intensity, profile.peak), _band(lexicon.time_course,
                                                                                profile.half_time)) if p]
    return lexicon.separator.join(phrases)


def usable(text: str | None) -> bool:
    """A description is usable when it has at least one word of letters (not empty, not a bare symbol soup)."""
    return isinstance(text, str) and re.search(r"[A-Za-z]{2,}", text) is not None


# ---------------------------------------------------------------------------------------------------------------
# Which text each clip gets


class TextConfig(StrictModel):
    """`model.text` of a GRACE config: where the clip text comes from and what is used."""

    source: Literal["reference", "descriptions", "none"] = "reference"
    descriptions: RelPath | None = None  # descriptions.csv of `describe` (source: descriptions; relative to the YAML)
    use: Literal["refined", "coarse"] = "refined"
    refine: Literal["rules", "file"] = "rules"  # reference source: refine by rules here; descriptions: as written
    lexicon: RelPath | None = None  # default configs/grace/lexicon.yaml
    profile: bool = True  # rules: add measured intensity and time course
    fallback: Literal["coarse", "prompt"] = "coarse"  # empty/unparseable refined text -> coarse, or the prompt
    # Why not the class prompt: the clip's class is unknown at test time; a class prompt there would leak it.


@dataclass
class ResolvedTexts:
    texts: dict[str, str]
    counts: dict[str, int]  # refined, coarse_fallback, prompt_fallback, empty_coarse, unparseable


def resolve_texts(clip_ids: list[str], coarse: dict[str, str | None], refined: dict[str, str | None],
                  cfg: TextConfig, lexicon: Lexicon) -> ResolvedTexts:
    """The text of each clip with the configured fallbacks, and how many clips took each path."""
    counts = {"refined": 0, "coarse": 0, "coarse_fallback": 0, "prompt_fallback": 0, "empty_coarse": 0,
              "unparseable": 0}
    out: dict[str, str] = {}
    for cid in clip_ids:
        c, r = coarse.get(cid), refined.get(cid)
        if not usable(c):
            counts["empty_coarse"] += 1
        if cfg.use == "coarse":
            if usable(c):
                out[cid] = c
                counts["coarse"] += 1
            else:
                out[cid] = lexicon.prompt_fallback
                counts["prompt_fallback"] += 1
            continue
        if usable(r):
            out[cid] = r
            counts["refined"] += 1
            continue
        counts["unparseable"] += 1
        if cfg.fallback == "coarse" and usable(c):
            out[cid] = c
            counts["coarse_fallback"] += 1
        else:
            out[cid] = lexicon.prompt_fallback
            counts["prompt_fallback"] += 1
    return ResolvedTexts(out, counts)


def read_descriptions(path: str | Path) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """descriptions.csv -> (coarse, refined) by clip id."""
    import pandas as pd

    from vlm_salience.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError("descriptions file not found; run `vlm-salience video describe` first.", file=path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"clip_id", "coarse", "refined"} - set(df.columns)
    if missing:
        raise DataError(f"missing column(s) {sorted(missing)}; expected clip_id,coarse,refined[,status].",
                        file=path)
    # an empty cell is "no text" (None). Not Series.replace("", None): pandas gives NaN there, a float that
    # crashed `usable` on every table with an unparseable clip
    return ({c: (t or None) for c, t in zip(df["clip_id"], df["coarse"])},
            {c: (t or None) for c, t in zip(df["clip_id"], df["refined"])})


# ---------------------------------------------------------------------------------------------------------------
# VLM descriptions (CATE with a model)


class DescribeConfig(StrictModel):
    """`vlm-salience video describe` settings (configs/grace/describe_*.yaml)."""

    frames: int = Field(4, ge=1)  # frames per clip shown to the VLM (segment middles of the cached face stream)
    image_size: int | None = Field(None, ge=8)  # resize frames to this side first (None: as cached)
    stream: Literal["face", "scene"] = "face"
    coarse_template: str = "grace_coarse"
    refine: Literal["vlm", "rules"] = "rules"
    refine_template: str = "grace_refine"
    lexicon: str | None = None
    max_new_tokens: int = Field(48, ge=1)
    refine_max_new_tokens: int = Field(48, ge=1)
    batched: bool = True  # one shared-prefix cache per call (HF backend); False: plain generate per clip
    chunk: int = Field(32, ge=1)  # clips per backend call; answers are cached after each (an interruption loses one)


def stream_frames(clip, stream: str = "face") -> np.ndarray:
    """The cached frames of one stream (rows as the cache holds them), from a PreparedClip or the video task's
    CachedFrames."""
    arrays = getattr(clip, "arrays", None)
    return arrays[stream] if arrays is not None else getattr(clip, stream)


def middle_frames(clip, stream: str = "face") -> np.ndarray:
    """Each cached segment's middle frame (T, S, S, 3)."""
    from vlm_salience.video.cache import sample

    return stream_frames(clip, stream)[sample(clip, None, train=False)]


def _pil(frame: np.ndarray, size: int | None):
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame))
    return img.resize((size, size), Image.BILINEAR) if size else img


def coarse_prompts(clip_ids: list[str], store, cfg: DescribeConfig, template) -> list:
    """One Prompt per clip: the template with `n_frames` images, frames from the cache (no video decoding)."""
    from vlm_salience.prompting.inputs import Prompt
    from vlm_salience.video.cache import sample

    messages = template.render({"n_frames": cfg.frames})
    prompts = []
    for cid in clip_ids:
        clip = store.get(cid)
        rows = sample(clip, cfg.frames, train=False)
        frames = stream_frames(clip, cfg.stream)[rows]
        images = [_pil(f, cfg.image_size) for f in frames]
        h = hashlib.sha256(template.digest.encode())
        for f in frames:
            h.update(np.ascontiguousarray(f).tobytes())
        prompts.append(Prompt(item_id=cid, template=template.name, messages=messages, images=images,
                              digest=h.hexdigest()[:16]))
    return prompts


def refine_prompts(coarse: dict[str, str], template) -> list:
    from vlm_salience.prompting.inputs import Prompt

    out = []
    for cid, text in coarse.items():
        messages = template.render({"coarse": text})
        digest = hashlib.sha256((template.digest + text).encode()).hexdigest()[:16]
        out.append(Prompt(item_id=cid, template=template.name, messages=messages, digest=digest))
    return out


def generate_cached(backend, prompts: list, max_new_tokens: int, cache, template_digest: str, *,
                    batched: bool = True, chunk: int = 32, progress: bool = True, desc: str = "describe") -> dict:
    """Answers of every prompt, from the cache where present; the rest generated in chunks and cached after each
    chunk (an interrupted run resumes there). Errors per item come back as '' (counted by the caller)."""
    from tqdm.auto import tqdm

    from vlm_salience.prompting.cache import prompt_answer_key

    keys = {p.item_id: prompt_answer_key(backend.fingerprint(), template_digest, p, "generate",
                                         max_new_tokens=max_new_tokens) for p in prompts}
    have = cache.get_many(list(keys.values()))
    out = {p.item_id: have[keys[p.item_id]] for p in prompts if keys[p.item_id] in have}
    todo = [p for p in prompts if p.item_id not in out]
    bar = tqdm(total=len(prompts), initial=len(out), desc=desc, disable=not progress)
    for s in range(0, len(todo), chunk):
        part = todo[s:s + chunk]
        if batched or not hasattr(backend, "generate_per_item"):
            answers = backend.generate(part, max_new_tokens)
        else:
            answers = [backend.generate_per_item(p, max_new_tokens) for p in part]
        got = {p.item_id: (a if isinstance(a, str) else "") for p, a in zip(part, answers)}
        cache.put_many({keys[c]: v for c, v in got.items()})
        out.update(got)
        bar.update(len(part))
    bar.close()
    return out


def describe_clips(clip_ids: list[str], store, backend, cfg: DescribeConfig, out: str | Path, *,
                   cache_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """CATE over a corpus: coarse VLM descriptions, refined by a second prompt or by the rules; writes
    OUT/descriptions.csv (atomic) and returns {"path", "counts", "seconds"}."""
    import pandas as pd

    from vlm_salience.atomic import write_text
    from vlm_salience.prompting.cache import AnswerCache
    from vlm_salience.prompting.templates import load_template

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = AnswerCache(cache_path or out / "answers.sqlite")
    lexicon = load_lexicon(cfg.lexicon)
    t0 = time.perf_counter()
    tpl = load_template(cfg.coarse_template)
    coarse = generate_cached(backend, coarse_prompts(clip_ids, store, cfg, tpl), cfg.max_new_tokens, cache,
                             tpl.digest, batched=cfg.batched, chunk=cfg.chunk, progress=progress,
                             desc="coarse descriptions")
    coarse = {c: coarse[c].strip() for c in clip_ids}
    if cfg.refine == "vlm":
        rt = load_template(cfg.refine_template)
        todo = {c: t for c, t in coarse.items() if usable(t)}
        refined = generate_cached(backend, refine_prompts(todo, rt), cfg.refine_max_new_tokens, cache, rt.digest,
                                  batched=cfg.batched, chunk=cfg.chunk, progress=progress, desc="refine")
        refined = {c: refined.get(c, "").strip() for c in clip_ids}
    else:
        refined = {}
        for c in clip_ids:
            refined[c] = refine_rules(coarse[c], lexicon, motion_profile(middle_frames(store.get(c)))) or ""
    status = ["ok" if usable(refined[c]) else ("empty" if not usable(coarse[c]) else "unparseable")
              for c in clip_ids]
    df = pd.DataFrame({"clip_id": clip_ids, "coarse": [coarse[c] for c in clip_ids],
                       "refined": [refined[c] for c in clip_ids], "status": status})
    path = out / "descriptions.csv"
    write_text(path, df.to_csv(index=False))
    cache.close()
    counts = {k: int(v) for k, v in df["status"].value_counts().items()}
    return {"path": str(path), "counts": counts, "seconds": time.perf_counter() - t0}


def truncate_count(token_lengths: list[int], window: int) -> int:
    """How many texts are longer than the encoder's window (they are truncated, and counted in the report)."""
    return int(sum(1 for n in token_lengths if n > window))



# ---------------------------------------------------------------------------------------------------------------
# `vlm-salience video describe CONFIG.yaml`


class DescribeRunConfig(StrictModel):
    """configs/grace/describe_*.yaml: which clips (a GRACE video YAML's data, cache and folds), which VLM, how."""

    video: str  # the video YAML whose corpus, cache and folds to describe (relative to this file)
    video_overrides: list[str] = Field(default_factory=list)  # dotted overrides of that YAML
    model: Any  # a prompting model entry (backend: hf | openai), validated by prompting.experiment.ModelEntry
    describe: DescribeConfig = Field(default_factory=DescribeConfig)
    out: str  # folder of descriptions.csv and the answer cache (relative to this file)
    limit: int | None = Field(None, ge=1)  # describe only the first N clips (a quick look at a model's answers)


def check_local_model(entry, config: Path) -> None:
    """A VLM named by a local folder (a path, not a hub id) that is missing, with nothing to build it: say which
    field to set before the frame cache is filled (the shipped real-corpus describe configs name a placeholder)."""
    where = getattr(entry, "path", None)
    if getattr(entry, "backend", None) != "hf" or getattr(entry, "build", None) is not None or not where:
        return
    local = Path(where).expanduser()
    if (where.startswith(("/", ".", "~")) or local.is_absolute()) and not local.exists():
        from vlm_salience.errors import ConfigError

        raise ConfigError(f"{config}: model.path {where} does not exist; set it to your copy of the VLM (e.g. "
                          "--set model.path=/path/to/Qwen2-VL-2B-Instruct) or to a hub id such as "
                          "Qwen/Qwen2-VL-2B-Instruct")


def describe_video(config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                   progress: bool = True) -> dict[str, Any]:
    """CATE for every cached clip of a video config's folds: fills the frame cache where clips are missing,
    describes (resumable), writes OUT/descriptions.csv; returns describe_clips' summary."""
    from pydantic import TypeAdapter

    from vlm_salience.config import apply_overrides, read_yaml
    from vlm_salience.prompting.experiment import ModelEntry, make_backend
    from vlm_salience.video.cache import ClipCache
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.task import FrameStore
    from vlm_salience.video.train import ensure_cache, folds_of, load_corpus

    from vlm_salience.config import validate

    path = Path(config_path).resolve()
    raw = apply_overrides(read_yaml(path), list(overrides))
    run = validate(raw, DescribeRunConfig, source=path, base_dir=path.parent)
    model_raw = dict(run.model)
    entry = TypeAdapter(ModelEntry).validate_python(model_raw, context={"base_dir": path.parent})
    check_local_model(entry, path)
    video = (path.parent / run.video).resolve()
    out = (path.parent / run.out).resolve()
    vcfg, _ = load_video_config(video, run.video_overrides)
    corpus = load_corpus(vcfg)
    folds = folds_of(vcfg, corpus)
    ensure_cache(vcfg, corpus, folds, progress=progress)
    store = FrameStore(ClipCache(vcfg.data.cache), vcfg.data.memory_cache_mb, streams=(run.describe.stream,))
    wanted = {i for f in folds for part in corpus.folds[f].values() for i in part}
    ids = [i for i in sorted(store.cache.ids()) if i in wanted][:run.limit]
    backend = make_backend(entry, progress=progress)
    return describe_clips(ids, store, backend, run.describe, out, progress=progress)

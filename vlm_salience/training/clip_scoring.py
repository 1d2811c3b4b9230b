"""Label scoring of clips over one stream's cached frames, with the answer cache: the one scorer of clip routing's
`vlm` and `lora` experts (training/clip_routing.py, training/clip_lora_experts.py). Its own module, below both, so
neither imports the other for it, and light (its imports are made when it runs), so pixel-only routing loads no
model code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlm_salience.errors import ConfigError


def score_stream(spec, frames, corpus, ids: list[str], cache_path: Path, ranks, *,
                 backend, model_key: str, settings, chunk: int, mode: str | None = None) -> dict[str, np.ndarray]:
    """Label scoring of clips `ids` over the stream's evaluation frames by `backend`, every answer cached under
    `model_key` (the backend's fingerprint, plus the adapter's content for a LoRA expert) as in `prompt run`. Under
    `accelerate launch` each rank scores its share and every rank gets every clip's class distribution. `spec` is a
    clip routing expert (its name, stream and template), `frames` its ClipFrames (`get(clip_id, stream)`); the one
    scorer of clip routing's `vlm` and `lora` experts, beside `score_clips`, the clip training's validation scorer."""
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.cache import close_answer_cache, open_answer_cache, prompt_answer_key
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.prompting.video_experiment import clip_items

    # `mode`: a LoRA expert scores in the input form it was trained on (training's resolved mode)
    mode = mode or settings.resolved_mode(getattr(backend, "family", None))
    answer = AnswerSpec("choice", tuple(corpus.classes), None, None)
    tpl = load_template(spec.template)
    share = ranks.share(len(ids))
    mine = ids[share.start:share.stop]
    prompts = [build_prompt(tpl, item, answer, clip=settings, clip_mode=mode, frames=frames.get(item.id, spec.stream))
               for item in clip_items(corpus, mine, spec.stream, cached=True)]
    keys = [prompt_answer_key(model_key, tpl.digest, p, "score", slots=answer.slots()) for p in prompts]
    cache = open_answer_cache(cache_path, ranks)
    try:
        got = cache.get_many(keys)
        todo = [j for j, k in enumerate(keys) if k not in got]
        for s in range(0, len(todo), chunk):  # answers committed per chunk: a killed run keeps them
            part = todo[s:s + chunk]
            res = backend.score([prompts[j] for j in part], answer.slots())
            new = {}
            for j, r in zip(part, res):
                if isinstance(r, Exception):
                    raise ConfigError(f"expert '{spec.name}': clip {mine[j]} failed ({r})")
                new[keys[j]] = {"slots": {k: v.tolist() for k, v in r.items()}}
            cache.put_many(new)
            got.update(new)
    except BaseException:
        cache.close()  # a launch that fails stops every rank; its shards stay for the next run to merge
        raise
    close_answer_cache(cache, ranks)
    answers = ranks.gather([got[k]["slots"]["emotion"] for k in keys])
    out = {}
    for cid, logp in zip(ids, answers):
        logp = np.asarray(logp, float)
        p = np.exp(logp - logp.max())
        out[cid] = p / p.sum()
    return out

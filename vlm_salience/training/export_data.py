"""Export the instruction data of a training config, so that other tools can train on exactly what we train on.

Two formats per adapter and split:
- a Hugging Face `datasets` folder (`save_to_disk`): the rows the trainer reads (messages, image, answer fields,
  expressivity), loadable with `datasets.load_from_disk`;
- LLaMA-Factory's ShareGPT JSON with images (`messages` of role/content, an `<image>` tag where the image goes,
  `images` as absolute paths) and the `dataset_info.json` entry that registers it.
The answer is the compact JSON the trainer writes (fixed key order: an exported file is one fixed epoch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from vlm_salience.atomic import staged_dir, write_text
from vlm_salience.errors import ConfigError
from vlm_salience.training.config import TrainConfig

Format = Literal["hf", "sharegpt", "both"]
IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"  # LLaMA-Factory's placeholder of one `videos` entry


def sharegpt_record(row: dict[str, Any]) -> dict[str, Any]:
    """One LLaMA-Factory ShareGPT record from one of our instruction rows."""
    from vlm_salience.prompting.answers import compose_answer

    messages = []
    n_images = 0
    clip = bool(row.get("videos"))  # a clip face: its slot is a <video> tag and the clip goes under `videos`
    for m in json.loads(row["messages"]):
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        text = ""
        for p in parts:
            if p["type"] in ("image", "video"):
                text += VIDEO_TAG if clip else IMAGE_TAG
                n_images += 1
            else:
                text += p.get("text", "")
        messages.append({"role": m["role"], "content": text})
    answer = row.get("rationale", "") + compose_answer(json.loads(row["answer_fields"]), None)
    messages.append({"role": "assistant", "content": answer})
    if clip:
        if len(row["videos"]) != 1:  # a frame list (face_frames): LLaMA-Factory reads a video as one entry
            sources = [str(Path(v).resolve()) for v in row["videos"]]
            return {"id": row["item_id"], "messages": messages, "videos": [sources] * n_images}
        return {"id": row["item_id"], "messages": messages,
                "videos": [str(Path(row["videos"][0]).resolve())] * n_images}
    images = [str(Path(row["image"]).resolve())] * n_images if n_images else []
    if n_images and not row["image"]:
        raise ConfigError(f"item {row['item_id']}: the prompt has an image slot but the item has no image")
    return {"id": row["item_id"], "messages": messages, "images": images}


def dataset_info_entry(file_name: str, media: str = "images") -> dict[str, Any]:
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", media: media},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"}}


def export_instruction_data(cfg: TrainConfig, out: str | Path, *, fmt: Format = "both",
                            adapters: list[str] | None = None,
                            parts: tuple[str, ...] = ("train", "validation", "test")) -> dict[str, Any]:
    """Write `<out>/hf/<adapter>/<part>/` and/or `<out>/sharegpt/<adapter>_<part>.json` (+ dataset_info.json)."""
    from vlm_salience.training.data import TrainingData

    data = TrainingData(cfg)
    known = {a.name: a for a in cfg.adapters}
    wanted = adapters or list(known)
    unknown = [a for a in wanted if a not in known]
    if unknown:
        raise ConfigError(f"adapter(s) {unknown} are not in the training config (it has {sorted(known)})")
    summary: dict[str, Any] = {"out": str(out), "format": fmt, "files": {}}
    info: dict[str, Any] = {}
    with staged_dir(out) as stage:
        for name in wanted:
            for part in parts:
                if len(getattr(data.splits, part)) == 0:
                    continue
                ds = data.dataset(known[name], part)
                key = f"{name}_{part}"
                if fmt in ("hf", "both"):
                    ds.save_to_disk(str(stage / "hf" / name / part))
                    summary["files"][f"hf/{name}/{part}"] = len(ds)
                if fmt in ("sharegpt", "both"):
                    records = [sharegpt_record(dict(r)) for r in ds]
                    write_text(stage / "sharegpt" / f"{key}.json", json.dumps(records, indent=1) + "\n")
                    media = "videos" if any("videos" in r for r in records) else "images"
                    info[f"vlm_salience_{key}"] = dataset_info_entry(f"{key}.json", media)
                    summary["files"][f"sharegpt/{key}.json"] = len(records)
        if info:
            write_text(stage / "sharegpt" / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    return summary


def export_video_corpus(data: str | Path, out: str | Path, *, fmt: Format = "both", stream: str = "face",
                        template: str = "clip_emotion", folds: list[str] | None = None,
                        overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A video corpus (DFEW, FERV39k, MAFW, generic CSV) as instruction data, per fold and part (train, test, and
    val where the corpus has one): `<out>/sharegpt/<fold>_<part>.json` in LLaMA-Factory's ShareGPT video format (a
    `<video>` tag where the template places the clip, `videos` as absolute paths of the face-crop clip, or of the
    whole clip with `stream: scene`; the answer is the class name) with its `dataset_info.json`, and/or
    `<out>/hf/<fold>/<part>/` (`datasets.save_to_disk`: clip_id, fold, part, label, messages, videos). The parts are
    the corpus's own fold lists: a test clip is only ever in a test file. `stream: both` is refused: the masked
    scene is frames in a `video prepare` cache, not a video file LLaMA-Factory could read."""
    if stream == "both":
        raise ConfigError("data export: clip.stream both is not exported: its scene stream (the frame with the face "
                          "masked) exists only as frames in a `video prepare` frame cache, not as a video file a "
                          "`videos` column can name; export stream face or scene (the whole clip), or train on both "
                          "here (`vlm-salience train` with data.frame_cache)")
    if stream not in ("face", "scene"):
        raise ConfigError(f"data export: stream '{stream}' is not one of face, scene")
    from datasets import Dataset

    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.prompting.video_experiment import clip_items

    corpus = load_video_corpus(data, overrides=overrides)
    folds = corpus.chosen_folds(folds)
    tpl = load_template(template)
    spec = AnswerSpec("choice", tuple(corpus.classes), None, None)
    from PIL import Image

    blank = [Image.new("RGB", (1, 1))]  # the prompt's text does not depend on the clip's frames: a stand-in
    summary: dict[str, Any] = {"out": str(out), "format": fmt, "corpus": corpus.name, "files": {}}
    info: dict[str, Any] = {}
    with staged_dir(out) as stage:
        for fold in folds:
            for part, ids in corpus.folds[fold].items():
                if not ids:
                    continue
                rows = []
                for item in clip_items(corpus, list(ids), stream):
                    p = build_prompt(tpl, item, spec, clip=ClipSettings(frames=1, stream=stream), clip_mode="video",
                                     frames=blank)
                    label = corpus.classes[corpus.clip(item.id).label]
                    rows.append({"clip_id": item.id, "fold": str(fold), "part": part, "label": label,
                                 "messages": json.dumps(p.messages),
                                 "videos": [str(Path(item.face.media[0]).resolve())]})
                key = f"{fold}_{part}"
                if fmt in ("hf", "both"):
                    Dataset.from_list(rows).save_to_disk(str(stage / "hf" / str(fold) / part))
                    summary["files"][f"hf/{fold}/{part}"] = len(rows)
                if fmt in ("sharegpt", "both"):
                    records = [_video_record(r) for r in rows]
                    write_text(stage / "sharegpt" / f"{key}.json", json.dumps(records, indent=1) + "\n")
                    info[f"{corpus.name}_{key}"] = dataset_info_entry(f"{key}.json", "videos")
                    summary["files"][f"sharegpt/{key}.json"] = len(records)
        if info:
            write_text(stage / "sharegpt" / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    return summary


def _video_record(row: dict[str, Any]) -> dict[str, Any]:
    messages = []
    for m in json.loads(row["messages"]):
        text = "".join(VIDEO_TAG if p["type"] == "video" else p.get("text", "") for p in m["content"])
        messages.append({"role": m["role"], "content": text})
    messages.append({"role": "assistant", "content": row["label"]})
    n = sum(m["content"].count(VIDEO_TAG) for m in messages)
    return {"id": row["clip_id"], "messages": messages, "videos": row["videos"] * n}

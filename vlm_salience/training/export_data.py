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


def sharegpt_record(row: dict[str, Any]) -> dict[str, Any]:
    """One LLaMA-Factory ShareGPT record from one of our instruction rows."""
    from vlm_salience.prompting.answers import compose_answer

    messages = []
    n_images = 0
    for m in json.loads(row["messages"]):
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        text = ""
        for p in parts:
            if p["type"] == "image":
                text += IMAGE_TAG
                n_images += 1
            else:
                text += p.get("text", "")
        messages.append({"role": m["role"], "content": text})
    answer = row.get("rationale", "") + compose_answer(json.loads(row["answer_fields"]), None)
    messages.append({"role": "assistant", "content": answer})
    images = [str(Path(row["image"]).resolve())] * n_images if n_images else []
    if n_images and not row["image"]:
        raise ConfigError(f"item {row['item_id']}: the prompt has an image slot but the item has no image")
    return {"id": row["item_id"], "messages": messages, "images": images}


def dataset_info_entry(file_name: str) -> dict[str, Any]:
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
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
                    info[f"vlm_salience_{key}"] = dataset_info_entry(f"{key}.json")
                    summary["files"][f"sharegpt/{key}.json"] = len(records)
        if info:
            write_text(stage / "sharegpt" / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    return summary

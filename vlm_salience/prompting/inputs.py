"""What a prompt is built from, per item: the face image, the situation text, the utterance, few-shot examples.

A template that needs an input the item lacks, or an image that cannot be read, is an ItemError: recorded for that
item in the results, and the run goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm_salience.data.corpus import Item
from vlm_salience.prompting.answers import AnswerSpec
from vlm_salience.prompting.templates import PromptTemplate


class ItemError(Exception):
    """A per-item failure: the item's prediction carries the message and the run continues."""


@dataclass
class Prompt:
    """A rendered prompt: chat messages with image placeholders, and the images in order."""

    item_id: str
    template: str
    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)  # PIL images
    digest: str = ""  # hash of the rendered text and the image bytes: part of the cache key

    @property
    def text(self) -> str:
        return "\n".join(p.get("text", "<image>") for m in self.messages for p in m["content"])


def load_image(path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: a truncated file fails here, not inside the model
            return img.convert("RGB")
    except FileNotFoundError:
        raise ItemError(f"face image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ItemError(f"unreadable or truncated image {path} ({exc})") from None


def face_image(item: Item):
    if not item.face.media:
        return None
    if item.face.media_kind == "video":
        raise ItemError(f"item {item.id}: the face is a video; extract frames (face_frames) to prompt with it")
    paths = item.face.media
    return load_image(paths[len(paths) // 2] if item.face.media_kind == "frames" else paths[0])


def available_inputs(item: Item) -> set[str]:
    have = {"examples"}
    if item.face.media and item.face.media_kind in ("image", "frames"):
        have.add("image")
    if item.situation.text and item.situation.text.strip():
        have.add("context")
    if item.face.text:
        have.add("face_text")
    return have


def build_prompt(template: PromptTemplate, item: Item, spec: AnswerSpec, *, examples: list[dict] | None = None,
                 expressivity: float | None = None) -> Prompt:
    missing = template.missing(available_inputs(item))
    if missing:
        raise ItemError(f"template '{template.name}' needs {missing}, which item {item.id} lacks")
    uses = set(template.header.requires) | set(template.header.optional)
    image = face_image(item) if "image" in uses and "image" in available_inputs(item) else None
    variables = {**spec.variables(), "context": item.situation.text if "context" in uses else None,
                 "face_text": item.face.text if "face_text" in uses else None,
                 "examples": examples or [], "expressivity": expressivity}
    messages = template.render(variables)
    n_slots = sum(1 for m in messages for p in m["content"] if p["type"] == "image")
    images = [image] * n_slots if image is not None else []
    if n_slots and image is None:
        raise ItemError(f"template '{template.name}' places an image, but item {item.id} has none")
    h = hashlib.sha256(str(messages).encode())
    for img in images:
        h.update(np.asarray(img).tobytes())
    return Prompt(item_id=item.id, template=template.name, messages=messages, images=images,
                  digest=h.hexdigest()[:16])

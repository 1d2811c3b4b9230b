"""What a prompt is built from, per item: the face image or clip, the situation text, the utterance, few-shot
examples.

A face that is a clip (a video or a frame folder) is sampled by the video models' TSN sampler (`prompting/clips.py`)
and placed where the template places the face (`<<image>>`): as one native video input (`mode: video`, Qwen2-VL
family) or as its frames, one image each (`mode: images`). Templates see `clip` ({"frames", "mode", "stream"}, or
None for a still image) to word the question for a clip.

`clip.stream: both` (frames from the `video prepare` cache: N face frames, then the N scene frames of the same
moments) fills the placeholder with the face clip, then the scene clip: two native video inputs, or 2N images, all
face frames first, then all scene frames. Stream by stream rather than interleaved per moment, so that each stream
stays one time-ordered sequence (as each is one video input in video mode: the two modes show the same order) and
a template can introduce them in one sentence; `clip.frames` is N, the moments per stream.

A template that needs an input the item lacks, or an image or clip that cannot be read, is an ItemError: recorded
for that item in the results, and the run goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm_salience.data.corpus import Item
from vlm_salience.prompting.answers import AnswerSpec
from vlm_salience.prompting.images import ItemError, load_image
from vlm_salience.prompting.templates import PromptTemplate


@dataclass
class Prompt:
    """A rendered prompt: chat messages with image placeholders, and the images in order."""

    item_id: str
    template: str
    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)  # PIL images
    digest: str = ""  # hash of the rendered text, the image and frame bytes and the sampling: part of the cache key
    videos: list[list[Any]] = field(default_factory=list)  # native video inputs: PIL frames per clip, in order
    clip: Any = None  # the ClipSettings a clip face was sampled with (None: no clip)

    @property
    def text(self) -> str:
        return "\n".join(p.get("text", "<image>") for m in self.messages for p in m["content"])


def is_clip(item: Item) -> bool:
    return bool(item.face.media) and item.face.media_kind in ("video", "frames")


def face_image(item: Item):
    """The still face image of an item (None without one). A clip face is sampled by `face_clip` instead."""
    if not item.face.media:
        return None
    if is_clip(item):
        raise ItemError(f"item {item.id}: the face is a clip; sample it with face_clip")
    return load_image(item.face.media[0])


def face_clip(item: Item, clip, *, train: bool = False, rng=None) -> list[Any]:
    """The TSN-sampled PIL frames of an item's clip face; an unreadable clip is an ItemError for that item."""
    from vlm_salience.errors import DataError
    from vlm_salience.prompting.clips import sample_frames

    try:
        return sample_frames(item.face.media, clip, train=train, rng=rng)
    except DataError as exc:
        raise ItemError(f"item {item.id}: cannot read the face clip ({exc})") from None


def available_inputs(item: Item) -> set[str]:
    have = {"examples"}
    if item.face.media and item.face.media_kind in ("image", "frames", "video"):
        have.add("image")
    if item.situation.text and item.situation.text.strip():
        have.add("context")
    if item.face.text:
        have.add("face_text")
    return have


def build_prompt(template: PromptTemplate, item: Item, spec: AnswerSpec, *, examples: list[dict] | None = None,
                 expressivity: float | None = None, clip=None, clip_mode: str = "images", train: bool = False,
                 rng=None, frames: list[Any] | None = None) -> Prompt:
    """`clip` (ClipSettings; default ones when None) and `clip_mode` ("video" or "images", resolved for the model
    family) apply to an item whose face is a clip; `train`/`rng` pick the training sampler; `frames` gives frames
    already sampled (a clip corpus's own reader)."""
    from vlm_salience.prompting.clips import ClipSettings, require_frame_cache, stream_clips

    missing = template.missing(available_inputs(item))
    if missing:
        raise ItemError(f"template '{template.name}' needs {missing}, which item {item.id} lacks")
    uses = set(template.header.requires) | set(template.header.optional)
    wants = "image" in uses and "image" in available_inputs(item)
    clip = clip or ClipSettings()
    image, frames = None, frames if (frames is not None and wants) else None
    if wants and frames is None:
        if is_clip(item):
            require_frame_cache(clip, None, f"item {item.id}")  # no frames given: they would be decoded
            frames = face_clip(item, clip, train=train, rng=rng)
        else:
            image = face_image(item)
    clips = stream_clips(frames, clip) if frames is not None else []  # one clip per stream, in prompt order
    variables = {**spec.variables(), "context": item.situation.text if "context" in uses else None,
                 "face_text": item.face.text if "face_text" in uses else None,
                 "examples": examples or [], "expressivity": expressivity,
                 "clip": ({"frames": len(clips[0]), "mode": clip_mode, "stream": clip.stream}
                          if frames is not None else None)}
    messages = template.render(variables)
    n_slots = sum(1 for m in messages for p in m["content"] if p["type"] == "image")
    if n_slots and image is None and frames is None:
        raise ItemError(f"template '{template.name}' places an image, but item {item.id} has none")
    images: list[Any] = [image] * n_slots if image is not None else []
    videos: list[list[Any]] = []
    if frames is not None and n_slots:
        if clip_mode == "video":  # one video input per stream
            part: list[dict[str, Any]] = [{"type": "video"}] * len(clips)
            videos = clips * n_slots
        else:  # every stream's frames, stream after stream
            part = [{"type": "image"}] * sum(len(c) for c in clips)
            images = [f for c in clips for f in c] * n_slots
        messages = [{**m, "content": [q for p in m["content"] for q in (part if p["type"] == "image" else [p])]}
                    for m in messages]
    h = hashlib.sha256(str(messages).encode())
    for img in images + [f for v in videos for f in v]:
        h.update(np.asarray(img).tobytes())
    if frames is not None:
        h.update(clip.key(train=train).encode())
    return Prompt(item_id=item.id, template=template.name, messages=messages, images=images,
                  digest=h.hexdigest()[:16], videos=videos, clip=clip if frames is not None else None)

"""Native video input for LLaVA-OneVision without torchvision.

transformers' `LlavaOnevisionVideoProcessor` is a torchvision backend (its first step calls torchvision), which
this project does not install. Its output is simple, so it is rebuilt here from the PIL *image* processor's own
steps: each frame resized to the processor's `size` (height x width, no aspect-preserving pad, no anyres tiles:
the video processor squashes), rescaled and normalised with the image processor's settings, and stacked in frame
order into `pixel_values_videos` of shape (clips, T, C, H, W).

On the text side, each `<video>` placeholder becomes T * ceil(n/2)^2 + 1 `<video>` tokens (n x n patches per
frame): the model runs each frame through the vision tower, pools its patch grid bilinearly to ceil(n/2) per
side, concatenates the frames in order and appends one `image_newline` embedding per clip. The count is the
processor's own `replace_video_token`, the one its `__call__` uses; tests/test_llava_video.py checks it against
the model's forward.

What differs from the torchvision processor: the resize kernel (PIL's bicubic against torch's antialiased bicubic
on tensors), so pixel values differ by interpolation rounding; the layout and token count are the same. The
image processor's size, mean and std stand in for the video processor's (they are equal in the tiny builder; a
checkpoint whose video_preprocessor_config.json differs from its preprocessor_config.json would be read with the
image settings).
"""

from __future__ import annotations

from typing import Any


def frame_pixels(image_processor, frame: Any):
    """One frame as the video processor prepares it: (C, H, W) float32 at the processor's `size`."""
    import numpy as np
    from transformers.image_utils import SizeDict

    ip = image_processor
    size = dict(ip.size)
    height = size.get("height") or size.get("shortest_edge")
    width = size.get("width") or size.get("shortest_edge")
    x = ip.process_image(frame, do_convert_rgb=ip.do_convert_rgb)  # (C, H, W) uint8
    if ip.do_resize:
        x = ip.resize(x, size=SizeDict(height=height, width=width), resample=ip.resample)
    if ip.do_rescale:
        x = ip.rescale(x, scale=ip.rescale_factor)
    if ip.do_normalize:
        x = ip.normalize(x, mean=ip.image_mean, std=ip.image_std)
    return np.asarray(x, dtype=np.float32)


def llava_onevision_video_inputs(image_processor, videos: list[list[Any]]) -> dict[str, Any]:
    """`pixel_values_videos` (clips, T, C, H, W) for clips of PIL frames, frames in the given (time) order. Every
    clip of one call needs the same frame count: the model takes one 5-D tensor."""
    import numpy as np
    import torch

    if not videos:
        raise ValueError("no clips")
    counts = {len(v) for v in videos}
    if 0 in counts:
        raise ValueError("a clip with no frames")
    if len(counts) > 1:
        raise ValueError(f"LLaVA-OneVision takes the clips of one batch as one tensor: they need one frame count, "
                         f"got {sorted(counts)}; give every clip the same clip.frames")
    arr = np.stack([np.stack([frame_pixels(image_processor, f) for f in frames]) for frames in videos])
    return {"pixel_values_videos": torch.from_numpy(arr)}


def _expand(texts: list[str], token: str, replacements: list[str], per_text: list[int], what: str) -> list[str]:
    """The k-th `token` placeholder across the rendered prompts becomes replacements[k]."""
    out, k = [], 0
    for text, n in zip(texts, per_text):
        pieces = text.split(token)
        if len(pieces) - 1 != n:
            raise ValueError(f"the chat template placed {len(pieces) - 1} {token} placeholder(s) for {n} {what}(s); "
                             f"it must render each {{'type': '{what}'}} part as one {token}")
        s = pieces[0]
        for piece in pieces[1:]:
            s += replacements[k] + piece
            k += 1
        out.append(s)
    return out


def encode_llava_onevision(processor, texts: list[str], images: list[list[Any]], videos: list[list[list[Any]]], *,
                           padding: bool = True) -> dict[str, Any]:
    """Model inputs of rendered prompts with clips: the processor's parts (image processor and its `<image>`
    expansion, its `<video>` expansion, tokenizer) with `pixel_values_videos` built here. `images[b]` and
    `videos[b]` are prompt b's, in order. Several images of one prompt take the processor's multi-image path
    (one base-resolution view each), one image its anyres tiles, as the processor's own call would."""
    out: dict[str, Any] = {}
    if any(images):
        img = processor.image_processor([list(p) for p in images], return_tensors="pt")
        n = sum(len(p) for p in images)
        texts = _expand(texts, processor.image_token, [processor.replace_image_token(img, k) for k in range(n)],
                        [len(p) for p in images], "image")
        out.update(img)
    clips = [clip for per in videos for clip in per]
    video = llava_onevision_video_inputs(processor.image_processor, clips)
    texts = _expand(texts, processor.video_token, [processor.replace_video_token(video, k) for k in range(len(clips))],
                    [len(v) for v in videos], "video")
    out.update(video)
    enc = processor.tokenizer(texts, return_tensors="pt", padding=padding)
    out["input_ids"], out["attention_mask"] = enc["input_ids"], enc["attention_mask"]
    return out

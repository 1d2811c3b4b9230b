"""Native video input for LLaVA-OneVision and LLaVA-NeXT-Video without torchvision.

transformers' video processors of both (`LlavaOnevisionVideoProcessor`, `LlavaNextVideoVideoProcessor`) are
torchvision backends (their first step calls torchvision), which this project does not install. What they produce
is simple, so it is rebuilt here from the PIL *image* processor's own steps, per frame: resize by the processor's
`size` (OneVision: height x width, a squash; NeXT-Video: the shortest edge, aspect kept), centre crop where the
processor crops (NeXT-Video), rescale, normalise; the frames stacked in time order into `pixel_values_videos` of
shape (clips, T, C, H, W). No anyres tiles and no pad to square: those are the image path's.

On the text side each `<video>` placeholder becomes the processor's own count (`replace_video_token`, the one its
`__call__` uses) of `<video>` tokens, which is the number of features the model's forward scatters:
- OneVision: T * ceil(n/2)^2 + 1 (each frame's n x n patch grid pooled bilinearly to ceil(n/2) per side, frames
  concatenated in order, one `image_newline` per clip);
- NeXT-Video: T * n^2 // 4 (each frame's patches average-pooled with stride 2; no newline).
tests/test_llava_video.py checks both against the models' forward.

What differs from the torchvision processors: the resize kernel (PIL's bicubic against torch's antialiased bicubic
on uint8 tensors), so pixel values may differ by interpolation rounding (measured: at most one grey level); layout
and token counts are the same. The image processor's size, crop, mean and std stand in for the video processor's
(a checkpoint whose video_preprocessor_config.json differs from its preprocessor_config.json would be read with
the image settings).
"""

from __future__ import annotations

from typing import Any

LLAVA_VIDEO_FAMILIES = ("llava_onevision", "llava_next_video")  # models/families.py names


def frame_pixels(image_processor, frame: Any):
    """One frame as the video processor prepares it: (C, H, W) float32."""
    import numpy as np
    from transformers.image_utils import SizeDict

    ip = image_processor
    x = ip.process_image(frame, do_convert_rgb=ip.do_convert_rgb)  # (C, H, W) uint8
    if ip.do_resize:
        x = ip.resize(x, size=SizeDict(**dict(ip.size)), resample=ip.resample)
    if ip.do_center_crop and ip.crop_size:
        x = ip.center_crop(x, size=SizeDict(**dict(ip.crop_size)))
    if ip.do_rescale:
        x = ip.rescale(x, scale=ip.rescale_factor)
    if ip.do_normalize:
        x = ip.normalize(x, mean=ip.image_mean, std=ip.image_std)
    return np.asarray(x, dtype=np.float32)


def _expand(texts: list[str], token: str, replacements: list[str], per_text: list[int], what: str) -> list[str]:
    from vlm_salience.prompting.placeholders import expand_placeholders

    return expand_placeholders(texts, token, replacements, per_text, what, label=token,
                               fix=f"it must render each {{'type': '{what}'}} part as one {token}")


def llava_video_inputs(image_processor, videos: list[list[Any]]) -> dict[str, Any]:
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
        raise ValueError(f"LLaVA video models take the clips of one batch as one tensor: they need one frame count, "
                         f"got {sorted(counts)}; give every clip the same clip.frames")
    arr = np.stack([np.stack([frame_pixels(image_processor, f) for f in frames]) for frames in videos])
    return {"pixel_values_videos": torch.from_numpy(arr)}


def encode_llava_video(processor, family: str, texts: list[str], images: list[list[Any]],
                       videos: list[list[list[Any]]], *, padding: bool = True) -> dict[str, Any]:
    """Model inputs of rendered prompts with clips: the processor's parts (image processor and its `<image>`
    expansion, its `<video>` expansion, tokenizer) with `pixel_values_videos` built here. `images[b]` and
    `videos[b]` are prompt b's, in order. OneVision's images go per prompt (several in one prompt take its
    multi-image path), as the processor's own call would take them."""
    out: dict[str, Any] = {}
    if any(images):
        batch = [list(p) for p in images] if family == "llava_onevision" else [i for p in images for i in p]
        img = processor.image_processor(batch, return_tensors="pt")
        n = sum(len(p) for p in images)
        texts = _expand(texts, processor.image_token, [processor.replace_image_token(img, k) for k in range(n)],
                        [len(p) for p in images], "image")
        out.update(img)
    clips = [clip for per in videos for clip in per]
    video = llava_video_inputs(processor.image_processor, clips)
    texts = _expand(texts, processor.video_token, [processor.replace_video_token(video, k) for k in range(len(clips))],
                    [len(v) for v in videos], "video")
    out.update(video)
    enc = processor.tokenizer(texts, return_tensors="pt", padding=padding)
    out["input_ids"], out["attention_mask"] = enc["input_ids"], enc["attention_mask"]
    return out

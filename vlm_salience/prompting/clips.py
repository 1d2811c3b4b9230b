"""Clips as VLM inputs: TSN-sampled frames of a face video or a frame folder, given to a model either as several
images (any chat VLM, OpenAI-compatible servers included) or as one native video input (Qwen2-VL family here;
LLaVA-OneVision and LLaVA-NeXT-Video in `prompting/llava_video.py`).

Frames are chosen by the same sampler the video models use (`data/video/sampling.py`): N equal segments, the
middle frame of each in evaluation, a seeded random frame per segment in training. So a VLM and OUS/GRACE see the
same moments of a clip.

Native video input without torchvision: transformers' Qwen2-VL *video* processor needs torchvision, which this
project does not install. `qwen2_vl_video_inputs` builds the same `pixel_values_videos` / `video_grid_thw` from
the PIL *image* processor's per-frame patches: the image processor writes each frame's patches with the frame
repeated over the temporal patch axis; we keep one copy and pair consecutive frames along that axis, in the
layout of `Qwen2VLVideoProcessor.patchify` (tokens ordered t, h-block, w-block, h, w; each token's vector
channel x temporal x patch x patch). An odd frame count is padded with the last frame, as the video processor
does. tests/test_prompting_video.py checks it against the model: a two-frame clip of one image gives the image
path's logits, and reversed frames give other logits.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from vlm_salience.config import StrictModel

TRAINING_VIDEO_FAMILIES = ("qwen2_vl",)  # the training collator builds native video inputs for these only
VIDEO_FAMILIES = ("qwen2_vl", "llava_onevision", "llava_next_video")  # families with a native video path
# (models/families.py names; Qwen2.5-VL is of the qwen2_vl family, its clips also get second_per_grid_ts)


class ClipSettings(StrictModel):
    """How a clip is shown to a VLM (the `clip:` block of an experiment or training YAML)."""

    frames: int = Field(8, ge=1)  # TSN segments: one frame from each
    # video: one native video input (Qwen2-VL family, LLaVA-OneVision/-NeXT-Video); images: frames as images;
    # auto: video where the family has a native path, images otherwise
    mode: Literal["auto", "video", "images"] = "auto"
    # video corpora: the face-crop clip, the whole scene clip, or both (the face crops and the masked scene of the
    # same sampled moments; only a `video prepare` frame cache has the masked scene: see `streams`)
    stream: Literal["face", "scene", "both"] = "face"
    min_pixels: int | None = Field(None, ge=1)  # Qwen-VL processors: pixels per frame after resizing
    max_pixels: int | None = Field(None, ge=1)
    seed: int = 0  # training: frames per segment drawn from (seed, epoch, item)
    # Qwen2.5-VL: the sampled frames' rate, which places them in time (second_per_grid_ts = temporal_patch_size /
    # fps, the temporal rope step of each frame pair; the processor's default sampling is 2 frames per second)
    fps: float = Field(2.0, gt=0)

    def resolved_mode(self, family: str | None, *, training: bool = False) -> str:
        """'video' or 'images' for a model family; a family without a video path asked for video is an error.
        Training (the collator) has the native video path of the Qwen2-VL family only (TRAINING_VIDEO_FAMILIES)."""
        families = TRAINING_VIDEO_FAMILIES if training else VIDEO_FAMILIES
        if self.mode == "auto":
            return "video" if family in families else "images"
        if self.mode == "video" and family not in families:
            from vlm_salience.errors import ConfigError

            what = "training on clips" if training else "a native video path here"
            raise ConfigError(f"clip.mode video: model family '{family}' has no {what} (families with one: "
                              f"{list(families)}); set clip.mode: images (frames as images)")
        return self.mode

    @property
    def streams(self) -> tuple[str, ...]:
        """The frame cache streams a clip shows, in prompt order: `both` is the face crops, then the scene."""
        return ("face", "scene") if self.stream == "both" else (self.stream,)

    def key(self, *, train: bool, epoch: int | None = None) -> str:
        """What the sampled frames depend on besides the clip: part of an answer's cache key."""
        return json.dumps({"frames": self.frames, "stream": self.stream, "train": train,
                           "seed": self.seed if train else None, "epoch": epoch if train else None,
                           "min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "fps": self.fps},
                          sort_keys=True)


def stream_clips(frames: list[Any], settings: ClipSettings) -> list[list[Any]]:
    """One clip's sampled frames per stream, in prompt order. A `both` clip arrives as one list (`CachedFrames`:
    the N face frames, then the N scene frames of the same rows) and is split in halves here."""
    k = len(settings.streams)
    if k == 1:
        return [list(frames)]
    n = len(frames) // k
    if n == 0 or n * k != len(frames):
        raise ValueError(f"clip.stream {settings.stream}: {len(frames)} frames cannot be {k} streams of equal length")
    return [list(frames[i * n:(i + 1) * n]) for i in range(k)]


BOTH_NEEDS_CACHE = ("clip.stream both shows the face crops and the scene with the face masked of the same moments; "
                    "only a `video prepare` frame cache holds the masked scene, so it needs one: give frame_cache "
                    "(`frame_cache:` of a video prompting experiment, `data.frame_cache:` of a clip training YAML; "
                    "make it with `vlm-salience video prepare`), or set clip.stream: face or scene")


def require_frame_cache(settings: ClipSettings, frame_cache: Any, where: str = "") -> None:
    """A ConfigError when `stream: both` is asked for without a frame cache (the decoding path has no masked
    scene, and falling back to one stream would answer another question than the one asked)."""
    if settings.stream == "both" and frame_cache is None:
        from vlm_salience.errors import ConfigError

        raise ConfigError((f"{where}: " if where else "") + BOTH_NEEDS_CACHE)


def clip_wording(settings: ClipSettings, mode: str) -> tuple[str, str]:
    """How a run report says clips were given: (as what, of which clip), e.g. ("one native video input", "face")."""
    if settings.stream == "both":
        return (("two native video inputs (face clip, then scene clip)" if mode == "video" else
                 "frames as images (the face frames, then the scene frames)"),
                "face and masked scene (the same rows)")
    return ("one native video input" if mode == "video" else "frames as images"), settings.stream


def frame_indices(n_frames: int, settings: ClipSettings, *, train: bool = False,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """The TSN indices of the video models (`segment_indices`): middles in evaluation, seeded random in training."""
    from vlm_salience.data.video.sampling import segment_indices

    return segment_indices(n_frames, settings.frames, train=train, rng=rng)


def training_rng(settings: ClipSettings, epoch: int, key: str) -> np.random.Generator:
    """A generator seeded by (seed, epoch, item): a resumed run draws the same frames, each epoch new ones."""
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return np.random.default_rng([settings.seed, epoch, digest])


def sample_frames(source: Path | tuple[Path, ...] | list[Path], settings: ClipSettings, *, train: bool = False,
                  rng: np.random.Generator | None = None) -> list[Any]:
    """PIL frames of a clip: a video file, a frame folder, or a list of frame files (Split-Steal `face_frames`).
    Raises DataError (naming the file) when the clip cannot be read; `stream: both` is a ConfigError here (the
    decoded clip has no masked scene: it needs the frame cache)."""
    from PIL import Image

    require_frame_cache(settings, None, f"clip {source}")

    from vlm_salience.data.video.frames import count_frames, read_frames

    if isinstance(source, (list, tuple)):
        files = [Path(p) for p in source]
        if len(files) == 1 and (files[0].is_dir() or files[0].suffix.lower() not in (".png", ".jpg", ".jpeg",
                                                                                      ".bmp", ".webp")):
            source = files[0]
        else:
            idx = frame_indices(len(files), settings, train=train, rng=rng)
            from vlm_salience.prompting.images import load_image

            return [load_image(files[i]) for i in idx]
    source = Path(source)
    idx = frame_indices(count_frames(source), settings, train=train, rng=rng)
    return [Image.fromarray(f) for f in read_frames(source, idx)]


# -- frames from the `video prepare` cache ----------------------------------------------------------------------

class CachedFrames:
    """Clip frames read from a `video prepare` folder (`video/cache.py`) instead of decoding the video per prompt:
    the face stream (face crops), the scene stream (the frame with the face masked) or both (`stream: both`: the
    N face frames, then the N scene frames of the very same rows: one draw serves both), the rows the video models'
    cache sampler picks (`video.cache.sample`: segment middles in evaluation, a random cached candidate per
    segment in training), so a VLM reads the very frames OUS and the baseline read. Only the slots and the asked
    stream are read from the clip file, and a JPEG-coded cache decodes only the sampled rows.

    A clip the cache lacks, a damaged clip file, or a cached clip made from another source than the corpus's clip
    is a DataError naming the file (a per-item error where prompts are built)."""

    def __init__(self, root: str | Path) -> None:
        from vlm_salience.video.cache import ClipCache

        self.cache = ClipCache(root)
        self.root = Path(root)
        self.cache.manifest  # fail now (not per clip) when the folder is no cache

    def frames(self, clip_id: str, settings: ClipSettings, *, source: str | Path | None = None, train: bool = False,
               rng: np.random.Generator | None = None) -> list[Any]:
        from types import SimpleNamespace

        from PIL import Image

        from vlm_salience.errors import DataError
        from vlm_salience.video.cache import sample

        entry = self.cache.entry(clip_id)
        path = self.root / entry["file"]
        cached_source = str(entry.get("source", ""))
        if source is not None and cached_source != str(source) and (  # resolving costs ms: only on a mismatch
                Path(cached_source).resolve() != Path(source).resolve()):
            raise DataError(f"the cached clip '{clip_id}' was prepared from {entry.get('source')}, not from this "
                            f"corpus's {source}.", file=self.cache.manifest_path,
                            fix="give the frame cache `video prepare` wrote for this corpus.")
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:  # one open for both readers
                slots = _stored_array(fh, z, "slots").astype(np.int64)
                rows = sample(SimpleNamespace(slots=slots, n_segments=int(slots.shape[0])), settings.frames,
                              train=train, rng=rng)
                arrays = []
                for name in settings.streams:  # the same rows for every stream: the same moments
                    if f"{name}_jpeg" in z.files:
                        import cv2

                        data, off = z[f"{name}_jpeg"], z[f"{name}_offsets"]
                        arrays += [cv2.imdecode(data[off[r]:off[r + 1]], cv2.IMREAD_COLOR)[..., ::-1] for r in rows]
                    else:
                        arrays += _stored_rows(fh, z, name, rows)
        except FileNotFoundError:
            raise DataError("cached clip file is missing.", file=path,
                            fix="run `vlm-salience video prepare` again (it re-creates missing clips).") from None
        except DataError:
            raise
        except Exception as exc:  # zip, key or decode errors: not a complete clip file
            raise DataError(f"cached clip file is damaged ({exc}).", file=path,
                            fix="delete it and run `vlm-salience video prepare` again.") from None
        return [a if isinstance(a, Image.Image) else Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


_NPY_HEADER = re.compile(r"\{'descr': '([<>|=][a-zA-Z]\d*)', 'fortran_order': (False|True), 'shape': \(([0-9, ]*)\), \}")


def _member_layout(fh: Any, z: Any, name: str) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, offset of the data) of npz member `name` where it is stored uncompressed in C order, read from
    the zip's local header and the .npy header directly. numpy's own header reader parses the header with
    ast.literal_eval, which was about a third of a cached clip's read time (benchmarks/bench_clip_inputs.py); this reads the
    plain form numpy writes and returns None for anything else (compressed, Fortran order, structured dtypes), where
    the caller falls back to numpy."""
    import zipfile

    info = z.zip.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    fh.seek(info.header_offset)
    local = fh.read(30)
    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    fh.seek(start)
    head = fh.read(12)
    if head[:6] != b"\x93NUMPY":
        return None
    if head[6] == 1:
        size, body = int.from_bytes(head[8:10], "little"), start + 10
    else:
        size, body = int.from_bytes(head[8:12], "little"), start + 12
    fh.seek(body)
    m = _NPY_HEADER.match(fh.read(size).decode("latin1"))
    if m is None or m[2] == "True":
        return None
    return tuple(int(x) for x in m[3].split(",") if x.strip()), np.dtype(m[1]), body + size


def _stored_array(fh: Any, z: Any, name: str) -> np.ndarray:
    """A whole (small) npz member, through the fast header where it applies."""
    layout = _member_layout(fh, z, name)
    if layout is None:
        return z[name]
    shape, dtype, offset = layout
    fh.seek(offset)
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(fh.read(count * dtype.itemsize), dtype=dtype, count=count).reshape(shape)


def _stored_rows(fh: Any, z: Any, name: str, rows: np.ndarray) -> list[Any]:
    """Rows of array `name` of an npz file, reading only those rows' bytes where the member is stored
    uncompressed (`video prepare`'s default): a cached clip holds N x K candidates of each stream, a prompt reads
    N of one. A compressed member is read whole."""
    from PIL import Image

    layout = _member_layout(fh, z, name)
    if layout is None:
        stream = z[name]
        return [stream[r] for r in rows]
    shape, dtype, base = layout
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    out = []
    for r in rows:
        if not 0 <= int(r) < shape[0]:
            raise ValueError(f"row {int(r)} of {name}.npy is out of range ({shape[0]} rows)")
        fh.seek(base + int(r) * row_bytes)
        raw = fh.read(row_bytes)
        if len(raw) != row_bytes:
            raise ValueError(f"{name}.npy is truncated (row {int(r)})")
        if dtype == np.uint8 and len(shape) == 4 and shape[3] == 3:  # PIL straight from the bytes (no copy
            out.append(Image.frombytes("RGB", (int(shape[2]), int(shape[1])), raw))  # through numpy)
        else:
            out.append(np.frombuffer(raw, dtype=dtype).reshape(shape[1:]))
    return out


# -- native video input for the Qwen2-VL family ---------------------------------------------------------------------

def _pixel_kwargs(settings: ClipSettings | None, image_processor=None) -> dict[str, Any]:
    """min_pixels/max_pixels as the Qwen-VL image processor's `size` (shortest_edge / longest_edge in pixels)."""
    if settings is None or (settings.min_pixels is None and settings.max_pixels is None):
        return {}
    size = dict(getattr(image_processor, "size", None) or {})
    if settings.min_pixels is not None:
        size["shortest_edge"] = settings.min_pixels
    if settings.max_pixels is not None:
        size["longest_edge"] = settings.max_pixels
    return {"size": size}


def qwen2_vl_video_inputs(image_processor, videos: list[list[Any]], settings: ClipSettings | None = None
                          ) -> dict[str, Any]:
    """`pixel_values_videos` (sum of T/2*h*w tokens, C*2*p*p) and `video_grid_thw` (V, 3) for a list of clips of
    PIL frames, from the PIL image processor (see the module docstring for the layout)."""
    import torch

    tps = int(image_processor.temporal_patch_size)
    patches, grids = [], []
    for frames in videos:
        if not frames:
            raise ValueError("a clip with no frames")
        frames = list(frames) + [frames[-1]] * (-len(frames) % tps)  # pad as Qwen2VLVideoProcessor does
        enc = image_processor(images=frames, return_tensors="pt", **_pixel_kwargs(settings, image_processor))
        pv, thw = enc["pixel_values"], enc["image_grid_thw"]
        if not bool((thw == thw[0]).all()):
            raise ValueError("the frames of one clip resize to different grids; give frames of one size")
        _, gh, gw = (int(v) for v in thw[0])
        n_tok = gh * gw
        pp = int(image_processor.patch_size) ** 2
        # (frames, tokens, C, tps, p*p); the image processor repeats each frame over tps: keep copy 0
        per_frame = pv.reshape(len(frames), n_tok, pv.shape[1] // (tps * pp), tps, pp)[:, :, :, 0]
        T = len(frames) // tps
        x = per_frame.reshape(T, tps, n_tok, per_frame.shape[2], per_frame.shape[3])  # (T, tps, tokens, C, pp)
        x = x.permute(0, 2, 3, 1, 4)  # (T, tokens, C, tps, pp)
        patches.append(x.reshape(T * n_tok, -1))
        grids.append([T, gh, gw])
    return {"pixel_values_videos": torch.cat(patches, 0), "video_grid_thw": torch.tensor(grids, dtype=torch.long)}


def second_per_grid_ts(processor, fps: list[float]) -> Any:
    """Qwen2.5-VL's time per temporal patch of each clip (temporal_patch_size / fps, as its processor computes it
    from the sampled fps), which spaces the clip's frame pairs along the temporal rope axis; None for Qwen2-VL,
    whose rope has no such input."""
    import torch
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

    if not isinstance(processor, Qwen2_5_VLProcessor):
        return None
    tps = int(processor.image_processor.temporal_patch_size)
    return torch.tensor([tps / f for f in fps], dtype=torch.float32)


def _expand(texts: list[str], token: str, counts: list[int], per_text: list[int], what: str) -> list[str]:
    """Each `token` placeholder of the rendered chat becomes counts[k] tokens (k-th image or clip, in order)."""
    from vlm_salience.prompting.placeholders import expand_placeholders

    return expand_placeholders(texts, token, [token * c for c in counts], per_text, what,
                               fix="it must render {'type': 'video'} parts as "
                                   "<|vision_start|><|video_pad|><|vision_end|>")


def encode_prompts(processor, family: str, texts: list[str], images: list[list[Any]], videos: list[list[list[Any]]],
                   settings: ClipSettings | None = None, *, padding: bool = True,
                   clip_settings: list[ClipSettings | None] | None = None) -> dict[str, Any]:
    """The model inputs of several rendered prompts. Without clips: the processor's own call. With clips
    (Qwen2-VL family; the LLaVA video families: `llava_video.encode_llava_video`): the processor's parts (image
    processor, its image-token expansion, tokenizer, its modality token types) with native video inputs built
    here, since its video processor needs torchvision.
    `images[b]` / `videos[b]` are prompt b's, in order; `clip_settings[b]` prompt b's clip settings (its clips'
    fps for Qwen2.5-VL; default: `settings` for all)."""
    import torch

    flat_images = [img for per in images for img in per]
    clips = [clip for per in videos for clip in per]
    if not clips:
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": padding}
        if flat_images:
            kwargs["images"] = [list(p) for p in images] if family in ("idefics3", "llava_onevision") else flat_images
            if family == "qwen2_vl":
                kwargs.update(_pixel_kwargs(settings, processor.image_processor))
        return dict(processor(**kwargs))
    if family not in VIDEO_FAMILIES:
        from vlm_salience.errors import ConfigError

        raise ConfigError(f"model family '{family}' has no native video path here; set clip.mode: images")
    if family != "qwen2_vl":  # the LLaVA video families
        from vlm_salience.prompting.llava_video import encode_llava_video

        return encode_llava_video(processor, family, texts, images, videos, padding=padding)
    out: dict[str, Any] = {}
    merge = int(processor.image_processor.merge_size) ** 2
    if flat_images:
        img = processor.image_processor(images=flat_images, return_tensors="pt",
                                        **_pixel_kwargs(settings, processor.image_processor))
        out.update(pixel_values=img["pixel_values"], image_grid_thw=img["image_grid_thw"])
        texts = _expand(texts, processor.image_token, [int(g.prod()) // merge for g in img["image_grid_thw"]],
                        [len(p) for p in images], "image")
    video = qwen2_vl_video_inputs(processor.image_processor, clips, settings)
    out.update(video)
    per_prompt = clip_settings or [settings] * len(videos)  # each clip at its own prompt's fps
    seconds = second_per_grid_ts(processor, [(per_prompt[b] or settings or ClipSettings()).fps
                                             for b, per in enumerate(videos) for _ in per])
    if seconds is not None:
        out["second_per_grid_ts"] = seconds
    texts = _expand(texts, processor.video_token, [int(g.prod()) // merge for g in video["video_grid_thw"]],
                    [len(v) for v in videos], "clip")
    enc = processor.tokenizer(texts, return_tensors="pt", padding=padding)
    out["input_ids"], out["attention_mask"] = enc["input_ids"], enc["attention_mask"]
    out["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(enc["input_ids"].tolist()),
                                            dtype=torch.long)
    return out

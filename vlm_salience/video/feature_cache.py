"""Frozen-encoder feature cache: a frozen image encoder's outputs of every cached frame, computed once per clip and
reused across epochs, variants and folds.

Why: with `vision: frozen` the encoder computes the same features of the same frame in every epoch of every variant
and fold (nine OUS variants x five folds re-encode each DFEW frame hundreds of times). The frame cache
(`video/cache.py`) holds K candidate frames per segment; this cache holds the encoder outputs of all of them, so a
training batch still draws a random candidate per segment (the same rows as without it) and reads their features.

A model opts in by declaring what it reads, `model.feature_requests()` -> {stream: FeatureRequest}: per-frame
pooled embeddings, and the token means of the hidden states after given blocks (what OUS's polarity encoder reads;
it averages a block's tokens first, so their mean is all it needs). The task then passes `EncodedFrames` in place
of a stream's uint8 frames, and the model's encoding seam returns the cached outputs instead of running the
encoder. A model without `feature_requests` (GRACE reads patch tokens; FER pooling has no CLIP encoder) is never
served from the cache.

Used (`data.feature_cache: auto`, the default) only where it cannot change what is learned: the model declares its
outputs, no image-tower parameter trains, the tower has no dropout, and the task does not alter frames between
epochs (`augments_frames`). `data.feature_cache: off` always encodes.

Layout (default root: <data.cache>/features; `data.feature_dir` to share one across frame caches):

    ROOT/<encoder key>/key.json                         what the key is made of (readable)
    ROOT/<encoder key>/<stream>/ab/<clip key>.safetensors  one stream of one clip: slots (N, K), embeds (F, D),
                                                        block<k> (F, width); metadata: key, clip file, prepare hash

The encoder key hashes the encoder's fingerprint (its checkpoint's, plus a sample of the loaded image tower's
weights: two tiny encoders built with other seeds, or a fine-tuned checkpoint of the same shape, have the same
config and file sizes), its preprocessing (input size, mean, std) and the dtype it computes in. The clip key is the
frame cache's own file key, which hashes the source and the prepare settings. A file whose metadata disagrees with
what is asked (another key, clip file, prepare hash, row count, or missing outputs) is recomputed and replaced;
files are written to a temporary name and renamed, so a crash never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "vlm_salience.frame_features"
VERSION = 1
CHUNK_FRAMES = 256  # frames per encoder call when filling the cache (several clips per call)


@dataclass(frozen=True)
class FeatureRequest:
    """Which encoder outputs a model reads from one stream's frames."""

    embeds: bool = True  # the pooled joint-space embedding of each frame (N, D)
    blocks: tuple[int, ...] = ()  # token means of the hidden states after these blocks (1-based), (N, width) each

    def names(self) -> list[str]:
        return (["embeds"] if self.embeds else []) + [f"block{k}" for k in self.blocks]


@dataclass
class EncodedFrames:
    """Cached encoder outputs standing in for one stream's uint8 frames (B, T, H, W, 3) in a batch."""

    embeds: torch.Tensor | None  # (B, T, D)
    blocks: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> (B, T, width) token means

    @property
    def shape(self) -> tuple[int, int]:
        """(B, T): what a model reads off its frames' shape (clips, frames per clip)."""
        ref = self.embeds if self.embeds is not None else next(iter(self.blocks.values()))
        return tuple(ref.shape[:2])

    def to(self, device, non_blocking: bool = False) -> EncodedFrames:
        """On a device (the engine moves batches with `.to`)."""
        return EncodedFrames(None if self.embeds is None else self.embeds.to(device, non_blocking=non_blocking),
                             {k: v.to(device, non_blocking=non_blocking) for k, v in self.blocks.items()})

    def block_tokens(self, k: int) -> torch.Tensor:
        """Block k as (B*T, 1, width): one 'token', the mean of that block's tokens, so a reader that averages
        the tokens (OUS's polarity encoder) gets exactly the mean it would compute from the full hidden states."""
        h = self.blocks[k]
        return h.reshape(-1, 1, h.shape[-1])


def is_encoded(x: Any) -> bool:
    return isinstance(x, EncodedFrames)


# ---------------------------------------------------------------------------------------------------------------
# The key


def weights_digest(encoder) -> str:
    """A digest of the loaded image tower: per parameter its name, shape, dtype and up to 1024 evenly spaced
    values (cheap on a ViT-L; any retraining or reseeding changes nearly every value)."""
    h = hashlib.sha256()
    named = list(encoder.vision.named_parameters())
    if encoder.family == "clip":
        named += [(f"visual_projection.{n}", p) for n, p in encoder.model.visual_projection.named_parameters()]
    for name, p in named:
        flat = p.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, min(flat.numel(), 1024), device=flat.device).long()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def encoder_key(encoder, path: str | None) -> dict[str, Any]:
    """What identifies the features an encoder gives a frame (see the module docstring)."""
    from vlm_salience.models.fingerprint import checkpoint_fingerprint

    return {"format": FORMAT, "version": VERSION,
            "encoder": {"checkpoint": checkpoint_fingerprint(path) if path else "", "weights": weights_digest(encoder)},
            "preprocess": {"family": encoder.family, "image_size": int(encoder.image_size),
                           "mean": [round(float(x), 6) for x in encoder.pixel_mean.reshape(-1)],
                           "std": [round(float(x), 6) for x in encoder.pixel_std.reshape(-1)]},
            "dtype": str(encoder.dtype).replace("torch.", "")}


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# When it applies


def usable(model: torch.nn.Module, *, setting: str, augments_frames: bool) -> tuple[bool, str]:
    """(use the cache?, why): only where cached outputs are exactly what the live encoder would give."""
    if setting == "off":
        return False, "data.feature_cache: off"
    requests = getattr(model, "feature_requests", None)
    if requests is None or requests() is None:
        return False, f"{type(model).__name__} declares no feature_requests"
    if augments_frames:
        return False, "the task alters frames between epochs (augments_frames)"
    enc = getattr(model, "encoder", None)
    if enc is None:
        return False, "no image encoder"
    if any(p.requires_grad for p in enc.vision_parameters()):
        return False, "the image tower trains (vision: train)"
    vcfg = enc.model.config.vision_config
    if float(getattr(vcfg, "attention_dropout", 0.0) or 0.0) > 0 or float(getattr(vcfg, "dropout", 0.0) or 0.0) > 0:
        return False, "the image tower has dropout (its training outputs are random)"
    return True, "frozen encoder, no augmentation"


# ---------------------------------------------------------------------------------------------------------------
# The cache


@dataclass
class ClipFeatures:
    """One clip's cached outputs: the segment slots (so `video.cache.sample` draws rows from it as from a clip)
    and arrays named '<stream>/<output>' with one row per cached frame."""

    slots: np.ndarray
    arrays: dict[str, np.ndarray]

    @property
    def n_segments(self) -> int:
        return int(self.slots.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class FeatureCache:
    """The cached outputs of one encoder for the clips of one frame cache (`store`, a video.task.FrameStore),
    kept in memory up to a byte budget, read from disk, and computed where missing or stale."""

    def __init__(self, root: str | Path, encoder, encoder_path: str | None, requests: dict[str, FeatureRequest],
                 store, *, budget_mb: int = 1024) -> None:
        self.encoder, self.store, self.requests = encoder, store, dict(requests)
        self.key = encoder_key(encoder, encoder_path)
        self.key_digest = digest(self.key)
        self.folder = Path(root) / self.key_digest[:16]
        self.prepare_hash = str(store.cache.manifest.get("config_hash", ""))
        self.budget = int(budget_mb) << 20
        self._lru: OrderedDict[str, ClipFeatures] = OrderedDict()
        self._bytes = 0
        self.computed = 0  # clip streams encoded by this object (the rest were read from disk)
        self.seconds = 0.0  # spent checking, encoding and writing in `ensure`

    # -- paths and validity -------------------------------------------------------------------------------------
    def clip_file(self, clip_id: str) -> str:
        return str(self.store.cache.entry(clip_id)["file"])

    def path(self, clip_id: str, stream: str) -> Path:
        name = Path(self.clip_file(clip_id)).stem  # the frame cache's key: source and prepare settings
        return self.folder / stream / name[:2] / f"{name}.safetensors"

    def _valid(self, meta: dict[str, str], shapes: dict[str, tuple[int, ...]], clip_id: str, stream: str) -> bool:
        """The file was made by this encoder from this clip file with these prepare settings, and holds every
        requested output with one row per cached frame."""
        rows = int(meta.get("rows", -1))
        return (meta.get("key") == self.key_digest and meta.get("clip_file") == self.clip_file(clip_id)
                and meta.get("prepare") == self.prepare_hash and "slots" in shapes
                and all(n in shapes and shapes[n][0] == rows for n in self.requests[stream].names()))

    def _open(self, clip_id: str, stream: str, *, load: bool):
        """(slots, outputs) of a valid file (outputs empty unless `load`); None: missing, damaged or stale."""
        from safetensors import safe_open

        path = self.path(clip_id, stream)
        if not path.is_file():
            return None
        want = self.requests[stream].names()
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
                if not self._valid(meta, shapes, clip_id, stream):
                    return None
                return f.get_tensor("slots"), ({n: f.get_tensor(n) for n in want} if load else {})
        except Exception:  # a damaged file: recompute it
            return None

    def _read(self, clip_id: str, stream: str):
        return self._open(clip_id, stream, load=True)

    def has(self, clip_id: str, stream: str) -> bool:
        return self._open(clip_id, stream, load=False) is not None

    def _write(self, clip_id: str, stream: str, slots: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save

        from vlm_salience.atomic import write_bytes, write_text

        key_file = self.folder / "key.json"
        if not key_file.is_file():
            write_text(key_file, json.dumps(self.key, indent=2))
        rows = len(next(iter(outputs.values())))
        meta = {"format": FORMAT, "key": self.key_digest, "clip_file": self.clip_file(clip_id),
                "prepare": self.prepare_hash, "rows": str(rows), "outputs": ",".join(sorted(outputs))}
        data = {"slots": np.ascontiguousarray(slots, dtype=np.int32),
                **{k: np.ascontiguousarray(v) for k, v in outputs.items()}}
        write_bytes(self.path(clip_id, stream), save(data, metadata=meta))

    # -- computing --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, frames: np.ndarray, request: FeatureRequest) -> dict[str, np.ndarray]:
        """The requested outputs of frames (F, S, S, 3), float32, in chunks of CHUNK_FRAMES."""
        enc = self.encoder
        was = enc.training
        enc.eval()
        parts: dict[str, list[np.ndarray]] = {n: [] for n in request.names()}
        try:
            for i in range(0, len(frames), CHUNK_FRAMES):
                out = enc.encode_images(enc.pixels(torch.from_numpy(frames[i:i + CHUNK_FRAMES])),
                                        layers=tuple(request.blocks))
                if request.embeds:
                    parts["embeds"].append(out.embeds.float().cpu().numpy())
                for k in request.blocks:
                    parts[f"block{k}"].append(out.hidden[k].float().mean(dim=1).cpu().numpy())
        finally:
            enc.train(was)
        return {n: np.concatenate(v) for n, v in parts.items()}

    def ensure(self, clip_ids: list[str], *, progress: bool = False) -> int:
        """Compute and write every missing or stale stream of these clips (frames of several clips per encoder
        call); returns how many clip streams were encoded. Clips whose files are valid are not read here."""
        import time

        t0 = time.perf_counter()
        try:
            return self._ensure(clip_ids, progress)
        finally:
            self.seconds += time.perf_counter() - t0

    def _ensure(self, clip_ids: list[str], progress: bool) -> int:
        todo = [(cid, s) for cid in dict.fromkeys(clip_ids) if cid not in self._lru for s in self.requests
                if not self.has(cid, s)]
        if not todo:
            return 0
        from tqdm.auto import tqdm

        from vlm_salience.video.cache import read_clip

        bar = tqdm(total=len(todo), desc="encode frames (feature cache)", disable=not progress)
        i = 0
        while i < len(todo):
            batch, n = [], 0  # clip streams whose frames fill about one chunk
            while i < len(todo) and (not batch or n < CHUNK_FRAMES):
                cid, s = todo[i]
                if s in getattr(self.store, "streams", ()):
                    clip = self.store.get(cid)  # in memory where the frame store holds it
                    slots, frames = clip.slots, clip.arrays[s]
                else:
                    clip = read_clip(self.store.cache.root / self.clip_file(cid))
                    slots, frames = clip.slots, getattr(clip, s)
                if len(frames) == 0:
                    from vlm_salience.errors import DataError

                    raise DataError(f"clip '{cid}' has no {s} frames in the cache {self.store.cache.root} "
                                    f"(a face-crop-only corpus?)", column=s,
                                    fix="train a model that does not read that stream, or prepare the full frames")
                batch.append((cid, s, slots, frames))
                n += len(frames)
                i += 1
            by_request: dict[str, list[tuple]] = {}
            for item in batch:
                by_request.setdefault(item[1], []).append(item)
            for s, items in by_request.items():
                out = self._encode(np.concatenate([it[3] for it in items]), self.requests[s])
                start = 0
                for cid, _, slots, frames in items:
                    self._write(cid, s, slots, {k: v[start:start + len(frames)] for k, v in out.items()})
                    start += len(frames)
            self.computed += len(batch)
            bar.update(len(batch))
        bar.close()
        return len(todo)

    # -- reading ----------------------------------------------------------------------------------------------------
    def get(self, clip_id: str) -> ClipFeatures:
        """One clip's outputs of every requested stream (computed first where missing or stale)."""
        have = self._lru.get(clip_id)
        if have is not None:
            self._lru.move_to_end(clip_id)
            return have
        arrays: dict[str, np.ndarray] = {}
        slots = None
        for s in self.requests:
            got = self._read(clip_id, s)
            if got is None:
                self.ensure([clip_id])
                got = self._read(clip_id, s)
                if got is None:  # written and still not valid: a bug, not a stale file
                    raise RuntimeError(f"feature cache {self.path(clip_id, s)}: written but not readable back")
            slots = got[0]
            arrays.update({f"{s}/{n}": v for n, v in got[1].items()})
        clip = ClipFeatures(slots=slots, arrays=arrays)
        if clip.nbytes <= self.budget:
            self._lru[clip_id] = clip
            self._bytes += clip.nbytes
            while self._bytes > self.budget:
                _, old = self._lru.popitem(last=False)
                self._bytes -= old.nbytes
        return clip

    def preload(self, clip_ids: list[str]) -> int:
        """Read clips into memory until the budget is full; returns how many are held."""
        for cid in clip_ids:
            if self._bytes >= self.budget:
                break
            self.get(cid)
        return len(self._lru)

    def batch(self, clips: list[ClipFeatures], rows: list[np.ndarray]) -> dict[str, EncodedFrames]:
        """Per stream, the EncodedFrames of these rows of these clips: float32 (B, T, ...) tensors."""
        out = {}
        for s, req in self.requests.items():
            def stack(name: str, s: str = s) -> torch.Tensor:
                return torch.from_numpy(np.stack([c.arrays[f"{s}/{name}"][r] for c, r in zip(clips, rows)]))

            out[s] = EncodedFrames(stack("embeds") if req.embeds else None,
                                   {k: stack(f"block{k}") for k in req.blocks})
        return out

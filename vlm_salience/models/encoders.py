"""CLIP-style vision and text encoders from any `transformers` checkpoint (CLIP, SigLIP), and tiny random ones.

One `ClipEncoder` wraps a dual encoder so that the video models (the face-only baseline, OUS, GRACE) never touch
family details:

- `pixels(frames)`: uint8 frames straight from the frame cache -> normalised pixel values, resized to the
  encoder's input size with the processor's mean and std (in torch, on the model's device: the cache stays uint8);
  `preprocess(images)` does the same for PIL images through the checkpoint's own (PIL) image processor.
- `encode_images(pixels, tokens=..., layers=...)`: one batched call for any number of frames; the pooled image
  embedding in the joint space, optionally the patch tokens projected into that space (GRACE aligns text tokens
  with them) and the hidden states after chosen blocks (OUS reads blocks 1-4 for scene polarity).
- `encode_text(texts)`, and `encode_text_embeds(...)` for prompt learning: token embeddings that a model edited
  (CoOp context vectors) run through the rest of the text tower, pooled as the family pools.

Loading uses the PIL image processors (torchvision is not needed). Tiny checkpoints are built offline from YAML
(configs/models/tiny_clip.yaml, tiny_siglip.yaml) with a locally trained tokenizer and saved with
`save_pretrained`, so they load through exactly the code that loads a real checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from vlm_salience.config import RelPath, StrictModel
from vlm_salience.errors import ConfigError

FAMILIES = ("clip", "siglip")


class EncoderConfig(StrictModel):
    """Which dual encoder a video model uses (the `model.encoder` section of configs/video/*.yaml)."""

    path: str  # hub id (e.g. openai/clip-vit-base-patch16) or local folder
    build: RelPath | None = None  # a tiny-encoder YAML: build the encoder at `path` first if it is missing
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # "sdpa" (default where available) or "eager"


class TinyEncoderConfig(StrictModel):
    """Sizes of a tiny random CLIP or SigLIP (configs/models/tiny_clip*.yaml, tiny_siglip*.yaml)."""

    family: Literal["clip", "siglip"]
    vocab_size: int = 1000
    text: dict[str, Any]
    vision: dict[str, Any]
    projection_dim: int = 32  # CLIP only: the joint space (SigLIP's is the vision width)
    image_size: int = 32
    max_length: int = 32  # longest text (prompt) in tokens
    seed: int = 0


@dataclass
class ImageFeatures:
    """What `encode_images` returns for N images."""

    embeds: Any  # (N, D) pooled, in the joint image-text space (not normalised)
    tokens: Any | None = None  # (N, P, D) patch tokens projected into the joint space (no CLS token)
    hidden: dict[int, Any] = field(default_factory=dict)  # block index (1-based) -> (N, T, width) hidden states


# ---------------------------------------------------------------------------------------------------------------
# Families


def family_of(model_type: str) -> str:
    if model_type in ("clip",):
        return "clip"
    if model_type in ("siglip",):
        return "siglip"
    raise ConfigError(f"encoder model type '{model_type}' is not supported; use a CLIP or SigLIP checkpoint "
                      f"(model_type one of {FAMILIES})")


def _image_processor_class(family: str):
    if family == "clip":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        return CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    return SiglipImageProcessorPil


def _model_class(family: str):
    from transformers import CLIPModel, SiglipModel

    return {"clip": CLIPModel, "siglip": SiglipModel}[family]


# ---------------------------------------------------------------------------------------------------------------
# The encoder


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class ClipEncoder(torch.nn.Module):
    """A CLIP or SigLIP dual encoder with one interface for frames, patch tokens, block features and prompts."""

    def __init__(self, model, tokenizer, image_processor, family: str, *, max_length: int | None = None) -> None:
        import torch

        super().__init__()
        self.model, self.tokenizer, self.image_processor, self.family = model, tokenizer, image_processor, family
        cfg = model.config
        self.vision_width = cfg.vision_config.hidden_size
        self.text_width = cfg.text_config.hidden_size
        self.num_vision_layers = cfg.vision_config.num_hidden_layers
        self.image_size = int(cfg.vision_config.image_size)
        self.embed_dim = cfg.projection_dim if family == "clip" else self.vision_width
        self.max_length = int(max_length or cfg.text_config.max_position_embeddings)
        mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    # -- parts, for freezing and learning-rate groups ----------------------------------------------------------
    @property
    def vision(self):
        return self.model.vision_model

    @property
    def text(self):
        return self.model.text_model

    def vision_parameters(self):
        """The image tower and its projection (CLIP's visual_projection)."""
        yield from self.vision.parameters()
        if self.family == "clip":
            yield from self.model.visual_projection.parameters()

    def text_parameters(self):
        yield from self.text.parameters()
        if self.family == "clip":
            yield from self.model.text_projection.parameters()

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    # -- images ------------------------------------------------------------------------------------------------
    def pixels(self, frames):
        """uint8 frames (..., H, W, 3) -> normalised float pixels (prod(...), 3, S, S) on the encoder's device.

        The cache holds uint8 crops at any size; resizing (bilinear, antialiased) and normalising happen here, in
        one batched torch op, with the checkpoint processor's mean and std."""
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(frames)
        if x.shape[-1] != 3:
            raise ValueError(f"frames must be (..., H, W, 3) uint8, got shape {tuple(x.shape)}")
        x = x.reshape(-1, *x.shape[-3:]).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return ((x - self.pixel_mean) / self.pixel_std).to(self.dtype)

    def preprocess(self, images):
        """PIL images (or HxWx3 uint8 arrays) -> pixel values through the checkpoint's own image processor."""
        out = self.image_processor(images=list(images), return_tensors="pt")
        return out["pixel_values"].to(self.device, self.dtype)

    def encode_images(self, pixel_values, *, tokens: bool = False, layers: tuple[int, ...] = ()) -> ImageFeatures:
        """One forward pass for all images: pooled embeddings, optionally projected patch tokens and the hidden
        states after the given blocks (1-based, as the paper counts: layers=(1, 2, 3, 4))."""
        for k in layers:
            if not 1 <= k <= self.num_vision_layers:
                raise ValueError(f"block {k} is outside the vision tower's 1..{self.num_vision_layers}")
        out = self.vision(pixel_values=pixel_values.to(self.dtype), output_hidden_states=bool(layers))
        hidden = {k: out.hidden_states[k] for k in layers}
        if self.family == "clip":
            embeds = self.model.visual_projection(out.pooler_output)
            toks = None
            if tokens:
                toks = self.model.visual_projection(self.vision.post_layernorm(out.last_hidden_state[:, 1:]))
        else:
            embeds = out.pooler_output
            toks = out.last_hidden_state if tokens else None
        return ImageFeatures(embeds=embeds, tokens=toks, hidden=hidden)

    def image_features(self, pixel_values):
        """Pooled joint-space embeddings only (N, D)."""
        return self.encode_images(pixel_values).embeds

    # -- text --------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]):
        """input_ids and attention_mask as the family expects them (SigLIP: padded to max_length, it pools the
        last position; CLIP: padded to the longest, it pools the end-of-text token)."""
        padding = "max_length" if self.family == "siglip" else "longest"
        enc = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def token_embeddings(self, input_ids):
        return self.text.embeddings.token_embedding(input_ids)

    def pool_positions(self, input_ids):
        """Per sequence, the position whose final hidden state is the text embedding."""
        import torch

        if self.family == "siglip":
            return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long,
                              device=input_ids.device)
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:  # legacy CLIP configs: the end-of-text token has the highest id
            return input_ids.argmax(dim=-1)
        return (input_ids == eos).int().argmax(dim=-1)

    def encode_text_embeds(self, inputs_embeds, pool_at, attention_mask=None, *, return_tokens: bool = False):
        """Run token embeddings (B, L, width) through the text tower; pool at `pool_at` (B,) and project.

        This is what prompt learning needs: the caller replaces some token embeddings with learned vectors.
        Returns (B, D) embeddings, and with return_tokens also the projected token states (B, L, D)."""
        import torch

        text = self.text
        b, length, _ = inputs_embeds.shape
        pos = text.embeddings.position_ids[:, :length] if hasattr(text.embeddings, "position_ids") else \
            torch.arange(length, device=inputs_embeds.device)[None]
        h = inputs_embeds.to(self.dtype) + text.embeddings.position_embedding(pos)
        if self.family == "clip":
            mask = torch.full((length, length), float("-inf"), device=h.device, dtype=h.dtype).triu(1)
            mask = mask[None, None].expand(b, 1, length, length)
            if attention_mask is not None:
                pad = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
                mask = mask + pad
        else:
            mask = None  # SigLIP's text tower attends to every position, padding included
        for layer in text.encoder.layers:
            h = layer(h, mask)
            h = h[0] if isinstance(h, tuple) else h
        h = text.final_layer_norm(h)
        pooled = h[torch.arange(b, device=h.device), pool_at]
        proj = self.model.text_projection if self.family == "clip" else text.head
        if return_tokens:
            return proj(pooled), proj(h)
        return proj(pooled)

    def encode_text(self, texts: list[str]):
        """(n, D) joint-space text embeddings (not normalised), through `encode_text_embeds`, so that a prompt
        learner with zero context tokens gives exactly these."""
        ids, mask = self.tokenize(texts)
        return self.encode_text_embeds(self.token_embeddings(ids), self.pool_positions(ids), mask)

    def logit_scale(self) -> float:
        """The checkpoint's own temperature (exp of its learned logit scale)."""
        return float(self.model.logit_scale.detach().float().exp())


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _declared_family(path: str, revision: str | None, trust_remote_code: bool) -> str:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    return family_of(cfg.model_type)


def text_max_length(path: str) -> int | None:
    """The text window a tiny offline encoder records in its encoder.json (None: take the tokenizer's)."""
    meta = Path(path) / "encoder.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("max_length")
    return None


def load_encoder(cfg: EncoderConfig, *, device: str | None = None) -> ClipEncoder:
    """A `ClipEncoder` from a local folder or hub id; a tiny one is built first where `build` says so."""
    from transformers import AutoTokenizer

    path = str(cfg.path)
    if cfg.build is not None and not Path(path).exists():
        from vlm_salience.config import load_config

        build_tiny_encoder(load_config(cfg.build, TinyEncoderConfig), path)
    looks_local = Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") != 1
    if not Path(path).exists() and looks_local:
        raise ConfigError(f"encoder path '{path}' is neither a local folder nor a hub id (owner/name); set "
                          "model.encoder.path, or model.encoder.build to a tiny-encoder YAML")
    family = _declared_family(path, cfg.revision, cfg.trust_remote_code)
    kwargs: dict[str, Any] = {"revision": cfg.revision, "dtype": _torch_dtype(cfg.dtype), "use_safetensors": True}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = _model_class(family).from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision)
    processor = _image_processor_class(family).from_pretrained(path, revision=cfg.revision)
    enc = ClipEncoder(model, tokenizer, processor, family, max_length=text_max_length(path))
    if device is not None:
        enc.to(device)
    return enc.eval()


def encoder_fingerprint(path: str | Path) -> str:
    """Identity of an encoder checkpoint (config and weight file sizes; a hub id by name)."""
    from vlm_salience.models.fingerprint import checkpoint_fingerprint

    return checkpoint_fingerprint(path)


# ---------------------------------------------------------------------------------------------------------------
# Tiny random encoders, built offline

_TOKENS = {"clip": {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"},
           "siglip": {"bos": None, "eos": "</s>", "pad": "<pad>"}}


def _tiny_tokenizer(family: str, vocab_size: int, extra_text: list[str]):
    from tokenizers import processors

    from vlm_salience.models.tokenizer import train_tokenizer

    t = _TOKENS[family]
    specials = list(dict.fromkeys([s for s in (t["pad"], t["eos"], t["bos"]) if s]))
    tok = train_tokenizer(specials, vocab_size=vocab_size, eos=t["eos"], pad=t["pad"], extra_text=extra_text)
    backend = tok.backend_tokenizer
    eos_id = tok.convert_tokens_to_ids(t["eos"])
    if t["bos"]:
        bos_id = tok.convert_tokens_to_ids(t["bos"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{t['bos']} $A {t['eos']}", special_tokens=[(t["bos"], bos_id), (t["eos"], eos_id)])
        tok.bos_token = t["bos"]
    else:
        backend.post_processor = processors.TemplateProcessing(single=f"$A {t['eos']}",
                                                               special_tokens=[(t["eos"], eos_id)])
    from transformers import PreTrainedTokenizerFast

    out = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=t["eos"], pad_token=t["pad"],
                                  bos_token=t["bos"])
    return out


def _emotion_texts() -> list[str]:
    """Class names and descriptions of the shipped video configs, so tiny tokenizers cut them into few pieces."""
    import yaml

    from vlm_salience.resources import home

    texts: list[str] = []
    for p in sorted((home() / "configs" / "video").glob("*.yaml")):
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        classes = (data.get("model") or {}).get("class_text") if isinstance(data, dict) else None
        if isinstance(classes, dict):
            texts += [f"{k} {v}" for k, v in classes.items()]
    return texts * 20


def build_tiny_encoder(cfg: TinyEncoderConfig, out: str | Path) -> Path:
    """Build, save (safetensors + tokenizer + PIL image processor) and return the folder of a tiny random
    CLIP or SigLIP."""
    import torch

    from vlm_salience.atomic import replaced_dir

    out = Path(out)
    torch.manual_seed(cfg.seed)
    tok = _tiny_tokenizer(cfg.family, cfg.vocab_size, _emotion_texts())
    s = cfg.image_size
    text = {"vocab_size": len(tok), "max_position_embeddings": cfg.max_length, "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id, **cfg.text}
    vision = {"image_size": s, **cfg.vision}
    if cfg.family == "clip":
        from transformers import CLIPConfig, CLIPModel

        text["bos_token_id"] = tok.bos_token_id
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim))
        processor = _image_processor_class("clip")(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    else:
        from transformers import SiglipConfig, SiglipModel

        text["projection_size"] = cfg.vision["hidden_size"]
        text["bos_token_id"] = None
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = _image_processor_class("siglip")(size={"height": s, "width": s})
    tok.model_max_length = cfg.max_length
    with replaced_dir(out) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        tok.save_pretrained(stage)
        processor.save_pretrained(stage)
        (stage / "encoder.json").write_text(json.dumps({"family": cfg.family, "max_length": cfg.max_length,
                                                        "tiny": True}))
    return out

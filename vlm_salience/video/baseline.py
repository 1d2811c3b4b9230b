"""The face-only video baseline, the DFER-CLIP recipe (Zhao & Liu, 2023), written for any CLIP-style encoder.

    face frames (B, T) ──► image encoder (one batched call) ──► (B, T, D) ──► temporal transformer
        (learnable class token + position embeddings, pre-norm blocks) ──► video feature (B, D)
    class texts ──► learnable context vectors (CoOp: n_ctx tokens per class, after the start token) ──► text
        encoder ──► class embeddings (K, D)
    logits = cos(video, class) / temperature  ──► cross-entropy

As in DFER-CLIP: one temporal block (8 heads, MLP 1024 on ViT-B), 8 class-specific context tokens, class
descriptions as the class text, a fixed temperature of 0.01, the image encoder fine-tuned at a small learning rate
and the text encoder frozen; each part's learning rate is its own. Which parts train is configurable.

The pieces (`TemporalTransformer`, `PromptLearner`) are shared by OUS and GRACE, which import them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from vlm_salience.config import StrictModel
from vlm_salience.models.encoders import ClipEncoder, EncoderConfig
from vlm_salience.video.feature_cache import EncodedFrames, FeatureRequest, is_encoded


class TemporalConfig(StrictModel):
    layers: int = Field(1, ge=0)  # 0: mean over frames (no temporal model)
    heads: int = Field(8, ge=1)
    mlp_dim: int = Field(1024, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_frames: int = Field(64, ge=1)  # size of the position table (segments per clip at most)
    # the clip feature: the class token's output (DFER-CLIP), or the frames' outputs plus their inputs, averaged
    # (mean: the OUS authors' released frame encoder)
    pooling: Literal["class_token", "mean"] = "class_token"


class LearningRates(StrictModel):
    """Per-part learning rates (DFER-CLIP: temporal 1e-2, image encoder 1e-5, prompts 1e-3, with SGD)."""

    temporal: float = Field(1e-2, gt=0)
    vision: float = Field(1e-5, gt=0)
    prompt: float = Field(1e-3, gt=0)
    text: float = Field(1e-5, gt=0)
    head: float = Field(1e-3, gt=0)  # the temperature, where it is learned


class BaselineModelConfig(StrictModel):
    """`model:` of a baseline video config."""

    kind: Literal["baseline"] = "baseline"
    encoder: EncoderConfig
    class_text: dict[str, str] = Field(default_factory=dict)  # class name -> text (default: the name itself)
    context_tokens: int = Field(8, ge=0)
    class_specific_contexts: bool = True
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    temperature: float = Field(0.01, gt=0)  # logits = cos / temperature
    learn_temperature: bool = False
    vision: Literal["train", "frozen"] = "train"
    text: Literal["train", "frozen"] = "frozen"
    lr: LearningRates = Field(default_factory=LearningRates)


# ---------------------------------------------------------------------------------------------------------------


class TemporalTransformer(nn.Module):
    """Frame features (B, T, D) -> a clip feature (B, D): a learnable class token and position embeddings, then
    pre-norm transformer blocks; the class token's output is the clip feature (`pooling: mean`: no class token,
    the mean over frames of each frame's output plus its input)."""

    def __init__(self, dim: int, cfg: TemporalConfig) -> None:
        super().__init__()
        self.layers, self.pooling = cfg.layers, cfg.pooling
        # mean pooling has no class token (an unused parameter would stall multi-GPU gradient sync)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if cfg.pooling == "class_token" else None
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.max_frames + 1, dim) * 0.02)
        heads = cfg.heads if dim % cfg.heads == 0 else math.gcd(dim, cfg.heads)
        block = nn.TransformerEncoderLayer(dim, heads, cfg.mlp_dim, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False) if cfg.layers else None

    def forward(self, x: torch.Tensor, *, all_tokens: bool = False) -> torch.Tensor:
        if self.blocks is None:
            return x.mean(dim=1)
        b, t, _ = x.shape
        if t + 1 > self.pos_embedding.shape[1]:
            raise ValueError(f"{t} frames per clip, but the position table holds {self.pos_embedding.shape[1] - 1}; "
                             "raise model.temporal.max_frames")
        if self.pooling == "mean":  # no class token: the frames' outputs with a residual, averaged
            out = self.blocks(x + self.pos_embedding[:, 1:t + 1].to(x.dtype)) + x
            return out if all_tokens else out.mean(dim=1)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = self.blocks(x + self.pos_embedding[:, :t + 1].to(x.dtype))
        return x if all_tokens else x[:, 0]


class PromptLearner(nn.Module):
    """CoOp prompts: `n_ctx` learnable token vectors (one set per class, or one shared) placed after the start
    token, followed by the tokens of each class's text; the text tower turns them into class embeddings."""

    def __init__(self, encoder: ClipEncoder, texts: list[str], n_ctx: int, class_specific: bool = True) -> None:
        super().__init__()
        self.n_cls, self.n_ctx = len(texts), n_ctx
        width = encoder.text_width
        self.ctx = nn.Parameter(torch.randn(self.n_cls if class_specific else 1, n_ctx, width) * 0.02)
        self.front = 0 if encoder.family == "siglip" else 1  # CLIP: keep <start> first; SigLIP has none
        saved = encoder.max_length
        encoder.max_length = saved - n_ctx  # room for the context tokens
        try:
            ids, mask = encoder.tokenize(texts)
        finally:
            encoder.max_length = saved
        self.register_buffer("input_ids", ids.cpu(), persistent=False)
        self.register_buffer("attention_mask", mask.cpu(), persistent=False)
        self.texts = list(texts)

    def forward(self, encoder: ClipEncoder, *, return_tokens: bool = False):
        """(K, D) class embeddings (not normalised); with return_tokens also (K, L, D) token states."""
        ids, mask = self.input_ids, self.attention_mask
        emb = encoder.token_embeddings(ids)
        ctx = self.ctx.expand(self.n_cls, -1, -1).to(emb.dtype)
        f = self.front
        embeds = torch.cat([emb[:, :f], ctx, emb[:, f:]], dim=1)
        full_mask = torch.cat([mask[:, :f], torch.ones_like(mask[:, :1]).expand(-1, self.n_ctx), mask[:, f:]], 1)
        pool = encoder.pool_positions(ids) + (self.n_ctx if encoder.family == "clip" else 0)
        return encoder.encode_text_embeds(embeds, pool, full_mask, return_tokens=return_tokens)


def class_texts(classes: list[str], class_text: dict[str, str]) -> list[str]:
    """The text of each class: its description where the config gives one, else its name."""
    unknown = sorted(set(class_text) - set(classes))
    if unknown:
        from vlm_salience.errors import ConfigError

        raise ConfigError(f"model.class_text names class(es) {unknown} that the corpus does not have "
                          f"(classes: {classes})")
    return [class_text.get(c, c) for c in classes]


def add_logit_scale(module: nn.Module, cfg) -> None:
    """`module.log_scale`, log(1 / temperature) of the cosine logits: learned or a fixed buffer (cfg says)."""
    log_scale = torch.tensor(math.log(1.0 / cfg.temperature))
    if cfg.learn_temperature:
        module.log_scale = nn.Parameter(log_scale)
    else:
        module.register_buffer("log_scale", log_scale)


def train_encoder_parts(encoder, cfg) -> None:
    """Freeze the encoder, then unfreeze the towers the config trains (`vision`, `text`: train | frozen)."""
    for p in encoder.parameters():
        p.requires_grad_(False)
    if cfg.vision == "train":
        for p in encoder.vision_parameters():
            p.requires_grad_(True)
    if cfg.text == "train":
        for p in encoder.text_parameters():
            p.requires_grad_(True)


class BaselineModel(nn.Module):
    """Face frames -> class logits (and the clip feature, for t-SNE and for models that build on it)."""

    def __init__(self, encoder: ClipEncoder, cfg: BaselineModelConfig, classes: list[str]) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.classes = list(classes)
        self.temporal = TemporalTransformer(encoder.embed_dim, cfg.temporal)
        self.prompts = PromptLearner(encoder, class_texts(classes, cfg.class_text), cfg.context_tokens,
                                     cfg.class_specific_contexts)
        add_logit_scale(self, cfg)
        self.set_trainable()

    def set_trainable(self) -> None:
        train_encoder_parts(self.encoder, self.cfg)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups, each part at its own learning rate; frozen parts are left out."""
        lr = self.cfg.lr
        groups = [{"params": list(self.temporal.parameters()), "lr": lr.temporal, "name": "temporal"},
                  {"params": list(self.prompts.parameters()), "lr": lr.prompt, "name": "prompt"}]
        if self.cfg.vision == "train":
            groups.append({"params": list(self.encoder.vision_parameters()), "lr": lr.vision, "name": "vision"})
        if self.cfg.text == "train":
            groups.append({"params": list(self.encoder.text_parameters()), "lr": lr.text, "name": "text"})
        if self.cfg.learn_temperature:
            groups.append({"params": [self.log_scale], "lr": lr.head, "weight_decay": 0.0, "name": "temperature"})
        return [g for g in groups if g["params"]]

    def feature_requests(self) -> dict[str, FeatureRequest]:
        """What this model reads of the encoder (video/feature_cache.py): each face frame's pooled embedding."""
        return {"face": FeatureRequest()}

    def frame_features(self, frames: torch.Tensor | EncodedFrames) -> torch.Tensor:
        """uint8 frames (B, T, H, W, 3) -> per-frame joint-space features (B, T, D), in one encoder call (or a
        frozen encoder's cached outputs of them)."""
        if is_encoded(frames):
            return frames.embeds.to(self.encoder.dtype)
        b, t = frames.shape[:2]
        return self.encoder.image_features(self.encoder.pixels(frames)).reshape(b, t, -1)

    def class_embeddings(self) -> torch.Tensor:
        return nn.functional.normalize(self.prompts(self.encoder).float(), dim=-1)

    def forward(self, face: torch.Tensor) -> dict[str, torch.Tensor]:
        """face: uint8 face frames (B, T, H, W, 3) -> {"logits": (B, K), "features": (B, D) normalised}."""
        video = self.temporal(self.frame_features(face))
        video = nn.functional.normalize(video.float(), dim=-1)
        logits = self.log_scale.float().exp() * video @ self.class_embeddings().t()
        return {"logits": logits, "features": video}

"""The OUS model (Figure 3 of the paper), on any CLIP-style encoder of `models/encoders.py`.

    face + scene frames ─► f_V, ONE batched call ─► per-frame features (B, T, D) of each stream
      face:  shared LSTM (residual) ─► frame encoder (temporal transformer) ─► V_ft
      scene: shared LSTM ─► conv1d over frames, mean, FC ─► V_st
      scene frames' hidden states after blocks 1..4 ─► polarity encoder ─► V_p, 3-way polarity logits (L_pol)
    Type Fusion Encoder: x = [V_ft; V_st; V_p] (+ type embeddings, times the salience gate's weights);
        per block  x = x + CrossAttn(Q, LN(x)),  x = x + MLP(LN(x)),  with Q ONE Gaussian-initialised parameter
        shared by every block; fused = mean over the type tokens
    class prompts (CoOp context tokens, the baseline's `PromptLearner`) ─► text tower ─► class embeddings
    logits = cos(fused, class) / temperature  ─► L_cont;   L_sim between FC(V_ft) and V_st

The LSTM is one module shared by both streams (as in the authors' code), run over time on both in one call
(`lstm_over: time`), or across each frame's (face, scene) pair (`pair`, the authors' released code). The TFE's
queries, shared by every block (the paper's figure), may instead be one per block, ones-initialised (the code).
Ablations (config switches) remove the scene stream, the polarity encoder, the TFE (concatenate and project),
the learnable context tokens, or L_sim's projections; each removal changes the graph, not just a loss weight.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from vlm_salience.models.encoders import ClipEncoder
from vlm_salience.ous.config import OusModelConfig
from vlm_salience.salience import SalienceLaw
from vlm_salience.video.baseline import (PromptLearner, TemporalTransformer, add_logit_scale, class_texts,
                                         train_encoder_parts)
from vlm_salience.video.feature_cache import FeatureRequest, is_encoded


class SharedLSTM(nn.Module):
    """Temporal fusion: an LSTM over the frames with a residual connection, (N, T, D) -> (N, T, D)."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):  # oneDNN has no bf16 LSTM on many CPUs
            out, _ = self.lstm(x.float())
        return x + out.to(x.dtype)


class SceneProjection(nn.Module):
    """The scene stream's latent: a temporal convolution, the mean over frames, a fully connected layer
    (the conv + FC projection of L_sim; its output is also the scene token V_st the fusion reads). `conv=False`:
    the frames' mean and the linear layer only (the authors' released code)."""

    def __init__(self, dim: int, conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1) if conv else None
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, D)
        if self.conv is None:
            return self.fc(x.mean(dim=1))
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.fc(torch.nn.functional.gelu(h).mean(dim=1) + x.mean(dim=1))


class PolarityEncoder(nn.Module):
    """Scene polarity from the early blocks (texture, colour, atmosphere): per block the mean of its tokens,
    concatenated, an MLP, the mean over frames -> a polarity feature (B, D) and 3-way logits (B, 3)."""

    def __init__(self, width: int, n_blocks: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width * n_blocks)
        self.mlp = nn.Sequential(nn.Linear(width * n_blocks, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, blocks: list[torch.Tensor], b: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([h.float().mean(dim=1) for h in blocks], dim=-1)  # (B*T, width * n_blocks)
        feat = self.mlp(self.norm(x)).reshape(b, t, -1).mean(dim=1)
        return feat, self.head(feat)


class CrossTypeBlock(nn.Module):
    """x = x + Attn(Q, LN(x), LN(x)); x = x + MLP(LN(x)). Q is passed in: the TFE's one shared parameter."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        heads = heads if dim % heads == 0 else math.gcd(dim, heads)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(x)
        q = queries.unsqueeze(0).expand(x.shape[0], -1, -1).to(kv.dtype)
        x = x + self.attn(q, kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class TypeFusionEncoder(nn.Module):
    """Learnable queries (one per type token): ONE parameter shared by all blocks (`queries: shared`, the paper)
    or one per block (`per_block`, the released code); Gaussian- or ones-initialised (`query_init`)."""

    def __init__(self, dim: int, n_types: int, cfg) -> None:
        super().__init__()

        def init() -> nn.Parameter:
            if cfg.query_init == "ones":
                return nn.Parameter(torch.ones(n_types, dim))
            return nn.Parameter(torch.randn(n_types, dim) * cfg.query_std)

        if cfg.queries == "per_block":
            self.block_queries = nn.ParameterList(init() for _ in range(cfg.layers))
        else:
            self.queries = init()
        self.type_embedding = nn.Parameter(torch.zeros(n_types, dim))
        self.blocks = nn.ModuleList(CrossTypeBlock(dim, cfg.heads, cfg.mlp_dim, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, n_types, D) -> (B, D)
        x = tokens + self.type_embedding.to(tokens.dtype)
        per_block = getattr(self, "block_queries", None)
        for i, block in enumerate(self.blocks):
            x = block(x, self.queries if per_block is None else per_block[i])
        return self.norm(x).mean(dim=1)


class ConcatFusion(nn.Module):
    """The no-TFE ablation: concatenate the type tokens and project back to the joint space."""

    def __init__(self, dim: int, n_types: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim * n_types), nn.Linear(dim * n_types, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens.flatten(1))


def salience_law(cfg) -> SalienceLaw:
    """The gate's law, from the config, built with salience.py's own constructors."""
    if cfg.law == "logistic":
        return SalienceLaw.logistic(cfg.total, cfg.slope, cfg.alpha, threshold=cfg.threshold)
    if cfg.law == "hard":
        return SalienceLaw.hard(tuple(cfg.subtle), tuple(cfg.expressive), threshold=cfg.threshold)
    if cfg.law == "control":
        return SalienceLaw.control(*cfg.subtle, threshold=cfg.threshold)
    if cfg.law == "plain":
        return SalienceLaw.plain(cfg.threshold)
    raise ValueError(f"the OUS gate cannot build the salience law {cfg.law!r}; its laws: plain, control, hard, logistic")


def head_expressivity(logits: torch.Tensor) -> torch.Tensor:
    """1 - normalised entropy of a face-only class distribution (expressivity.face_entropy's measure, per clip,
    from the model's own face head): a readable face commits to one class."""
    p = torch.softmax(logits.detach().float(), dim=-1).clamp_min(1e-12)
    return 1.0 - (-(p * p.log()).sum(-1) / math.log(p.shape[-1]))


class OusModel(nn.Module):
    """Face and scene frames -> class logits, the fused clip feature, and what the losses need."""

    def __init__(self, encoder: ClipEncoder, cfg: OusModelConfig, classes: list[str]) -> None:
        super().__init__()
        self.cfg, self.encoder, self.classes = cfg, encoder, list(classes)
        d = encoder.embed_dim
        self.batched_streams = True  # one encoder call for both streams (False: two calls; the benchmark's foil)
        self.lstm = SharedLSTM(d, cfg.lstm_layers) if cfg.lstm_layers else None
        self.frame_encoder = TemporalTransformer(d, cfg.temporal)
        n_types = 1
        if cfg.scene:
            self.scene_proj = SceneProjection(d, conv=cfg.scene_token == "conv_mean_fc")
            n_types += 1
        if cfg.polarity:
            bad = [k for k in cfg.polarity_blocks if k > encoder.num_vision_layers]
            if bad:
                raise ValueError(f"model.polarity_blocks {bad}: the encoder has {encoder.num_vision_layers} blocks")
            self.polarity = PolarityEncoder(encoder.vision_width, len(cfg.polarity_blocks), cfg.polarity_dim, d)
            n_types += 1
        if cfg.similarity:
            self.face_proj = nn.Linear(d, d)  # the face side of L_sim's projections
        self.n_types = n_types
        self.fusion = TypeFusionEncoder(d, n_types, cfg.fusion) if cfg.use_tfe else ConcatFusion(d, n_types)
        needs_face_head = cfg.gate.reads_face_head and cfg.scene
        if needs_face_head:
            self.face_head = nn.Linear(d, len(classes))
        if cfg.gate.mode == "control" and cfg.scene:
            p = cfg.gate.control_init
            self.gate_logit = nn.Parameter(torch.tensor(math.log(p / (1 - p))))
        self.law = salience_law(cfg.gate) if cfg.gate.mode == "salience" else None
        n_ctx = cfg.context_tokens if cfg.learnable_prompts else 0
        self.prompts = PromptLearner(encoder, class_texts(classes, cfg.class_text), n_ctx,
                                     cfg.class_specific_contexts)
        add_logit_scale(self, cfg)
        self.set_trainable()

    # -- parts and learning rates --------------------------------------------------------------------------------
    def set_trainable(self) -> None:
        train_encoder_parts(self.encoder, self.cfg)
        if not self.cfg.learnable_prompts:
            self.prompts.ctx.requires_grad_(False)

    def param_groups(self) -> list[dict[str, Any]]:
        lr = self.cfg.lr
        parts = [("temporal", self.frame_encoder, lr.temporal), ("lstm", self.lstm, lr.lstm),
                 ("fusion", self.fusion, lr.fusion), ("polarity", getattr(self, "polarity", None), lr.polarity),
                 ("similarity", getattr(self, "scene_proj", None), lr.similarity),
                 ("similarity_face", getattr(self, "face_proj", None), lr.similarity),
                 ("face_head", getattr(self, "face_head", None), lr.head), ("prompt", self.prompts, lr.prompt)]
        groups = [{"params": [p for p in m.parameters() if p.requires_grad], "lr": r, "name": n}
                  for n, m, r in parts if m is not None]
        if hasattr(self, "gate_logit"):
            groups.append({"params": [self.gate_logit], "lr": lr.fusion, "weight_decay": 0.0, "name": "gate"})
        if self.cfg.vision == "train":
            groups.append({"params": list(self.encoder.vision_parameters()), "lr": lr.vision, "name": "vision"})
        if self.cfg.text == "train":
            groups.append({"params": list(self.encoder.text_parameters()), "lr": lr.text, "name": "text"})
        if self.cfg.learn_temperature:
            groups.append({"params": [self.log_scale], "lr": lr.head, "weight_decay": 0.0, "name": "temperature"})
        return [g for g in groups if g["params"]]

    # -- the shared encoder ------------------------------------------------------------------------------------
    def feature_requests(self) -> dict[str, FeatureRequest]:
        """What this model reads of the encoder (video/feature_cache.py): pooled embeddings of both streams, and
        of the scene frames the token means of the blocks the polarity encoder reads."""
        req = {"face": FeatureRequest()}
        if self.cfg.scene:
            req["scene"] = FeatureRequest(blocks=tuple(self.cfg.polarity_blocks) if self.cfg.polarity else ())
        return req

    def encode(self, face: torch.Tensor, scene: torch.Tensor | None):
        """Per-frame joint-space features of both streams and the scene frames' early-block hidden states, from
        ONE encoder call over the face and scene frames stacked (two calls where `batched_streams` is off), or
        a frozen encoder's cached outputs of them (`EncodedFrames`)."""
        enc = self.encoder
        b, t = face.shape[:2]
        layers = tuple(self.cfg.polarity_blocks) if self.cfg.polarity else ()
        if is_encoded(face):
            return (face.embeds.to(enc.dtype), None if scene is None else scene.embeds.to(enc.dtype),
                    [scene.block_tokens(k) for k in layers] if scene is not None else [])
        if scene is None:
            out = enc.encode_images(enc.pixels(face))
            return out.embeds.reshape(b, t, -1), None, []
        if self.batched_streams:
            px = enc.pixels(torch.cat([face, scene])) if face.shape[2:] == scene.shape[2:] else \
                torch.cat([enc.pixels(face), enc.pixels(scene)])
            out = enc.encode_images(px, layers=layers)
            emb = out.embeds
            f, s = emb[:b * t], emb[b * t:]
            blocks = [out.hidden[k][b * t:] for k in layers]
        else:
            f = enc.encode_images(enc.pixels(face)).embeds
            o = enc.encode_images(enc.pixels(scene), layers=layers)
            s, blocks = o.embeds, [o.hidden[k] for k in layers]
        return f.reshape(b, t, -1), s.reshape(b, t, -1), blocks

    def class_embeddings(self) -> torch.Tensor:
        return nn.functional.normalize(self.prompts(self.encoder).float(), dim=-1)

    def face_share(self, out: dict[str, torch.Tensor], b: int, device,
                   expressivity: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-clip share of the fusion's trust in the face (None: no gate). The expressivity is the face head's
        (gate.expressivity: encoder) or the one the batch carries (fer: the real classifier's, per clip)."""
        gate = self.cfg.gate
        if gate.mode == "control" and hasattr(self, "gate_logit"):
            return torch.sigmoid(self.gate_logit).expand(b)
        if gate.mode != "salience" or self.law is None or not self.cfg.scene:
            return None
        if gate.expressivity == "fer":
            if expressivity is None:
                raise ValueError("gate.expressivity: fer reads each clip's expressivity from the batch "
                                 "(OusTask computes it with the expression classifier), but none was passed")
            x = expressivity.detach().float().reshape(b)
        elif "face_logits" in out:
            x = head_expressivity(out["face_logits"])
        else:
            return None
        out["expressivity"] = x
        share = self.law.face_share(x.cpu().numpy().astype(np.float64))
        return torch.as_tensor(share, dtype=torch.float32, device=device)

    def forward(self, face: torch.Tensor, scene: torch.Tensor | None = None,
                expressivity: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """uint8 frames (B, T, H, W, 3) of each stream -> {"logits", "features", ...} (see the module doc);
        `expressivity` (B,): the clips' expressivity where the gate reads the expression classifier's."""
        if self.cfg.scene and scene is None:
            raise ValueError("this OUS model reads a scene stream, but the batch has none (model.use_scene: false "
                             "trains face-only OUS)")
        b = face.shape[0]
        f, s, blocks = self.encode(face, scene if self.cfg.scene else None)
        out: dict[str, torch.Tensor] = {}
        if self.lstm is not None:
            if s is not None and self.cfg.lstm_over == "pair":  # per frame, the sequence (face, scene)
                t, d = f.shape[1], f.shape[2]
                pair = self.lstm(torch.stack([f, s], dim=2).reshape(b * t, 2, d)).reshape(b, t, 2, d)
                f, s = pair[:, :, 0], pair[:, :, 1]
            elif s is not None and self.cfg.scene_lstm:
                both = self.lstm(torch.cat([f, s]))
                f, s = both[:b], both[b:]
            else:
                f = self.lstm(f)
        v_ft = self.frame_encoder(f)
        tokens = [v_ft]
        if s is not None:
            v_st = self.scene_proj(s)
            tokens.append(v_st)
            out["scene_latent"] = v_st
            if self.cfg.similarity:
                out["face_latent"] = self.face_proj(v_ft)
        if self.cfg.polarity:
            v_p, pol_logits = self.polarity(blocks, b, face.shape[1])
            tokens.append(v_p.to(v_ft.dtype))
            out["polarity_logits"] = pol_logits
        if hasattr(self, "face_head"):
            out["face_logits"] = self.face_head(v_ft.float())
        x = torch.stack(tokens, dim=1)
        share = self.face_share(out, b, x.device, expressivity)
        if share is not None:
            share = share.float()
            w = torch.cat([2 * share[:, None], (2 * (1 - share))[:, None].expand(-1, x.shape[1] - 1)], dim=1)
            x = x * w.unsqueeze(-1).to(x.dtype)
            out["face_share"] = share
        fused = nn.functional.normalize(self.fusion(x).float(), dim=-1)
        out["logits"] = self.log_scale.float().exp() * fused @ self.class_embeddings().t()
        out["features"] = fused
        return out

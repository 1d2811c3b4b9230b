"""The GRACE classifier: motion-weighted visual tokens aligned with the clip's text tokens by optimal transport.

    face frames (B, T) ──► image encoder, patch tokens (B, T, P, D) ──► adapter
         motion weights w (B, T, P) (grace/motion.py, computed from the cached frames by the task)
         ├─► per frame, the w-weighted mean of its tokens ──► temporal transformer ──► video feature v (B, D)
    clip text (CATE) ──► text encoder, token states (B, L, D) ──► adapter
         ├─► log-domain Sinkhorn between text tokens (uniform mass) and visual tokens (mass w):
         │     plan π (B, L, T·P), cost <π, C> with C = 1 - cos
         └─► per text token, its transported visual feature Σ_j π_ij v_j / a_i, fused with the token (MLP),
               averaged over tokens ──► aligned feature s (B, D)
    z = normalise(v + s)  ──► cosine logits against the class prompts (CoOp context, as the baseline)
    loss = cross-entropy + ot.weight · cost + contrastive_weight · InfoNCE(v, pooled text)

Ablations: ot.enabled false (each text token meets the weighted mean of all visual tokens), text.source none (z =
normalise(v), no cost, no contrastive term), motion.mode off (uniform w; the task computes w).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlm_salience.grace.config import GraceModelConfig
from vlm_salience.grace.transport import cosine_cost, sinkhorn_log
from vlm_salience.models.encoders import ClipEncoder
from vlm_salience.video.baseline import PromptLearner, TemporalTransformer, class_texts


class GraceModel(nn.Module):
    def __init__(self, encoder: ClipEncoder, cfg: GraceModelConfig, classes: list[str]) -> None:
        super().__init__()
        self.encoder, self.cfg, self.classes = encoder, cfg, list(classes)
        d = encoder.embed_dim
        self.prompts = PromptLearner(encoder, class_texts(self.classes, cfg.class_text), cfg.context_tokens,
                                     cfg.class_specific_contexts)
        self.temporal = TemporalTransformer(d, cfg.temporal)
        self.visual_adapter = nn.Linear(d, d)
        self.text_adapter = nn.Linear(d, d)
        self.fuse = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))
        for lin in (self.visual_adapter, self.text_adapter):  # start as the identity: the encoder's own space
            nn.init.eye_(lin.weight)
            nn.init.zeros_(lin.bias)
        log_scale = torch.tensor(float(-torch.log(torch.tensor(cfg.temperature))))
        if cfg.learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.uses_text = cfg.text.source != "none"
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        if cfg.vision == "train":
            for p in self.encoder.vision_parameters():
                p.requires_grad_(True)
        if cfg.text_tower == "train":
            for p in self.encoder.text_parameters():
                p.requires_grad_(True)

    @property
    def grid(self) -> tuple[int, int]:
        g = self.encoder.image_size // int(self.encoder.model.config.vision_config.patch_size)
        return g, g

    def param_groups(self) -> list[dict[str, Any]]:
        lr = self.cfg.lr
        fusion = [*self.visual_adapter.parameters(), *self.text_adapter.parameters(), *self.fuse.parameters()]
        groups = [{"params": list(self.temporal.parameters()), "lr": lr.temporal, "name": "temporal"},
                  {"params": list(self.prompts.parameters()), "lr": lr.prompt, "name": "prompt"},
                  {"params": fusion, "lr": lr.fusion, "name": "fusion"}]
        if self.cfg.vision == "train":
            groups.append({"params": list(self.encoder.vision_parameters()), "lr": lr.vision, "name": "vision"})
        if self.cfg.text_tower == "train":
            groups.append({"params": list(self.encoder.text_parameters()), "lr": lr.text, "name": "text"})
        if self.cfg.learn_temperature:
            groups.append({"params": [self.log_scale], "lr": lr.head, "weight_decay": 0.0, "name": "temperature"})
        return [g for g in groups if g["params"]]

    def class_embeddings(self) -> torch.Tensor:
        return nn.functional.normalize(self.prompts(self.encoder).float(), dim=-1)

    def visual_tokens(self, face: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> adapted patch tokens (B, T, P, D), in one encoder call."""
        b, t = face.shape[:2]
        toks = self.encoder.encode_images(self.encoder.pixels(face), tokens=True).tokens
        return self.visual_adapter(toks.float()).reshape(b, t, toks.shape[1], -1)

    def text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, D), adapted token states (B, L, D))."""
        enc = self.encoder
        pooled, toks = enc.encode_text_embeds(enc.token_embeddings(ids), enc.pool_positions(ids), mask,
                                              return_tokens=True)
        return pooled.float(), self.text_adapter(toks.float())

    def forward(self, face: torch.Tensor, motion: torch.Tensor, text_ids: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """face uint8 (B, T, H, W, 3); motion (B, T, P) weights summing to 1 per clip; text token ids and mask
        (B, L). Returns logits, features, and for inspection the plan, cost, weights and text mask."""
        vis = self.visual_tokens(face)  # (B, T, P, D)
        b, t, p, d = vis.shape
        w = motion.float().reshape(b, t, p)
        frame_w = w / w.sum(dim=2, keepdim=True).clamp_min(1e-12)
        video = self.temporal((frame_w[..., None] * vis).sum(dim=2))  # (B, D)
        out: dict[str, torch.Tensor] = {"weights": w}
        z = video
        if self.uses_text and text_ids is not None:
            pooled, txt = self.text_tokens(text_ids, text_mask)
            a = text_mask.float() / text_mask.float().sum(dim=1, keepdim=True).clamp_min(1.0)
            flat, bw = vis.reshape(b, t * p, d), w.reshape(b, t * p)
            if self.cfg.ot.enabled:
                tr = sinkhorn_log(cosine_cost(txt, flat), a, bw, self.cfg.ot.eps, self.cfg.ot.iters)
                carried = tr.plan @ flat / a[..., None].clamp_min(1e-12)  # (B, L, D)
                out["plan"], out["cost"] = tr.plan, tr.cost
            else:
                carried = (bw[..., None] * flat).sum(dim=1, keepdim=True).expand(-1, txt.shape[1], -1)
            fused = self.fuse(torch.cat([txt, carried], dim=-1))
            aligned = (a[..., None] * fused).sum(dim=1)
            z = video + aligned
            out["text_embed"], out["text_mask"] = pooled, text_mask
        out["video"] = video
        z = nn.functional.normalize(z.float(), dim=-1)
        out["features"] = z
        out["logits"] = self.log_scale.float().exp() * z @ self.class_embeddings().t()
        return out


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between each clip's video feature and its own text's embedding (CLIP's loss)."""
    v = nn.functional.normalize(video.float(), dim=-1)
    s = nn.functional.normalize(text.float(), dim=-1)
    logits = v @ s.t() / temperature
    target = torch.arange(len(v), device=v.device)
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.t(), target))

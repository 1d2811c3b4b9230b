"""OUS's losses and the global loss with its conditional switching (see `LossConfig` for our reading).

- L_cont: cross-entropy over cos(fused, class prompt) / temperature (the contrastive loss between the prompt
  embeddings and the fused feature, as the authors' code computes it: the classes are the negatives);
- L_sim: 1 - cos between the face latent (FC of V_ft) and the scene latent (conv + FC of the scene frames), mean;
- L_pol: 3-way cross-entropy of the polarity head on the clips with a polarity label (-1: none);
- L_face: cross-entropy of the face-only head whose expressivity drives the salience gate (where it exists).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_salience.ous.config import LossConfig


def similarity_loss(face_latent: torch.Tensor, scene_latent: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(face_latent.float(), scene_latent.float(), dim=-1)).mean()


def polarity_loss(logits: torch.Tensor, polarity: torch.Tensor) -> torch.Tensor:
    """Mean over labelled clips; exactly zero (and still in the graph) when no clip of the batch has a label."""
    labelled = polarity >= 0
    if not bool(labelled.any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float()[labelled], polarity[labelled])


def aux_on(cfg: LossConfig, epoch: int | None) -> bool:
    """The switch: L_sim and L_pol count before epoch `aux_until_epoch` (always where it is None)."""
    return cfg.aux_until_epoch is None or epoch is None or epoch < cfg.aux_until_epoch


def global_loss(out: dict[str, torch.Tensor], label: torch.Tensor, polarity: torch.Tensor, cfg: LossConfig,
                epoch: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L_global and its parts (floats, for logging)."""
    parts: dict[str, torch.Tensor] = {"cont": F.cross_entropy(out["logits"].float(), label)}
    total = cfg.contrastive * parts["cont"]
    if aux_on(cfg, epoch):
        if "face_latent" in out and cfg.similarity > 0:
            parts["sim"] = similarity_loss(out["face_latent"], out["scene_latent"])
            total = total + cfg.similarity * parts["sim"]
        if "polarity_logits" in out and cfg.polarity > 0:
            parts["pol"] = polarity_loss(out["polarity_logits"], polarity)
            total = total + cfg.polarity * parts["pol"]
    if "face_logits" in out and cfg.face_head > 0:
        parts["face"] = F.cross_entropy(out["face_logits"].float(), label)
        total = total + cfg.face_head * parts["face"]
    return total, {k: float(v.detach()) for k, v in parts.items()}

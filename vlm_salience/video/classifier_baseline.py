"""A zero-training video baseline: the packaged FER2013 expression classifier on every cached face frame, its
probabilities pooled over time and mapped to the corpus's classes by a label map (issue 18, item 6).

`kind: fer_pooling` in a video YAML (configs/video/fer_pooling_*.yaml). It is a video model like the trained ones:
the same frame cache (`video prepare`), the same folds, `video train` / `video eval` and the same report
(UAR/WAR, per fold and pooled, per-class recall, ambiguous clips); only the engine is skipped, since nothing is
fitted (`trains = False`). Each test fold is predicted from the segment middles, as the trained models are.

Pooling over the T frames of a clip:
- `mean`: the mean of the per-frame class distributions;
- `expressivity`: weighted by each frame's expressivity read by the same model (1 - P(neutral), or the JS
  divergence from the neutral profile), so frames before the expression's onset count little. A clip whose every
  frame is neutral falls back to the plain mean.

The label map sends FER's 7 classes to the corpus's (configs/labelmaps/fer_to_dfew.yaml: identity-like); the
pooled FER distribution is the clip's feature vector (for the report's t-SNE).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from vlm_salience.config import RelPath, StrictModel
from vlm_salience.errors import ConfigError
from vlm_salience.video.config import VideoTrainConfig
from vlm_salience.video.registry import register_video_model
from vlm_salience.video.task import VideoClassifierTask, config_digest


class FerPoolingModelConfig(StrictModel):
    kind: Literal["fer_pooling"]
    classifier: RelPath | None = None  # a configs/models/face_fer_torch.yaml; None: the packaged mini-Xception
    label_map: RelPath  # FER's classes onto the corpus's (configs/labelmaps/fer_to_*.yaml)
    pooling: Literal["mean", "expressivity"] = "mean"
    expressivity: Literal["not_neutral", "js_from_neutral"] = "not_neutral"  # the weights of `expressivity` pooling
    eps: float = Field(1e-6, gt=0)  # where every frame's weight is ~0, the mean is used

    @property
    def encoder(self) -> SimpleNamespace:
        """No CLIP-style encoder to build (video/train.py's ensure_encoder asks every model for one)."""
        return SimpleNamespace(build=None, path=self.classifier)


class FerPoolingTrainConfig(VideoTrainConfig[FerPoolingModelConfig]):
    """A video config whose model is FER pooling (`kind: fer_pooling`)."""


def _grey64(frames: torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 RGB -> (N, 1, 64, 64) float grey in [-1, 1], as fer prepares its input (ITU-R 601
    luminance; area-like downscaling by antialiased bilinear interpolation)."""
    x = frames.float()
    grey = (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114).round().clamp(0, 255)[:, None]
    if grey.shape[-1] != 64 or grey.shape[-2] != 64:
        grey = torch.nn.functional.interpolate(grey, size=(64, 64), mode="bilinear", antialias=True,
                                               align_corners=False)
    return (grey / 255.0 - 0.5) * 2.0


def pool(frame_probs: torch.Tensor, weights: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """(B, T, C) per-frame distributions -> (B, C): the mean, or the weighted mean by (B, T) weights (the plain
    mean where a clip's weights sum to ~0)."""
    if weights is None:
        return frame_probs.mean(dim=1)
    w = weights.clamp(min=0)
    total = w.sum(dim=1, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[1])
    w = torch.where(total > eps, w / total.clamp(min=eps), uniform)
    return (frame_probs * w[..., None]).sum(dim=1)


class FerPoolingModel(torch.nn.Module):
    """Face frames (B, T, S, S, 3) uint8 -> {"logits": log pooled class probabilities, "features": pooled FER
    probabilities, "frame_probs": (B, T, C) FER probabilities, "frame_weights"}."""

    def __init__(self, net: torch.nn.Module, fer_classes: list[str], mapping: np.ndarray, cfg: FerPoolingModelConfig,
                 neutral: str | None = "neutral") -> None:
        super().__init__()
        self.net, self.cfg, self.fer_classes = net.eval(), cfg, list(fer_classes)
        self.register_buffer("mapping", torch.as_tensor(mapping, dtype=torch.float32))  # (C_fer, K)
        self.neutral = self.fer_classes.index(neutral) if neutral in self.fer_classes else None
        if cfg.pooling == "expressivity" and self.neutral is None:
            raise ConfigError("model.pooling: expressivity needs a classifier with a neutral class "
                              f"(classes: {self.fer_classes}). Fix: use pooling: mean.")
        for p in self.net.parameters():
            p.requires_grad_(False)

    def frame_weights(self, p: torch.Tensor) -> torch.Tensor:
        if self.cfg.expressivity == "not_neutral":
            return 1.0 - p[..., self.neutral]
        q = torch.zeros_like(p)
        q[..., self.neutral] = 1.0
        m = 0.5 * (p + q)

        def kl(a, b):
            return torch.where(a > 0, a * (a.clamp(min=1e-12).log() - b.clamp(min=1e-12).log()), 0.0).sum(-1)

        return ((0.5 * (kl(p, m) + kl(q, m))) / np.log(2.0)).clamp(0, 1)

    @torch.no_grad()
    def forward(self, face: torch.Tensor) -> dict[str, torch.Tensor]:
        B, T = face.shape[:2]
        x = _grey64(face.reshape(B * T, *face.shape[2:]).to(self.mapping.device))
        p = torch.softmax(self.net(x).float(), dim=-1).reshape(B, T, -1)
        w = self.frame_weights(p) if self.cfg.pooling == "expressivity" else None
        fer = pool(p, w, self.cfg.eps)
        probs = fer @ self.mapping
        probs = probs / probs.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        return {"logits": probs.clamp(min=1e-12).log(), "features": fer, "frame_probs": p,
                "frame_weights": w if w is not None else torch.ones(B, T, device=p.device)}


def label_matrix(label_map_path: Path, fer_classes: list[str], corpus_classes: list[str]) -> np.ndarray:
    """(C_fer, K) in the corpus's class order, from a label map written for the classifier and the corpus."""
    from vlm_salience.models.faces.labelmap import load_label_map

    lm = load_label_map(label_map_path, fer_classes)
    if sorted(lm.emotions) != sorted(corpus_classes):
        raise ConfigError(f"{label_map_path}: field 'emotions': lists {lm.emotions}, but the corpus's classes are "
                          f"{corpus_classes}. Fix: use a label map written for this corpus.")
    rows = [lm.classes.index(c) for c in fer_classes]
    cols = [lm.emotions.index(c) for c in corpus_classes]
    return lm.matrix[np.ix_(rows, cols)]


@register_video_model("fer_pooling")
class FerPoolingTask(VideoClassifierTask):
    """The FER2013 classifier pooled over frames: a video model with nothing to train."""

    config_class = FerPoolingTrainConfig
    streams = ("face",)
    trains = False  # video/train.py skips the engine for it

    def build_model(self) -> torch.nn.Module:
        from vlm_salience.models.faces.expression import FerTorchClassifier, load_classifier

        clf = load_classifier(self.cfg.model.classifier)
        if not isinstance(clf, FerTorchClassifier):
            raise ConfigError(f"model.classifier: fer_pooling runs a torch mini-Xception (kind fer_torch), got "
                              f"'{clf.cfg.kind}'. Fix: use configs/models/face_fer_torch.yaml or a copy of it.")
        mapping = label_matrix(self.cfg.model.label_map, clf.classes, self.classes)
        return FerPoolingModel(clf.model, clf.classes, mapping, self.cfg.model, clf.neutral)

    def encoder_path(self) -> str:
        return str(self.cfg.model.classifier or "fer:emotion_model.hdf5")

    def fingerprint(self) -> dict[str, str]:
        model_cfg = self.cfg.model.model_dump(mode="json")
        lm = Path(self.cfg.model.label_map)
        return {"model config": config_digest({**model_cfg, "label_map_text": lm.read_text() if lm.is_file() else ""}),
                "data": config_digest({"corpus": self.data_fingerprint, "cache": self.store.cache.manifest.get(
                    "config_hash"), "classes": self.classes, "n_segments": self.cfg.data.n_segments})}

    def skip_training(self) -> dict[str, Any]:
        """What video/train.py records for a fold instead of an engine run: the fold's model folder with its
        task.json (no weights: the packaged classifier is the model)."""
        from vlm_salience.atomic import replaced_dir

        result = {"steps": 0, "skipped": "zero-training model (fer_pooling): nothing to fit"}
        with replaced_dir(self.model_dir()) as stage:
            meta = {"fold": self.fold, "classes": self.classes, "kind": self.cfg.model.kind,
                    "fingerprint": self.fingerprint(), "selection": {"selected": "none (zero-training)"},
                    "train_clips": len(self.train_ids), "validation_clips": len(self.val_ids), "training": result}
            (stage / "task.json").write_text(json.dumps(meta, indent=2))
        return result

    def load_trained(self, device: Any = None) -> torch.nn.Module:
        model = self.build_model()
        if device is not None:
            model.to(device)
        return model.eval()

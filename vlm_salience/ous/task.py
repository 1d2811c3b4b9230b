"""OUS as a task for the engine: the foundation's `VideoClassifierTask` (cache batches, validation choice of weights,
save/load, prediction) with OUS's model, its second stream, its polarity targets and its global loss.

Polarity targets (0 negative, 1 neutral, 2 positive): the corpus's own (its polarity column, or the polarity_map of
its data YAML) where it has them, else the OUS config's `model.polarity_map` from the class; `polarity_source`
says which, and the report prints it. A value outside the three is an error naming the clip.
"""

from __future__ import annotations

from typing import Any

import torch

from vlm_salience.data.video.records import POLARITIES
from vlm_salience.errors import ConfigError, DataError
from vlm_salience.ous.config import OusTrainConfig
from vlm_salience.ous.losses import global_loss
from vlm_salience.video.registry import register_video_model
from vlm_salience.video.task import VideoClassifierTask


def polarity_targets(clip_ids: list[str], corpus_polarity: dict[str, Any], labels: dict[str, int],
                     classes: list[str], mapping: dict[str, str] | None) -> tuple[dict[str, int], str]:
    """clip id -> polarity index, and where the targets came from ("corpus", "model.polarity_map", "none")."""
    if corpus_polarity:
        out = {}
        for cid in clip_ids:
            if cid not in corpus_polarity or corpus_polarity[cid] is None:
                continue
            v = corpus_polarity[cid]
            if isinstance(v, str) and v.strip().lower() in POLARITIES:
                v = POLARITIES.index(v.strip().lower())
            if isinstance(v, bool) or not isinstance(v, (int,)) or not 0 <= int(v) <= 2:
                raise DataError(f"clip '{cid}' (its corpus row) has polarity {v!r}, outside the three values",
                                column="polarity",
                                fix=f"use one of {', '.join(POLARITIES)} (or 0/1/2)")
            out[cid] = int(v)
        return out, "corpus"
    if mapping:
        low = {k.lower(): v for k, v in mapping.items()}
        missing = [c for c in classes if c.lower() not in low]
        if missing:
            raise ConfigError(f"model.polarity_map does not name class(es) {missing}; give every class a polarity "
                              f"({', '.join(POLARITIES)})")
        return {cid: POLARITIES.index(low[classes[labels[cid]].lower()]) for cid in clip_ids}, "model.polarity_map"
    return {}, "none"


@register_video_model("ous")
class OusTask(VideoClassifierTask):
    """OUS: face and scene streams (face only where `model.use_scene` is off)."""

    config_class = OusTrainConfig

    def __init__(self, cfg: OusTrainConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        m = cfg.model
        self.streams = ("face", "scene") if m.scene else ("face",)
        ids = list(self.train_ids) + list(self.val_ids)
        self.polarity, self.polarity_source = polarity_targets(ids, self.polarity, self.labels, self.classes,
                                                               m.polarity_map)
        if m.polarity and m.loss.polarity > 0 and not self.polarity:
            raise ConfigError("OUS's polarity encoder needs polarity targets, but the corpus has no polarity "
                              "column or polarity_map; set model.polarity_map (class -> positive/neutral/negative) "
                              "or model.use_polarity: false")
        self.last_parts: dict[str, float] = {}
        self.fer = None  # gate.expressivity fer: the per-clip classifier expressivity (ous/fer_gate.py)
        if m.scene and m.gate.reads_fer:
            from vlm_salience.ous.fer_gate import FerExpressivity, default_cache_dir

            self.fer = FerExpressivity(self.store, m.gate.cache or default_cache_dir(cfg.data.cache),
                                       pooling=m.gate.pooling, classifier_config=m.gate.classifier, progress=True)

    def setup(self, accelerator=None):
        out = super().setup(accelerator)
        if self.fer is not None:  # once, before the first step (the test clips follow when first predicted)
            self.fer.ensure(list(self.train_ids) + list(self.val_ids))
        return out

    def batch(self, clip_ids: list[str], epoch: int | None) -> dict[str, Any]:
        b = super().batch(clip_ids, epoch)
        if self.fer is not None:
            b["expressivity"] = torch.as_tensor(self.fer.values(clip_ids), dtype=torch.float32)
        return b

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        inputs = super().model_inputs(batch)
        if "expressivity" in batch:
            inputs["expressivity"] = batch["expressivity"]
        return inputs

    def build_model(self):
        from vlm_salience.models.encoders import load_encoder
        from vlm_salience.ous.model import OusModel

        return OusModel(load_encoder(self.cfg.model.encoder), self.cfg.model, self.classes)

    def frames(self, clip_ids: list[str], epoch: int | None) -> dict[str, torch.Tensor]:
        """The foundation's frames, refusing clips without a scene stream (face-crop-only corpora)."""
        self._store_reads_streams()
        if "scene" in self.streams:
            for cid in clip_ids:
                clip = self.store.get(cid)
                scene = clip.arrays.get("scene") if hasattr(clip, "arrays") else getattr(clip, "scene", None)
                if scene is None or scene.size == 0:
                    raise DataError(f"clip '{cid}' has no scene stream in the cache {self.cfg.data.cache} "
                                    "(a face-crop-only corpus?)", column="scene",
                                    fix="train face-only OUS with model.use_scene: false, or prepare the full "
                                        "frames of the corpus")
        return super().frames(clip_ids, epoch)

    def _store_reads_streams(self) -> None:
        """The store is built for the class's streams (face); `setup` widens it, but a resumed run whose folds are
        all trained predicts without `setup` (it failed with 'no scene stream'): widen it here too."""
        have = getattr(self.store, "streams", None)
        if have is not None and any(s not in have for s in self.streams):
            self.store.streams = tuple(dict.fromkeys([*have, *self.streams]))
            self.store._lru.clear()
            self.store._bytes = 0

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        b = super().collate(indices, epoch)
        b["epoch"] = torch.tensor(int(epoch))
        return b

    def compute_loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        epoch = int(batch["epoch"]) if "epoch" in batch else None
        loss, self.last_parts = global_loss(out, batch["label"], batch["polarity"], self.cfg.model.loss, epoch)
        return loss

    def fingerprint(self) -> dict[str, str]:
        fp = super().fingerprint()
        fp["polarity targets"] = self.polarity_source
        if self.fer is not None:
            fp["gate expressivity"] = f"fer:{self.fer.fingerprint}:{self.cfg.model.gate.pooling}"
        return fp

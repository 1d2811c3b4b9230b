"""Video classifiers as tasks for the training engine: batches from the uint8 frame cache, loss, UAR/WAR, predictions.

`VideoClassifierTask` holds what every video model shares (the face-only baseline here; OUS and GRACE next):

- batches of cached frames, one per segment: a random cached candidate per segment when training (seeded by
  (seed, epoch, clip), so a resumed run draws the same frames), the middle one when evaluating; the streams a
  model reads (`streams`: "face", "scene") as uint8 tensors (B, T, S, S, 3) — the encoder normalises on the device;
- where the image encoder is frozen, the cached encoder outputs of those same rows instead of the frames
  (`video/feature_cache.py`, `data.feature_cache`; a model opts in with `feature_requests()`);
- `predict` -> per-clip class probabilities and clip features, `evaluate` -> validation UAR/WAR (the engine logs
  them; the best validation UAR's weights are kept for the test split, never chosen on the test split);
- `save`/`load` of the trainable weights only (a frozen encoder is rebuilt from its checkpoint), and a
  fingerprint of encoder, model config, data and training split, so a resume against anything else is refused.

A model subclass only builds its model (`build_model`), and where it needs one, its own loss (`compute_loss`)
and inputs (`streams`, `model_inputs`). The model's forward returns {"logits": (B, K), "features": (B, D), ...}.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_salience.errors import ConfigError
from vlm_salience.engine.task import Task
from vlm_salience.video.baseline import BaselineModelConfig
from vlm_salience.video.cache import ClipCache, sample
from vlm_salience.video.config import VideoTrainConfig
from vlm_salience.video.feature_cache import FeatureCache, usable
from vlm_salience.video.registry import register_video_model

WEIGHTS = "model.safetensors"
BEST = "best.safetensors"


@dataclass
class CachedFrames:
    """The part of a cached clip a batch reads: the segment slots and the frames of the streams a model uses
    (`video.cache.sample` works on it as on a full PreparedClip)."""

    slots: np.ndarray  # (N, K) rows of each segment's candidates; column 0: the middle frame
    arrays: dict[str, np.ndarray]  # stream -> (F, S, S, 3) uint8

    @property
    def n_segments(self) -> int:
        return int(self.slots.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class FrameStore:
    """Cached clips by id, reading only the streams asked for (a clip file also holds boxes, indices and the
    other stream), the most recently used kept in memory up to a byte budget."""

    def __init__(self, cache: ClipCache, budget_mb: int = 1024, streams: tuple[str, ...] = ("face",)) -> None:
        self.cache, self.budget, self.streams = cache, int(budget_mb) << 20, tuple(streams)
        self._lru: OrderedDict[str, CachedFrames] = OrderedDict()
        self._bytes = 0

    def _read(self, clip_id: str) -> CachedFrames:
        from vlm_salience.errors import DataError

        path = self.cache.root / self.cache.entry(clip_id)["file"]
        try:
            with np.load(path, allow_pickle=False) as z:
                return CachedFrames(slots=z["slots"], arrays={s: z[s] for s in self.streams})
        except FileNotFoundError:
            raise DataError("cached clip file is missing.", file=path,
                            fix="run `vlm-salience video prepare` again (it re-creates missing clips).") from None
        except Exception as exc:  # zip or key errors: not a complete clip file
            raise DataError(f"cached clip file is damaged ({exc}).", file=path,
                            fix="delete it and run `vlm-salience video prepare` again.") from None

    def preload(self, clip_ids: list[str]) -> int:
        """Read clips into memory until the budget is full (so epochs after setup never touch the disk when the
        training data fits); returns how many are held."""
        for cid in clip_ids:
            if cid not in self._lru:
                clip = self._read(cid)
                if self._bytes + clip.nbytes > self.budget:
                    break
                self._lru[cid] = clip
                self._bytes += clip.nbytes
        return len(self._lru)

    def get(self, clip_id: str) -> CachedFrames:
        clip = self._lru.get(clip_id)
        if clip is not None:
            self._lru.move_to_end(clip_id)
            return clip
        clip = self._read(clip_id)
        if clip.nbytes <= self.budget:
            self._lru[clip_id] = clip
            self._bytes += clip.nbytes
            while self._bytes > self.budget:
                _, old = self._lru.popitem(last=False)
                self._bytes -= old.nbytes
        return clip


@dataclass
class ClipPredictions:
    """What a model says about some clips: class probabilities, its clip features, and the true labels."""

    clip_ids: list[str]
    labels: np.ndarray  # (n,) true class indices
    probs: np.ndarray  # (n, K)
    features: np.ndarray  # (n, D)

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def split_validation(train_ids: list[str], labels: dict[str, int], fraction: float, seed: int) -> tuple[list[str],
                                                                                                      list[str]]:
    """Carve a validation split from a training fold, per class (at least one clip of each class with two or
    more), seeded. The test split is never seen before the chosen weights predict it."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {}
    for cid in train_ids:
        by_class.setdefault(labels[cid], []).append(cid)
    val: set[str] = set()
    for c in sorted(by_class):
        ids = by_class[c]
        if len(ids) < 2:
            continue
        k = max(1, int(round(fraction * len(ids))))
        val.update(ids[i] for i in rng.choice(len(ids), size=k, replace=False))
    return [i for i in train_ids if i not in val], [i for i in train_ids if i in val]


def config_digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object, for the fingerprints a resumed run is checked against."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters (requires_grad), detached copies on the CPU, contiguous (safetensors)."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ConfigError(f"{source}: weights do not fit this model (missing {missing[:4]}, unknown {extra[:4]}); "
                          "it was trained with another model config")
    model.load_state_dict(state, strict=False)


class VideoClassifierTask(Task):
    """The shared part of every video classifier; see the module docstring."""

    config_class = VideoTrainConfig
    streams: tuple[str, ...] = ("face",)
    # True where a task alters frames between epochs (augmentation): a frozen encoder's outputs then change, and
    # the feature cache (video/feature_cache.py) stays off
    augments_frames: bool = False

    def __init__(self, cfg: VideoTrainConfig, *, fold: str, classes: list[str], labels: dict[str, int],
                 train_ids: list[str], val_ids: list[str], store: FrameStore,
                 polarity: dict[str, int] | None = None, data_fingerprint: str = "") -> None:
        self.cfg, self.fold, self.classes = cfg, fold, list(classes)
        self.name = f"fold-{fold}"
        self.labels, self.polarity = labels, polarity or {}
        self.train_ids, self.val_ids, self.store = list(train_ids), list(val_ids), store
        self.data_fingerprint = data_fingerprint
        self.model: torch.nn.Module | None = None
        self.best: dict[str, Any] | None = None  # {"uar", "war", "evaluation", "state"}
        self._evaluations = 0
        self._features: FeatureCache | None = None  # the feature cache of the last model asked about
        self._active_features: FeatureCache | None = None  # serving the batches being made now (None: frames)
        self.feature_cache_reason = ""  # why the cache is (not) used, for the log

    # -- to override ---------------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def encoder_path(self) -> str | None:
        """The pretrained weights a checkpoint depends on (None: a model without `model.encoder`)."""
        enc = getattr(self.cfg.model, "encoder", None)
        return None if enc is None else str(enc.path)

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {s: batch[s] for s in self.streams}

    def compute_loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out["logits"].float(), batch["label"])

    # -- the engine's contract -----------------------------------------------------------------------------------
    def setup(self, accelerator=None):
        missing = [s for s in self.streams if s not in self.store.streams]
        if missing:
            self.store.streams = tuple(dict.fromkeys([*self.store.streams, *missing]))
            self.store._lru.clear()
            self.store._bytes = 0
        self.store.preload(self.train_ids + self.val_ids)
        self.model = self.build_model()
        self._active_features = self._fill_features(self.model, self.train_ids + self.val_ids, accelerator)
        groups = self.model.param_groups() if hasattr(self.model, "param_groups") else \
            [p for p in self.model.parameters() if p.requires_grad]
        return self.model, groups

    def num_examples(self) -> int:
        return len(self.train_ids)

    def fingerprint(self) -> dict[str, str]:
        from vlm_salience.models.encoders import encoder_fingerprint

        model_cfg = self.cfg.model.model_dump(mode="json", exclude={"encoder"})
        path = self.encoder_path()
        return {**({"encoder": encoder_fingerprint(path)} if path is not None else {}),
                "model config": config_digest(model_cfg),
                "data": config_digest({"corpus": self.data_fingerprint, "cache": self.store.cache.manifest.get(
                    "config_hash"), "classes": self.classes, "n_segments": self.cfg.data.n_segments}),
                "training split": config_digest([self.train_ids, self.val_ids])}

    # -- the frozen-encoder feature cache ---------------------------------------------------------------------
    def feature_cache(self, model) -> FeatureCache | None:
        """The feature cache serving `model`'s batches, or None where it must encode frames (data.feature_cache
        off, or `feature_cache.usable` says the cached outputs could differ from the live encoder's)."""
        enc = getattr(model, "encoder", None)
        if self._features is not None and self._features.encoder is enc:
            return self._features
        ok, self.feature_cache_reason = usable(model, setting=self.cfg.data.feature_cache,
                                               augments_frames=self.augments_frames)
        if ok and not set(self.streams) <= set(model.feature_requests()):
            ok, self.feature_cache_reason = False, f"the model declares no outputs of stream(s) {self.streams}"
        if not ok:
            return None
        root = self.cfg.data.feature_dir or Path(self.cfg.data.cache) / "features"
        requests = {s: r for s, r in model.feature_requests().items() if s in self.streams}
        self._features = FeatureCache(root, enc, self.encoder_path(), requests, self.store,
                                      budget_mb=self.cfg.data.memory_cache_mb)
        return self._features

    def _fill_features(self, model, clip_ids: list[str], accelerator=None) -> FeatureCache | None:
        """Encode the clips the cache lacks, on the accelerator's device where there is one (the model is still
        on the CPU in `setup`), each process its share; then hold them in memory up to the budget."""
        fc = self.feature_cache(model)
        if fc is None:
            return None
        device = getattr(accelerator, "device", None)
        rank, world = getattr(accelerator, "process_index", 0), getattr(accelerator, "num_processes", 1)
        moved = device is not None and torch.device(device) != fc.encoder.device
        if moved:
            fc.encoder.to(device)
        try:
            fc.ensure(list(clip_ids)[rank::world], progress=True)
        finally:
            if moved:
                fc.encoder.to("cpu")
        if world > 1:
            accelerator.wait_for_everyone()
        fc.preload(list(clip_ids))
        return fc

    def _rows(self, clip, cid: str, epoch: int | None) -> np.ndarray:
        """Rows of a clip's cached frames a batch reads: one per segment (seeded by (seed, epoch, clip) when
        training; the middles when evaluating), the same whether frames or their cached features are read."""
        n = self.cfg.data.n_segments
        if epoch is None:
            return sample(clip, n, train=False)
        rng = np.random.default_rng([self.cfg.seed, epoch, int(hashlib.md5(cid.encode()).hexdigest()[:8], 16)])
        return sample(clip, n, train=True, rng=rng)

    def frames(self, clip_ids: list[str], epoch: int | None) -> dict[str, Any]:
        """uint8 frames of each stream, (B, T, S, S, 3); epoch None: evaluation (segment middles). Where the feature
        cache serves the model, each stream's cached encoder outputs of the same rows (`EncodedFrames`) instead."""
        fc = self._active_features
        if fc is not None:
            clips = [fc.get(cid) for cid in clip_ids]
            return fc.batch(clips, [self._rows(c, cid, epoch) for c, cid in zip(clips, clip_ids)])
        out: dict[str, list[np.ndarray]] = {s: [] for s in self.streams}
        for cid in clip_ids:
            clip = self.store.get(cid)
            rows = self._rows(clip, cid, epoch)
            for s in self.streams:
                out[s].append(clip.arrays[s][rows])
        return {s: torch.from_numpy(np.stack(v)) for s, v in out.items()}

    def batch(self, clip_ids: list[str], epoch: int | None) -> dict[str, Any]:
        b: dict[str, Any] = self.frames(clip_ids, epoch)
        b["label"] = torch.tensor([self.labels[c] for c in clip_ids], dtype=torch.long)
        b["polarity"] = torch.tensor([self.polarity.get(c, -1) for c in clip_ids], dtype=torch.long)
        return b

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        return self.batch([self.train_ids[i] for i in indices], epoch)

    def loss(self, model, batch):
        return self.compute_loss(model(**self.model_inputs(batch)), batch)

    # -- prediction and evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model, clip_ids: list[str], *, batch_size: int | None = None,
                device: Any = None) -> ClipPredictions:
        """Class probabilities and clip features of these clips (segment middles), in batches."""
        bs = batch_size or self.cfg.report.batch_size
        device = device or next(model.parameters()).device
        was, active = model.training, self._active_features
        model.eval()
        probs, feats = [], []
        self._active_features = self.feature_cache(model)
        if self._active_features is not None:
            self._active_features.ensure(list(clip_ids))  # test clips: encoded in batches, once
        try:
            for s in range(0, len(clip_ids), bs):
                b = self.batch(clip_ids[s:s + bs], None)
                inputs = {k: v.to(device) for k, v in self.model_inputs(b).items()}
                with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                    enabled=self._bf16()):
                    out = model(**inputs)
                probs.append(torch.softmax(out["logits"].float(), dim=-1).cpu().numpy())
                feats.append(out["features"].float().cpu().numpy())
        finally:
            model.train(was)
            self._active_features = active
        k, d = len(self.classes), getattr(getattr(model, "encoder", None), "embed_dim", 0)
        return ClipPredictions(list(clip_ids), np.array([self.labels[c] for c in clip_ids], dtype=np.int64),
                               np.concatenate(probs) if probs else np.zeros((0, k)),
                               np.concatenate(feats) if feats else np.zeros((0, d)))

    def _bf16(self) -> bool:
        import os

        p = self.cfg.precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        return p == "bf16" and torch.cuda.is_available()

    def evaluate(self, model) -> dict[str, float]:
        """Validation UAR/WAR and loss; the weights of the best validation UAR so far are kept (in memory, and in
        every checkpoint, so a resumed run keeps the same choice)."""
        from vlm_salience.metrics import score_classification

        self._evaluations += 1
        if not self.val_ids:
            return {}
        p = self.predict(model, self.val_ids)
        m = score_classification(p.labels, p.predicted, n_classes=len(self.classes), n_boot=0)
        nll = float(-np.log(np.clip(p.probs[np.arange(len(p.labels)), p.labels], 1e-12, None)).mean())
        uar, war = m["uar"]["value"], m["war"]["value"]
        if self.best is None or uar > self.best["uar"]:
            self.best = {"uar": uar, "war": war, "evaluation": self._evaluations, "state": trainable_state(model)}
        return {"eval/uar": uar, "eval/war": war, "eval/loss": nll}

    # -- weights ------------------------------------------------------------------------------------------------
    def save(self, model, folder: Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(trainable_state(model), str(folder / WEIGHTS))
        meta = {"evaluations": self._evaluations, "best": None}
        if self.best is not None:
            save_file(self.best["state"], str(folder / BEST))
            meta["best"] = {k: v for k, v in self.best.items() if k != "state"}
        (folder / "selection.json").write_text(json.dumps(meta))

    def load(self, model, folder: Path) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        load_trainable(model, load_file(str(folder / WEIGHTS)), folder / WEIGHTS)
        meta_path = folder / "selection.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            self._evaluations = int(meta.get("evaluations", 0))
            if meta.get("best") and (folder / BEST).is_file():
                self.best = {**meta["best"], "state": load_file(str(folder / BEST))}

    def selected_state(self, model) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The weights a fold keeps: the best validation UAR's (or the last, by config or without validation)."""
        if self.cfg.report.select == "best_validation" and self.best is not None:
            return self.best["state"], {"selected": "best_validation", "validation_uar": self.best["uar"],
                                        "validation_war": self.best["war"], "evaluation": self.best["evaluation"]}
        return trainable_state(model), {"selected": "last"}

    def model_dir(self) -> Path:
        return Path(self.cfg.out) / "models" / self.fold

    def finish(self, model, result: dict[str, Any]) -> None:
        """Write the fold's chosen trainable weights and what they are (atomic folder)."""
        from safetensors.torch import save_file

        from vlm_salience.atomic import replaced_dir

        state, selection = self.selected_state(model)
        with replaced_dir(self.model_dir()) as stage:
            save_file(state, str(stage / WEIGHTS))
            meta = {"fold": self.fold, "classes": self.classes, "kind": self.cfg.model.kind,
                    "fingerprint": self.fingerprint(), "selection": selection,
                    "weights": {"bytes": (stage / WEIGHTS).stat().st_size, "sha256": _sha256(stage / WEIGHTS)},
                    "optim": self.cfg.optim.model_dump(mode="json"),
                    "train_clips": len(self.train_ids), "validation_clips": len(self.val_ids),
                    "training": {k: v for k, v in result.items() if k != "history"}, "history": result.get("history")}
            (stage / "task.json").write_text(json.dumps(meta, indent=2, default=float))

    def load_trained(self, device: Any = None) -> torch.nn.Module:
        """The model with the fold's saved weights, for evaluation."""
        from safetensors.torch import load_file

        path = self.model_dir() / WEIGHTS
        if not path.is_file():
            raise ConfigError(f"{path}: no trained model for fold {self.fold}; run `vlm-salience video train` "
                              "with this config first")
        meta = _read_meta(self.model_dir() / "task.json", self.fold)
        model = self.build_model()
        if meta.get("fingerprint", {}).get("model config") != self.fingerprint()["model config"]:
            raise ConfigError(f"{path}: trained with another model config than this YAML's; evaluate with the "
                              "config it was trained with")
        load_trainable(model, _load_weights(path, meta.get("weights"), self.fold), path)
        if device is not None:
            model.to(device)
        return model.eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_RETRAIN = "retrain the fold: `vlm-salience video train` with this config (without --resume it starts over)"


def _read_meta(path: Path, fold: str) -> dict[str, Any]:
    """A fold's task.json; unreadable or missing: an error naming it, not a traceback."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: the record of fold {fold}'s final weights is missing or unreadable ({exc}). "
                          f"Fix: {_RETRAIN}.") from None


def _load_weights(path: Path, recorded: dict[str, Any] | None, fold: str) -> dict[str, torch.Tensor]:
    """The final weights, checked against the size and digest task.json recorded (where it did): a truncated or
    altered file is refused with the fix, never loaded half or passed on as a traceback."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if recorded:
        size = path.stat().st_size
        if size != recorded.get("bytes") or _sha256(path) != recorded.get("sha256"):
            raise ConfigError(f"{path}: fold {fold}'s final weights are damaged ({size} bytes, "
                              f"{recorded.get('bytes')} recorded; or their SHA-256 differs): truncated or "
                              f"overwritten. Fix: {_RETRAIN}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: fold {fold}'s final weights cannot be read ({exc}): truncated or damaged. "
                          f"Fix: {_RETRAIN}.") from None


class BaselineTrainConfig(VideoTrainConfig[BaselineModelConfig]):
    """A video config whose model is the face-only baseline (`kind: baseline`)."""


@register_video_model("baseline")
class BaselineTask(VideoClassifierTask):
    """The face-only DFER-CLIP baseline."""

    config_class = BaselineTrainConfig
    streams = ("face",)

    def build_model(self):
        from vlm_salience.models.encoders import load_encoder
        from vlm_salience.video.baseline import BaselineModel

        encoder = load_encoder(self.cfg.model.encoder)
        return BaselineModel(encoder, self.cfg.model, self.classes)

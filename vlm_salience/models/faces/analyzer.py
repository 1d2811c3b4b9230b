"""FaceAnalyzer: one facade over a detector and an expression classifier (py-feat's `Detector` idea), returning
one table row per image (its largest face) or per face.

Batched: every face of every image given goes to the classifier in one `predict` call (which batches by the
classifier's `batch_size`), rather than one model call per image.

With a landmark detector (MTCNN) each face reaches the classifier aligned (alignment.py: eyes level, a fixed
inter-ocular distance) rather than as its box; `analyze(..., landmarks=True)` adds the five points and the coarse
head pose (yaw, roll) to the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vlm_salience.models.faces.alignment import align_face, head_pose
from vlm_salience.models.faces.detector import Detector, FaceBox
from vlm_salience.models.faces.detectors import load_detector
from vlm_salience.models.faces.expression import ExpressionClassifier, load_classifier
from vlm_salience.models.faces.model_expressivity import model_expressivity

BOX_COLUMNS = ["x", "y", "w", "h", "score"]
LANDMARK_NAMES = ["eye_l", "eye_r", "nose", "mouth_l", "mouth_r"]
LANDMARK_COLUMNS = [f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y")] + ["yaw", "roll"]


def prob_columns(classes: Sequence[str]) -> list[str]:
    return [f"p_{c}" for c in classes]


class FaceAnalyzer:
    def __init__(self, detector: Detector | None = None, classifier: ExpressionClassifier | None = None,
                 expressivity: str = "not_neutral", align: bool = True, align_size: int = 112,
                 align_margin: float = 0.0) -> None:
        self.detector = detector or load_detector()
        self.classifier = classifier or load_classifier()
        self.expressivity = expressivity
        # faces with landmarks go to the classifier aligned (ArcFace's template; margin 0 frames the face as
        # FER2013's crops do: brows to chin); faces without (Haar) as their box grown by the classifier's margin
        self.align, self.align_size, self.align_margin = align, align_size, align_margin

    @classmethod
    def from_configs(cls, detector: str | Path | None = None, classifier: str | Path | None = None,
                     expressivity: str = "not_neutral") -> FaceAnalyzer:
        return cls(load_detector(detector), load_classifier(classifier), expressivity)

    @property
    def columns(self) -> list[str]:
        return ["path", "face", *BOX_COLUMNS, *prob_columns(self.classifier.classes), "expressivity"]

    def faces(self, images: Sequence[np.ndarray], all_faces: bool = False) -> list[list[FaceBox]]:
        boxes = self.detector.detect_batch(images)
        return boxes if all_faces else [[b] if (b := max(bs, key=lambda b: (b.area, b.score), default=None)) else []
                                        for bs in boxes]

    def crop(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        """What the classifier sees of a face: its aligned crop where it has landmarks (and `align`), else its box."""
        if self.align and box.landmarks is not None:
            return align_face(image, box.points, self.align_size, self.align_margin)
        return box.crop(image, self.classifier.crop_margin)

    def classify(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[FaceBox]]) -> np.ndarray:
        """Probabilities for every box of every image, in order, from one `predict` call."""
        crops = [self.crop(im, b) for im, bs in zip(images, boxes) for b in bs]
        return self.classifier.predict(crops)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        neutral = self.classifier.neutral
        if neutral is None:
            return np.full(len(probs), np.nan)
        return model_expressivity(probs, self.classifier.classes, self.expressivity, neutral)

    def analyze(self, images: Sequence[np.ndarray], paths: Sequence[str] | None = None,
                all_faces: bool = False, landmarks: bool = False) -> pd.DataFrame:
        """One row per image (its largest face; `all_faces`: one per face). An image without a face keeps its row,
        with empty box, probabilities and expressivity (NaN) and face = -1. `landmarks`: also the five points and
        the head pose (NaN for a detector without landmarks)."""
        images = list(images)
        paths = list(paths) if paths is not None else [str(i) for i in range(len(images))]
        boxes = self.faces(images, all_faces)
        probs = self.classify(images, boxes)
        expr = self.scores(probs)
        rows, k = [], 0
        C = len(self.classifier.classes)
        L = len(LANDMARK_COLUMNS) if landmarks else 0
        for path, bs in zip(paths, boxes):
            if not bs:
                rows.append([path, -1, *[np.nan] * 5, *[np.nan] * C, np.nan, *[np.nan] * L])
            for j, b in enumerate(bs):
                extra = []
                if landmarks:
                    extra = ([*b.points.reshape(-1).tolist(), *head_pose(b.points)] if b.landmarks is not None
                             else [np.nan] * L)
                rows.append([path, j, b.x, b.y, b.w, b.h, b.score, *probs[k], expr[k], *extra])
                k += 1
        return pd.DataFrame(rows, columns=self.columns + (LANDMARK_COLUMNS if landmarks else []))

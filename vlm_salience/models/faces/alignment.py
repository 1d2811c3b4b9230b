"""Face alignment and a coarse head pose from five landmarks (eyes, nose tip, mouth corners; MTCNN's order).

Alignment maps the five points onto a fixed template with a similarity transform (rotation, uniform scale,
translation: `cv2.estimateAffinePartial2D`, least-median fit), so every aligned crop has the eyes level, the same
inter-ocular distance and the face at the same place, whatever the face's size, position and in-plane tilt. The
template is the 112×112 five-point template of ArcFace/insightface, the common one; `margin` shrinks it towards the
crop's centre so that more of the head (forehead, chin) is kept, as expression classifiers trained on loose crops
(FER2013) expect.

Head pose (degrees), from the 2-D points alone:
- roll: the angle of the line from the image-left eye to the image-right eye (positive: the image-right eye lower,
  i.e. the head tilted clockwise as seen).
- yaw: with roll undone, the nose tip's horizontal offset from the midpoint of the eye and mouth centres, over the
  inter-ocular distance d: yaw = atan(offset / (NOSE_DEPTH · d)), NOSE_DEPTH being the nose tip's height above the
  eye-mouth plane in inter-ocular distances on an average adult face. Positive: the nose points to the image's
  right. Limits: orthographic camera and average proportions assumed; reliable to about ±45° (beyond that MTCNN
  rarely finds the face and the far eye is hidden); a pitched head (looking up or down) and an open mouth bias it
  little, but a long or short nose scales it; no pitch is given (the points carry too little depth cue for it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ArcFace's template: left eye, right eye, nose tip, left and right mouth corners in a 112×112 crop
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
NOSE_DEPTH = 0.55  # nose tip above the eye-mouth plane, in inter-ocular distances (an average adult face)


def template(size: int = 112, margin: float = 0.0) -> np.ndarray:
    """The five target points for a size×size crop; `margin` (a share of the crop on each side) shrinks the
    template towards the centre, keeping more of the head."""
    t = TEMPLATE_112 / 112.0
    t = (t - 0.5) / (1.0 + 2.0 * margin) + 0.5
    return (t * size).astype(np.float32)


def alignment_matrix(landmarks: np.ndarray, size: int = 112, margin: float = 0.0) -> np.ndarray:
    """The 2×3 similarity transform from image pixels to the aligned crop. Raises ValueError for points that are
    not five finite (x, y) pairs or that do not determine a transform (all in one place)."""
    import cv2

    pts = np.asarray(landmarks, dtype=np.float32)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError(f"landmarks: expected five finite (x, y) points, got an array of shape {pts.shape}")
    M, _ = cv2.estimateAffinePartial2D(pts, template(size, margin), method=cv2.LMEDS)
    if M is None:
        raise ValueError("landmarks: no similarity transform fits these points (are they all in one place?)")
    return M


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112, margin: float = 0.0) -> np.ndarray:
    """The size×size aligned crop of the face with these landmarks (RGB uint8; pixels beyond the image are
    filled by repeating its border, so a face at the edge is not cut by a black wedge)."""
    import cv2

    from vlm_salience.models.faces.detector import to_rgb_uint8

    M = alignment_matrix(landmarks, size, margin)
    return cv2.warpAffine(to_rgb_uint8(image), M, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def align_faces(images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray], size: int = 112,
                margin: float = 0.0) -> np.ndarray:
    """(N, size, size, 3) aligned crops, one per (image, landmarks) pair."""
    if not len(images):
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.stack([align_face(im, lm, size, margin) for im, lm in zip(images, landmarks)])


def head_pose(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw, roll) in degrees from five landmarks; see the module's docstring for how and its limits."""
    p = np.asarray(landmarks, dtype=np.float64)
    if p.shape != (5, 2) or not np.isfinite(p).all():
        raise ValueError(f"landmarks: expected five finite (x, y) points, got an array of shape {p.shape}")
    eye_l, eye_r, nose, mouth_l, mouth_r = p
    dx, dy = eye_r - eye_l
    roll = float(np.degrees(np.arctan2(dy, dx)))
    d = float(np.hypot(dx, dy))
    if d == 0.0:
        return float("nan"), roll
    c, s = dx / d, dy / d
    unroll = np.array([[c, s], [-s, c]])  # rotates the eye line onto the x axis
    eye_mid, mouth_mid = (eye_l + eye_r) / 2, (mouth_l + mouth_r) / 2
    axis = (eye_mid + mouth_mid) / 2
    offset = float((unroll @ (nose - axis))[0])
    yaw = float(np.degrees(np.arctan2(offset, NOSE_DEPTH * d)))
    return yaw, roll

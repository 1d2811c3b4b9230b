"""Face and scene streams on a real photograph: skimage's astronaut (Eileen Collins, NASA, public domain).

HAND_BOX is the face box read off the photograph by eye (cheek to cheek, hairline to chin; the same box as
tests/test_faces.py, checked again here against a gridded view of the image).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from vlm_salience.video.streams import (
    DetectionConfig, StreamConfig, face_crop, face_finder, find_track, make_streams, mask_rect, scene_frame,
)
from vlm_salience.video.tracking import centre_box, fill_gaps, iou, jitter, smooth, track

HAND_BOX = np.array([182, 76, 90, 108], dtype=np.float64)  # x, y, w, h in the 512 x 512 astronaut


def scene_background(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """A generated scene: a vertical colour gradient with a few flat rectangles (no faces)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None, None]
    img = (np.array([40, 90, 160]) * (1 - y) + np.array([200, 170, 90]) * y) * np.ones((1, w, 1))
    img = img.astype(np.uint8)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        img[y0:y0 + 30, x0:x0 + 40] = rng.integers(0, 255, 3)
    return img


@functools.lru_cache(maxsize=8)
def _astronaut_at(side: int) -> np.ndarray:
    return cv2.resize(skdata.astronaut(), (side, side), interpolation=cv2.INTER_AREA)


def pasted(face_side: int = 160, at: tuple[int, int] = (120, 40), h: int = 240, w: int = 320,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut resized to face_side and pasted at `at` into a generated scene; and the hand box there."""
    img = scene_background(h, w, seed)
    astro = _astronaut_at(face_side)
    x, y = at
    x1, y1 = min(w, x + face_side), min(h, y + face_side)
    img[y:y1, x:x1] = astro[:y1 - y, :x1 - x]
    s = face_side / 512
    return img, np.array([HAND_BOX[0] * s + x, HAND_BOX[1] * s + y, HAND_BOX[2] * s, HAND_BOX[3] * s])


def animated(n: int = 12, step: int = 4, face_side: int = 220, **kw) -> tuple[np.ndarray, np.ndarray]:
    """A short clip: the pasted astronaut shifted right by `step` px per frame; frames and true boxes."""
    frames, boxes = [], []
    for t in range(n):
        f, b = pasted(face_side=face_side, at=(20 + step * t, 20), **kw)
        frames.append(f)
        boxes.append(b)
    return np.stack(frames), np.stack(boxes)


@pytest.fixture(scope="module")
def finder():
    return face_finder(DetectionConfig())


@pytest.fixture(scope="module")
def full_size_finder():
    return face_finder(DetectionConfig(max_side=None))


class FixedFinder:
    """A detector stand-in that returns planted boxes (None = no face), recording the frames it saw."""

    def __init__(self, boxes):
        self.boxes, self.calls = list(boxes), []

    def largest(self, frames):
        self.calls.append(len(frames))
        out, self.boxes = self.boxes[:len(frames)], self.boxes[len(frames):]
        return [None if b is None else np.asarray(b, dtype=np.float32) for b in out]


# -- detection and the face stream on the photograph ----------------------------------------------------------------
@pytest.mark.parametrize("max_side", [None, 256, 160])
def test_astronaut_box_full_and_downscaled(max_side):
    f = face_finder(DetectionConfig(max_side=max_side))
    (box,) = f.largest(skdata.astronaut()[None])
    assert box is not None and iou(box, HAND_BOX) >= 0.5


def test_face_crop_contains_the_face(finder):
    img = skdata.astronaut()
    st = make_streams(img[None], finder, StreamConfig(face_size=96, face_pad=0.25))
    assert st.face.shape == (1, 96, 96, 3) and st.face.dtype == np.uint8
    assert st.missed == 0 and st.detected.all()
    box = st.boxes[0]
    assert iou(box, HAND_BOX) >= 0.5
    # the crop window (box + 25% each side) holds the whole hand-checked face
    side = box[2] * 1.5
    x0, y0 = box[0] + box[2] / 2 - side / 2, box[1] + box[3] / 2 - side / 2
    assert x0 <= HAND_BOX[0] and y0 <= HAND_BOX[1] + 5
    assert x0 + side >= HAND_BOX[0] + HAND_BOX[2] and y0 + side >= HAND_BOX[1] + HAND_BOX[3] - 5
    # and the detector finds a face filling most of the crop again
    again = face_finder(DetectionConfig(max_side=None)).largest(
        cv2.resize(st.face[0], (256, 256), interpolation=cv2.INTER_LINEAR)[None])[0]
    assert again is not None and again[2] >= 0.4 * 256


def test_astronaut_pasted_into_a_scene(finder):
    img, true_box = pasted(face_side=300, at=(200, 20), h=360, w=640)
    st = make_streams(img[None], finder, StreamConfig())
    assert iou(st.boxes[0], true_box) >= 0.5
    # no face outside the paste: the scene alone gives no detection
    empty = make_streams(scene_background(360, 640)[None], finder, StreamConfig())
    assert empty.missed == 1 and not empty.detected.any()
    assert np.allclose(empty.boxes[0], centre_box(360, 640))


# -- the scene stream -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fill", ["mean", "black", "blur"])
def test_scene_stream_masks_the_face(finder, fill):
    img, true_box = pasted(face_side=300, at=(200, 20), h=360, w=640)
    cfg = StreamConfig(scene_size=128, mask_fill=fill, mask_pad=0.15)
    st = make_streams(img[None], finder, cfg)
    scene = st.scene[0].astype(np.int64)
    plain = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA).astype(np.int64)
    sx, sy = 128 / 640, 128 / 360
    # the hand-checked face, in scene pixels (shrunk by one pixel for rounding)
    fx0, fy0 = int(np.ceil(true_box[0] * sx)) + 1, int(np.ceil(true_box[1] * sy)) + 1
    fx1, fy1 = int((true_box[0] + true_box[2]) * sx) - 1, int((true_box[1] + true_box[3]) * sy) - 1
    face_now, face_before = scene[fy0:fy1, fx0:fx1], plain[fy0:fy1, fx0:fx1]
    if fill == "mean":
        assert np.all(face_now == plain.reshape(-1, 3).mean(0).round().astype(np.int64))
    elif fill == "black":
        assert np.all(face_now == 0)
    else:  # blurred: the face's fine detail (eyes, mouth edges) is gone
        detail = lambda a: np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
        assert detail(face_now) < 0.4 * detail(face_before)
    # outside the masked rectangle the scene is the plainly resized frame
    x0, y0, x1, y1 = mask_rect(st.boxes[0], 0.15, sx, sy)
    outside = np.ones((128, 128), dtype=bool)
    outside[max(0, y0):y1, max(0, x0):x1] = False
    assert np.array_equal(scene[outside], plain[outside])
    assert outside.mean() > 0.5


def test_scene_frame_with_no_face_box_off_frame_is_plain():
    img = scene_background()
    out = scene_frame(img, np.array([1000, 1000, 50, 50], dtype=np.float32), StreamConfig(scene_size=64))
    assert np.array_equal(out, cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA))


def test_face_crop_at_the_border_repeats_the_edge():
    img = np.zeros((100, 100, 3), dtype=np.uint8)
    img[:, :50] = 200
    crop = face_crop(img, np.array([-20, 10, 40, 40], dtype=np.float32), pad=0.0, size=40)
    assert crop.shape == (40, 40, 3)
    assert np.all(crop[:, :20] == 200)  # the part left of the frame repeats its left edge (200)


def test_face_source_frames_replace_the_crop(finder):
    img = skdata.astronaut()
    face_frames = np.full((1, 80, 60, 3), 77, dtype=np.uint8)
    st = make_streams(img[None], finder, StreamConfig(face_size=32), face_frames)
    assert np.all(st.face == 77)
    off = make_streams(img[None], finder, StreamConfig(face_size=32, use_face_source=False), face_frames)
    assert not np.all(off.face == 77)
    assert st.scene[0, 10, 10].tolist() == off.scene[0, 10, 10].tolist()  # the scene is masked either way


# -- tracking ---------------------------------------------------------------------------------------------------------
def test_fill_gaps_hand_computed():
    a, b = np.array([10, 10, 20, 20]), np.array([30, 30, 20, 20])
    tr = fill_gaps([None, a, None, None, b, None], 100, 200)
    assert tr.missed == 4 and tr.detected.tolist() == [False, True, False, False, True, False]
    assert tr.boxes.tolist() == [a.tolist(), a.tolist(), a.tolist(), a.tolist(), b.tolist(), b.tolist()]
    none = fill_gaps([None, None], 100, 200)
    assert none.missed == 2 and none.boxes.tolist() == [[75.0, 25.0, 50.0, 50.0]] * 2


def test_missing_detections_on_a_real_clip_reuse_the_previous_box(finder):
    frames, _ = animated(n=8, step=3)
    frames[3] = scene_background()  # the face vanishes for two frames
    frames[4] = scene_background()
    st = make_streams(frames, finder, StreamConfig(smoothing="none"))
    assert st.missed == 2 and st.detected.tolist() == [True] * 3 + [False] * 2 + [True] * 3
    assert np.array_equal(st.boxes[3], st.boxes[2]) and np.array_equal(st.boxes[4], st.boxes[2])
    # the face crop on a missed frame is cut at the reused box, not at the centre
    assert np.array_equal(st.face[3], face_crop(frames[3], st.boxes[2], 0.25, 112))


def test_smoothing_reduces_jitter_and_ignores_an_outlier():
    rng = np.random.default_rng(0)
    t = np.arange(40)
    truth = np.stack([50 + 2.0 * t, 40 + 0 * t, 60 + 0 * t, 60 + 0 * t], axis=1).astype(float)
    noisy = truth + np.concatenate([rng.normal(0, 4, (40, 2)), np.zeros((40, 2))], axis=1)
    noisy[20, :2] += 60  # one wild box
    for method in ("median", "ema"):
        sm = smooth(noisy, method, window=5, alpha=0.3)
        err_raw = np.abs(noisy[:, :2] - truth[:, :2]).mean()
        err_sm = np.abs(sm[:, :2] - truth[:, :2]).mean()
        assert err_sm < 0.7 * err_raw, method
        assert abs(jitter(sm) - jitter(truth)) < 0.5 * abs(jitter(noisy) - jitter(truth)), method
    med = smooth(noisy, "median", window=5)
    assert abs(med[20, 0] - truth[20, 0]) < 10  # the median drops the outlier
    assert np.allclose(smooth(noisy, "none")[:, :2], noisy[:, :2], atol=1e-4)


def test_smoothing_does_not_move_a_steady_box():
    box = np.tile([[30.0, 20.0, 50.0, 50.0]], (9, 1))
    for method in ("median", "ema"):
        assert np.allclose(smooth(box, method), box)


def test_track_follows_the_moving_astronaut(finder):
    frames, truth = animated(n=10, step=4)
    tr = track(finder.largest(frames), 240, 320)
    assert tr.missed == 0
    assert all(iou(b, t) >= 0.5 for b, t in zip(tr.boxes, truth))
    moved = (tr.boxes[-1, 0] + tr.boxes[-1, 2] / 2) - (tr.boxes[0, 0] + tr.boxes[0, 2] / 2)
    assert abs(moved - 4 * 9) < 8


def test_boxes_between_detection_rows_are_interpolated():
    frames = np.zeros((5, 60, 80, 3), dtype=np.uint8)
    f = FixedFinder([[0, 0, 20, 20], [40, 20, 20, 20]])
    tr = find_track(frames, f, StreamConfig(smoothing="none"), frame_index=np.array([0, 1, 2, 3, 4]),
                    detect_rows=np.array([0, 4]))
    assert f.calls == [2]  # the detector saw the two detection rows only
    assert tr.missed == 0 and tr.detected.tolist() == [True, False, False, False, True]
    assert np.allclose(tr.boxes[2], [20, 10, 20, 20]) and np.allclose(tr.boxes[1], [10, 5, 20, 20])


def test_streams_reject_bad_frames(finder):
    with pytest.raises(ValueError, match="T, H, W, 3"):
        make_streams(np.zeros((0, 10, 10, 3), dtype=np.uint8), finder, StreamConfig())


def test_pick_face_prefers_the_largest_confident_box():
    from vlm_salience.video.streams import pick_face

    face, patch, small = (np.array([0, 0, 50, 50.0]), 5.7), (np.array([100, 100, 120, 120.0]), 1.6), \
        (np.array([10, 10, 30, 30.0]), 6.0)
    assert np.array_equal(pick_face([face, patch, small], 0.5), face[0])  # the weak big box is not a face
    assert np.array_equal(pick_face([face, patch, small], 0.0), patch[0])  # plain "largest"
    assert pick_face([], 0.5) is None

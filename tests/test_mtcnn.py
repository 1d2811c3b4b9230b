"""MTCNN (models/faces/mtcnn.py), five-point alignment and head pose (alignment.py), and the detectors' bounded
working size (issue 29, defect 5), on a real photograph: scikit-image's astronaut (Eileen Collins, NASA, public
domain).

HAND_BOX and HAND_POINTS were read off a 5× zoomed, 10-px gridded crop of the 512×512 photograph by eye: pupils,
nose tip and the mouth's corners (the image-left eye is the subject's right).
"""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

from vlm_salience.errors import ConfigError  # noqa: E402
from vlm_salience.models.faces.detector import (  # noqa: E402
    FaceBox, HaarDetector, pad_and_detect)
from vlm_salience.models.faces.detectors import load_detector

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 5-30x faster than two threads on the shared 2 cores

HAND_BOX = (182, 76, 90, 108)  # x, y, w, h (as in test_faces.py)
HAND_POINTS = np.array([[203, 101], [246, 103], [225, 127], [203, 140], [244, 141]], dtype=np.float32)
IOD = float(np.hypot(*(HAND_POINTS[1] - HAND_POINTS[0])))  # inter-ocular distance, ~43 px


def _weights_or_skip():
    from vlm_salience.models.faces.mtcnn import weights_dir

    try:
        return weights_dir()
    except ConfigError as exc:
        pytest.skip(f"MTCNN weights not installed ({exc}); `make install` installs facenet-pytorch --no-deps")


@pytest.fixture(scope="module")
def mtcnn():
    _weights_or_skip()
    return load_detector("mtcnn")


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    from conftest import REPO

    return load_detector(REPO / "configs" / "models" / "face_haar.yaml")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def half(astronaut) -> np.ndarray:
    """The photograph at 256×256 (the tests that need no hand-read pixel run on it: 4× fewer pixels)."""
    return cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)


def tight_crop(img: np.ndarray, inset: int = 0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, list]:
    """The hand box cut `inset` px inside on every side, resized by `scale`: the crop, the hand points and the
    hand box in its pixels."""
    x, y, w, h = HAND_BOX
    c = img[y + inset:y + h - inset, x + inset:x + w - inset]
    c = cv2.resize(c, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC) if scale != 1 else c
    pts = (HAND_POINTS - [x + inset, y + inset]) * scale
    return c, pts, [-inset * scale, -inset * scale, w * scale, h * scale]


def assert_points_on_face(points: np.ndarray, hand: np.ndarray, iod: float) -> None:
    """Every landmark within 15% of the inter-ocular distance of the hand-read point, on average within 10%."""
    err = np.hypot(*(np.asarray(points) - hand).T) / iod
    assert err.max() < 0.15 and err.mean() < 0.10, f"landmark errors / IOD: {np.round(err, 3)}"


def test_astronaut_box_and_landmarks(mtcnn, astronaut):
    faces = mtcnn.detect(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.iou(HAND_BOX) >= 0.6 and 0.99 < f.score <= 1.0
    assert f.points.shape == (5, 2)
    assert_points_on_face(f.points, HAND_POINTS, IOD)


@pytest.mark.parametrize("inset,scale", [(0, 1.0), (0, 3.0), (5, 2.0), (10, 1.0), (10, 4.0)])
def test_tight_crops_mtcnn_finds_the_face_haar_does_not(mtcnn, haar, astronaut, inset, scale):
    """A face that fills the image (forehead to chin, cheek to cheek, 70-360 px): the cascade's window cannot fit
    around it; MTCNN finds it (the tighter crops only after padding) with its landmarks on the features."""
    crop, pts, hand = tight_crop(astronaut, inset, scale)
    assert haar.detect(crop) == []
    faces = mtcnn.detect(crop)
    assert len(faces) == 1
    f = faces[0]
    H, W = crop.shape[:2]
    assert f.x >= 0 and f.y >= 0 and f.x + f.w <= W and f.y + f.h <= H  # clipped to the image
    assert f.iou(hand) >= 0.5
    assert_points_on_face(f.points, pts, IOD * scale)


def test_padding_is_what_finds_the_tightest_crops_and_adds_no_face(mtcnn, astronaut):
    crop, _, _ = tight_crop(astronaut, 10, 2.0)
    no_pad = load_detector(mtcnn.cfg.model_copy(update={"pad_on_miss": 0.0}))
    assert no_pad.detect(crop) == [] and len(mtcnn.detect(crop)) == 1
    # face-free images stay face-free after padding: a crop of the suit and the flag, a flat grey, a gradient
    grad = np.tile(np.linspace(0, 255, 300, dtype=np.float32), (200, 1)).astype(np.uint8)
    assert mtcnn.detect_batch([astronaut[300:, 300:], np.full((120, 90, 3), 128, np.uint8), grad]) == [[], [], []]


def test_pad_and_detect_maps_boxes_back():
    """A fake detector that finds one box in any padded image: mapped back by the border and clipped."""
    calls = []

    def fake(images):
        calls.append([im.shape for im in images])
        return [[] if im.shape == (50, 40, 3) else [FaceBox(5, 5, 60, 70, 0.9, ((20.0, 30.0),) * 5)]
                for im in images]

    out = pad_and_detect(fake, [np.zeros((50, 40, 3), np.uint8)], 0.3)
    assert calls == [[(50, 40, 3)], [(80, 70, 3)]]  # border 0.3 × 50 = 15 px on each side
    assert out == [[FaceBox(0, 0, 40, 50, 0.9, ((5.0, 15.0),) * 5)]]  # (5-15, 5-15, 65-15, 75-15) clipped


def test_batched_equals_one_at_a_time(mtcnn, astronaut, half):
    """detect_batch shares the P-Net calls between same-size images and R/O-Net calls between all: the same faces
    as one image at a time."""
    crop, _, _ = tight_crop(astronaut, 10, 1.0)
    images = [half, half[:, ::-1].copy(), astronaut[300:, 300:].copy(), crop]
    together = mtcnn.detect_batch(images)
    alone = [mtcnn.detect(im) for im in images]
    assert [len(f) for f in together] == [1, 1, 0, 1]
    for a, b in zip(together, alone):
        assert [(f.x, f.y, f.w, f.h) for f in a] == [(f.x, f.y, f.w, f.h) for f in b]
        np.testing.assert_allclose([f.points for f in a], [f.points for f in b], atol=1e-3)
    mirrored = together[1][0].points  # the flipped photograph's eyes swap sides
    np.testing.assert_allclose(255 - mirrored[[1, 0, 2, 4, 3], 0], together[0][0].points[:, 0], atol=3)


def test_scene_downscaled_and_small_upscaled_boxes_in_image_pixels(mtcnn, astronaut):
    """A 2400×1600 scene is searched at max_side (1024) and a 64-px image upscaled: boxes and points come back in
    the given image's pixels."""
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    scene = np.full((1600, 2400, 3), 40, np.uint8)
    scene[300:1324, 1000:2024] = big
    f = max(mtcnn.detect(scene), key=lambda b: b.area)
    assert f.iou([1000 + 2 * HAND_BOX[0], 300 + 2 * HAND_BOX[1], 2 * HAND_BOX[2], 2 * HAND_BOX[3]]) >= 0.6
    assert_points_on_face(f.points, HAND_POINTS * 2 + [1000, 300], 2 * IOD)
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)[10:60, 36:80]  # 50×44 px, face ~22
    f = mtcnn.largest(small)
    assert f is not None and f.iou(np.array([HAND_BOX[0] / 4 - 36, HAND_BOX[1] / 4 - 10, 22.5, 27])) >= 0.4


def test_huge_image_is_searched_at_max_side_in_bounded_memory(monkeypatch):
    """Issue 29, defect 5: a 4800×3600 photograph (12000×9000 peaked at 6 GB) is searched at 2048 px by default;
    the downscale happens before any float copy, so the detection's own allocations are those of the working
    image (it made a float32 RGB copy, 4× the photograph, before); the box comes back in the photograph's pixels."""
    import tracemalloc

    from vlm_salience.models.faces.detector import HaarDetectorConfig

    haar = load_detector(HaarDetectorConfig(min_face_frac=0.05))  # the default max_side; no tiny windows (time)
    a = skdata.astronaut()
    rng = np.random.default_rng(0)  # a textured background: a flat one spoils the cascade's histogram equalisation
    img = np.tile(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8), (10, 10, 1))
    img[1000:2536, 2000:3536] = cv2.resize(a, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    seen = []
    orig = haar._cascade

    class Spy:
        def detectMultiScale3(self, grey, **kw):
            seen.append(grey.shape)
            return orig.detectMultiScale3(grey, **kw)

    monkeypatch.setattr(haar, "_cascade", Spy())
    tracemalloc.start()
    faces = haar.detect(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert haar.cfg.max_side == 2048 and seen == [(1536, 2048)]
    # bounded by the working size: ~1.4× the image here (unbounded, the float32 copy alone was 4×)
    assert peak < 2 * img.nbytes, f"peak {peak / 1e6:.0f} MB for a {img.nbytes / 1e6:.0f} MB image"
    f = max(faces, key=lambda b: b.area)
    assert f.iou([2000 + 3 * HAND_BOX[0], 1000 + 3 * HAND_BOX[1], 3 * HAND_BOX[2], 3 * HAND_BOX[3]]) >= 0.5


# ---------------------------------------------------------------- alignment and head pose

from vlm_salience.models.faces.alignment import (  # noqa: E402
    NOSE_DEPTH, align_face, alignment_matrix, head_pose, template)


def rotated(img: np.ndarray, degrees: float) -> np.ndarray:
    f = img.shape[1] / 512
    M = cv2.getRotationMatrix2D((225.0 * f, 120.0 * f), degrees, 1.0)  # counter-clockwise as seen, about the face
    return cv2.warpAffine(img, M, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("degrees", [0, 25, -20])
def test_aligned_crop_has_level_eyes_at_the_template_distance(mtcnn, half, degrees):
    """Detect on a tilted photograph, align, detect again on the aligned crop: eyes level (within 3°) and at the
    template's inter-ocular distance (within 10%), whatever the tilt."""
    f = mtcnn.largest(rotated(half, degrees))
    crop = align_face(rotated(half, degrees), f.points, 112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    g = mtcnn.largest(crop)
    assert g is not None
    (lx, ly), (rx, ry) = g.points[:2]
    assert abs(np.degrees(np.arctan2(ry - ly, rx - lx))) < 3.0
    t = template(112)
    assert np.hypot(rx - lx, ry - ly) == pytest.approx(np.hypot(*(t[1] - t[0])), rel=0.10)


def test_alignment_matrix_maps_points_onto_the_template_and_rejects_bad_points():
    t = template(96, margin=0.1)
    # the template moved, rotated by 30° and scaled by 2.5: the fit recovers the inverse exactly
    a = np.radians(30)
    R = 2.5 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = t @ R.T + [40, 70]
    M = alignment_matrix(pts, 96, margin=0.1)
    np.testing.assert_allclose(pts @ M[:, :2].T + M[:, 2], t, atol=1e-3)
    for bad in (np.zeros((4, 2)), np.full((5, 2), np.nan)):
        with pytest.raises(ValueError, match="five finite"):
            alignment_matrix(bad)


@pytest.mark.parametrize("degrees", [0, 15, -25])
def test_roll_from_the_eye_line(mtcnn, half, degrees):
    """The astronaut's head is tilted ~3° clockwise; the photograph turned counter-clockwise by d reads 3 - d."""
    yaw, roll = head_pose(mtcnn.largest(rotated(half, degrees)).points)
    assert roll == pytest.approx(3.0 - degrees, abs=4.0) and abs(yaw) < 15


def test_yaw_from_the_nose_offset_on_a_turned_face_model():
    """Five points of an average face (eyes and mouth corners in a plane, the nose tip NOSE_DEPTH inter-ocular
    distances in front), turned by a known yaw and projected: yaw recovered within 1°, its sign with the nose's
    side; the same at a 20° roll; a mirror image reads the opposite yaw and roll."""
    face3d = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, 0.6, NOSE_DEPTH], [-0.4, 1.0, 0], [0.4, 1.0, 0]]) * 60
    for yaw in (-40, -15, 0, 10, 35):
        a = np.radians(yaw)
        Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        pts = (face3d @ Ry.T)[:, :2] + [200, 150]
        est, roll = head_pose(pts)
        assert est == pytest.approx(yaw, abs=1.0) and roll == pytest.approx(0, abs=1e-6)
        r = np.radians(20)
        tilted = (pts - 200) @ np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]]).T + 200
        assert head_pose(tilted) == pytest.approx((yaw, 20.0), abs=1.0)
        mirror = pts[[1, 0, 2, 4, 3]] * [-1, 1]
        assert head_pose(mirror) == pytest.approx((-yaw, 0.0), abs=1.0)


# ---------------------------------------------------------------- loading, configs, the facade, face score

def test_load_by_name_yaml_and_errors(tmp_path):
    from conftest import REPO

    from vlm_salience.models.faces.mtcnn import MtcnnDetector

    d = _weights_or_skip()
    det = load_detector(REPO / "configs" / "models" / "face_mtcnn.yaml")
    assert isinstance(det, MtcnnDetector) and det.name == "mtcnn" and det.cfg.max_side == 1024
    assert isinstance(load_detector("haar"), HaarDetector)
    with pytest.raises(ConfigError, match="unknown face detector 'retina'.*mtcnn"):
        load_detector("retina")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "pnet.pt").write_bytes((d / "pnet.pt").read_bytes())
    (tmp_path / "w" / "rnet.pt").write_bytes((d / "onet.pt").read_bytes())  # the wrong net's weights
    (tmp_path / "bad.yaml").write_text("kind: mtcnn\nweights_dir: w\n")
    with pytest.raises(ConfigError, match=r"rnet\.pt: not the MTCNN rnet weights"):
        load_detector(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("kind: mtcnn\nmax_sid: 10\n")
    with pytest.raises(ConfigError, match="max_sid"):
        load_detector(tmp_path / "typo.yaml")


def test_analyzer_aligns_and_reports_landmarks_and_pose(mtcnn, half):
    from vlm_salience.models.faces.analyzer import LANDMARK_COLUMNS, FaceAnalyzer
    from vlm_salience.models.faces.expression import load_classifier

    fa = FaceAnalyzer(mtcnn, load_classifier())
    tilted = rotated(half, 30)
    t = fa.analyze([half, tilted, np.full((100, 100, 3), 90, np.uint8)], ["a", "t", "blank"], landmarks=True)
    assert list(t.columns[-len(LANDMARK_COLUMNS):]) == LANDMARK_COLUMNS
    assert (t.loc[:1, "p_happy"] > 0.8).all() and t.loc[2, "face"] == -1 and t.loc[2, LANDMARK_COLUMNS].isna().all()
    assert t.loc[1, "roll"] == pytest.approx(3 - 30, abs=4)
    f = mtcnn.largest(tilted)
    np.testing.assert_array_equal(fa.crop(tilted, f), align_face(tilted, f.points, 112))  # aligned, not the box


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_all_pairs_at_once_keeps_what_the_loop_keeps(monkeypatch, mode):
    """The all-pairs NMS (up to MATRIX_NMS boxes) keeps the boxes, in the order, of the one-kept-box-at-a-time loop,
    ties and degenerate (0/0) boxes included; batched_nms per image = the loop over each image's boxes alone."""
    from vlm_salience.models.faces import mtcnn as m

    rng = np.random.default_rng(0)
    xy = rng.integers(0, 60, (300, 2)).astype(np.float64)
    wh = rng.integers(-1, 30, (300, 2)).astype(np.float64)  # -1: zero area with the +1 convention (0/0 overlap)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = np.round(rng.random(300), 1)  # many ties
    fast = m.nms(boxes, scores, 0.5, mode)
    monkeypatch.setattr(m, "MATRIX_NMS", 0)
    slow = m.nms(boxes, scores, 0.5, mode)
    np.testing.assert_array_equal(fast, slow)
    groups = rng.integers(0, 4, 300)
    together = m.batched_nms(boxes, scores, groups, 0.5, mode)
    alone = np.concatenate([np.flatnonzero(groups == g)[m.nms(boxes[groups == g], scores[groups == g], 0.5, mode)]
                            for g in range(4)])
    assert sorted(together) == sorted(alone) and (np.diff(-scores[together]) >= 0).all()


def test_analyzer_batched_equals_one_image_at_a_time(mtcnn, astronaut, half):
    from vlm_salience.models.faces.analyzer import LANDMARK_COLUMNS

    """`analyze` over a batch (P-Net over the same-size images together, R-/O-Net over every candidate of the batch
    per call, per-image NMS, the classifier over every aligned crop) gives the table one image at a time gives: the
    same boxes, landmarks within 0.01 px, the same top class, probabilities within 1e-4."""
    import pandas as pd

    from vlm_salience.models.faces.analyzer import FaceAnalyzer
    from vlm_salience.models.faces.expression import load_classifier

    fa = FaceAnalyzer(mtcnn, load_classifier())
    rng = np.random.default_rng(3)
    portraits = []  # same-size images: they share each P-Net call
    for i in range(6):
        s, x0, y0 = int(rng.integers(110, 200)), int(rng.integers(130, 170)), int(rng.integers(20, 50))
        c = np.ascontiguousarray(astronaut[y0:y0 + s, x0:x0 + s][:, ::-1 if i % 2 else 1])
        portraits.append(cv2.resize(c, (128, 128), interpolation=cv2.INTER_AREA))
    crop, _, _ = tight_crop(astronaut, 10, 1.0)
    two = np.concatenate([half, half[:, ::-1]], axis=1)  # two faces in one image
    images = [*portraits, half, rotated(half, 20), two, crop, astronaut[300:, 300:].copy(),
              np.full((128, 128, 3), 90, np.uint8)]
    paths = [str(i) for i in range(len(images))]
    together = fa.analyze(images, paths, all_faces=True, landmarks=True)
    alone = pd.concat([fa.analyze([im], [p], all_faces=True, landmarks=True) for im, p in zip(images, paths)],
                      ignore_index=True)
    assert list(together["path"]) == list(alone["path"]) and (together["face"] >= 0).sum() == len(images) + 1 - 2
    assert together[["face", "x", "y", "w", "h"]].equals(alone[["face", "x", "y", "w", "h"]])
    pts = [c for c in LANDMARK_COLUMNS if c[-2:] in ("_x", "_y")]
    np.testing.assert_allclose(together[pts].to_numpy(), alone[pts].to_numpy(), atol=0.01)
    probs = [c for c in together.columns if c.startswith("p_")]
    np.testing.assert_allclose(together[probs].to_numpy(), alone[probs].to_numpy(), atol=1e-4)
    found = together["face"] >= 0
    assert (together.loc[found, probs].to_numpy().argmax(1) == alone.loc[found, probs].to_numpy().argmax(1)).all()


def test_face_score_picks_the_detector_by_name(mtcnn, astronaut, tmp_path):
    """`face score --detector mtcnn` on a folder of tight face crops finds every face; Haar none."""
    from PIL import Image

    from vlm_salience.face_scoring import score_faces

    d = tmp_path / "crops"
    d.mkdir()
    for inset, scale in [(0, 1.0), (5, 2.0), (10, 3.0)]:
        Image.fromarray(tight_crop(astronaut, inset, scale)[0]).save(d / f"crop_{inset}_{scale}.png")
    s_haar = score_faces([d], tmp_path / "haar.csv", detector_cfg="haar", progress=False)
    s_mtcnn = score_faces([d], tmp_path / "mtcnn.csv", detector_cfg="mtcnn", progress=False)
    assert (s_haar["faces"], s_haar["no_face"]) == (0, 3)
    assert (s_mtcnn["faces"], s_mtcnn["no_face"], s_mtcnn["detector"]) == (3, 0, "mtcnn")
    # the CSV carries the five landmarks and the pose: on the hand-read points, roll about level
    import pandas as pd

    t = pd.read_csv(tmp_path / "mtcnn.csv").set_index("path")
    names = ["eye_l", "eye_r", "nose", "mouth_l", "mouth_r"]
    for inset, scale in [(0, 1.0), (5, 2.0), (10, 3.0)]:
        r = t.loc[str(d / f"crop_{inset}_{scale}.png")]
        pts = np.array([[r[f"{n}_x"], r[f"{n}_y"]] for n in names])
        assert_points_on_face(pts, tight_crop(astronaut, inset, scale)[1], IOD * scale)
        assert abs(r["roll"]) < 8 and abs(r["yaw"]) < 20
    assert pd.read_csv(tmp_path / "haar.csv")[["eye_l_x", "yaw", "roll"]].isna().all().all()


def test_the_default_detector_is_mtcnn_where_installed_else_haar_with_a_warning(mtcnn, monkeypatch):
    """No detector named (face score, machine cues, the video face stream): MTCNN, which measures better on every
    check; without its weights, the Haar cascade and one warning that names the install."""
    import vlm_salience.models.faces.detector as det
    from vlm_salience.errors import ConfigError
    from vlm_salience.models.faces.detectors import load_detector
    from vlm_salience.video.streams import DetectionConfig, face_finder

    assert load_detector(None).cfg.kind == load_detector("auto").cfg.kind == "mtcnn"
    assert face_finder(DetectionConfig()).detector_config.kind == "mtcnn"

    def missing():
        raise ConfigError("no weights")

    import vlm_salience.models.faces.mtcnn as mt

    monkeypatch.setattr(det, "mtcnn_weights_dir", missing)
    monkeypatch.setattr(mt, "weights_dir", missing)
    monkeypatch.setattr(det, "_warned_no_mtcnn", False)
    with pytest.warns(UserWarning, match="facenet-pytorch"):
        assert load_detector(None).cfg.kind == "haar"
    plain = face_finder(DetectionConfig()).detector_config  # the video pyramid for downscaled frames
    assert (plain.kind, plain.scale_factor, plain.min_neighbors) == ("haar", 1.05, 3)
    with pytest.raises(ConfigError):  # named explicitly, a missing MTCNN is an error, never a silent Haar
        load_detector("mtcnn")


# ---------------------------------------------------------------- identities across a clip

from vlm_salience.models.faces.identities import FaceTracker, pick_target, track_faces  # noqa: E402


def crossing_boxes(T: int = 30, miss: range = range(12, 16), seed: int = 0) -> list[list[FaceBox]]:
    """Two faces crossing: A moves right along y=40, B left along y=70 (their boxes overlap for a few frames, IoU up
    to ~.4); A's detections are missing for the frames in `miss` (right at the crossing); boxes jitter by 2 px, and
    the detector lists the faces in random order."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(T):
        faces = []
        for who, (x, y) in {"A": (20 + 12 * t, 40), "B": (380 - 12 * t, 70)}.items():
            if who == "A" and t in miss:
                continue
            jx, jy = rng.normal(0, 2, 2)
            pts = np.array([[25, 35], [55, 35], [40, 50], [28, 65], [52, 65]], float) + [x + jx, y + jy]
            faces.append(FaceBox(int(x + jx), int(y + jy), 80, 96, 0.99, tuple(map(tuple, pts))))
        rng.shuffle(faces)
        out.append(faces)
    return out


def truth(face: FaceBox) -> str:
    return "A" if abs(face.y - 40) < abs(face.y - 70) else "B"


def test_two_crossing_faces_keep_their_ids_through_a_gap():
    frames = crossing_boxes()
    tracked, summary = track_faces(frames, max_gap=6)
    ids = {who: {tid for faces in tracked for tid, f in faces if truth(f) == who} for who in "AB"}
    assert ids["A"] == {ids["A"].copy().pop()} and ids["B"] == {ids["B"].copy().pop()} and ids["A"] != ids["B"]
    assert summary["tracks"] == 2 and summary["gaps_bridged"] == 1
    a = summary["per_track"][next(iter(ids["A"]))]
    assert (a["first"], a["last"], a["frames"], a["gaps"]) == (0, 29, 26, 1)
    # a single missed frame is a bridged gap too
    assert track_faces(crossing_boxes(miss=range(5, 6)), max_gap=6)[1]["gaps_bridged"] == 1
    # a gap longer than max_gap ends the track: A comes back as a third identity
    _, short = track_faces(frames, max_gap=2)
    assert short["tracks"] == 3 and short["gaps_bridged"] == 0


def test_without_prediction_and_landmarks_the_ids_would_swap():
    """The same clip with a tracker that only takes the nearest box by IoU to the last position (no velocity, no
    landmarks) swaps or splits identities at the crossing: the assignment is what keeps them."""
    tr = FaceTracker(max_gap=6, landmark_weight=0.0)
    frames = crossing_boxes()
    from vlm_salience.models.faces import identities

    orig = identities._Track.predicted
    identities._Track.predicted = lambda self, frame: self.box  # no motion model
    try:
        tracked = [tr.update([FaceBox(f.x, f.y, f.w, f.h, f.score) for f in fs]) for fs in frames]
    finally:
        identities._Track.predicted = orig
    ids_a = {tid for faces in tracked for tid, f in faces if truth(f) == "A"}
    assert len(ids_a) > 1


def test_pick_target_rules():
    frames = crossing_boxes(miss=range(0))
    tracked, summary = track_faces(frames[:20] + [[f for f in fs if truth(f) == "B"] for fs in frames[20:]])
    a = next(tid for tid, f in tracked[0] if truth(f) == "A")
    b = next(tid for tid, f in tracked[0] if truth(f) == "B")
    assert pick_target(summary, tracked, "longest") == b  # B is seen in all 30 frames, A in 20
    assert pick_target(summary, tracked, "central", frame_size=(200, 200)) == a  # A stays nearer (100, 100)
    with pytest.raises(ValueError, match="frame_size"):
        pick_target(summary, tracked, "central")
    assert pick_target({"tracks": 0}, [[], []]) is None


def test_real_two_face_clip_gives_two_streams(mtcnn, astronaut):
    """MTCNN on a generated clip of two astronauts' heads (one mirrored and tinted) crossing, 10 px a frame: one id
    each, on every frame."""
    face = cv2.resize(astronaut[30:230, 130:330], (120, 120), interpolation=cv2.INTER_AREA)  # face ~54 px wide
    other = (face[:, ::-1] * [0.8, 0.9, 1.1]).clip(0, 255).astype(np.uint8)
    frames = []
    for t in range(10):
        f = np.full((240, 360, 3), 60, np.uint8)
        xa, xb = 20 + 20 * t, 220 - 20 * t
        f[10:130, xb:xb + 120] = other
        f[100:220, xa:xa + 120] = face
        frames.append(f)
    tracked, summary = track_faces(mtcnn.detect_batch(frames))
    assert summary["tracks"] == 2 and all(len(fs) == 2 for fs in tracked)
    first = {tid: f.y > 60 for tid, f in tracked[0]}
    assert all({tid: f.y > 60 for tid, f in fs} == first for fs in tracked)


def test_face_score_resumes_only_with_the_detector_that_wrote_the_rows(mtcnn, astronaut, tmp_path):
    """Review finding, fixed: `auto` depends on the install, so a CSV begun with Haar and resumed with MTCNN would
    mix two detectors' rows under one name; it is refused, naming the detector to pass or --fresh."""
    from PIL import Image

    from vlm_salience.errors import DataError
    from vlm_salience.face_scoring import score_faces

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(astronaut).save(d / "a.png")
    out = tmp_path / "scores.csv"
    score_faces([d], out, detector_cfg="haar", progress=False)
    Image.fromarray(astronaut[::2, ::2]).save(d / "b.png")
    with pytest.raises(DataError, match="detector 'haar'.*--detector haar"):
        score_faces([d], out, detector_cfg="mtcnn", progress=False)
    assert score_faces([d], out, detector_cfg="haar", progress=False)["resumed"] == 1  # same detector: resumes
    assert score_faces([d], out, detector_cfg="mtcnn", progress=False, resume=False)["detector"] == "mtcnn"

"""MTCNN and identities in the video face stream (video/streams.py): the corpus config picks the detector (haar |
mtcnn | a YAML) and the target identity (largest | most_central | longest); with a target, a clip of two people
crossing gives the target person's box on every frame, and `video prepare`'s summary counts identity switches and
the target's gaps. Without a target the cache keys are those of before the option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")

from vlm_salience.errors import ConfigError  # noqa: E402
from vlm_salience.face_synth import drawn_frames, write_video  # noqa: E402
from vlm_salience.models.faces.detector import FaceBox  # noqa: E402
from vlm_salience.video.prepare import PrepareConfig, hashed_settings, prepare_corpus  # noqa: E402
from vlm_salience.video.streams import DetectionConfig, PackagedFinder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDES = (64, 96)  # person 0 (upper) is drawn smaller than person 1 (lower)


def _mtcnn_or_skip():
    from vlm_salience.models.faces.mtcnn import weights_dir

    try:
        weights_dir()
    except ConfigError as exc:
        pytest.skip(f"MTCNN weights not installed ({exc})")


@pytest.fixture(scope="module")
def crossing():
    """24 frames (4.8 s at 5 fps) of two drawn people walking past each other."""
    items = list(drawn_frames(24, faces=2, face_px=SIDES, fps=5.0, period_s=9.6))
    return np.stack([f for f, _ in items]), [b for _, b in items]


def _person(box: np.ndarray, truth: list) -> int:
    ious = [FaceBox(*t, 1.0).iou(box) for t in truth]
    return int(np.argmax(ious)) if max(ious) >= 0.2 else -1


def test_config_takes_a_name_or_a_yaml_and_old_hashes_hold(tmp_path):
    assert DetectionConfig(detector="mtcnn", target="longest").detector == "mtcnn"
    assert isinstance(DetectionConfig.model_validate({"detector": "x/face_mtcnn.yaml"}).detector, Path)
    with pytest.raises(Exception, match="target"):
        DetectionConfig(target="loudest")
    det = hashed_settings(PrepareConfig())["streams"]["detection"]
    assert "target" not in det and "max_gap" not in det  # caches written before the option keep their keys
    on = PrepareConfig.model_validate({"streams": {"detection": {"target": "largest"}}})
    assert hashed_settings(on)["streams"]["detection"]["target"] == "largest"


def test_target_identity_follows_one_person_through_the_crossing(crossing):
    _mtcnn_or_skip()
    frames, truth = crossing
    finder = PackagedFinder(DetectionConfig(detector="mtcnn", max_side=None, target="largest"))
    assert finder.detector_config.kind == "mtcnn"
    boxes = finder.largest(frames)
    who = [_person(b, t) for b, t in zip(boxes, truth) if b is not None]
    assert len(who) >= 20 and set(who) == {1}, who  # the larger, lower person on every frame it was seen
    stats = finder.last_identity
    assert stats["identities"] >= 2 and stats["target_gaps"] >= 0
    # the per-frame largest face, without identities, is also person 1 here; the central rule picks by position
    finder.target = "most_central"
    central = [_person(b, t) for b, t in zip(finder.largest(frames), truth) if b is not None]
    assert len(set(central)) == 1


def test_longest_rule_prefers_the_person_seen_on_more_frames(crossing):
    """Person 1 leaves after frame 11 (the frames are cut to their upper half after it): `longest` picks person 0,
    `largest` person 1."""
    _mtcnn_or_skip()
    frames, truth = crossing
    frames = frames.copy()
    for t in range(12, len(frames)):
        frames[t, 130:] = frames[0, 130:, :1].mean()  # person 1 (y >= 134) painted over
    finder = PackagedFinder(DetectionConfig(detector="mtcnn", max_side=None, target="longest"))
    longest = [_person(b, t) for b, t in zip(finder.largest(frames), truth) if b is not None]
    finder.target = "largest"
    largest = [_person(b, t) for b, t in zip(finder.largest(frames), truth) if b is not None]
    assert set(longest) == {0} and set(largest) == {1}, (longest, largest)


def test_prepare_reports_identity_switches_and_gaps(crossing, tmp_path):
    _mtcnn_or_skip()
    frames, _ = crossing
    write_video(tmp_path / "c0.mp4", iter(frames), 5.0)
    write_video(tmp_path / "c1.mp4", iter(frames[:, :, ::-1].copy()), 5.0)
    (tmp_path / "clips.csv").write_text("clip,label,fold,face\nc0.mp4,happy,1,\nc1.mp4,sad,2,\n")
    data = tmp_path / "data.yaml"
    data.write_text(f"format: video_csv\nname: two\nroot: {tmp_path}\nfile: clips.csv\nclasses: [happy, sad]\n")
    cfg = PrepareConfig.model_validate({"n_segments": 8, "candidates_per_segment": 1,
                                        "streams": {"face_size": 32, "scene_size": 24,
                                                    "detection": {"detector": "mtcnn", "max_side": None,
                                                                  "detect_on": "all", "target": "largest"}}})
    s = prepare_corpus(data, cfg, tmp_path / "cache", progress=False)
    assert s["prepared"] == 2 and s["clips_with_several_identities"] == 2
    assert s["identity_switches"] >= 0 and s["target_gaps"] >= 0
    manifest = json.loads(next((tmp_path / "cache").rglob("manifest.json")).read_text())
    entries = manifest["clips"] if "clips" in manifest else manifest
    assert all(e["identities"] >= 2 for e in entries.values())

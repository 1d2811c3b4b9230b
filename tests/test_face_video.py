"""`face video` (vlm_salience/face_video.py): the Fex-like table of drawn faces moving in a generated video, two
identities, resume after an interruption equal to an uninterrupted run, bad input as error rows, Parquet equal to
the CSV, and memory that does not grow with the video's length."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest

av = pytest.importorskip("av")
pytest.importorskip("cv2")

from vlm_salience import face_video as fv  # noqa: E402
from vlm_salience.errors import ConfigError  # noqa: E402
from vlm_salience.face_synth import drawn_frames, write_drawn_video, write_video  # noqa: E402
from vlm_salience.face_video import VideoSettings, face_video, fex_columns  # noqa: E402
from vlm_salience.models.faces.detector import FaceBox  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FPS = 5


@pytest.fixture(scope="module")
def mtcnn_analyzer():
    from vlm_salience.models.faces.analyzer import FaceAnalyzer
    from vlm_salience.models.faces.mtcnn import weights_dir

    try:
        weights_dir()
    except ConfigError as exc:
        pytest.skip(f"MTCNN weights not installed ({exc})")
    return FaceAnalyzer.from_configs("mtcnn")


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    """4 s at 5 fps of two drawn faces crossing, and their drawn boxes per frame."""
    path = tmp_path_factory.mktemp("fv") / "two.mp4"
    frames = list(drawn_frames(20, faces=2, fps=FPS))
    write_video(path, (f for f, _ in frames), FPS)
    return path, [b for _, b in frames]


@pytest.fixture(scope="module")
def two_faces_table(two_faces, mtcnn_analyzer, tmp_path_factory):
    out = tmp_path_factory.mktemp("fv_out")
    summary = face_video([two_faces[0]], out, analyzer=mtcnn_analyzer, settings=VideoSettings(batch=4),
                         progress=False)
    return out, summary


def test_table_shape_boxes_landmarks_identities(two_faces, two_faces_table, mtcnn_analyzer):
    path, truth = two_faces
    out, summary = two_faces_table
    df = pd.read_csv(out / "two.csv")
    classes = mtcnn_analyzer.classifier.classes
    assert list(df.columns) == fex_columns(classes)
    assert summary["per_video"][0]["status"] == "ok" and summary["errors"] == 0
    assert sorted(df["frame"].unique()) == list(range(20))
    np.testing.assert_allclose(df.groupby("frame")["time_s"].first(), np.arange(20) / FPS, atol=1e-6)
    ok = df[df.status == "ok"]
    assert len(ok) >= 32  # 2 faces x 20 frames; MTCNN misses one face in some frames where they overlap (15-19)
    # every box is one of the drawn faces (IoU >= .3: MTCNN's box is the inner face, the drawn one the head)
    for r in ok.itertuples():
        best = max(FaceBox(*t, 1.0).iou([r.FaceRectX, r.FaceRectY, r.FaceRectWidth, r.FaceRectHeight])
                   for t in truth[r.frame])
        assert best >= 0.3, (r.frame, best)
    # landmarks lie in their box, eyes above the mouth, the image-left eye left of the right one
    xs, ys = ok[[f"x_{i}" for i in range(5)]].to_numpy(), ok[[f"y_{i}" for i in range(5)]].to_numpy()
    x0, y0 = ok[["FaceRectX"]].to_numpy(), ok[["FaceRectY"]].to_numpy()
    x1, y1 = x0 + ok[["FaceRectWidth"]].to_numpy(), y0 + ok[["FaceRectHeight"]].to_numpy()
    assert ((xs >= x0 - 2) & (xs <= x1 + 2) & (ys >= y0 - 2) & (ys <= y1 + 2)).all()
    assert (xs[:, 0] < xs[:, 1]).all() and (ys[:, :2].max(axis=1) < ys[:, 3:].min(axis=1)).all()
    assert ok.Yaw.abs().max() < 30 and ok.Roll.abs().max() < 10  # drawn faces look straight ahead, upright
    probs = ok[classes].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(ok.expressivity, 1 - ok.neutral, atol=1e-5)
    # two identities, each staying with its drawn face (person 0 is the upper one)
    assert set(ok.identity) == {0, 1} and summary["per_video"][0]["identities"] == 2
    for tid, g in ok.groupby("identity"):
        upper = [abs(r.FaceRectY - truth[r.frame][0][1]) < abs(r.FaceRectY - truth[r.frame][1][1])
                 for r in g.itertuples()]
        assert all(upper) or not any(upper), f"identity {tid} jumps between the faces"
    assert not (out / "two.csv.part").exists() and not (out / "two.progress.json").exists()


def test_parquet_equals_csv(two_faces_table):
    pytest.importorskip("pyarrow")
    out, _ = two_faces_table
    a, b = pd.read_csv(out / "two.csv"), pd.read_parquet(out / "two.parquet")
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    num = [c for c in a.columns if c not in ("input", "status", "error")]
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), equal_nan=True)
    assert (a.status == b.status).all() and (a.input == b.input).all()


def test_resume_after_an_interruption_equals_an_uninterrupted_run(two_faces, two_faces_table, mtcnn_analyzer,
                                                                  tmp_path, monkeypatch):
    """Interrupted after the third chunk's rows were appended but before its progress record: the rerun cuts those
    rows, restores the tracker and gives the same table, byte for byte."""
    path, _ = two_faces
    full = (two_faces_table[0] / "two.csv").read_bytes()
    real, calls = fv.write_progress, []

    def dies_on_third(p, rec):
        calls.append(rec)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(p, rec)

    monkeypatch.setattr(fv, "write_progress", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        face_video([path], tmp_path, analyzer=mtcnn_analyzer, settings=VideoSettings(batch=4), progress=False)
    monkeypatch.setattr(fv, "write_progress", real)
    rec = json.loads((tmp_path / "two.progress.json").read_text())
    assert rec["next_frame"] == 8 and (tmp_path / "two.csv.part").stat().st_size > rec["part_bytes"]
    summary = face_video([path], tmp_path, analyzer=mtcnn_analyzer, settings=VideoSettings(batch=4),
                         progress=False)
    assert summary["per_video"][0]["resumed_from_frame"] == 8
    assert (tmp_path / "two.csv").read_bytes() == full
    # finished: a third run skips it; other settings over a half-done part are refused
    assert face_video([path], tmp_path, analyzer=mtcnn_analyzer, progress=False)["per_video"][0]["skipped"]


def test_a_half_done_part_with_other_settings_is_refused(two_faces, mtcnn_analyzer, tmp_path, monkeypatch):
    path, _ = two_faces
    monkeypatch.setattr(fv, "write_progress", lambda p, rec: (fv.write_text(p, json.dumps(rec)), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        face_video([path], tmp_path, analyzer=mtcnn_analyzer, settings=VideoSettings(batch=4), progress=False)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="other settings.*--fresh"):
        face_video([path], tmp_path, analyzer=mtcnn_analyzer, settings=VideoSettings(batch=4, every=2),
                   progress=False)


# ---------------------------------------------------------------- bad input


class _OneBox:
    """A detector stub: one fixed face with landmarks on every frame (the streaming machinery under test, not
    a model)."""

    name = "stub"

    def detect_batch(self, images):
        pts = ((40.0, 50.0), (70.0, 50.0), (55.0, 65.0), (43.0, 80.0), (67.0, 80.0))
        return [[FaceBox(20, 20, 70, 80, 0.9, pts)] for _ in images]


class _Uniform:
    name, classes, neutral, crop_margin = "uniform", ["happy", "neutral"], "neutral", 0.1

    def predict(self, crops):
        return np.full((len(crops), 2), 0.5)


def stub_analyzer():
    from vlm_salience.models.faces.analyzer import FaceAnalyzer

    return FaceAnalyzer(detector=_OneBox(), classifier=_Uniform())


def _zero_frame_video(path):
    c = av.open(str(path), "w")
    s = c.add_stream("mpeg4", rate=FPS)
    s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
    c.start_encoding()
    c.close()


def test_bad_videos_give_error_rows_and_the_run_goes_on(tmp_path):
    good = tmp_path / "good.avi"
    write_drawn_video(good, 8, fps=FPS)
    data = good.read_bytes()
    (tmp_path / "truncated.avi").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video")
    _zero_frame_video(tmp_path / "zero.avi")
    inputs = [tmp_path / n for n in ("empty.mp4", "text.mp4", "zero.avi", "truncated.avi", "missing.mp4",
                                     "good.avi")]
    out = tmp_path / "out"
    summary = face_video(inputs, out, analyzer=stub_analyzer(), progress=False)
    by = {r["input"]: r for r in summary["per_video"]}
    reasons = {"empty.mp4": "empty", "text.mp4": "not a readable video", "zero.avi": "no frames",
               "truncated.avi": "cut off or damaged", "missing.mp4": "not found"}
    for name, reason in reasons.items():
        r = by[str(tmp_path / name)]
        assert r["status"] == "error" and reason in r["error"] and str(tmp_path / name) in r["error"], r
        rows = list(csv.DictReader(open(out / f"{name.split('.')[0]}.csv")))
        assert rows[-1]["status"] == "error" and rows[-1]["input"] == str(tmp_path / name)
    assert by[str(good)]["status"] == "ok" and by[str(good)]["face_rows"] == 8 * FPS
    assert summary["errors"] == 5
    # error tables are retried on the next run, finished ones skipped
    again = {r["input"]: r["skipped"] for r in face_video(inputs, out, analyzer=stub_analyzer(),
                                                           progress=False)["per_video"]}
    assert again[str(good)] and not again[str(tmp_path / "text.mp4")]


class _Drawn:
    """A detector stub that knows the drawn boxes of each decoded frame (looked up by its pixels) and lists them
    left to right, as a detector's order is arbitrary: after two faces cross, a tracker started afresh would give
    the left face, the other person, the first id."""

    name = "drawn"

    def __init__(self, path, truth):
        from vlm_salience.face_video import FrameReader

        r = FrameReader(path)
        self.boxes = {im.tobytes(): truth[i] for i, _, im in r.frames()}
        r.close()

    def detect_batch(self, images):
        out = []
        for im in images:
            faces = []
            for x, y, w, h in sorted(self.boxes[im.tobytes()]):
                pts = tuple((x + w * a, y + h * b) for a, b in ((.35, .4), (.65, .4), (.5, .55), (.38, .7), (.62, .7)))
                faces.append(FaceBox(x, y, w, h, 0.9, pts))
            out.append(faces)
        return out


def test_resumed_identities_continue_across_a_crossing(two_faces, tmp_path, monkeypatch):
    """Interrupted after the faces crossed (frame 15): the resumed run restores the tracker, so each person keeps
    the id it had before the interruption."""
    from vlm_salience.models.faces.analyzer import FaceAnalyzer

    path, truth = two_faces
    analyzer = FaceAnalyzer(detector=_Drawn(path, truth), classifier=_Uniform())
    face_video([path], tmp_path / "full", analyzer=analyzer, settings=VideoSettings(batch=4), progress=False)
    real, calls = fv.write_progress, []

    def dies_on_fifth(p, rec):
        calls.append(rec)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real(p, rec)

    monkeypatch.setattr(fv, "write_progress", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        face_video([path], tmp_path / "cut", analyzer=analyzer, settings=VideoSettings(batch=4), progress=False)
    monkeypatch.setattr(fv, "write_progress", real)
    s = face_video([path], tmp_path / "cut", analyzer=analyzer, settings=VideoSettings(batch=4), progress=False)
    assert s["per_video"][0]["resumed_from_frame"] == 16
    full, cut = pd.read_csv(tmp_path / "full" / "two.csv"), pd.read_csv(tmp_path / "cut" / "two.csv")
    assert full.identity.nunique() == 2
    pd.testing.assert_frame_equal(full.drop(columns="input"), cut.drop(columns="input"))


# ---------------------------------------------------------------- bounded memory

PEAK_RSS = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_face_video import stub_analyzer
from vlm_salience.face_video import VideoSettings, face_video
face_video([Path(sys.argv[1])], Path(sys.argv[2]), analyzer=stub_analyzer(), settings=VideoSettings(batch=8),
           progress=False)
# VmHWM, this process's own peak (ru_maxrss would carry over the forking parent's, pytest's, peak)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def _peak_rss_kb(video, out) -> int:
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": f"{here.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, "-c", PEAK_RSS, str(video), str(out), str(here)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return int(res.stdout.split()[-1])


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_memory_does_not_grow_with_the_videos_length(tmp_path):
    """Peak resident memory (each run in its own process) over 25 chunks of 8 frames is that over 2: a run that kept
    its decoded frames would hold 200 frames of 320x240 (46 MB) instead of 16. Measured as RSS, not tracemalloc:
    PyAV's frames live in its own buffers, which tracemalloc does not see."""
    short, long = tmp_path / "short.avi", tmp_path / "long.avi"
    write_drawn_video(short, 16 / FPS, fps=FPS)
    write_drawn_video(long, 200 / FPS, fps=FPS)
    p_short, p_long = _peak_rss_kb(short, tmp_path / "a"), _peak_rss_kb(long, tmp_path / "b")
    assert p_long - p_short < 10 * 1024, (p_short, p_long)


def test_cli_face_video(tmp_path, capsys):
    from vlm_salience.cli import main

    v = tmp_path / "clip.avi"
    write_drawn_video(v, 1, fps=FPS)
    rc = main(["face", "video", str(v), "--out", str(tmp_path / "o"), "--detector", "haar", "--every", "2",
               "--quiet", "--json", str(tmp_path / "s.json")])
    assert rc == 0 and "1 videos (0 with errors)" in capsys.readouterr().out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["detector"] == "haar"
    df = pd.read_csv(tmp_path / "o" / "clip.csv")
    assert sorted(df.frame.unique()) == [0, 2, 4]

"""`face score` split across two processes (gloo, CPU; as `accelerate launch --num_processes 2 --cpu` runs it)
writes the CSV one process writes, row for row; a killed rank's share resumes from its part file."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

pytest.importorskip("accelerate")
pytest.importorskip("cv2")

from vlm_salience.face_ranks import merge_parts, part_path  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, images: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    import torch

    torch.set_num_threads(1)
    from vlm_salience.face_scoring import score_faces

    score_faces([images], out, progress=False)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    from vlm_salience.data.faces import ACTIONS, FaceStyle, render_face

    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i, e in enumerate(list(ACTIONS) * 2):
        render_face(e, 1.0, FaceStyle.sample(rng), size=160).save(d / f"{i:02d}_{e}.png")
    (d / "zz_broken.png").write_bytes(b"not an image")
    return d


def test_two_gloo_processes_write_what_one_writes(image_dir, tmp_path):
    import torch.multiprocessing as mp

    from vlm_salience.face_scoring import score_faces

    one = tmp_path / "one.csv"
    score_faces([image_dir], one, progress=False)
    two = tmp_path / "two.csv"
    mp.start_processes(_rank_main, args=(2, _free_port(), str(image_dir), str(two)), nprocs=2, join=True,
                       start_method="spawn")
    # the default detector (MTCNN where installed) batches its networks' crops per process, so two processes' float
    # rounding differs from one's in the last digits (measured: 2e-6; landmarks are written to 6 significant digits); every row, path, status, box and class agrees
    import pandas as pd

    t1, t2 = pd.read_csv(one), pd.read_csv(two)
    assert list(t1.columns) == list(t2.columns) and len(t1) == len(t2) == 17
    num = t1.select_dtypes("number").columns
    pd.testing.assert_frame_equal(t2.drop(columns=num), t1.drop(columns=num))
    np.testing.assert_allclose(t2[num].to_numpy(float), t1[num].to_numpy(float), atol=1e-4, rtol=1e-4)
    assert not part_path(two, 0, 2).exists() and not part_path(two, 1, 2).exists()
    import json

    s = json.loads(two.with_suffix(".summary.json").read_text())
    assert s["processes"] == 2 and s["images"] == 17 and s["errors"] == 1


def test_merge_keeps_rank_order_and_refuses_other_columns(tmp_path):
    a, b, out = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "o.csv"
    a.write_text("path,status\nx,ok\ny,ok\n")
    b.write_text("path,status\nz,no_face\n")
    merge_parts([a, b], out)
    assert out.read_text() == "path,status\nx,ok\ny,ok\nz,no_face\n"
    b.write_text("path,p_other\nz,1\n")
    with pytest.raises(ValueError, match="columns differ"):
        merge_parts([a, b], out)


def _video_rank_main(rank: int, world: int, port: int, videos: list, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    import torch

    torch.set_num_threads(1)
    from vlm_salience.face_video import VideoSettings, face_video

    face_video(videos, out, detector_cfg="haar", settings=VideoSettings(batch=4), progress=False)


def test_face_video_two_gloo_processes_write_what_one_writes(tmp_path):
    import json

    import torch.multiprocessing as mp

    from vlm_salience.face_synth import write_drawn_video
    from vlm_salience.face_video import VideoSettings, face_video

    videos = []
    for i in range(3):
        videos.append(str(tmp_path / f"v{i}.avi"))
        write_drawn_video(videos[-1], 2, fps=5, seed=i)
    videos.append(str(tmp_path / "missing.avi"))
    face_video(videos, tmp_path / "one", detector_cfg="haar", settings=VideoSettings(batch=4), progress=False)
    mp.start_processes(_video_rank_main, args=(2, _free_port(), videos, str(tmp_path / "two")), nprocs=2,
                       join=True, start_method="spawn")
    for name in ("v0", "v1", "v2", "missing"):
        assert (tmp_path / "two" / f"{name}.csv").read_text() == (tmp_path / "one" / f"{name}.csv").read_text()
    one = json.loads((tmp_path / "one" / "face_video.summary.json").read_text())
    two = json.loads((tmp_path / "two" / "face_video.summary.json").read_text())
    assert [r["input"] for r in two["per_video"]] == videos and two["errors"] == one["errors"] == 1
    assert not list((tmp_path / "two").glob(".face_video.rank*.json"))

"""`vlm-salience video prepare` split across two processes (gloo, CPU; as `accelerate launch --num_processes 2
--cpu` runs it) writes the cache one process writes: the same manifest.json and summary.json bytes, the same clip
files with the same arrays; each rank prepares only its share; a launch killed mid-way resumes (each rank's finished
clips are found, not prepared again) into what one process resuming from the same state writes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("accelerate")
pytest.importorskip("cv2")

from tests.test_video_prepare import make_corpus, small_cfg  # noqa: E402
from vlm_salience.video.prepare import load_prepare_config, prepare_corpus, rank_part  # noqa: E402
from vlm_salience.video.cache import ClipCache  # noqa: E402


SMALL_SETS = {"n_segments": 4, "candidates_per_segment": 3, "streams.face_size": 32, "streams.scene_size": 24}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, data: str, out: str, die_after: int | None, log: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    import torch

    torch.set_num_threads(1)
    from vlm_salience.video import prepare as prep

    real, done = prep.prepare_clip, []

    def counted(clip, cfg, finder):
        if die_after is not None and len(done) == die_after:
            # the launch killed mid-way, once both ranks have written their finished clips (a rank asks for its
            # next clip only after writing the last one) and nothing else
            Path(log, f"rank{rank}.dying").touch()
            for _ in range(600):
                if Path(log, f"rank{1 - rank}.dying").exists():
                    break
                time.sleep(0.05)
            os._exit(3)
        out_clip = real(clip, cfg, finder)
        done.append(clip.clip_id)
        Path(log, f"rank{rank}.json").write_text(json.dumps(done))
        return out_clip

    prep.prepare_clip = counted
    from vlm_salience.cli import main  # the command as `accelerate launch -m vlm_salience.cli video prepare` runs it

    sets = [a for k, v in SMALL_SETS.items() for a in ("--set", f"{k}={v}")]
    assert main(["video", "prepare", "--data", data, "--out", out, "--quiet", *sets]) == 0


def _launch(data: Path, out: Path, log: Path, die_after: int | None = None) -> None:
    import torch.multiprocessing as mp

    log.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank_main, args=(2, _free_port(), str(data), str(out), die_after, str(log)), nprocs=2,
                       join=True, start_method="spawn")


def _clip_arrays(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every clip file's arrays, by path (npz members carry their write time, so bytes differ between runs)."""
    out = {}
    for f in sorted((root / "clips").rglob("*.npz")):
        with np.load(f) as z:
            out[str(f.relative_to(root))] = {k: z[k] for k in z.files}
    return out


def _same_cache(a: Path, b: Path) -> None:
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa.pop("out") == str(a) and sb.pop("out") == str(b)
    assert sa == sb
    ca, cb = _clip_arrays(a), _clip_arrays(b)
    assert list(ca) == list(cb)
    for name in ca:
        assert ca[name].keys() == cb[name].keys()
        for k in ca[name]:
            np.testing.assert_array_equal(ca[name][k], cb[name][k], err_msg=f"{name}: {k}")
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_two_gloo_processes_prepare_what_one_prepares_and_a_killed_launch_resumes(tmp_path):
    data = make_corpus(tmp_path / "clips", n_video=1, n_folder=2, frames=12, with_face=False)  # 4 clips
    assert small_cfg() == load_prepare_config(None, [f"{k}={v}" for k, v in SMALL_SETS.items()])
    one = tmp_path / "one"
    s1 = prepare_corpus(data, small_cfg(), one, progress=False)
    assert s1["prepared"] == 4

    two = tmp_path / "two"
    _launch(data, two, tmp_path / "log2")
    _same_cache(one, two)
    done = [json.loads((tmp_path / "log2" / f"rank{r}.json").read_text()) for r in range(2)]
    assert done == [["v0.mp4", "f0"], ["f1", "noface"]]  # each rank its contiguous share, nothing twice
    assert not (two / rank_part(ClipCache(two), 0, 2).name).exists()

    killed = tmp_path / "killed"
    with pytest.raises(Exception, match="exit"):
        _launch(data, killed, tmp_path / "logk", die_after=1)
    assert len(list((killed / "clips").rglob("*.npz"))) == 2 and not (killed / "manifest.json").exists()
    shutil.copytree(killed, tmp_path / "killed_one")
    again = prepare_corpus(data, small_cfg(), tmp_path / "killed_one", progress=False)
    assert again["skipped"] == 2 and again["prepared"] == 2  # the two finished clips were found, not redone
    _launch(data, killed, tmp_path / "logr")
    done = [json.loads((tmp_path / "logr" / f"rank{r}.json").read_text()) for r in range(2)]
    assert done == [["f0"], ["noface"]]
    _same_cache(tmp_path / "killed_one", killed)
    m1 = json.loads((one / "manifest.json").read_text())["clips"]
    mk = json.loads((killed / "manifest.json").read_text())["clips"]
    assert mk == m1  # the same entries as an uninterrupted run (listed in the order they were found)


def test_a_cuda_detector_goes_to_the_ranks_own_gpu():
    """rank_device: a CUDA device becomes the rank's own (cuda:LOCAL_RANK, as accelerate assigned it); the CPU stays;
    without a GPU in the launch the configured device stays. _move_finder moves only a CUDA-configured detector."""
    from types import SimpleNamespace

    from vlm_salience.rank_split import rank_device
    from vlm_salience.video import prepare as prep

    gpu1 = SimpleNamespace(device=type("Dev", (), {"type": "cuda", "__str__": lambda self: "cuda:1"})())
    cpu = SimpleNamespace(device=None)
    assert rank_device("cuda", gpu1) == "cuda:1" and rank_device("cuda:0", gpu1) == "cuda:1"
    assert rank_device("cpu", gpu1) == "cpu" and rank_device("cuda", cpu) == "cuda"
    moved = []
    finder = SimpleNamespace(detector_config=SimpleNamespace(device="cuda"), to=moved.append)
    assert prep._move_finder(finder, gpu1) == "cuda:1" and moved == ["cuda:1"]
    haar = SimpleNamespace(detector_config=SimpleNamespace(), to=moved.append)  # no device field: CPU only
    cpu_mtcnn = SimpleNamespace(detector_config=SimpleNamespace(device="cpu"), to=moved.append)
    assert prep._move_finder(haar, gpu1) is None and prep._move_finder(cpu_mtcnn, gpu1) is None and len(moved) == 1

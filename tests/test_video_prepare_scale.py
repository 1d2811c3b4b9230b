"""`video prepare` at corpus size: the manifest grows by appended lines (a killed run's clips are still listed),
`--fold/--part` prepare what one run needs, `--data-set` overrides the data config, and SIGTERM stops the workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_video_prepare import make_corpus, small_cfg
from vlm_salience.cli import main
from vlm_salience.video import prepare as prep
from vlm_salience.video.cache import ClipCache
from vlm_salience.video.prepare import prepare_corpus

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus_yaml(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("clips"), n_video=1, n_folder=2, frames=12, with_face=False)


def test_manifest_is_appended_during_a_run_and_a_killed_run_is_readable(corpus_yaml, tmp_path, monkeypatch):
    out, snap = tmp_path / "c", tmp_path / "killed"
    real, seen = prep.prepare_clip, []

    def watching(clip, cfg, finder):
        manifest = out / "manifest.json"
        seen.append((manifest.stat().st_mtime_ns, len(ClipCache(out).journal_path.read_text().splitlines())))
        if len(seen) == 3:
            shutil.copytree(out, snap)  # the folder as a SIGKILL here would leave it
        return real(clip, cfg, finder)

    monkeypatch.setattr(prep, "prepare_clip", watching)
    summary = prepare_corpus(corpus_yaml, small_cfg(), out, progress=False)
    assert summary["prepared"] == 4
    assert len({m for m, _ in seen}) == 1  # manifest.json is not rewritten while clips are prepared ...
    assert [n for _, n in seen] == [1, 2, 3, 4]  # ... one journal line (after its header) per clip instead
    assert not (out / "manifest.journal.jsonl").exists() and len(ClipCache(out)) == 4  # folded in at the end
    monkeypatch.setattr(prep, "prepare_clip", real)
    killed = ClipCache(snap)
    assert len(killed) == 2 and set(killed.ids()) < set(ClipCache(out).ids())  # the journal is replayed
    with open(killed.journal_path, "a") as f:
        f.write('{"clip_id": "torn')  # a line cut by the kill
    again = prepare_corpus(corpus_yaml, small_cfg(), snap, progress=False)
    assert again["skipped"] == 2 and again["prepared"] == 2 and len(ClipCache(snap)) == 4


def test_part_prepares_one_part_of_a_fold(corpus_yaml, tmp_path):
    # clips.csv folds: v0 and f0 tested in fold 1, f1 in fold 2, noface in fold 1
    test = prepare_corpus(corpus_yaml, small_cfg(), tmp_path / "c", fold="set_1", part="test", progress=False)
    assert test["clips"] == 3 and sorted(ClipCache(tmp_path / "c").ids()) == ["f0", "noface", "v0.mp4"]
    train = prepare_corpus(corpus_yaml, small_cfg(), tmp_path / "c", fold="set_1", part="train", progress=False)
    assert (train["clips"], train["prepared"], train["part"]) == (1, 1, "train") and len(ClipCache(tmp_path / "c")) == 4


def test_cli_data_set_overrides_the_data_config_and_set_root_is_redirected(corpus_yaml, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(corpus_yaml.parent, moved)
    yaml = tmp_path / "data.yaml"
    yaml.write_text("format: video_csv\nname: tiny\nroot: /nowhere\nfile: clips.csv\nclasses: [happy, sad, neutral]\n")
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("n_segments: 4\ncandidates_per_segment: 1\nstreams: {face_size: 32, scene_size: 24}\n")
    base = ["video", "prepare", "--data", str(yaml), "--config", str(cfg), "--out", str(tmp_path / "c"), "--quiet"]
    assert main(base + ["--set", f"root={moved}"]) == 2
    assert f"pass --data-set root={moved}" in capsys.readouterr().err
    assert main(base + ["--data-set", f"root={moved}", "--fold", "set_2", "--part", "test"]) == 0
    assert ClipCache(tmp_path / "c").ids() == ["f1"]


def _descendants(pid: int) -> set[int]:
    """Live descendants of a process, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(d.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_prepare_leaves_no_worker_behind(corpus_yaml, tmp_path, sig):
    """SIGTERM (timeout, Slurm): the parent stops its workers; SIGKILL: each worker leaves once orphaned."""
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("n_segments: 4\ncandidates_per_segment: 3\nstreams: {face_size: 32, scene_size: 24}\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "vlm_salience.cli", "video", "prepare", "--data", str(corpus_yaml),
                             "--config", str(cfg), "--out", str(tmp_path / "c"), "--workers", "2", "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kids: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            kids = _descendants(proc.pid)
            if len(kids) >= 2:  # the workers (and the resource tracker) have started
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(kids) >= 2, "the workers never started"
        time.sleep(0.5)
        kids |= _descendants(proc.pid)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)], "workers outlived the parent"
        assert proc.returncode != 0
    finally:  # leave nothing behind, whatever failed
        if proc.poll() is None:
            proc.kill()
        for k in kids | _descendants(proc.pid):
            if _alive(k):
                os.kill(k, signal.SIGKILL)


def test_folder_keys_hash_what_they_always_hashed(tmp_path):
    """The faster walk keeps every existing cache's keys: the same bytes as rglob's sorted regular files."""
    import hashlib

    from vlm_salience.video.cache import fingerprint

    def reference(p: Path) -> str:  # the key as caches were made before (rglob + Path.stat)
        h = hashlib.sha256(str(p.resolve()).encode())
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            st = f.stat()
            h.update(f"\0{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()

    d = tmp_path / "clip"
    (d / "a" / "b").mkdir(parents=True)
    for rel, text in (("a/b/x.jpg", "1"), ("a-c", "22"), ("a/z", "3"), ("10.jpg", "4"), ("9.jpg", "5")):
        (d / rel).write_text(text)
    os.symlink(d / "nowhere", d / "dangling")
    assert fingerprint(d) == reference(d)


def test_video_train_and_eval_take_data_set_appended_to_the_yaml_overrides(tmp_path):
    from vlm_salience.cli import build_parser
    from vlm_salience.cli.video import video_overrides
    from vlm_salience.config import apply_overrides, read_yaml

    y = tmp_path / "run.yaml"
    y.write_text("data:\n  config: d.yaml\n  overrides: [face_dir=faces]\n")
    for cmd in ("train", "eval"):
        args = build_parser().parse_args(["video", cmd, str(y), "--data-set", "root=/data/DFEW",
                                          "--data-set", "list_format=dfer_clip"])
        data = apply_overrides(read_yaml(y), video_overrides(args))["data"]
        assert data["overrides"] == ["face_dir=faces", "root=/data/DFEW", "list_format=dfer_clip"]


def test_jpeg_frames_are_the_raw_frames_to_jpeg_tolerance_in_a_fraction_of_the_bytes(corpus_yaml, tmp_path):
    from vlm_salience.video.prepare import hashed_settings

    raw_cfg = small_cfg(face_size=96, scene_size=96)
    jpeg_cfg = raw_cfg.model_copy(update={"frame_codec": "jpeg", "jpeg_quality": 95})
    assert "frame_codec" not in hashed_settings(raw_cfg)  # raw caches keep the keys they had
    raw = prepare_corpus(corpus_yaml, raw_cfg, tmp_path / "raw", progress=False)
    jpg = prepare_corpus(corpus_yaml, jpeg_cfg, tmp_path / "jpg", progress=False)
    assert raw["config_hash"] != jpg["config_hash"] and jpg["prepared"] == 4
    a, b = ClipCache(tmp_path / "raw"), ClipCache(tmp_path / "jpg")
    for cid in a.ids():
        x, y = a.load(cid), b.load(cid)
        for name in ("face", "scene"):
            fx, fy = getattr(x, name), getattr(y, name)
            assert fx.shape == fy.shape and fy.dtype == np.uint8
            assert np.abs(fx.astype(int) - fy.astype(int)).mean() < 4.0, (cid, name)  # of 255, 4:2:0 chroma
        assert np.array_equal(x.slots, y.slots) and np.array_equal(x.boxes, y.boxes)
    size = {k: sum(p.stat().st_size for p in (tmp_path / k).rglob("*.npz")) for k in ("raw", "jpg")}
    assert size["jpg"] < 0.4 * size["raw"], size

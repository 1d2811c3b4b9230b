"""`prepare` and the preprocessed-clip cache: sampled candidates, cache keys, resume after a crash, bad clips.

Clips are generated here: the astronaut photograph pasted into a generated scene and shifted frame by frame,
written as MPEG-4 videos (PyAV) and as PNG frame folders, listed in a generic clips CSV with its data YAML.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.test_video_streams import animated, scene_background
from vlm_salience.data.video import load_video_corpus, read_frames, segment_indices
from vlm_salience.errors import DataError
from vlm_salience.video import prepare as prep
from vlm_salience.video.cache import ClipCache, clip_key, config_hash, fingerprint, read_clip, sample
from vlm_salience.video.prepare import PrepareConfig, candidate_frames, prepare_corpus
from vlm_salience.video.streams import scene_frame
from vlm_salience.video.tracking import iou


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream("mpeg4", rate=fps)
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        st.options = {"qscale": "2"}
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def write_folder(path: Path, frames: np.ndarray) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / f"{i:04d}.png", compress_level=1)
    return path


def make_corpus(root: Path, n_video: int = 3, n_folder: int = 2, frames: int = 20, with_face: bool = True) -> Path:
    """A generic-layout corpus: astronaut clips (videos and frame folders), one clip without a face, one clip
    with a pre-cropped face clip; returns the data YAML."""
    rows = ["clip,label,fold,face"]
    for i in range(n_video):
        clip, _ = animated(n=frames, step=2 + i)
        write_mp4(root / f"v{i}.mp4", clip)
        rows.append(f"v{i}.mp4,{['happy', 'sad', 'neutral'][i % 3]},{1 + i % 2},")
    for i in range(n_folder):
        clip = animated(n=frames, step=2 + i)[0][::-1]  # moving left
        write_folder(root / f"f{i}", clip)
        rows.append(f"f{i},sad,{1 + i % 2},")
    write_folder(root / "noface", np.stack([scene_background(seed=3)] * 8))
    rows.append("noface,neutral,1,")
    if with_face:
        write_folder(root / "withface", animated(n=frames, step=3)[0])
        write_folder(root / "withface_crop", np.full((frames // 2, 48, 40, 3), 77, dtype=np.uint8))
        rows.append("withface,happy,2,withface_crop")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"format: video_csv\nname: tiny\nroot: {root}\nfile: clips.csv\n"
                    "classes: [happy, sad, neutral]\n")
    return yaml


SMALL = {"n_segments": 4, "candidates_per_segment": 3,
         "streams": {"face_size": 32, "scene_size": 24}}


def small_cfg(**streams) -> PrepareConfig:
    cfg = json.loads(json.dumps(SMALL))
    cfg["streams"].update(streams)
    return PrepareConfig.model_validate(cfg)


@pytest.fixture(scope="module")
def corpus_yaml(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def prepared(corpus_yaml, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    return out, prepare_corpus(corpus_yaml, small_cfg(), out, progress=False)


def copied_cache(prepared, tmp_path: Path) -> Path:
    """A copy of the module's prepared cache (the same corpus files, so the same keys): cheaper than preparing."""
    import shutil

    out = tmp_path / "c"
    shutil.copytree(prepared[0], out)
    return out


def same_clip(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k))
               for k in ("face", "scene", "slots", "frame_index", "boxes", "detected")) and a.missed == b.missed


# -- candidates and sampling ---------------------------------------------------------------------------------------
def test_candidate_frames_hand_computed():
    slots, idx = candidate_frames(12, 3, 3)  # segments [0,4) [4,8) [8,12): middles 1, 5, 9
    frames = idx[slots]
    assert frames.tolist() == [[1, 0, 2], [5, 4, 6], [9, 8, 10]]
    assert idx.tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert np.array_equal(idx[slots[:, 0]], segment_indices(12, 3, train=False))
    for n, s in [(64, 16), (17, 16), (200, 16), (5, 16), (1, 4)]:
        slots, idx = candidate_frames(n, s, 3)
        assert np.array_equal(idx[slots[:, 0]], segment_indices(n, s, train=False))
        assert np.all(np.diff(idx) > 0) and idx.max() < n
    slots, idx = candidate_frames(5, 8, 3)  # shorter than the segments: one frame each, -1 for the rest
    assert (slots[:, 1:] == -1).all() and idx.tolist() == [0, 1, 2, 3, 4]


def test_sample_eval_takes_middles_train_draws_candidates(prepared):
    out, _ = prepared
    cache = ClipCache(out)
    clip = cache.load("v0.mp4")
    assert np.array_equal(sample(clip, train=False), clip.slots[:, 0])
    seen = set()
    for seed in range(30):
        rows = sample(clip, train=True, rng=np.random.default_rng(seed))
        assert all(r in clip.slots[s] for s, r in enumerate(rows))
        seen.update(rows.tolist())
    assert seen == set(clip.slots[clip.slots >= 0].tolist())  # every candidate gets drawn
    a = sample(clip, train=True, rng=np.random.default_rng(5))
    assert np.array_equal(a, sample(clip, train=True, rng=np.random.default_rng(5)))
    assert np.array_equal(sample(clip, 2, train=False), clip.slots[[1, 3], 0])  # floor((j + .5) * 4 / 2)
    assert len(sample(clip, 8, train=False)) == 8
    with pytest.raises(ValueError, match="rng"):
        sample(clip, train=True)


# -- prepare end to end ----------------------------------------------------------------------------------------------
def test_prepare_writes_every_clip_and_its_summary(prepared, corpus_yaml):
    out, summary = prepared
    corpus = load_video_corpus(corpus_yaml)
    assert summary["clips"] == len(corpus) == 7 and summary["prepared"] == 7 and summary["skipped"] == 0
    assert summary["invalid"] == [] and summary["cached"] == 7
    assert json.loads((out / "summary.json").read_text()) == summary
    cache = ClipCache(out)
    assert sorted(cache.ids()) == sorted(corpus.clip_ids) and cache.classes == ["happy", "sad", "neutral"]
    assert cache.config["streams"]["face_size"] == 32
    for c in corpus.clips:
        clip = cache.load(c.clip_id)
        f = len(clip.frame_index)
        assert clip.face.shape == (f, 32, 32, 3) and clip.scene.shape == (f, 24, 24, 3)
        assert clip.face.dtype == clip.scene.dtype == np.uint8 and clip.slots.shape == (4, 3)
        assert cache.entry(c.clip_id)["label"] == c.label
    # the no-face clip: every detection frame missed and counted; the astronaut clips: found
    assert cache.load("noface").missed == cache.load("noface").detect_frames == 4
    assert summary["missed_detection_frames"] >= 4 and summary["clips_with_missed"] >= 1
    assert cache.load("v0.mp4").missed <= 1


def test_cached_frames_are_the_sampled_source_frames(prepared, corpus_yaml):
    out, _ = prepared
    corpus = load_video_corpus(corpus_yaml)
    cache = ClipCache(out)
    for cid in ("v1.mp4", "f0"):
        clip = cache.load(cid)
        src = corpus.clip(cid).source
        mid = clip.middle_rows()
        assert np.array_equal(clip.frame_index[mid], segment_indices(clip.n_source_frames, 4, train=False))
        frames = read_frames(src, clip.frame_index)
        cfg = small_cfg().streams
        for r in range(len(frames)):
            assert np.array_equal(clip.scene[r], scene_frame(frames[r], clip.boxes[r], cfg))
    # the moving face is tracked: the box centre moves with the planted shift (2 px per frame for v0)
    clip = cache.load("v0.mp4")
    _, truth = animated(n=20, step=2)
    assert all(iou(b, truth[i]) >= 0.5 for b, i in zip(clip.boxes, clip.frame_index))


def test_face_source_is_used_for_the_face_stream(prepared):
    out, _ = prepared
    clip = ClipCache(out).load("withface")
    assert np.all(clip.face == 77)
    assert clip.scene.std() > 10  # the scene stream still comes from the scene clip


def test_rerun_skips_everything(prepared, corpus_yaml):
    out, _ = prepared
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    again = prepare_corpus(corpus_yaml, small_cfg(), out, progress=False)
    assert again["prepared"] == 0 and again["skipped"] == 7 and again["cached"] == 7
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == before


# -- cache keys ------------------------------------------------------------------------------------------------------
def test_cache_keys_change_with_source_and_config_only(tmp_path):
    a = write_mp4(tmp_path / "a.mp4", animated(n=6)[0])
    folder = write_folder(tmp_path / "fr", animated(n=3)[0])
    h1 = config_hash(prep.hashed_settings(small_cfg()))
    k_file, k_folder = clip_key(a, None, h1), clip_key(folder, None, h1)
    assert clip_key(a, None, h1) == k_file  # stable
    assert config_hash(prep.hashed_settings(small_cfg())) == h1
    # storage options do not change the frames, so not the key
    assert config_hash(prep.hashed_settings(PrepareConfig.model_validate({**SMALL, "compress": True}))) == h1
    # a setting that changes the frames does
    h2 = config_hash(prep.hashed_settings(small_cfg(face_size=48)))
    assert h2 != h1 and clip_key(a, None, h2) != k_file
    assert config_hash(prep.hashed_settings(small_cfg(mask_fill="blur"))) != h1
    # touching a small file keeps its key (content fingerprint); changing its bytes does not
    os.utime(a, (time.time() + 100, time.time() + 100))
    assert clip_key(a, None, h1) == k_file
    write_mp4(a, animated(n=6, step=5)[0])
    assert clip_key(a, None, h1) != k_file
    # a frame folder: any frame rewritten changes the key; a face source is part of it
    Image.fromarray(scene_background()).save(folder / "0001.png")
    assert clip_key(folder, None, h1) != k_folder
    assert clip_key(folder, a, h1) != clip_key(folder, None, h1)
    assert fingerprint(None) == ""


def test_large_files_are_keyed_by_size_and_mtime(tmp_path, monkeypatch):
    from vlm_salience.video import cache as cache_mod

    monkeypatch.setattr(cache_mod, "SMALL_FILE", 10)
    a = write_mp4(tmp_path / "a.mp4", animated(n=4)[0])
    k = fingerprint(a)
    assert fingerprint(a) == k
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))
    assert fingerprint(a) != k


# -- resume, damage, changed inputs ------------------------------------------------------------------------------------
def test_interrupted_prepare_resumes_and_equals_an_uninterrupted_run(prepared, corpus_yaml, tmp_path, monkeypatch):
    ref_out, _ = prepared
    out = tmp_path / "c"
    real = prep.prepare_clip
    calls = []

    def crashing(clip, cfg, finder):
        calls.append(clip.clip_id)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated crash")
        return real(clip, cfg, finder)

    monkeypatch.setattr(prep, "prepare_clip", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(corpus_yaml, small_cfg(), out, progress=False)
    done = calls[:3]
    assert len(list(out.rglob("*.npz"))) == 3 and not list(out.rglob("*.tmp"))
    assert sorted(ClipCache(out).ids()) == sorted(done)  # the manifest was saved on the way out

    calls.clear()
    monkeypatch.setattr(prep, "prepare_clip", lambda clip, cfg, finder: (calls.append(clip.clip_id),
                                                                          real(clip, cfg, finder))[1])
    summary = prepare_corpus(corpus_yaml, small_cfg(), out, progress=False)
    assert summary["skipped"] == 3 and summary["prepared"] == 4 and not set(calls) & set(done)
    ref, got = ClipCache(ref_out), ClipCache(out)
    assert sorted(got.ids()) == sorted(ref.ids())
    for cid in ref.ids():
        assert same_clip(got.load(cid), ref.load(cid)), cid


def test_crash_before_the_manifest_is_saved_still_resumes(prepared, corpus_yaml, tmp_path):
    ref_out, _ = prepared
    out = copied_cache(prepared, tmp_path)
    (out / "manifest.json").unlink()  # as if killed (SIGKILL) after the clip files but before the manifest
    summary = prepare_corpus(corpus_yaml, small_cfg(), out, progress=False)
    assert summary["prepared"] == 0 and summary["skipped"] == 7
    assert same_clip(ClipCache(out).load("f1"), ClipCache(ref_out).load("f1"))


def test_a_half_written_clip_is_never_read_as_valid(prepared, corpus_yaml, tmp_path):
    out = copied_cache(prepared, tmp_path)
    cache = ClipCache(out)
    path = out / cache.entry("v2.mp4")["file"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a torn write (what the temp + rename never leaves)
    with pytest.raises(DataError, match=str(path.name)):
        ClipCache(out).load("v2.mp4")
    (out / "clips" / ".junk.npz.tmp").write_bytes(b"partial")  # a temp file of a killed writer
    summary = prepare_corpus(corpus_yaml, small_cfg(), out, progress=False)
    assert summary["prepared"] == 1 and summary["skipped"] == 6
    assert read_clip(path).face.shape[1:] == (32, 32, 3)


def test_a_changed_source_is_prepared_again_alone(tmp_path):
    root = tmp_path / "clips"
    yaml = make_corpus(root, n_video=1, n_folder=2, frames=12, with_face=False)  # v0.mp4, f0, f1, noface
    out = tmp_path / "c"
    prepare_corpus(yaml, small_cfg(), out, progress=False)
    old = ClipCache(out).load("f1")
    write_folder(root / "f1", animated(n=12, step=6)[0])
    summary = prepare_corpus(yaml, small_cfg(), out, progress=False)
    assert summary["prepared"] == 1 and summary["skipped"] == 3
    assert not same_clip(ClipCache(out).load("f1"), old)
    changed = prepare_corpus(yaml, small_cfg(face_size=40), out, progress=False)  # a new config: all again
    assert changed["prepared"] == 4 and ClipCache(out).load("f1").face.shape[1] == 40


@pytest.mark.slow  # spawns two worker processes (each imports the package and loads the detector)
def test_workers_give_the_same_cache(prepared, corpus_yaml, tmp_path):
    ref_out, _ = prepared
    out = tmp_path / "c"
    summary = prepare_corpus(corpus_yaml, small_cfg(), out, progress=False, workers=2)
    assert summary["prepared"] == 7
    for cid in ClipCache(ref_out).ids():
        assert same_clip(ClipCache(out).load(cid), ClipCache(ref_out).load(cid)), cid


def test_one_fold(prepared, corpus_yaml, tmp_path):
    out = copied_cache(prepared, tmp_path)
    corpus = load_video_corpus(corpus_yaml).subset(["v0.mp4", "f0", "noface"])  # a fold naming 3 of the 7 clips
    corpus.folds["set_1"] = {"train": ["v0.mp4", "f0"], "test": ["noface"]}
    one = prepare_corpus(corpus, small_cfg(), out, fold="set_1", progress=False)
    assert one["clips"] == 3 and one["skipped"] == 3 and one["prepared"] == 0
    assert len(ClipCache(out)) == 7  # the other clips' entries are kept (same config)
    with pytest.raises(DataError, match="no fold 'set_9'"):
        prepare_corpus(corpus_yaml, small_cfg(), out, fold="set_9", progress=False)


# -- bad clips -----------------------------------------------------------------------------------------------------
def test_corrupt_and_empty_clips_are_named_or_dropped(tmp_path):
    root = tmp_path / "bad"
    yaml = make_corpus(root, n_video=2, n_folder=1, frames=12, with_face=False)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no frames here")
    with open(root / "clips.csv", "a") as fh:
        fh.write("broken.mp4,happy,1,\nempty,sad,2,\n")
    out = tmp_path / "c"
    with pytest.raises(DataError) as err:
        prepare_corpus(yaml, small_cfg(), out, progress=False)
    assert "broken.mp4" in str(err.value)
    kept = ClipCache(out).ids()  # clips before the bad one stay cached
    assert set(kept) <= {"v0.mp4", "v1.mp4", "f0", "noface"} and len(kept) == 4
    summary = prepare_corpus(yaml, small_cfg(), out, drop_invalid=True, progress=False)
    bad = {d["clip_id"]: d for d in summary["invalid"]}
    assert set(bad) == {"broken.mp4", "empty"}
    assert bad["broken.mp4"]["file"].endswith("broken.mp4") and bad["empty"]["file"].endswith("empty")
    assert "no images" in bad["empty"]["error"]
    assert summary["cached"] == 4 and summary["skipped"] == 4 and summary["prepared"] == 0
    assert "broken.mp4" not in ClipCache(out) and summary["dropped_rows"]["total"] == 0
    # a row naming a clip that does not exist: the loader drops it under drop_invalid, and the summary says so
    with open(root / "clips.csv", "a") as fh:
        fh.write("nowhere.mp4,happy,1,\n")
    summary = prepare_corpus(yaml, small_cfg(), out, drop_invalid=True, progress=False)
    assert summary["dropped_rows"]["total"] == 1 and summary["clips"] == 6


def test_a_missing_cache_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match="video prepare"):
        ClipCache(tmp_path).load("x")
    with pytest.raises(DataError, match="not in the cache"):
        out = tmp_path / "c"
        out.mkdir()
        ClipCache(out).write_manifest({}, "h", {})
        ClipCache(out).load("x")


# -- shipped configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs" / "video").glob("prepare*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_prepare_configs_load(path):
    from vlm_salience.video.prepare import load_prepare_config

    cfg = load_prepare_config(path)
    assert cfg.n_segments >= 1 and cfg.streams.face_size >= 16
    with pytest.raises(Exception, match="face_sise"):
        load_prepare_config(path, ["streams.face_sise=3"])  # a typo is an error, never ignored


def test_default_yaml_is_the_default_config():
    from vlm_salience.video.prepare import load_prepare_config

    path = Path(__file__).parent.parent / "configs" / "video" / "prepare.yaml"
    assert load_prepare_config(path) == PrepareConfig() == load_prepare_config(None)


def test_detector_settings_a_yaml_sets_are_kept_unless_overridden(tmp_path):
    from vlm_salience.video.streams import DetectionConfig, face_finder

    plain = face_finder(DetectionConfig(detector="haar")).detector_config
    assert (plain.scale_factor, plain.min_neighbors, plain.max_side) == (1.05, 3, 256)
    yaml = tmp_path / "det.yaml"
    yaml.write_text("kind: haar\nscale_factor: 1.2\nmin_neighbors: 6\n")
    mine = face_finder(DetectionConfig(detector=yaml, max_side=None)).detector_config
    assert (mine.scale_factor, mine.min_neighbors, mine.max_side) == (1.2, 6, None)
    over = face_finder(DetectionConfig(detector=yaml, min_neighbors=2)).detector_config
    assert (over.scale_factor, over.min_neighbors) == (1.2, 2)
    # the detector's settings, not its file's path, go into the cache key
    h = prep.hashed_settings
    assert config_hash(h(small_cfg(), face_finder(DetectionConfig(detector=yaml)))) != \
        config_hash(h(small_cfg(), face_finder(DetectionConfig())))

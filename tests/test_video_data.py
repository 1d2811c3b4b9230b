"""Video corpora: each official layout in miniature (frame folders and video files), TSN sampling, frame reading,
and every bad-input case naming its file, line and column; drop_invalid skips and reports."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vlm_salience.data.video import (
    clip_fingerprint, count_frames, is_video_data_config, load_video_corpus, load_video_data_config, read_frames,
    sample_clip, segment_indices,
)
from vlm_salience.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent
SIZE = 16


def frame_value(i: int) -> int:
    return (i * 9 + 5) % 250


def make_frames(folder: Path, n: int, *, padded: bool = True, ext: str = ".png") -> Path:
    """n frames whose red channel encodes the frame index (PNG: exact)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.zeros((SIZE, SIZE, 3), np.uint8)
        a[..., 0] = frame_value(i)
        name = f"{i + 1:05d}{ext}" if padded else f"{i + 1}{ext}"  # DFEW's 16-frame folders: 1.jpg .. 16.jpg
        Image.fromarray(a).save(folder / name)
    return folder


def make_video(path: Path, n: int, *, gop: int = 12) -> Path:
    """An mpeg4 video of n flat frames whose red level encodes the frame index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.gop_size = gop
        s.bit_rate = 4_000_000
        for i in range(n):
            a = np.zeros((32, 32, 3), np.uint8)
            a[..., 0] = frame_value(i)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def reds(frames: np.ndarray) -> list[int]:
    return [int(round(float(f[..., 0].mean()))) for f in frames]


# ---------------------------------------------------------------- sampling


def test_eval_sampling_takes_segment_middles():
    # 32 frames in 4 segments [0,8) [8,16) [16,24) [24,32): middles 3, 11, 19, 27
    assert segment_indices(32, 4, train=False).tolist() == [3, 11, 19, 27]
    assert segment_indices(10, 2, train=False).tolist() == [2, 7]


def test_train_sampling_is_random_within_segments_and_seeded():
    draws = np.stack([segment_indices(32, 4, train=True, rng=np.random.default_rng(s)) for s in range(200)])
    lo, hi = np.array([0, 8, 16, 24]), np.array([8, 16, 24, 32])
    assert ((draws >= lo) & (draws < hi)).all()
    assert all(len(np.unique(draws[:, k])) == 8 for k in range(4))  # every frame of each segment gets drawn
    a = segment_indices(32, 4, train=True, rng=np.random.default_rng(7))
    b = segment_indices(32, 4, train=True, rng=np.random.default_rng(7))
    assert a.tolist() == b.tolist()


def test_short_clips_are_padded_by_repeating_frames_in_order():
    assert segment_indices(3, 6, train=False).tolist() == [0, 0, 1, 1, 2, 2]
    assert segment_indices(3, 6, train=True, rng=np.random.default_rng(0)).tolist() == [0, 0, 1, 1, 2, 2]
    assert segment_indices(1, 4, train=False).tolist() == [0, 0, 0, 0]


def test_sampling_refuses_empty_clips_and_unseeded_training():
    with pytest.raises(ValueError, match="0 frames"):
        segment_indices(0, 16, train=False)
    with pytest.raises(ValueError, match="rng"):
        segment_indices(20, 16, train=True)


# ---------------------------------------------------------------- reading


def test_frame_folder_reads_in_numeric_order_with_repeats(tmp_path):
    folder = make_frames(tmp_path / "c", 12, padded=False)  # 1.png .. 12.png: '10' must sort after '9'
    assert count_frames(folder) == 12
    frames = read_frames(folder, [9, 1, 1, 11])
    assert frames.shape == (4, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert reds(frames) == [frame_value(9), frame_value(1), frame_value(1), frame_value(11)]


def test_video_reads_the_same_frames_as_decoding_everything(tmp_path):
    path = make_video(tmp_path / "v.mp4", 240, gop=10)  # long enough that sparse indices seek
    assert count_frames(path) == 240
    idx = segment_indices(240, 8, train=False)
    got = read_frames(path, idx)
    with av.open(str(path)) as c:
        every = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert np.array_equal(got, np.stack([every[i] for i in idx]))
    assert all(abs(r - frame_value(i)) <= 3 for r, i in zip(reds(got), idx))
    # order as asked, repeats kept; an index past the end repeats the last frame
    back = read_frames(path, [200, 3, 3, 500])
    assert np.array_equal(back[0], every[200]) and np.array_equal(back[1], every[3])
    assert np.array_equal(back[3], every[-1])


def test_sample_clip_is_deterministic_under_the_seed(tmp_path):
    path = make_video(tmp_path / "v.mp4", 40)
    a = sample_clip(path, 4, train=True, rng=np.random.default_rng(3))
    b = sample_clip(path, 4, train=True, rng=np.random.default_rng(3))
    assert a.shape == (4, 32, 32, 3) and np.array_equal(a, b)


def test_corrupt_empty_and_missing_clips_name_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    with pytest.raises(DataError, match="broken.mp4.*not a readable video"):
        count_frames(bad)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.mp4.*empty"):
        read_frames(empty, [0])
    with pytest.raises(DataError, match="nothere.*not found"):
        count_frames(tmp_path / "nothere")
    (tmp_path / "nofr").mkdir()
    with pytest.raises(DataError, match="nofr.*no images"):
        count_frames(tmp_path / "nofr")
    folder = make_frames(tmp_path / "c", 3)
    (folder / "00002.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="00002.png.*unreadable image"):
        read_frames(folder, [0, 1, 2])
    assert read_frames(folder, [0, 2]).shape[0] == 2  # only the frames asked for are opened


def test_a_video_with_zero_frames_is_named(tmp_path):
    path = tmp_path / "zero.mkv"
    c = av.open(str(path), "w")
    s = c.add_stream("mpeg4", rate=25)
    s.width = s.height = 32
    s.pix_fmt = "yuv420p"
    c.start_encoding()  # a header and no frame
    c.close()
    with pytest.raises(DataError, match="zero.mkv.*no frames"):
        count_frames(path)


def test_clip_fingerprint_changes_with_the_frames(tmp_path):
    folder = make_frames(tmp_path / "c", 3)
    before = clip_fingerprint(folder)
    make_frames(tmp_path / "c", 4)
    assert clip_fingerprint(folder) != before


# ---------------------------------------------------------------- DFEW


def dfew_tree(root: Path, labels=(1, 2, 3, 4, 5, 6, 7, 1, 2, 5), videos=(3, 7), faces=True,
              train_dir="train(single-labeled)", test_dir="test(single-labeled)") -> Path:
    """10 clips (ids 1..10); clip k is in the test set of fold (k-1) % 5 + 1. Clips 3 and 7 are .mp4 files."""
    for k in range(1, 11):
        cid = f"{k:05d}"
        if k in videos:
            make_video(root / "Clip" / "clip_224x224" / f"{cid}.mp4", 6 + k)
        else:
            make_frames(root / "Clip" / "clip_224x224" / cid, 4 + k, padded=False, ext=".jpg")
        if faces:
            make_frames(root / "face" / cid, 3)
    split = root / "EmoLabel_DataSplit"
    for f in range(1, 6):
        for d, test in ((train_dir, False), (test_dir, True)):
            (split / d).mkdir(parents=True, exist_ok=True)
            rows = [f"{k},{labels[k - 1]}" for k in range(1, 11) if ((k - 1) % 5 + 1 == f) == test]
            (split / d / f"set_{f}.csv").write_text("video_name,label\n" + "\n".join(rows) + "\n")
    return root


def dfew_yaml(tmp: Path, root: Path, extra: str = "") -> Path:
    y = tmp / "dfew.yaml"
    y.write_text(f"format: dfew\nroot: {root}\n{extra}")
    return y


def test_dfew_layout_loads_folds_labels_faces_and_polarity(tmp_path):
    root = dfew_tree(tmp_path / "DFEW")
    shipped = REPO / "configs" / "data" / "dfew.yaml"
    corpus = load_video_corpus(shipped, overrides=[f"root={root}", "face_dir=face"])
    assert corpus.classes == ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    assert len(corpus) == 10 and sorted(corpus.folds) == [f"set_{f}" for f in range(1, 6)]
    assert corpus.folds["set_2"]["test"] == ["00002", "00007"]
    assert sorted(corpus.folds["set_2"]["train"]) == ["00001", "00003", "00004", "00005", "00006", "00008",
                                                      "00009", "00010"]
    c1, c4, c3 = corpus.clip("00001"), corpus.clip("00004"), corpus.clip("00003")
    assert (c1.label, c4.label) == (0, 3)  # DFEW's label 1 = happy, 4 = angry
    assert c3.source.name == "00003.mp4" and c1.source.is_dir()
    assert c1.face_source == root / "face" / "00001"
    assert corpus.polarity_source == "mapping"
    assert (c1.polarity, c4.polarity, corpus.clip("00005").polarity) == (2, 0, 1)  # happy+, angry-, surprise 0
    assert count_frames(c1.source) == 5 and count_frames(c3.source) == 9
    assert corpus.summary()["per_class"]["happy"] == 2
    assert is_video_data_config(shipped)
    assert not is_video_data_config(REPO / "configs" / "data" / "golden_balls.yaml")


def test_dfew_fingerprint_tracks_the_split_files(tmp_path):
    root = dfew_tree(tmp_path / "DFEW", faces=False)
    y = dfew_yaml(tmp_path, root)
    a = load_video_corpus(y).fingerprint
    assert load_video_corpus(y).fingerprint == a
    p = root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_1.csv"
    p.write_text(p.read_text().replace("1,1", "1,2"))
    with pytest.raises(DataError, match="label differs"):  # now set_1's test file disagrees with the others
        load_video_corpus(y)


def test_dfew_bad_inputs_name_file_line_and_column(tmp_path):
    root = dfew_tree(tmp_path / "DFEW", faces=False)
    y = dfew_yaml(tmp_path, root)
    test1 = root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_1.csv"
    good = test1.read_text()
    test1.write_text("video_name,label\n1,1\n6,9\n")  # label 9 is no DFEW class
    with pytest.raises(DataError, match=r"set_1\.csv, line 3, column 'label': unknown label \(expected 1-7\)"):
        load_video_corpus(y)
    test1.write_text("video_name,label\n1,1\n1,1\n6,6\n")
    with pytest.raises(DataError, match=r"set_1\.csv, line 3, column 'video_name': duplicate clip id"):
        load_video_corpus(y)
    test1.write_text(good + "11,3\n")  # clip 00011 has no folder
    with pytest.raises(DataError, match=r"set_1\.csv, line 4, column 'video_name': names a clip that does not exist"):
        load_video_corpus(y)
    test1.write_text("name,label\n1,1\n")
    with pytest.raises(DataError, match=r"missing column 'video_name'"):
        load_video_corpus(y)
    test1.write_text(good)
    with pytest.raises(DataError, match="face-crop clip"):
        load_video_corpus(y, overrides=["face_dir=face"])


def test_dfew_drop_invalid_skips_and_reports(tmp_path):
    root = dfew_tree(tmp_path / "DFEW", faces=False)
    test1 = root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_1.csv"
    test1.write_text(test1.read_text() + "11,3\n12,8\n")
    import shutil

    shutil.rmtree(root / "Clip" / "clip_224x224" / "00002")  # a missing frame folder
    corpus = load_video_corpus(dfew_yaml(tmp_path, root), drop_invalid=True)
    assert len(corpus) == 9 and "00002" not in corpus.clip_ids
    assert all("00002" not in ids for parts in corpus.folds.values() for ids in parts.values())
    assert corpus.folds["set_1"]["test"] == ["00001", "00006"]
    d = corpus.dropped.to_dict()
    assert d["total"] == 3  # clip 00002 (named in 5 files, reported once), 00011 missing, 00012's label 8
    reasons = " ".join(r["reason"] for r in d["by_reason"])
    assert "unknown label" in reasons and "does not exist" in reasons


def test_dfew_plain_train_test_folder_names(tmp_path):
    root = dfew_tree(tmp_path / "DFEW", faces=False, train_dir="train", test_dir="test")
    y = dfew_yaml(tmp_path, root, "train_file: EmoLabel_DataSplit/train/set_{fold}.csv\n"
                                  "test_file: EmoLabel_DataSplit/test/set_{fold}.csv\n")
    assert len(load_video_corpus(y).folds["set_5"]["test"]) == 2


# ---------------------------------------------------------------- FERV39k


def ferv_tree(root: Path) -> Path:
    train = ["Action/Happy/0001 Happy", "Action/Sad/0002 Sad", "Interview/Fear/0003 Fear"]
    test = ["Interview/Happy/0004 Happy", "Action/Angry/0005 Angry"]
    for line in train + test:
        rel = line.split()[0]
        make_video(root / "0_7_LabelClips" / f"{rel}.mp4", 8)
        make_frames(root / "2_ClipsforFaceCrop" / rel, 5)
    (root / "4_setups" / "All_scenes").mkdir(parents=True)
    (root / "4_setups" / "All_scenes" / "train_All.csv").write_text("\n".join(train) + "\n")
    (root / "4_setups" / "All_scenes" / "test_All.csv").write_text("\n".join(test) + "\n")
    return root


def test_ferv39k_layout_loads_scene_and_face_clips(tmp_path):
    root = ferv_tree(tmp_path / "FERV39k")
    corpus = load_video_corpus(REPO / "configs" / "data" / "ferv39k.yaml", overrides=[f"root={root}"])
    assert list(corpus.folds) == ["default"]
    assert corpus.folds["default"]["train"] == ["Action/Happy/0001", "Action/Sad/0002", "Interview/Fear/0003"]
    assert corpus.folds["default"]["test"] == ["Interview/Happy/0004", "Action/Angry/0005"]
    c = corpus.clip("Interview/Fear/0003")
    assert corpus.classes[c.label] == "fear" and c.meta["scene"] == "Interview"
    assert c.source == root / "0_7_LabelClips" / "Interview" / "Fear" / "0003.mp4"
    assert c.face_source == root / "2_ClipsforFaceCrop" / "Interview" / "Fear" / "0003"
    assert read_frames(c.face_source, [0, 4]).shape == (2, SIZE, SIZE, 3)
    # a copy with only the face crops: they are the clips
    only_faces = load_video_corpus(REPO / "configs" / "data" / "ferv39k.yaml",
                                   overrides=[f"root={root}", "clip_dir=null"])
    assert only_faces.clip("Action/Sad/0002").source == root / "2_ClipsforFaceCrop" / "Action" / "Sad" / "0002"


def test_ferv39k_bad_lines_name_the_line(tmp_path):
    root = ferv_tree(tmp_path / "FERV39k")
    y = REPO / "configs" / "data" / "ferv39k.yaml"
    f = root / "4_setups" / "All_scenes" / "test_All.csv"
    f.write_text("Interview/Happy/0004 Happy\nAction/Angry/0005 Furious\n")
    with pytest.raises(DataError, match=r"test_All\.csv, line 2, column 'label': unknown label"):
        load_video_corpus(y, overrides=[f"root={root}"])
    f.write_text("Interview/Happy/0004 Happy extra\n")
    with pytest.raises(DataError, match=r"test_All\.csv, line 1.*expected '<clip> <label>'"):
        load_video_corpus(y, overrides=[f"root={root}"])
    (root / "4_setups" / "All_scenes" / "train_All.csv").unlink()
    with pytest.raises(DataError, match=r"train_All\.csv: split file not found"):
        load_video_corpus(y, overrides=[f"root={root}"])


# ---------------------------------------------------------------- MAFW


def test_mafw_layout_loads_eleven_classes_and_five_folds(tmp_path):
    root = tmp_path / "MAFW"
    labels = ["anger", "happiness", "disappointment", "neutral", "anxiety"]
    for k in range(1, 6):
        make_video(root / "data" / "clips" / f"{k:05d}.mp4", 5)
        make_frames(root / "data" / "faces" / f"{k:05d}", 2)
    for f in range(1, 6):
        d = root / "Train & Test Set" / "single" / "no_caption" / f"set_{f}"
        d.mkdir(parents=True)
        (d / "train.txt").write_text("".join(f"{k:05d}.mp4 {labels[k - 1]}\n" for k in range(1, 6) if k != f))
        (d / "test.txt").write_text(f"{f:05d}.mp4 {labels[f - 1]}\n")
    corpus = load_video_corpus(REPO / "configs" / "data" / "mafw.yaml",
                               overrides=[f"root={root}", "face_dir=data/faces"])
    assert len(corpus.classes) == 11 and corpus.classes[3] == "happiness"
    assert corpus.folds["set_3"]["test"] == ["00003"] and len(corpus.folds["set_3"]["train"]) == 4
    c = corpus.clip("00003")
    assert corpus.classes[c.label] == "disappointment" and c.source.name == "00003.mp4"
    assert c.face_source == root / "data" / "faces" / "00003" and c.polarity == 0


# ---------------------------------------------------------------- generic CSV


def test_generic_csv_with_folds_polarity_faces_and_text(tmp_path):
    make_video(tmp_path / "clips" / "a.mp4", 6)
    make_frames(tmp_path / "clips" / "b", 4)
    make_frames(tmp_path / "clips" / "c", 4)
    make_frames(tmp_path / "faces" / "b", 2)
    (tmp_path / "clips.csv").write_text("clip,label,fold,polarity,face,text,source\n"
                                        "clips/a.mp4,happy,1,positive,,a smile,film\n"
                                        "clips/b,sad,2,0,faces/b,,tv\n"
                                        "clips/c,happy,2,neutral,,,tv\n")
    y = tmp_path / "d.yaml"
    y.write_text("format: video_csv\nname: mine\nroot: .\nclasses: [happy, sad]\n")
    corpus = load_video_corpus(y)
    assert corpus.polarity_source == "column"
    assert corpus.folds == {"set_1": {"train": ["clips/b", "clips/c"], "test": ["clips/a.mp4"]},
                            "set_2": {"train": ["clips/a.mp4"], "test": ["clips/b", "clips/c"]}}
    a, b = corpus.clip("clips/a.mp4"), corpus.clip("clips/b")
    assert (a.label, a.polarity, a.text, a.face_source) == (0, 2, "a smile", None)
    assert (b.label, b.polarity, b.face_source) == (1, 0, tmp_path / "faces" / "b")
    assert (a.meta, b.meta) == ({"source": "film"}, {"source": "tv"})  # other columns: meta
    (tmp_path / "clips.csv").write_text("clip,label,split\nclips/a.mp4,happy,train\nclips/b,sad,test\n")
    corpus = load_video_corpus(y)
    assert corpus.folds == {"default": {"train": ["clips/a.mp4"], "test": ["clips/b"]}}
    assert corpus.polarity_source == "none" and corpus.clip("clips/b").polarity is None


def test_generic_csv_bad_rows(tmp_path):
    make_frames(tmp_path / "b", 4)
    y = tmp_path / "d.yaml"
    y.write_text("format: video_csv\nname: mine\nroot: .\nclasses: [happy, sad]\n")
    csv = tmp_path / "clips.csv"
    cases = {
        "clip,label\nb,happy\nb,sad\n": r"clips\.csv, line 3, column 'clip': duplicate clip id",
        "clip,label\nb,joyful\n": r"clips\.csv, line 2, column 'label': unknown label \(expected one of happy, sad\)",
        "clip,label\nb,happy\nmissing.mp4,sad\n": r"line 3, column 'clip': names a clip that does not exist",
        "clip,label,polarity\nb,happy,upbeat\n": r"line 2, column 'polarity': unknown polarity",
        "clip,label,split\nb,happy,holdout\n": r"line 2, column 'split': unknown split",
        "clip,label,face\nb,happy,nope\n": r"line 2, column 'face': names a face clip that does not exist",
        "video,label\nb,happy\n": r"missing column 'clip'",
    }
    for text, pattern in cases.items():
        csv.write_text(text)
        with pytest.raises(DataError, match=pattern):
            load_video_corpus(y)
    csv.write_text("clip,label,split\nb,happy,train\nmissing.mp4,sad,test\nb,sad,test\nc,angry,train\n")
    corpus = load_video_corpus(y, drop_invalid=True)
    assert corpus.clip_ids == ["b"] and corpus.folds["default"] == {"train": ["b"], "test": []}
    assert corpus.dropped.total == 3


def test_video_configs_reject_unknown_fields_and_partial_polarity_maps(tmp_path):
    y = tmp_path / "d.yaml"
    y.write_text("format: dfew\nroot: .\nclip_folder: x\n")
    with pytest.raises(ConfigError, match="clip_folder"):
        load_video_corpus(y)
    y.write_text("format: video_csv\nname: m\nroot: .\nclasses: [a, b]\npolarity_map: {a: positive}\n")
    with pytest.raises(ConfigError, match=r"missing \['b'\]"):
        load_video_corpus(y)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_video_data_configs_validate(path):
    if not is_video_data_config(path):
        pytest.skip("not a video data config")
    cfg = load_video_data_config(path)
    assert cfg.name and cfg.root.is_absolute()


def test_check_opens_every_clip_and_drops_unreadable_ones(tmp_path):
    from vlm_salience.data.video.check import check_video_data

    root = dfew_tree(tmp_path / "DFEW", faces=False)
    y = dfew_yaml(tmp_path, root)
    (root / "Clip" / "clip_224x224" / "00007.mp4").write_bytes(b"not a video at all" * 10)
    summary = check_video_data(y)  # cheap checks only: the file exists
    assert summary["clips"] == 10 and summary["folds"]["set_1"] == {"train": 8, "test": 2}
    with pytest.raises(DataError, match="00007.mp4.*not a readable video"):
        check_video_data(y, decode=True, progress=False)
    summary = check_video_data(y, decode=True, drop_invalid=True, progress=False)
    assert summary["clips"] == 9 and summary["dropped"]["total"] == 1
    assert summary["folds"]["set_2"] == {"train": 8, "test": 1}
    assert "00007.mp4" in summary["dropped_lines"][0]

"""DFER-CLIP's split lists (`path num_frames label`, 0-based, its own class order) for DFEW, FERV39k and MAFW, in
miniature: each loads the same clips, folds and labels as the corpus's own lists; a list of the wrong base is
refused even under drop_invalid; a clip in both parts of a fold is refused; drop reports name files by path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_salience.data.video import load_video_corpus
from vlm_salience.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "configs" / "data"
AUTHORS = "/data/EECS-IoannisLab/datasets"  # the prefix of DFER-CLIP's lists: their machine, ignored by us


def frames(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(folder / f"{i + 1}.jpg")
    return folder


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


# ------------------------------------------------------------------ DFEW: 6 clips, 2 folds

DFEW_LABELS = {1: 1, 2: 7, 3: 4, 4: 2, 5: 6, 6: 3}  # DFEW's own 1-based labels
DFEW_TEST = {1: [1, 3, 5], 2: [2, 4, 6]}  # fold -> clips tested


def dfew_tree(root: Path) -> Path:
    for k in DFEW_LABELS:
        frames(root / "Clip" / "clip_224x224" / f"{k:05d}", 3 + k)
    for f, test in DFEW_TEST.items():
        for part, ks in (("train", [k for k in DFEW_LABELS if k not in test]), ("test", test)):
            write(root / "EmoLabel_DataSplit" / f"{part}(single-labeled)" / f"set_{f}.csv",
                  ["video_name,label"] + [f"{k},{DFEW_LABELS[k]}" for k in ks])
            write(root / "annotation" / f"DFEW_set_{f}_{part}.txt",
                  [f"{AUTHORS}/DFEW/DFEW_Frame_Face/{k:05d} {3 + k} {DFEW_LABELS[k] - 1}" for k in ks])
    return root


def test_dfew_dfer_clip_lists_load_as_the_official_csvs(tmp_path, capsys):
    root = dfew_tree(tmp_path / "DFEW")
    sets = [f"root={root}", "folds=[1,2]"]
    official = load_video_corpus(DATA / "dfew.yaml", overrides=sets, progress=True)
    assert "dfew: finding clips" in capsys.readouterr().err  # a large corpus shows progress while it loads
    dfer = load_video_corpus(DATA / "dfew.yaml", overrides=sets + ["list_format=dfer_clip"])
    assert dfer.folds == official.folds and dfer.folds["set_1"]["test"] == ["00001", "00003", "00005"]
    assert [(c.clip_id, c.label, c.source) for c in dfer.clips] == [(c.clip_id, c.label, c.source)
                                                                     for c in official.clips]
    assert dfer.classes[dfer.clip("00002").label] == "fear"  # DFER-CLIP's 6 = DFEW's 7
    assert dfer.classes[dfer.clip("00005").label] == "disgust"


def test_dfew_zero_based_list_refused_where_one_based_expected_even_when_dropping(tmp_path):
    root = dfew_tree(tmp_path / "DFEW")
    csv = root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_2.csv"
    write(csv, ["video_name,label", "2,6", "4,1", "6,0"])  # 0-based labels (the DFER-CLIP numbering)
    for drop in (False, True):
        with pytest.raises(DataError, match=r"test\(single-labeled\)/set_2\.csv, line 4, column 'label': label 0 "
                                            r"in a list whose labels run 1-7.*list_format: dfer_clip"):
            load_video_corpus(DATA / "dfew.yaml", overrides=[f"root={root}", "folds=[1,2]"], drop_invalid=drop)


def test_dfew_one_based_list_refused_as_dfer_clip(tmp_path):
    root = dfew_tree(tmp_path / "DFEW")
    txt = root / "annotation" / "DFEW_set_1_test.txt"
    write(txt, [f"{AUTHORS}/DFEW/DFEW_Frame_Face/{k:05d} 9 {DFEW_LABELS[k] + 1}" for k in (1, 3, 5)] +
          [f"{AUTHORS}/DFEW/DFEW_Frame_Face/00002 9 7"])  # 1-based: a 7, no 0
    for drop in (False, True):
        with pytest.raises(DataError, match=r"DFEW_set_1_test\.txt, line 3, column 'label': label 7 in a list read "
                                            r"as 0-based"):
            load_video_corpus(DATA / "dfew.yaml", overrides=[f"root={root}", "folds=[1,2]",
                                                             "list_format=dfer_clip"], drop_invalid=drop)


def test_official_loaders_name_the_dfer_clip_format(tmp_path):
    root = dfew_tree(tmp_path / "DFEW")
    sets = [f"root={root}", "folds=[1,2]", "train_file=annotation/DFEW_set_{fold}_train.txt",
            "test_file=annotation/DFEW_set_{fold}_test.txt"]
    with pytest.raises(DataError, match=r"DFEW_set_1_train\.txt.*looks like a DFER-CLIP list.*list_format: dfer_clip"):
        load_video_corpus(DATA / "dfew.yaml", overrides=sets)
    mafw = mafw_tree(tmp_path / "MAFW")
    with pytest.raises(DataError, match=r"MAFW_set_1_train\.txt, line 1.*looks like a DFER-CLIP list"):
        load_video_corpus(DATA / "mafw.yaml", overrides=[f"root={mafw}", "folds=[1]",
                                                         "train_file=annotation/MAFW_set_{fold}_train.txt"])


def test_clip_in_train_and_test_of_a_fold_is_refused_naming_both_files(tmp_path):
    root = dfew_tree(tmp_path / "DFEW")
    train = root / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"
    train.write_text(train.read_text() + "3,4\n")  # clip 3 is in fold 1's test list too
    y, sets = DATA / "dfew.yaml", [f"root={root}", "folds=[1,2]"]
    with pytest.raises(DataError, match=r"clip is in both the train list \(EmoLabel_DataSplit/train\(single-labeled\)"
                                        r"/set_1\.csv line 5\) and the test list \(EmoLabel_DataSplit/"
                                        r"test\(single-labeled\)/set_1\.csv line 3\) of fold set_1 \(value '00003'\)"):
        load_video_corpus(y, overrides=sets)
    corpus = load_video_corpus(y, overrides=sets, drop_invalid=True)
    assert "00003" not in corpus.clip_ids and len(corpus) == 5
    assert all("00003" not in ids for parts in corpus.folds.values() for ids in parts.values())


def test_drop_report_names_files_by_path_under_the_root(tmp_path):
    root = dfew_tree(tmp_path / "DFEW")
    for part in ("train", "test"):  # two files called set_1.csv
        p = root / "EmoLabel_DataSplit" / f"{part}(single-labeled)" / "set_1.csv"
        p.write_text(p.read_text() + ("9,9\n" if part == "train" else "8,9\n"))
    corpus = load_video_corpus(DATA / "dfew.yaml", overrides=[f"root={root}", "folds=[1,2]"], drop_invalid=True)
    files = sorted(r["file"] for r in corpus.dropped.to_dict()["by_reason"])
    assert files == ["EmoLabel_DataSplit/test(single-labeled)/set_1.csv",
                     "EmoLabel_DataSplit/train(single-labeled)/set_1.csv"]


# ------------------------------------------------------------------ FERV39k

FERV = [("Action/Happy/0001", "train"), ("Action/Sad/0002", "train"), ("Interview/Fear/0003", "train"),
        ("Interview/Happy/0004", "test"), ("Action/Angry/0005", "test"), ("Talk/Surprise/0006", "test")]
FERV_ORDER = ["Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"]  # DFER-CLIP's 0..6


def test_ferv39k_dfer_clip_lists_load_as_the_official_lists(tmp_path):
    root = tmp_path / "FERV39k"
    for rel, _ in FERV:
        frames(root / "2_ClipsforFaceCrop" / rel, 4)
    for part in ("train", "test"):
        ours = [(rel, rel.split("/")[1]) for rel, p in FERV if p == part]
        write(root / "4_setups" / "All_scenes" / f"{part}_All.csv", [f"{rel} {emo}" for rel, emo in ours])
        write(root / "annotation" / f"FERV39K_{part}.txt",
              [f"{AUTHORS}/FERV39K/2_ClipsforFaceCrop/{rel} 4 {FERV_ORDER.index(emo)}" for rel, emo in ours])
    sets = [f"root={root}", "clip_dir=null"]
    official = load_video_corpus(DATA / "ferv39k.yaml", overrides=sets)
    dfer = load_video_corpus(DATA / "ferv39k.yaml", overrides=sets + ["list_format=dfer_clip"])
    assert dfer.folds == official.folds and dfer.folds["default"]["test"] == [r for r, p in FERV if p == "test"]
    assert [(c.clip_id, c.label, c.source, c.meta) for c in dfer.clips] == [
        (c.clip_id, c.label, c.source, c.meta) for c in official.clips]
    assert {dfer.classes[c.label] for c in dfer.clips} == {"happy", "sad", "fear", "angry", "surprise"}


# ------------------------------------------------------------------ MAFW: DFER-CLIP's own class order

MAFW = {1: "happiness", 2: "anger", 3: "disappointment", 4: "sadness", 5: "contempt"}
MAFW_DFER_ORDER = ["happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear", "contempt", "anxiety",
                   "helplessness", "disappointment"]


def mafw_tree(root: Path) -> Path:
    for k in MAFW:
        frames(root / "data" / "faces" / f"{k:05d}", 5)
    for f in (1, 2):
        for part, ks in (("train", [k for k in MAFW if k % 2 != f % 2]), ("test", [k for k in MAFW if k % 2 == f % 2])):
            write(root / "Train & Test Set" / "single" / "no_caption" / f"set_{f}" / f"{part}.txt",
                  [f"{k:05d}.mp4 {MAFW[k]}" for k in ks])
            write(root / "annotation" / f"MAFW_set_{f}_{part}.txt",
                  [f"{AUTHORS}/MAFW/data/faces/{k:05d} 5 {MAFW_DFER_ORDER.index(MAFW[k])}" for k in ks])
    return root


def test_mafw_dfer_clip_labels_read_in_dfer_clips_order(tmp_path):
    root = mafw_tree(tmp_path / "MAFW")
    sets = [f"root={root}", "folds=[1,2]", "clip_dir=data/faces"]
    official = load_video_corpus(DATA / "mafw.yaml", overrides=sets)
    dfer = load_video_corpus(DATA / "mafw.yaml", overrides=sets + ["list_format=dfer_clip"])
    assert {c.clip_id: dfer.classes[c.label] for c in dfer.clips} == {f"{k:05d}": v for k, v in MAFW.items()}
    assert [(c.clip_id, c.label) for c in dfer.clips] == [(c.clip_id, c.label) for c in official.clips]
    assert dfer.folds == official.folds
    # the integer 0 is happiness in DFER-CLIP's lists, not anger (MAFW's own first class)
    assert dfer.classes[dfer.clip("00001").label] == "happiness" and dfer.classes[0] == "anger"


def test_label_order_must_name_every_class(tmp_path):
    root = mafw_tree(tmp_path / "MAFW")
    with pytest.raises(ConfigError, match="label_order must name every class once"):
        load_video_corpus(DATA / "mafw.yaml", overrides=[f"root={root}", "list_format=dfer_clip",
                                                         "label_order=[happiness, sadness]"])


# ------------------------------------------------------------------ data check --decode opens every frame


def test_check_decode_opens_frame_images_and_names_the_bad_one(tmp_path):
    from vlm_salience.data.video.check import check_video_data

    root = dfew_tree(tmp_path / "DFEW")
    sets = [f"root={root}", "folds=[1,2]"]
    frame = root / "Clip" / "clip_224x224" / "00004" / "3.jpg"
    frame.write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())  # not an image
    assert check_video_data(DATA / "dfew.yaml", overrides=sets)["clips"] == 6  # cheap checks: it exists
    with pytest.raises(DataError, match=r"00004/3\.jpg: unreadable image"):
        check_video_data(DATA / "dfew.yaml", overrides=sets, decode=True, progress=False)
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    big.save(frame)
    frame.write_bytes(frame.read_bytes()[:-200])  # a JPEG cut short: its header opens, its data does not
    with pytest.raises(DataError, match=r"00004/3\.jpg: unreadable image"):
        check_video_data(DATA / "dfew.yaml", overrides=sets, decode=True, progress=False)
    summary = check_video_data(DATA / "dfew.yaml", overrides=sets, decode=True, drop_invalid=True, progress=False)
    assert summary["clips"] == 5 and summary["dropped"]["by_reason"][0]["file"] == "Clip/clip_224x224/00004/3.jpg"

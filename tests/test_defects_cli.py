"""Defects found by probing the CLI as a careful user and an adversary would (issue 29): each test fails with the
defect planted back."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from vlm_salience.cli import main
from vlm_salience.errors import ConfigError, DataError

# -- 1. index build --out never deletes a folder that is not an index ----------------------------------------------


def test_index_build_refuses_a_folder_that_is_not_an_index(small_synth_corpus, tmp_path, capsys):
    notes = tmp_path / "d" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("notes")
    assert main(["index", "build", "--data", str(small_synth_corpus), "--out", str(notes.parent), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not an index" in err and "notes.txt" in err and "Fix:" in err
    assert notes.read_text() == "notes"
    # the corpus folder itself holds its data YAML and CSVs: refused the same way, nothing deleted
    corpus_dir = Path(small_synth_corpus).parent
    before = sorted(p.name for p in corpus_dir.iterdir())
    assert main(["index", "build", "--data", str(small_synth_corpus), "--out", str(corpus_dir), "--quiet"]) == 2
    assert sorted(p.name for p in corpus_dir.iterdir()) == before


def test_an_index_folder_or_an_empty_one_may_be_replaced(tmp_path):
    from vlm_salience.retrieval.index import check_index_out

    (tmp_path / "empty").mkdir()
    old = tmp_path / "old"
    old.mkdir()
    for name in ("index.faiss", "manifest.json"):  # a damaged index (a part missing) is still an index
        (old / name).write_text("x")
    for folder in (tmp_path / "new", tmp_path / "empty", old):
        assert check_index_out(folder) == folder
    (old / "README").write_text("mine")
    with pytest.raises(DataError, match="README"):
        check_index_out(old)


# -- 2. face score: one writer per CSV, one row per image ----------------------------------------------------------


@pytest.fixture
def face_images(tmp_path) -> Path:
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (60 * i, 90, 120)).save(d / f"wall{i}.png")
    return d


def test_a_second_face_score_on_the_same_csv_is_refused(face_images, tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "scores.csv"
    with FileLock(str(out) + ".lock"):  # a first run holds the CSV
        assert main(["face", "score", str(face_images), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "another `face score`" in err and "Fix:" in err
    assert not out.exists()
    assert main(["face", "score", str(face_images), "--out", str(out), "--quiet"]) == 0  # released: runs


def test_a_rerun_drops_duplicate_rows_of_an_image(face_images, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["face", "score", str(face_images), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    header, *rows = out.read_text().splitlines()
    out.write_text("\n".join([header, *rows, *rows]) + "\n")  # what two concurrent writers left behind
    assert main(["face", "score", str(face_images), "--out", str(out), "--quiet", "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and len(out.read_text().splitlines()) == 4


# -- 3. a clip that decodes far fewer frames than its header says is damaged -----------------------------------------


def write_mp4(path: Path, frames: int = 16, size: tuple[int, int] = (48, 64)) -> Path:
    """An mp4 with its index (moov) at the start, as `-movflags faststart` writes it."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("mpeg4", rate=8)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return path


def test_a_clip_cut_in_half_is_damaged_not_one_frame_repeated(tmp_path):
    from vlm_salience.data.video.frames import check_decodes, count_frames, read_frames

    full = write_mp4(tmp_path / "full.mp4")
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert count_frames(cut) == 16  # the header still says 16
    assert check_decodes(full) == 16 and read_frames(full, range(16)).shape[0] == 16
    for read in (lambda: read_frames(cut, np.linspace(0, 15, 8).round().astype(int)), lambda: check_decodes(cut)):
        with pytest.raises(DataError, match=r"decodes only \d+ of the 16 frames") as exc:
            read()
        assert exc.value.file == cut


def clip_corpus(tmp_path: Path, rows: list[dict[str, str]] | None = None, cut: str | None = "c3.mp4") -> Path:
    """Four 12-frame clips in a generic CSV (two folds), `cut` cut in half; returns the data YAML."""
    import csv

    root = tmp_path / "clips"
    root.mkdir(parents=True)
    for i in range(4):
        write_mp4(root / f"c{i}.mp4", frames=12)
    rows = rows or [{"clip": f"c{i}.mp4", "label": ["happy", "sad"][i % 2], "fold": "1" if i < 2 else "2"}
                    for i in range(4)]
    if cut:
        data = (root / cut).read_bytes()
        (root / cut).write_bytes(data[: len(data) // 2])
    with open(root / "clips.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    yaml = tmp_path / "data.yaml"
    yaml.write_text(f"name: cut\nformat: video_csv\nroot: {root}\nfile: clips.csv\nclasses: [happy, sad]\n")
    return yaml


def test_data_check_decode_counts_and_names_a_cut_clip(tmp_path, capsys):
    yaml = clip_corpus(tmp_path)
    assert main(["data", "check", "--data", str(yaml), "--decode", "--quiet"]) == 2
    assert "c3.mp4" in capsys.readouterr().err
    assert main(["data", "check", "--data", str(yaml), "--decode", "--drop-invalid", "--quiet", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["clips"] == 3 and any("c3" in line and "decodes only" in line for line in doc["dropped_lines"])


# -- 4. resume with other optimiser settings is refused ---------------------------------------------------------------


def test_resume_with_other_optimiser_settings_is_refused(tmp_path):
    from test_engine import LinearTask, config

    from vlm_salience.engine.engine import CheckpointError, train

    train(config(tmp_path, optim__max_steps=4), LinearTask(), progress=False)
    for over, said in [({"optim__lr": 0.5}, "optim.lr 0.05 -> 0.5"),
                       ({"optim__max_steps": 6}, "optim.max_steps 4 -> 6"),
                       ({"optim__schedule": "linear"}, "optim.schedule cosine -> linear")]:
        with pytest.raises(CheckpointError, match="other optimiser settings") as exc:
            train(config(tmp_path, **{"optim__max_steps": 4, **over}), LinearTask(), resume=True, progress=False)
        assert said in str(exc.value)
    # the same settings resume
    assert train(config(tmp_path, optim__max_steps=4), LinearTask(), resume=True, progress=False)["steps"] == 4


# -- 9. atomic outputs honour the umask --------------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_outputs_get_the_mode_the_umask_gives(tmp_path, umask_022):
    from vlm_salience.atomic import current_umask, replaced_dir, staged_dir, write_text

    assert current_umask() == 0o022
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(write_text(tmp_path / "a.json", "{}")) == 0o644
    with staged_dir(tmp_path / "run") as stage:
        (stage / "x.txt").write_text("x")
    with replaced_dir(tmp_path / "index") as stage:
        (stage / "y.txt").write_text("y")
    assert mode(tmp_path / "run") == 0o755 and mode(tmp_path / "index") == 0o755
    os.umask(0o077)  # a private umask stays private
    assert mode(write_text(tmp_path / "b.json", "{}")) == 0o600


# -- 4 (a finished fold). A fold trained with other optimiser settings is not skipped as done --------------------------


def test_a_finished_fold_with_other_optimiser_settings_is_refused_not_skipped(tmp_path):
    from types import SimpleNamespace

    from vlm_salience.engine.config import OptimConfig
    from vlm_salience.video.train import _fold_done

    (tmp_path / "task.json").write_text(json.dumps({"fingerprint": {"data": "x"},
                                                    "optim": OptimConfig(lr=0.01).model_dump(mode="json")}))
    task = lambda **o: SimpleNamespace(  # noqa: E731
        fold="set_1", model_dir=lambda: tmp_path, fingerprint=lambda: {"data": "x"},
        cfg=SimpleNamespace(optim=OptimConfig(**o)))
    assert _fold_done(task(lr=0.01))
    with pytest.raises(ConfigError, match=r"other optimiser settings \(optim.lr 0.01 -> 0.5\)"):
        _fold_done(task(lr=0.5))


# -- 6. damaged final weights and an output folder that cannot be written: errors, not tracebacks ---------------------


def test_damaged_final_weights_are_an_error_naming_the_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    from vlm_salience.video.task import _load_weights, _read_meta, _sha256

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(path))
    recorded = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    assert torch.equal(_load_weights(path, recorded, "set_1")["w"], torch.arange(64, dtype=torch.float32))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    for rec, said in ((recorded, "damaged"), (None, "cannot be read")):  # None: a task.json from before the record
        with pytest.raises(ConfigError, match=said) as exc:
            _load_weights(path, rec, "set_1")
        assert str(path) in str(exc.value) and "Fix: retrain" in str(exc.value)
    (tmp_path / "task.json").write_text("{")
    with pytest.raises(ConfigError, match="task.json: the record of fold set_1"):
        _read_meta(tmp_path / "task.json", "set_1")


def test_face_score_into_a_folder_that_cannot_be_written_is_an_error(face_images, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(["face", "score", str(face_images), "--out", str(tmp_path / "a_file" / "scores.csv"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a folder you can write to" in err and "Traceback" not in err


# -- 8. messages: the flag that exists ---------------------------------------------------------------------------------


def test_face_score_csv_mismatch_names_the_flag_that_exists(face_images, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    out.write_text("path,status,other\n")
    assert main(["face", "score", str(face_images), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--fresh" in err and "--no-resume" not in err


# -- 8. messages: a duplicate id names the id column; a bad clip names its id and list line; no advice to pass a flag
# that was passed; what was left out of a video run is in its notes (report.md and the console) ------------------------


def test_a_duplicate_id_is_reported_against_the_id_column(tmp_path):
    from vlm_salience.data.video import load_video_corpus

    rows = [{"clip": f"c{i}.mp4", "label": ["happy", "sad"][i % 2], "fold": "1" if i < 2 else "2",
             "id": "a" if i in (1, 3) else f"id{i}"} for i in range(4)]
    with pytest.raises(DataError) as exc:
        load_video_corpus(clip_corpus(tmp_path, rows, cut=None))
    e = exc.value
    assert (e.column, e.row) == ("id", 5) and "duplicate clip id 'a' (also on line 3)" in str(e)
    assert "(value 'a')" in str(e)


def test_a_bad_clip_names_its_id_and_line_and_no_flag_already_passed(tmp_path):
    from vlm_salience.video.prepare import PrepareConfig, prepare_corpus

    yaml = clip_corpus(tmp_path)
    cfg = PrepareConfig(n_segments=2, candidates_per_segment=1)
    with pytest.raises(DataError) as exc:
        prepare_corpus(yaml, cfg, tmp_path / "cache", progress=False)
    assert "clip 'c3.mp4' (clips.csv line 5)" in str(exc.value) and "--drop-invalid" in str(exc.value)
    summary = prepare_corpus(yaml, cfg, tmp_path / "cache", drop_invalid=True, progress=False)
    (bad,) = summary["invalid"]
    assert bad["clip_id"] == "c3.mp4" and "line 5" in bad["error"] and "--drop-invalid" not in bad["error"]
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.video.report import dropped_notes

    rows = [{"clip": f"c{i}.mp4", "label": ["happy", "sad", "happy", "bored"][i], "fold": "1" if i < 2 else "2"}
            for i in range(4)]
    corpus = load_video_corpus(clip_corpus(tmp_path / "b", rows, cut=None), drop_invalid=True)
    notes = dropped_notes(corpus, summary)
    assert len(notes) == 2 and "skipped 1 row(s)" in notes[0] and "bored" in notes[0]
    assert "prepare skipped 1 clip(s)" in notes[1] and "c3.mp4" in notes[1]

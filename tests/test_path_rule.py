"""One path rule for every command: a relative path written inside a YAML is relative to that YAML's folder; a
relative path given on the command line (`--out`, `--data`, `--set a.b=PATH`, `--data-set key=PATH`, positional
files) is relative to the current folder. Each test runs from a temporary current folder that holds none of the
shipped YAMLs, so a command-line path resolved against a YAML's folder lands somewhere else and fails the check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.tables import write_cue_tables
from vlm_salience.cli import main


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A current folder that is neither the repository nor any YAML's folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _prompting(path, sets):
    from vlm_salience.config import load_config
    from vlm_salience.prompting.experiment import ExperimentConfig

    return load_config(path, ExperimentConfig, sets)


def _training(path, sets):
    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig

    return load_config(path, TrainConfig, sets)


def _video(path, sets):
    from vlm_salience.video.config import load_video_config

    return load_video_config(path, sets)[0]


def _data(path, sets):
    from vlm_salience.data.config import load_data_config

    return load_data_config(path, sets)


def _video_data(path, sets):
    from vlm_salience.data.video.config import load_video_data_config

    return load_video_data_config(path, sets)


def _cue(path, sets):
    from vlm_salience.machine_cues import load_machine_cue_config

    return load_machine_cue_config(path, sets)


# (command family, loader the command uses, shipped YAML, override key, where the loaded config keeps the path)
FAMILIES = [
    ("prompt run", _prompting, "configs/experiment/prompt_synthetic.yaml", "data", lambda c: c.data),
    ("prompt run --out", _prompting, "configs/experiment/prompt_synthetic.yaml", "out", lambda c: c.out),
    ("train / route", _training, "configs/train/experts_synthetic.yaml", "data.config", lambda c: c.data.config),
    ("video train (baseline)", _video, "configs/video/baseline_synthetic.yaml", "data.config",
     lambda c: c.data.config),
    ("video train (OUS)", _video, "configs/video/ous_synthetic.yaml", "data.cache", lambda c: c.data.cache),
    ("video train (GRACE)", _video, "configs/video/grace_synthetic.yaml", "data.config", lambda c: c.data.config),
    ("bci --data-set", _data, "configs/data/affcog_utterances.yaml", "root", lambda c: c.root),
    ("video prepare --data-set", _video_data, "configs/data/dfew.yaml", "root", lambda c: c.root),
    ("bci --cue", _cue, "configs/cues/synthetic_fer.yaml", "data", lambda c: c.data),
]


@pytest.mark.parametrize("family,load,yaml_path,key,get", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_a_command_line_path_is_relative_to_the_current_folder(elsewhere, family, load, yaml_path, key, get):
    cfg = load(REPO / yaml_path, [f"{key}=rel/thing.yaml"])
    assert Path(get(cfg)) == elsewhere / "rel" / "thing.yaml", family


def test_a_path_inside_a_yaml_stays_relative_to_that_yaml(elsewhere, tmp_path):
    """The other half of the rule, and both halves in one config: the YAML's own paths keep their folder."""
    from vlm_salience.video.config import load_video_config

    folder = tmp_path / "cfgs"
    folder.mkdir()
    raw = yaml.safe_load((REPO / "configs/video/baseline_synthetic.yaml").read_text())
    raw["data"]["config"] = "corpus/data.yaml"
    raw["data"]["cache"] = "cache"
    (folder / "run.yaml").write_text(yaml.safe_dump(raw))
    cfg, _ = load_video_config(folder / "run.yaml", ["data.cache=my_cache"])
    assert cfg.data.config == folder / "corpus" / "data.yaml"  # from the YAML: its folder
    assert cfg.data.cache == elsewhere / "my_cache"  # from the command line: the current folder


def test_command_line_strings_stay_plain_strings_in_configs_and_dumps(elsewhere):
    """The marker that carries the rule never leaks: a str field gets a plain str, and a YAML dump of an
    overridden mapping (the variants runners write one per variant) reads back as text."""
    from vlm_salience.config import apply_overrides

    raw = apply_overrides({}, ["model.text.source=none", "data.folds=[set_1]"])
    assert yaml.safe_load(yaml.safe_dump(raw)) == {"model": {"text": {"source": "none"}},
                                                   "data": {"folds": ["set_1"]}}
    cfg = _video(REPO / "configs/video/baseline_synthetic.yaml", ["data.folds=[set_2]"])
    assert type(cfg.data.folds[0]) is str


def test_bci_from_another_folder_with_relative_flags(elsewhere, capsys):
    """A run YAML's own `data:` and `out:` given by `--set`: relative to the current folder, while the YAML lives
    elsewhere (`--data` and `--out` themselves are plain paths that the command opens from the current folder)."""
    write_cue_tables(elsewhere / "d", face_rows=["r1,f1,yay,8,1", "r2,f1,yay,7,2", "r3,f2,oh,2,7", "r4,f2,oh,3,6"])
    runs = elsewhere.parent / "yamls"
    runs.mkdir()
    study = yaml.safe_load((REPO / "configs/experiment/bci.yaml").read_text())
    (runs / "run.yaml").write_text(yaml.safe_dump(study))
    sets = ["--set", "bootstrap.n=20", "--set", "bootstrap.weights_n=0", "--quiet"]
    assert main(["bci", str(runs / "run.yaml"), "--set", "data=d/data.yaml", "--set", "out=out_set", *sets]) == 0
    assert (elsewhere / "out_set" / "metrics.json").is_file()
    assert not (runs / "out_set").exists()


def test_video_commands_from_another_folder_with_relative_paths(elsewhere, capsys):
    """`video synth`, `data check` and `video prepare` with relative `--out`/`--data`, and the demo's own kind of
    `--set data.config=REL` override on a shipped video YAML."""
    assert main(["video", "synth", "--out", "clips", "--quiet", "--set", "clips=14", "--set", "frames=8",
                 "--set", "size=48"]) == 0
    assert main(["data", "check", "--data", "clips/generic/data.yaml", "--quiet"]) == 0
    assert main(["video", "prepare", "--data", "clips/generic/data.yaml", "--out", "cache", "--quiet", "--set",
                 "n_segments=2", "--set", "candidates_per_segment=1", "--json", "prep.json"]) == 0
    assert (elsewhere / "cache").is_dir() and json.loads((elsewhere / "prep.json").read_text())
    cfg = _video(REPO / "configs/video/baseline_synthetic.yaml",
                 ["data.config=clips/generic/data.yaml", "data.cache=cache"])
    assert cfg.data.config.is_file() and cfg.data.cache == elsewhere / "cache"

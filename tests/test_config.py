"""Configs: every shipped YAML validates against the code (so configs never rot); overrides and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlm_salience.config import apply_overrides, load_config
from vlm_salience.data.config import load_data_config
from vlm_salience.data.synth import SynthConfig
from vlm_salience.errors import ConfigError
from vlm_salience.study import StudyConfig

REPO = Path(__file__).resolve().parent.parent


VIDEO_FORMATS = {"dfew", "ferv39k", "mafw", "video_csv"}


def _field(path: Path, key: str):
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get(key)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_data_configs_validate(path):
    if _field(path, "format") in VIDEO_FORMATS:
        from vlm_salience.data.video.config import load_video_data_config

        cfg = load_video_data_config(path)
    else:
        cfg = load_data_config(path)
    assert cfg.name and cfg.root.is_absolute()


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "experiment").glob("bci*.yaml")), ids=lambda p: p.name)
def test_shipped_study_configs_validate(path):
    cfg = load_config(path, StudyConfig)
    assert cfg.reference in [m.name for m in cfg.methods]
    # every salience method has a control to be compared with
    for m in cfg.methods:
        if m.salience in ("hard", "logistic"):
            assert cfg.control_of(m) is not None


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "synth").glob("split_steal*.yaml")), ids=lambda p: p.name)
def test_shipped_synth_configs_validate(path):
    if _field(path, "ratings") is not None:  # a rated corpus: SynthConfig plus how observers rate
        from vlm_salience.data.synth_ratings import RatingSynthConfig

        cfg = load_config(path, RatingSynthConfig)
        assert cfg.ratings is not None
    else:
        cfg = load_config(path, SynthConfig)
    assert set(cfg.appraisal) == {"CC", "CD", "DC", "DD"}


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "synth").glob("clips*.yaml")), ids=lambda p: p.name)
def test_shipped_clip_synth_configs_validate(path):
    from vlm_salience.data.video.synth import ClipSynthConfig

    cfg = load_config(path, ClipSynthConfig)
    assert cfg.seed >= 0


def test_every_synth_config_is_checked():
    names = {p.name for p in (REPO / "configs" / "synth").glob("*.yaml")}
    assert all(n.startswith(("split_steal", "clips")) for n in names), names


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides({"cv": {"k": 5}}, ["cv.k=10", "cv.scheme=group_kfold", "new.list=[1, 2]"])
    assert data == {"cv": {"k": 10, "scheme": "group_kfold"}, "new": {"list": [1, 2]}}
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["novalue"])


def test_unknown_field_and_wrong_type_name_the_field(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("methods: [{name: bci, rule: product}]\ncv: {folds: 3}\n")
    with pytest.raises(ConfigError, match=r"cv\.folds"):
        load_config(p, StudyConfig)
    p.write_text("methods: [{name: bci, rule: product}]\ncv: {k: many}\n")
    with pytest.raises(ConfigError, match=r"cv\.k"):
        load_config(p, StudyConfig)
    p.write_text("methods: [{name: bci, rule: blend}]\n")
    with pytest.raises(ConfigError, match=r"methods\.0\.rule"):
        load_config(p, StudyConfig)


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "d.yaml"
    p.write_text("format: split_steal\nname: x\nroot: ../data\nlabels: [a]\nvalence_scale: {low: 1, high: 7}\n"
                 "situation: {features: [pot], text: '{pot}'}\n")
    assert load_data_config(p).root == (tmp_path / "data").resolve()


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", StudyConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, StudyConfig)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_validate(path):
    from vlm_salience.config import read_yaml
    from vlm_salience.training.clip_training import ClipTrainConfig
    from vlm_salience.training.config import TrainConfig

    # LoRA on clips: its data.config is a video corpus the demo generates (absent here, so `is_clip_training` cannot
    # look at it); its data block has the clip keys
    if "frame_cache" in (read_yaml(path).get("data") or {}):
        cfg = load_config(path, ClipTrainConfig)
        assert cfg.adapters and cfg.data.frame_cache is not None
        return
    cfg = load_config(path, TrainConfig)
    names = {a.name for a in cfg.adapters}
    assert {cfg.routing.face, cfg.routing.context, *cfg.routing.single} <= names


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.compute_environment.name == "LOCAL_MACHINE"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "models").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_model_configs_validate(path):
    """Three kinds live in configs/models: face models (`kind`), tiny dual encoders and tiny VLMs (`family`)."""
    kind, family = _field(path, "kind"), _field(path, "family")
    if kind is not None:
        if kind in ("haar", "mtcnn"):
            from vlm_salience.models.faces.detector import DetectorConfig

            assert load_config(path, DetectorConfig).kind == kind
        else:
            from vlm_salience.models.faces.expression import read_classifier_config

            assert read_classifier_config(path).kind == kind
    elif family in ("clip", "siglip"):
        from vlm_salience.models.encoders import TinyEncoderConfig

        cfg = load_config(path, TinyEncoderConfig)
        assert cfg.vision["hidden_size"] % cfg.vision["num_attention_heads"] == 0
    else:
        from vlm_salience.models.tiny import TinyVLMConfig

        cfg = load_config(path, TinyVLMConfig)
        assert cfg.text["hidden_size"] % cfg.text["num_attention_heads"] == 0


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "labelmaps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_label_maps_validate(path):
    from vlm_salience.models.faces.labelmap import load_label_map

    assert load_label_map(path).emotions


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "video").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_video_configs_validate(path):
    """Run configs (a `model:` section, dispatched on model.kind), prepare configs (frame-cache settings) and the
    face detector settings a video run names."""
    if _field(path, "kind") == "haar":
        from vlm_salience.models.faces.detector import HaarDetectorConfig

        load_config(path, HaarDetectorConfig)
    elif _field(path, "model") is not None:
        from vlm_salience.video.config import load_video_config

        cfg, task_cls = load_video_config(path)
        assert cfg.name and task_cls.__name__.endswith("Task")
    else:
        from vlm_salience.video.prepare import load_prepare_config

        assert load_prepare_config(path).n_segments >= 1


def _declared_schema(path: Path):
    """configs/grace YAMLs name the class that validates them in their header ('Validated by module:Class')."""
    import importlib
    import re

    m = re.search(r"Validated by[\s#]+([\w.]+):(\w+)", path.read_text())
    return None if m is None else getattr(importlib.import_module(m.group(1)), m.group(2))


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "grace").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grace_configs_validate(path):
    if path.name == "lexicon.yaml":
        from vlm_salience.grace.text import load_lexicon

        assert load_lexicon(path)
        return
    schema = _declared_schema(path)
    assert schema is not None, f"{path.name}: its header names no schema"
    load_config(path, schema)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "cues").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_machine_cue_configs_validate(path):
    from vlm_salience.machine_cues import load_machine_cue_config

    assert load_machine_cue_config(path).face_cue == "model"


def test_shipped_corpus_roots_honour_the_shared_data_variable(tmp_path, monkeypatch):
    """VLM_SALIENCE_SHARED_DATA moves the corpora for every YAML that names them (tests, cues, training), not
    only for the fixtures; unset, the path is ../shared/data beside the checkout."""
    from vlm_salience.config import expand_vars

    monkeypatch.delenv("VLM_SALIENCE_SHARED_DATA", raising=False)
    default = load_data_config(REPO / "configs" / "data" / "affcog_utterances.yaml").root
    assert default == (REPO.parent / "shared" / "data" / "affcog_utterances").resolve()
    monkeypatch.setenv("VLM_SALIENCE_SHARED_DATA", str(tmp_path / "elsewhere"))
    for name in ("affcog_utterances", "golden_balls"):
        assert load_data_config(REPO / "configs" / "data" / f"{name}.yaml").root == tmp_path / "elsewhere" / name
    monkeypatch.delenv("VLM_SALIENCE_SHARED_DATA")
    with pytest.raises(ValueError, match="NOPE_NOT_SET"):
        expand_vars("${NOPE_NOT_SET}/x")
    assert expand_vars("${NOPE_NOT_SET:-a/b}/x") == "a/b/x"


def test_corpus_read_where_the_variable_says(tmp_path, monkeypatch):
    import shutil

    from conftest import SHARED_DATA

    from vlm_salience.data import load_corpus

    if not (SHARED_DATA / "affcog_utterances").is_dir():
        pytest.skip(f"real corpus affcog_utterances not found at {SHARED_DATA}")
    monkeypatch.setenv("VLM_SALIENCE_SHARED_DATA", str(SHARED_DATA))
    original = load_corpus(REPO / "configs" / "data" / "affcog_utterances.yaml")
    shutil.copytree(SHARED_DATA / "affcog_utterances", tmp_path / "moved" / "affcog_utterances")
    monkeypatch.setenv("VLM_SALIENCE_SHARED_DATA", str(tmp_path / "moved"))
    moved = load_corpus(REPO / "configs" / "data" / "affcog_utterances.yaml")
    assert len(moved.items) == len(original.items) > 0
    shutil.rmtree(tmp_path / "moved")
    with pytest.raises(Exception, match="moved"):  # it really reads the moved copy
        load_corpus(REPO / "configs" / "data" / "affcog_utterances.yaml")

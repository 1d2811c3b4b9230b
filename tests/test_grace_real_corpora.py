"""GRACE on the real corpora: each describe config (configs/grace/describe_{dfew,ferv39k,mafw}.yaml) loads through
the validators, names a real Qwen2-VL checkpoint, refines with the VLM, describes the GRACE run that reads its
descriptions.csv, and a placeholder path that is missing is a clear error naming the field before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ("dfew", "ferv39k", "mafw")


def _load(path: Path, overrides: list[str] | None = None):
    from pydantic import TypeAdapter

    from vlm_salience.config import apply_overrides, read_yaml, validate
    from vlm_salience.grace.text import DescribeRunConfig
    from vlm_salience.prompting.experiment import ModelEntry

    raw = apply_overrides(read_yaml(path), list(overrides or []))
    run = validate(raw, DescribeRunConfig, source=path, base_dir=path.parent)
    entry = TypeAdapter(ModelEntry).validate_python(dict(run.model), context={"base_dir": path.parent})
    return run, entry


@pytest.mark.parametrize("corpus", CORPORA)
def test_describe_config_names_a_real_vlm_and_refines_with_it(corpus):
    from vlm_salience.video.config import load_video_config

    path = ROOT / "configs/grace" / f"describe_{corpus}.yaml"
    run, entry = _load(path, [f'video_overrides=["data.overrides=[root=/data/{corpus}]"]'])
    assert entry.backend == "hf" and "qwen2" in entry.path.lower() and "vl" in entry.path.lower()
    assert entry.build is None  # a real checkpoint, not a tiny random one
    assert run.describe.refine == "vlm" and run.describe.stream == "face"
    video = (path.parent / run.video).resolve()
    cfg, _ = load_video_config(video, run.video_overrides)
    assert cfg.model.kind == "grace" and cfg.data.overrides == [f"root=/data/{corpus}"]
    # the GRACE runs of the corpus read what this config writes
    written = (path.parent / run.out / "descriptions.csv").resolve()
    for name in (f"grace_{corpus}.yaml", f"grace_{corpus}_authors.yaml"):
        run_cfg, _ = load_video_config(ROOT / "configs/video" / name)
        assert Path(run_cfg.model.text.descriptions).resolve() == written, name
        assert run_cfg.model.text.source == "descriptions" and run_cfg.model.text.use == "refined"


def test_a_missing_local_vlm_is_named_before_anything_runs(tmp_path):
    from vlm_salience.errors import ConfigError
    from vlm_salience.grace.text import check_local_model, describe_video

    path = ROOT / "configs/grace/describe_dfew.yaml"
    _, entry = _load(path, [f"model.path={tmp_path / 'no-such-model'}"])
    with pytest.raises(ConfigError, match="model.path .*no-such-model does not exist"):
        check_local_model(entry, path)
    with pytest.raises(ConfigError, match="set it to your copy"):
        describe_video(path, [f"model.path={tmp_path / 'no-such-model'}"])
    _, hub = _load(path, ["model.path=Qwen/Qwen2-VL-2B-Instruct"])
    check_local_model(hub, path)  # a hub id: not checked here (downloads on first use)

